#!/usr/bin/env bash
# Issue 14's benchmark on one GPU (H200 by default): the MPS check, regimes A and B on the heterogeneous
# mixes H1-H4, a re-run of regime C (the paper's M1-M7), each step one `eclip-ray bench` command that
# rewrites its part file after every result, all under one time budget. Runs with PYTHONPATH=. (no Ray,
# no pydantic needed).
#
#   bash scripts/gpu_bench.sh                 # list the steps, their commands and estimated seconds
#   bash scripts/gpu_bench.sh mps4 ab         # device call 1 (9.5 min): the MPS check, then A and B
#   bash scripts/gpu_bench.sh ab c            # device call 2: what call 1 left of A and B (resumed), regime C
#   bash scripts/gpu_bench.sh merge           # here, no GPU: summary.json, README.md tables, plots/
#
# Steps:
#   mps4   four MPS clients (mobilenet_v3_large x 4, equal shares), Poisson at one rate per client:
#          the two MPS bugs seen on the H200 (a client out of memory at set_device from the fourth on;
#          "2 Poisson rates for 1 instances"); prints PASS or FAIL.
#   ab     regimes A and B on H1-H4, SLO = $SLO x the isolated p99; policies in order of importance
#          (multi-stream, eclip, stream-priority, model-wise, then mps-equal and mps on clients started
#          once), and the nested plan resnet50=whole,vgg19=112 on H1. eclip (issue 15's adaptive policy)
#          measures its candidates at every load level of every search, within ECLIP_SELECTION_S (3) s
#          of trials per level ("default": the policy's own 10 s).
#   c      regime C: M1-M7 x the paper's six policies at batch 1, closed loop, one request in flight.
#   merge  all part files of $SAVED into $RESULTS/summary.json, README.md and plots/.
#
# Time: every step gets at most STEP_MAX seconds of what is left of BUDGET_S (default 570 s, under the
# device's 10-minute limit per command), passed to the harness as --deadline; the harness shares it among
# its jobs (each policy of each mix, in order) and stops a load search that would overrun, saying so. A step run
# again (its part copied back into $SAVED) keeps what it measured and runs what is missing (--resume).
# With $OUT set (the device machine), parts and logs go to $OUT, packed into $OUT/gpu_bench.tgz too.
# Settings (environment): CARD, PROFILES (default h100: complete at batch 1/4/8/16, 132 SMs like the
# H200; e.g. PROFILES=h200,h100 takes the H200's where they exist), SLO, STEPS, STEP_S, STEP_WARMUP_S,
# FINAL_S, C_WINDOW_S, C_WARMUP_S, ISOLATED_S, WARMUP_S, BACKEND and PYTHON (BACKEND=cpu runs the same
# commands on the CPU backend: only mps4 is quick there; the tests cover the harness with tiny models).
# To spend less: STEPS=3 (about a minute less for ab), ISOLATED_S=1.5, ECLIP_SELECTION_S=2.
set -uo pipefail
cd "$(dirname "$0")/.."
CARD=${CARD:-h200}
RESULTS=${RESULTS:-benchmarks/results/$CARD/bench}
SAVED=$RESULTS/parts
PARTS=${OUT:-$SAVED}
BUDGET_S=${BUDGET_S:-570}
DEADLINE=$(($(date +%s) + BUDGET_S))
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# 32 hardware work queues for every in-process policy, set before any process starts CUDA
# (partition/cuda.py); the MPS clients ask for 4 each whatever this says (bench/mps.py).
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-32}
BACKEND=${BACKEND:-cuda} PROFILES=${PROFILES:-h100} SLO=${SLO:-3} ECLIP_SELECTION_S=${ECLIP_SELECTION_S:-3}
STEPS=${STEPS:-4} STEP_S=${STEP_S:-0.8} STEP_WARMUP_S=${STEP_WARMUP_S:-0.25} FINAL_S=${FINAL_S:-2}
C_WINDOW_S=${C_WINDOW_S:-2} C_WARMUP_S=${C_WARMUP_S:-0.5} ISOLATED_S=${ISOLATED_S:-2} WARMUP_S=${WARMUP_S:-0.5}
AB_POLICIES=(multi-stream eclip stream-priority model-wise mps-equal mps)
C_POLICIES=(time-share multi-stream model-wise mps kw-prealloc eclip)
# Seconds each step may take at most (its estimate plus a margin); the budget's rest is shared in order.
declare -A STEP_MAX=([mps4]=60 [ab]=540 [c]=270)
declare -A ESTIMATE=([mps4]=25 [ab]=520 [c]=215)

command_of() {  # the command of step $1, one word per line
  local common=(--backend "$BACKEND" --profiles "$PROFILES" --isolated-s "$ISOLATED_S" --seed 0 --resume)
  local selection=()
  if [ "$ECLIP_SELECTION_S" != default ]; then selection=(--eclip-selection-s "$ECLIP_SELECTION_S"); fi
  case $1 in
    mps4)
      printf '%s\n' "$PY" -m eclip_ray.cli bench --models \
        mobilenet_v3_large,mobilenet_v3_large,mobilenet_v3_large,mobilenet_v3_large --label mps4 \
        --policies mps-equal --regimes C --load poisson --rate 100,200,300,400 --window-s 1 \
        --warmup-s "$WARMUP_S" "${common[@]}" --out "$PARTS/mps4.json" ;;
    ab)
      printf '%s\n' "$PY" -m eclip_ray.cli bench --mixes H1 H2 H3 H4 --regimes A B \
        --policies "${AB_POLICIES[@]}" --plan "H1:resnet50=whole,vgg19=112" --slo-factor "$SLO" \
        --search-steps "$STEPS" --step-window-s "$STEP_S" --step-warmup-s "$STEP_WARMUP_S" \
        --final-window-s "$FINAL_S" --warmup-s "$WARMUP_S" "${selection[@]}" "${common[@]}" --out "$PARTS/ab.json" ;;
    c)
      printf '%s\n' "$PY" -m eclip_ray.cli bench --mixes M1 M2 M3 M4 M5 M6 M7 --regimes C \
        --policies "${C_POLICIES[@]}" --load closed --inflight 1 --batch-size 1 --slo-factor "$SLO" \
        --window-s "$C_WINDOW_S" --warmup-s "$C_WARMUP_S" "${selection[@]}" "${common[@]}" --out "$PARTS/c.json" ;;
    merge)
      printf '%s\n' "$PY" -m eclip_ray.cli bench merge "$SAVED"/*.json --out "$RESULTS/summary.json" ;;
    *) return 1 ;;
  esac
}

if [ $# -eq 0 ]; then
  for s in mps4 ab c merge; do
    echo "$s (about ${ESTIMATE[$s]:-0} s): $(command_of "$s" | tr '\n' ' ')"
  done
  exit 0
fi

mkdir -p "$PARTS"
LOG=$PARTS/gpu_bench.log
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader 2>&1;
  git rev-parse HEAD 2>/dev/null; } >> "$LOG"
if [ -n "${OUT:-}" ]; then
  trap 'tar czf "$OUT/gpu_bench.tgz" -C "$PARTS" --exclude gpu_bench.tgz . 2>/dev/null' EXIT
fi
status=0
for s in "$@"; do
  if ! command_of "$s" > /dev/null; then
    echo "unknown step $s (steps: mps4 ab c merge)" | tee -a "$LOG"
    status=2
    continue
  fi
  if [ "$PARTS" != "$SAVED" ] && [ -f "$SAVED/$s.json" ] && [ ! -f "$PARTS/$s.json" ]; then
    cp "$SAVED/$s.json" "$PARTS/"  # resume from what an earlier call brought back
  fi
  mapfile -t cmd < <(command_of "$s")
  left=$((DEADLINE - $(date +%s)))
  if [ "$s" = merge ]; then
    "${cmd[@]}" 2>&1 | tee -a "$LOG"
    continue
  fi
  max=${STEP_MAX[$s]}
  limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 20 ]; then
    echo "== $s: not started, ${left}s of the budget left" | tee -a "$LOG"
    continue
  fi
  echo "== $s (${limit}s of ${left}s left): ${cmd[*]}" | tee -a "$LOG"
  t0=$(date +%s)
  # SIGTERM (the limit's end, with a margin) lets the harness stop the MPS daemon and its clients.
  timeout -s TERM -k 20 $((limit + 20)) "${cmd[@]}" --deadline $((t0 + limit)) 2>&1 | tee -a "$PARTS/$s.log"
  rc=${PIPESTATUS[0]}
  echo "== $s: rc=$rc in $(($(date +%s) - t0))s" | tee -a "$LOG"
  if [ "$s" = mps4 ]; then
    "$PY" - "$PARTS/mps4.json" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
doc = json.load(open(sys.argv[1]))
mix = doc["mixes"].get("mps4", {})
scenario = next(iter(mix.get("scenarios", {}).values()), {"policies": {}})
r = scenario["policies"].get("mps-equal", {"status": "not-run", "reason": mix.get("error", "no result")})
ok = r["status"] == "ok" and all(m["requests"] > 0 for m in r["models"].values())
clients = r.get("setup", {}).get("clients", {})
print("mps4:", "PASS" if ok else "FAIL", r["status"], r.get("reason", ""),
      {n: (c.get("work_queues"), c.get("active_thread_percentage")) for n, c in clients.items()},
      {n: m["requests"] for n, m in r.get("models", {}).items()})
sys.exit(0 if ok else 3)
PY
    rc=${PIPESTATUS[0]}
  fi
  if [ "$rc" -ne 0 ]; then status=$rc; fi
done
exit $status
