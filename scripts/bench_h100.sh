#!/usr/bin/env bash
# Issue 4 on the H100: the paper's seven mixes x the six policies at batch 1, closed loop with one
# request in flight per model instance, 10 s windows after 2 s of warm-up, SLO = 3x the isolated p99.
# The run is a list of parts, each one `eclip-ray bench` command of a few minutes that writes its
# own JSON after every policy; `merge` joins them into summary.json, the README table and plots/.
#
#   bash scripts/bench_h100.sh                    # list the parts and their commands
#   bash scripts/bench_h100.sh isolated m1 m2     # run these parts in order, all within BUDGET_S (540) s
#   bash scripts/bench_h100.sh merge              # summary.json + README.md table + plots/ (no GPU needed)
#
# Parts resume: a part run again keeps the policies its file already holds and runs the rest, and
# a policy that would end after the budget is recorded as not-run (run the part again to finish it).
# The first part, `isolated`, measures every model alone; the mix parts take their SLOs from it.
# With $OUT set (the device machine), part files are written to $OUT (copied there first from
# $RESULTS/parts where they exist); copy what comes back into $RESULTS/parts before the next call.
# BACKEND, WINDOW_S, WARMUP_S and ISOLATED_S override the run's settings (e.g. a dry run of this
# script on the CPU backend with short windows); the published run uses the defaults.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results/h100}
SAVED=$RESULTS/parts
PARTS=${OUT:-$SAVED}
BUDGET_S=${BUDGET_S:-540}
DEADLINE=$(($(date +%s) + BUDGET_S))
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# 32 hardware work queues for every policy alike, set before any process starts CUDA (partition/cuda.py).
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-32}
MODELS=albert-base,densenet201,vgg19,alexnet,resnet152,resnext101_32x8d,shufflenet_v2_x1_0
POLICIES=(time-share multi-stream model-wise mps kw-prealloc eclip)
ISOLATED=$PARTS/isolated_bs1.json
BACKEND=${BACKEND:-cuda} WINDOW_S=${WINDOW_S:-10} WARMUP_S=${WARMUP_S:-2} ISOLATED_S=${ISOLATED_S:-5}

command_of() {  # the command of part $1, one word per line
  case $1 in
    isolated)
      printf '%s\n' "$PY" -m eclip_ray.cli bench isolated --models "$MODELS" --batch-size 1 \
        --warmup-s "$WARMUP_S" --isolated-s "$ISOLATED_S" --seed 0 --backend "$BACKEND" --out "$ISOLATED" ;;
    m[1-7])
      printf '%s\n' "$PY" -m eclip_ray.cli bench --mixes "M${1#m}" --policies "${POLICIES[@]}" \
        --load closed --inflight 1 --batch-size 1 --window-s "$WINDOW_S" --warmup-s "$WARMUP_S" \
        --isolated-s "$ISOLATED_S" --seed 0 --slo-factor 3 --slo-percentile 99 \
        --profiles benchmarks/profiles/h100 --backend "$BACKEND" \
        --isolated "$ISOLATED" --resume --deadline "$DEADLINE" --out "$PARTS/$1.json" ;;
    merge)
      printf '%s\n' "$PY" -m eclip_ray.cli bench merge "$SAVED"/*.json --out "$RESULTS/summary.json" ;;
    *) return 1 ;;
  esac
}

if [ $# -eq 0 ]; then
  echo "parts (each under 10 minutes; a mix takes about 2-3):"
  for p in isolated m1 m2 m3 m4 m5 m6 m7 merge; do
    echo "  $p: $(command_of "$p" | tr '\n' ' ')"
  done
  exit 0
fi

without_isolated() {  # the words of a command, less "--isolated FILE"
  local skip=0 w
  for w in "$@"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    if [ "$w" = --isolated ]; then skip=1; continue; fi
    printf '%s\n' "$w"
  done
}

mkdir -p "$PARTS"
LOG=$PARTS/bench_h100.log
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader 2>&1; } >> "$LOG"
status=0
for p in "$@"; do
  if ! command_of "$p" > /dev/null; then
    echo "unknown part $p (parts: isolated m1..m7 merge)" | tee -a "$LOG"
    status=2
    continue
  fi
  if [ "$PARTS" != "$SAVED" ]; then  # resume from what earlier calls brought back
    for f in "$SAVED/$p.json" "$SAVED/$(basename "$ISOLATED")"; do
      if [ -f "$f" ] && [ ! -f "$PARTS/$(basename "$f")" ]; then cp "$f" "$PARTS/"; fi
    done
  fi
  if [ "$p" = isolated ] && [ -f "$ISOLATED" ]; then  # the mixes' SLOs must not change under them
    echo "== isolated: $ISOLATED exists; delete it to measure again" | tee -a "$LOG"
    continue
  fi
  mapfile -t cmd < <(command_of "$p")
  if [[ $p == m* ]] && [ ! -f "$ISOLATED" ]; then  # without the isolated part, a mix measures its own
    mapfile -t cmd < <(without_isolated "${cmd[@]}")
  fi
  left=$((DEADLINE - $(date +%s)))
  if [ "$p" != merge ] && [ "$left" -lt 30 ]; then
    echo "== $p: not started, ${left}s of the budget left" | tee -a "$LOG"
    continue
  fi
  echo "== $p: ${cmd[*]}" | tee -a "$LOG"
  t0=$(date +%s)
  if [ "$p" = merge ]; then
    "${cmd[@]}" 2>&1 | tee -a "$LOG"
  else  # SIGTERM (the budget's end, with a margin) lets the harness stop the MPS daemon and its clients
    timeout -s TERM -k 20 $((left + 30)) "${cmd[@]}" 2>&1 | tee -a "$LOG"
  fi
  rc=${PIPESTATUS[0]}
  echo "== $p: rc=$rc in $(($(date +%s) - t0))s" | tee -a "$LOG"
  if [ "$rc" -ne 0 ]; then status=$rc; fi
done
exit $status
