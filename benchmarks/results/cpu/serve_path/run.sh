#!/usr/bin/env bash
# The serving path before (commit 98e1797, main when issue 16 started) and after, on the CPU backend of this
# 2-core machine, with the same load generator (this tree's benchmarks/serve_load.py) for both. BEFORE_PY is a
# Python whose sys.path puts the 98e1797 tree first (README.md beside this file says how it was made).
#   bash benchmarks/results/cpu/serve_path/run.sh
# It runs from the 98e1797 tree's folder (BEFORE_TREE): Ray puts the driver's folder on its workers' paths.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd)
OUT=$ROOT/benchmarks/results/cpu/serve_path
NOW=${PYTHON:-$ROOT/.venv/bin/python}
BEFORE_PY=${BEFORE_PY:-/tmp/venv-before/bin/python}
BEFORE_TREE=${BEFORE_TREE:-/tmp/eclip-before}
run() {  # run NAME PYTHON ARGS...
  local name=$1 py=$2 cwd=$ROOT; shift 2
  [[ $py == "$BEFORE_PY" ]] && cwd=$BEFORE_TREE
  echo "== $name ($py): serve_load.py $*" | tee -a "$OUT/run.log"
  (cd "$cwd" && "$py" "$ROOT/benchmarks/serve_load.py" --num-cpus 2 --duration-s 15 --capacity-s 8 "$@" \
    --out "$OUT/$name.json" 2>&1) | grep -E "^(capacity|open loop|batches|PASS|FAIL)" | tee -a "$OUT/run.log"
}
date -u +%FT%TZ >> "$OUT/run.log"
for rep in 1 2; do  # twice, interleaved: other jobs share these two cores
  # 1. The HTTP front the bottleneck (tiny-cnn costs next to nothing): one client's latency, capacity, then 2x it.
  tiny=(--preset tiny-cnn --concurrency 16 --overhead-s 3)
  run "tiny_before_$rep" "$BEFORE_PY" "${tiny[@]}"
  run "tiny_proxy_$rep" "$NOW" "${tiny[@]}" --front proxy
  run "tiny_haproxy_$rep" "$NOW" "${tiny[@]}" --front haproxy
  # 2. The model the bottleneck (ResNet-18), one ingress replica: capacity, then 2x it.
  run "r18_before_$rep" "$BEFORE_PY" --preset resnet18
  run "r18_after_$rep" "$NOW" --preset resnet18
  # 3. Batching with requests spread over two ingress replicas, at the same offered load (1x 12 req/s).
  two=(--preset resnet18 --ingress-replicas 2 --capacity-rps 12 --load-factor 1 --no-slo-check)
  run "r18_two_before_$rep" "$BEFORE_PY" "${two[@]}"
  run "r18_two_after_$rep" "$NOW" "${two[@]}"
done
date -u +%FT%TZ >> "$OUT/run.log"
