#!/usr/bin/env bash
# Where the serving path spends its CPU: py-spy (installed with ray[serve]) on every serving process while a
# closed loop of CLIENTS (8) clients drives the example app's resnet50. Run it on the GPU machine once
# scripts/gpu_serve.sh has installed Ray there; the collapsed stacks land in $OUT/work/spy_*.txt
# (benchmarks/results/h200/serve/profile/ holds one run).
set -u
OUT=${OUT:-/tmp/eclip-out}; W=$OUT/work; mkdir -p "$W"; export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=32
ray stop --force >/dev/null 2>&1
eclip-ray serve > "$W/serve.log" 2>&1 &
SP=$!
for _ in $(seq 300); do grep -q "Ctrl-C stops it" "$W/serve.log" && break; sleep 1; done
python3 benchmarks/serve_load.py --url http://127.0.0.1:8000 --config deployments/example.yaml --model resnet50 \
  --concurrency ${CLIENTS:-8} --capacity-s 25 --load-factor 0.5 --duration-s 3 --no-slo-check > "$W/load.log" 2>&1 &
LP=$!
sleep 8
ps -eo pid,pcpu,args | grep -E "ray::|eclip-ray|serve_load" | grep -v grep > "$W/ps.txt"
while read -r pid rest; do
  name=$(echo "$rest" | awk '{print $2}' | tr -c 'A-Za-z0-9_.\n' '_' | cut -c1-40)
  timeout 30 py-spy record -r 100 -d 10 -f raw --nonblocking -o "$W/spy_${name}_$pid.txt" -p "$pid" > "$W/spy_${name}_$pid.log" 2>&1 &
done < <(ps -eo pid,args | grep -E "ray::(ServeReplica|ProxyActor|GpuWorker)" | grep -v grep)
wait $LP
sleep 1
top -b -n 1 | head -40 > "$W/top.txt"
kill -TERM $SP; wait $SP
ray stop --force >/dev/null 2>&1
cat "$W/ps.txt"; tail -5 "$W/load.log"; ls -la "$W"
tar czf "$OUT/results.tgz" -C "$W" .
