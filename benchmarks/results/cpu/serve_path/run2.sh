#!/usr/bin/env bash
# Second set (after the merge of main): batches under a closed loop of 16 clients spread over two ingress
# replicas (ResNet-18), and the front-bound app at the load that was 2x before (283 req/s), per front.
#   bash benchmarks/results/cpu/serve_path/run2.sh     (BEFORE_PY, BEFORE_TREE as in run.sh)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd)
OUT=$ROOT/benchmarks/results/cpu/serve_path
NOW=${PYTHON:-$ROOT/.venv/bin/python}
BEFORE_PY=${BEFORE_PY:-/tmp/venv-before/bin/python}
BEFORE_TREE=${BEFORE_TREE:-/tmp/eclip-before}
run() {  # run NAME PYTHON ARGS...
  local name=$1 py=$2 cwd=$ROOT; shift 2
  [[ $py == "$BEFORE_PY" ]] && cwd=$BEFORE_TREE
  echo "== $name ($py): serve_load.py $*" | tee -a "$OUT/run2.log"
  (cd "$cwd" && "$py" "$ROOT/benchmarks/serve_load.py" --num-cpus 2 --duration-s 15 --capacity-s 8 "$@" \
    --out "$OUT/$name.json" 2>&1) | grep -E "^(capacity|open loop|batches|PASS|FAIL)" | tee -a "$OUT/run2.log"
}
date -u +%FT%TZ >> "$OUT/run2.log"
for rep in 1 2; do
  busy=(--preset resnet18 --ingress-replicas 2 --concurrency 16 --load-factor 1 --no-slo-check)
  run "r18_busy_two_before_$rep" "$BEFORE_PY" "${busy[@]}"
  run "r18_busy_two_after_$rep" "$NOW" "${busy[@]}"
  same=(--preset tiny-cnn --concurrency 16 --capacity-rps 141.4 --load-factor 2)  # 2x tiny_before_1's capacity
  run "tiny_283_proxy_$rep" "$NOW" "${same[@]}" --front proxy
  run "tiny_283_haproxy_$rep" "$NOW" "${same[@]}" --front haproxy
done
date -u +%FT%TZ >> "$OUT/run2.log"
