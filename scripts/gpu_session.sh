#!/usr/bin/env bash
# One GPU session on the device machine: record the card and versions, then run the steps named
# as arguments, each under its own time limit, logging into $OUT/work; everything is packed
# into $OUT/results.tgz at the end (the device tool returns at most 8 files).
#   steps: tests bench demo power profile:<batch sizes>:<models...> validate[:<connections>:<mixes>]
#          bench:<bench_h100.sh parts> corun gpu_bench:<scripts/gpu_bench.sh steps, e.g. mps4,ab or c>
# profile:1,8,16:resnet50,vgg19 profiles at 8..132 SMs into $W/profiles, starting none past PROFILE_LIMIT - 30 s;
# corun measures co-run tails (benchmarks/corun_tails.py, ~90 s) into corun_tails.json.
# validate:32:M1,M5 runs the cost-model validation of M1 and M5 with CUDA_DEVICE_MAX_CONNECTIONS=32
# ("default" leaves it unset) into validation_c32.json.
set -u
OUT=${OUT:-/tmp/eclip-out}
W=$OUT/work
mkdir -p "$W"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Python packages the GPU machine lacks travel as wheels in .whl/ (run with carry: [".whl"]), e.g. onnx2torch
# for the ONNX GPU tests: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#   --platform manylinux2014_x86_64 -d .whl onnx2torch
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
trap 'tar czf "$OUT/results.tgz" -C "$W" . ; ls -la "$W"' EXIT
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
  python3 -c 'import sys, torch, cuda.bindings, pynvml; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda); print("cuda-bindings", cuda.bindings.__version__); print("nvidia-ml-py", getattr(pynvml, "__version__", "?"))'
  python3 -c 'import torchvision, transformers, scipy; print("torchvision", torchvision.__version__, "transformers", transformers.__version__, "scipy", scipy.__version__)'
  python3 -c 'from cuda.bindings import driver as d; r = d.cuDeviceGetDevResource(d.cuDeviceGet(0)[1], d.CUdevResourceType.CU_DEV_RESOURCE_TYPE_WORKQUEUE_CONFIG) if d.cuInit(0)[0] == 0 else ("no init",); print("workqueue config resource:", r[0])' || true
  git rev-parse HEAD 2>/dev/null || echo "no git"
} > "$W/versions.txt" 2>&1
cat "$W/versions.txt"
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$W/steps.log"
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$W/steps.log"
  tail -25 "$W/$name.log"
}
for s in "$@"; do
  case $s in
    tests) step gpu_tests 240 python3 -m pytest -v -s tests/gpu ;;
    bench) step runtime_bench 200 python3 benchmarks/runtime_bench.py --out "$W/runtime_bench.json" ;;
    demo) step demo 120 python3 -m eclip_ray.cli demo --batch-size 8 ;;
    power) step power 90 python3 -m eclip_ray.cli calibrate-power --out "$W/profiles/power.json" ;;
    profile:*)
      IFS=: read -r _ bs models <<< "$s"
      step "profile_${bs//,/_}" "${PROFILE_LIMIT:-300}" python3 -m eclip_ray.cli profile ${models//,/ } \
        --batch-sizes ${bs//,/ } --out "$W/profiles" --budget-s $(( ${PROFILE_LIMIT:-300} - 30 )) ;;
    corun) step corun_tails 150 python3 benchmarks/corun_tails.py --out "$W/corun_tails.json" --budget-s 90 ;;
    validate:*)
      IFS=: read -r _ conns mixes <<< "$s"
      ( if [ "$conns" = default ]; then unset CUDA_DEVICE_MAX_CONNECTIONS; else export CUDA_DEVICE_MAX_CONNECTIONS=$conns; fi
        step "validate_c$conns" "${VALIDATE_LIMIT:-300}" python3 benchmarks/validate_cost_model.py \
          --profiles benchmarks/profiles/h100 --mixes ${mixes//,/ } --out "$W/validation_c$conns.json" ) ;;
    validate) step validate 200 python3 benchmarks/validate_cost_model.py --profiles benchmarks/profiles/h100 --out "$W/validation.json" ;;
    bench:*)  # parts of scripts/bench_h100.sh, within what is left of SESSION_S (default 480 s)
      left=$(( ${SESSION_S:-480} - SECONDS ))
      mkdir -p "$W/bench"
      parts=${s#bench:}
      ( export OUT=$W/bench BUDGET_S=$left; step "bench_${parts//,/_}" "$left" bash scripts/bench_h100.sh ${parts//,/ } ) ;;
    gpu_bench:*)  # issue 14's benchmark (scripts/gpu_bench.sh), within what is left of SESSION_S (default 570 s)
      left=$(( ${SESSION_S:-570} - SECONDS ))
      mkdir -p "$W/gpu_bench"
      steps=${s#gpu_bench:}
      ( export OUT=$W/gpu_bench BUDGET_S=$left; step "gpu_bench_${steps//,/_}" "$((left + 40))" bash scripts/gpu_bench.sh ${steps//,/ } ) ;;
    *) echo "unknown step $s" ;;
  esac
done
