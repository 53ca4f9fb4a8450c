#!/usr/bin/env bash
# eclip_ray's serving path (Ray Serve, HTTP, the GPU actors) on the GPU machine, which has torch but neither
# Ray Serve nor a package registry: the wheels travel with the working tree, in pieces.
#
# A call to the device machine carries at most 64 MiB: the working tree (about 34 MB, 30 MB of it
# benchmarks/profiles) plus the carried paths. Ray's wheel is 79 MB; 32 MB of it is ray/jars (the Java
# worker, which a Python-only cluster never starts), so `prepare` repacks the wheel without ray/jars and the
# dashboard's source maps (RECORD rewritten to match; nothing else changes) and packs every wheel into
# folders .whl/1 ... .whl/N of at most CHUNK_MB MiB each, cutting a file larger than that into pieces.
#
# 1. Here, on a connected machine, from the repository root (once; .whl/ is in .gitignore):
#        bash scripts/gpu_serve.sh prepare          # -> .whl/1 ... .whl/N and the number of calls
#    It downloads ray[serve], fastapi, pydantic and tritonclient[http] for CPython 3.12 on manylinux
#    x86_64 and drops the wheels of packages the GPU image already has (KINDS.md).
# 2. On the device machine, calls back to back, each carrying one folder (the device tool's `run`):
#        run(carry=[".whl/1"], command="bash scripts/gpu_serve.sh stash 1")      # ... up to N-1
#        run(carry=[".whl/N"], command="bash scripts/gpu_serve.sh run N STEP...")
#        run(command="bash scripts/gpu_serve.sh steps STEP...")                  # more, on the warm machine
#    `stash K` copies .whl/K to /tmp/eclip-wheels; `run N` stashes the last folder, joins the pieces (cat,
#    then sha256 against SHA256SUMS: a piece missing fails here), installs with scripts/install_offline.sh
#    (torch, torchvision and numpy stay as they are) and runs the steps. The machine stays warm for 30 s
#    after a call and keeps what earlier calls stashed and installed; if it went back, `run` fails on the
#    count or the checksum and `steps` on the import of ray: start again at step 2.
#    Steps (each under its own time limit, logs in $OUT/work, packed into $OUT/results.tgz):
#      app        the README's main job (`eclip-ray serve`), then its curl line, examples/client.py
#                 (tritonclient.http and JSON) and Ray's Prometheus export
#      placement  benchmarks/serve_placement.py on 1 and 2 GPUs (needs two GPUs)
#      overhead   benchmarks/serve_overhead.py at batch 1 and 8
#      ingress    benchmarks/serve_load.py: the capacity of the example's resnet50 with 1 and 4 ingress replicas
#      load       benchmarks/serve_load.py: resnet50 of the example at 2x its capacity, open loop
#      kill       benchmarks/serve_load.py at 1x with the GPU actor killed 5 s in: time to recover
#      fault      tests/gpu/test_context_probe_gpu.py (the context probe, in a child process) and
#                 tests/gpu/test_serve_fault_gpu.py (benchmarks/serve_fault.py): bert-base token ids out of range
#                 get 400 beside resnet50, then a device-side assert forced in a user model restarts the GPU
#                 actor under load; fault.json and fault.log (about 100 s)
#      load_before  load with the code in ./before (git archive of an earlier commit), for a before/after
#      soak:S     benchmarks/serve_soak.py for S seconds, RSS and GPU memory sampled
#      soak_start:S, soak_wait:T  the same soak in the background (it outlives the call), and a later call's
#                 wait of up to T s for it: a 10-minute soak does not fit in one call with the app's start
# 3. Here: extract results.tgz and copy the results to benchmarks/results/<card>/serve/.
# `pieces DIR` and `join N` are the halves of prepare and run (WHL, STASH and CHUNK_MB may be set to try them).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STASH=${STASH:-/tmp/eclip-wheels}
WHL=${WHL:-$ROOT/.whl}
CHUNK_MB=${CHUNK_MB:-29}
# Packages the GPU image already has (KINDS.md, "Python packages already there"): not carried. If pip there
# wants a newer version of one of them, take its name out and prepare again (ray 2.60 wanted newer aiohttp
# and, through grpcio-reflection, grpcio than the image had on 2026-11-28).
HAVE="aiofiles aiohappyeyeballs aiosignal annotated_doc anyio attrs certifi charset_normalizer click
cloudpickle filelock frozenlist fsspec h11 httpcore httpx idna jinja2 markupsafe msgpack multidict numpy
packaging pillow prometheus_client propcache protobuf psutil pyyaml requests rich six typing_extensions urllib3
uvloop yarl pygments markdown_it_py mdurl shellingham typer wrapt zipp setuptools wheel pip tqdm ml_dtypes"

prepare() {
  local dl="$WHL/download"
  rm -rf "$dl" "$WHL"/[0-9]* && mkdir -p "$dl"  # other wheels in .whl (gpu_session.sh's) stay
  python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --dest "$dl" "ray[serve]>=2.40" "fastapi>=0.110" "pydantic>=2.6" "tritonclient[http]>=2.40"
  for w in "$dl"/*.whl; do
    name=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
    if grep -qw -- "$name" <<< "$HAVE"; then rm "$w"; fi
  done
  slim "$dl"/ray-*.whl
  pieces "$dl"
}

slim() {  # slim WHEEL: the wheel without ray/jars and *.js.map, its RECORD rewritten to match
  python3 - "$1" <<'PY'
import os, sys, zipfile
path = sys.argv[1]
drop = lambda n: n.startswith("ray/jars/") or n.endswith(".js.map")
tmp = path + ".slim"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if drop(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not drop(line.split(",", 1)[0])).encode()
        dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
before, after = os.path.getsize(path), os.path.getsize(tmp)
os.replace(tmp, path)
print(f"{os.path.basename(path)}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB without ray/jars and source maps")
PY
}

pieces() {  # pieces DIR: the wheels (a big one cut into pieces) packed into folders .whl/1 ... .whl/N of at most
            # CHUNK_MB MiB each, largest first; SHA256SUMS and PIECES (N) go with the last folder
  local dl=$1 w
  for w in "$dl"/*.whl; do
    if (( $(stat -c %s "$w") > CHUNK_MB * 1048576 )); then
      split -b "${CHUNK_MB}M" -d -a 2 "$w" "$w.part"
    fi
  done
  (cd "$dl" && sha256sum ./*.whl > SHA256SUMS)
  for w in "$dl"/*.part*; do [[ -e $w ]] && rm -f "${w%.part*}"; done
  python3 - "$dl" "$WHL" "$CHUNK_MB" <<'PY'
import os, shutil, sys
dl, whl, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]) * 2**20
files = sorted((f for f in os.listdir(dl) if f != "SHA256SUMS"), key=lambda f: -os.path.getsize(os.path.join(dl, f)))
bins: list[list] = []  # [bytes, names]
for f in files:  # first fit, largest first
    size = os.path.getsize(os.path.join(dl, f))
    b = next((b for b in bins if b[0] + size <= chunk), None)
    if b is None:
        bins.append(b := [0, []])
    b[0] += size
    b[1].append(f)
bins.sort(key=lambda b: -b[0])  # the last folder, the smallest, also takes SHA256SUMS and PIECES
for n, (_, names) in enumerate(bins, 1):
    os.makedirs(os.path.join(whl, str(n)), exist_ok=True)
    for f in names:
        shutil.move(os.path.join(dl, f), os.path.join(whl, str(n), f))
last = os.path.join(whl, str(len(bins)))
shutil.move(os.path.join(dl, "SHA256SUMS"), os.path.join(last, "SHA256SUMS"))
with open(os.path.join(last, "PIECES"), "w") as f:
    f.write(f"{len(bins)}\n")
PY
  rmdir "$dl"
  du -sh "$WHL"/*
  n=$(cat "$WHL"/*/PIECES)
  echo "carry them in $n calls: stash 1 ... stash $((n - 1)), then run $n (see this script's header)"
}

stash() {
  mkdir -p "$STASH"
  cp "$WHL/$1"/* "$STASH/"
  echo "folder $1 stashed in $STASH"
}

join() {  # join N: the stashed pieces back into whole, checked wheels
  local want part whl
  want=$(cat "$STASH/PIECES" 2>/dev/null || echo "?")
  [[ $want == "$1" ]] || { echo "the count of folders is $want, this is $1: start again" >&2; exit 3; }
  for part in "$STASH"/*.part00; do
    [[ -e $part ]] || break
    whl=${part%.part00}
    cat "$whl".part* > "$whl" && rm "$whl".part*  # a missing piece fails the checksum below
  done
  (cd "$STASH" && sha256sum --quiet -c SHA256SUMS) || { echo "a wheel did not join whole: start again" >&2; exit 4; }
}

export OUT=${OUT:-/tmp/eclip-out}
SOAK=/tmp/eclip-soak  # outside $OUT, which each call empties
W=$OUT/work

step() {  # step NAME LIMIT_S COMMAND...: one step under its limit, its output in $W/NAME.log
  local name=$1 limit=$2 t0 rc; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$W/steps.log"
  t0=$(date +%s)
  set +e
  timeout "$limit" "$@" > "$W/$name.log" 2>&1
  rc=$?
  set -e
  echo "== $name rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$W/steps.log"
  grep -v -E '^\(|^\x1b|INFO|WARNING' "$W/$name.log" | tail -30 || true
}

app() {  # the README's main job on this machine's GPU, and clients against it
  local log=$W/app_serve.log pid
  ray stop --force > /dev/null 2>&1 || true
  eclip-ray serve --metrics-port 8080 > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 400); do
    grep -q "Ctrl-C stops it" "$log" && break
    kill -0 "$pid" 2> /dev/null || break
    sleep 1
  done
  sed -n '/eclip_ray is serving/,/Ctrl-C/p' "$log"
  set +e
  curl -s -o /dev/null -w "ready: HTTP %{http_code}\n" http://127.0.0.1:8000/v2/health/ready
  curl -s http://127.0.0.1:8000/v2/models/resnet50; echo
  eval "$(grep -m1 -E '^  curl .*-d @' "$log")"  # the curl line the banner printed
  python3 "$ROOT/examples/client.py" --url 127.0.0.1:8000 --requests 20
  curl -s http://127.0.0.1:8000/v2/models/stats; echo
  sleep 12  # Ray exports metrics every 10 s, each name prefixed with ray_
  curl -s http://127.0.0.1:8080/metrics | grep -E '^ray_eclip_' | sort | head -80
  set -e
  kill -TERM "$pid"; wait "$pid" || true
  ray stop --force > /dev/null 2>&1 || true
}

steps() {
  mkdir -p "$W"
  export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=32
  python3 -c "import ray, eclip_ray.serve" || { echo "Ray Serve is not installed here: run 'run N' first" >&2; exit 5; }
  trap 'tar czf "$OUT/results.tgz" -C "$W" . ; ls -la "$W"' EXIT
  {
    date -u +%FT%TZ
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,power.limit --format=csv || true
    python3 -c 'import sys, torch, ray, fastapi, pydantic; print("python", sys.version.split()[0], "torch", torch.__version__, "ray", ray.__version__, "fastapi", fastapi.__version__, "pydantic", pydantic.__version__)' || true
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "no git"
  } >> "$W/versions.txt" 2>&1
  local load=(--config deployments/example.yaml --model resnet50 --concurrency 16 --capacity-s 8)
  local soak=(python3 benchmarks/serve_soak.py --config deployments/example.yaml --model resnet50 --warmup-s 60)
  cd "$ROOT"
  for s in "$@"; do
    case $s in
      app) step app 480 bash "$ROOT/scripts/gpu_serve.sh" app ;;
      placement) step placement 560 python3 benchmarks/serve_placement.py --gpus 1 2 --clients 8 --duration-s 15 \
        --out "$W/serve_placement.json" ;;
      overhead) step overhead 560 python3 benchmarks/serve_overhead.py --backend cuda --models resnet50 bert-base \
        --batch-sizes 1 8 --clients 1 --warmup-s 2 --duration-s 5 --out "$W/serve_overhead.json" ;;
      ingress)  # capacity of the example's resnet50 with one ingress replica and with four
        for r in 1 4; do
          step "ingress_$r" 200 python3 benchmarks/serve_load.py "${load[@]}" --ingress-replicas "$r" \
            --load-factor 1 --duration-s 3 --no-slo-check --out "$W/ingress_$r.json"
        done ;;
      load|load:*)  # 2x the capacity the closed loop measures, or 2x CAP req/s with load:CAP
        tag=${s#load}; tag=${tag#:}
        step "load$tag" 300 python3 benchmarks/serve_load.py "${load[@]}" ${tag:+--capacity-rps "$tag"} \
          --load-factor 2 --duration-s 30 --out "$W/load_2x${tag:+_$tag}.json" ;;
      load_before|load_before:*)  # the same with the code in ./before (a `git archive` of an earlier commit:
        # eclip_ray, benchmarks/serve_load.py, deployments), for a before/after on one card in one call. The
        # project is installed editable, so its eclip_ray folder is swapped for the earlier one while it runs
        # (PYTHONPATH does not reach Ray's workers).
        [[ -d $ROOT/before/eclip_ray ]] || { echo "no $ROOT/before" >&2; continue; }
        tag=${s#load_before}; tag=${tag#:}
        mv "$ROOT/eclip_ray" "$ROOT/eclip_ray.after" && cp -r "$ROOT/before/eclip_ray" "$ROOT/eclip_ray"
        step "load_before$tag" 300 python3 before/benchmarks/serve_load.py --config before/deployments/example.yaml \
          "${load[@]:2}" ${tag:+--capacity-rps "$tag"} --load-factor 2 --duration-s 30 --timeout-s 70 \
          --out "$W/load_2x_before${tag:+_$tag}.json"
        rm -rf "$ROOT/eclip_ray" && mv "$ROOT/eclip_ray.after" "$ROOT/eclip_ray" ;;
      kill) step kill 300 python3 benchmarks/serve_load.py "${load[@]}" --load-factor 1 --duration-s 30 \
        --kill-actor-at 5 --no-slo-check --out "$W/kill_recovery.json" ;;
      fault) step fault 170 env ECLIP_FAULT_OUT="$W/fault.json" python3 -m pytest -v -s -p no:cacheprovider \
        tests/gpu/test_context_probe_gpu.py tests/gpu/test_serve_fault_gpu.py ;;
      soak_start:*)  # the soak in its own process session, so that it outlives this call (up to the next)
        mkdir -p "$SOAK"
        setsid nohup timeout $(( ${s#soak_start:} + 240 )) "${soak[@]}" --duration-s "${s#soak_start:}" \
          --out "$SOAK/soak.json" > "$SOAK/soak.log" 2>&1 < /dev/null &
        echo "soak started: pid $!, results in $SOAK" | tee -a "$W/steps.log" ;;
      soak_wait:*)  # wait up to S s for the soak of soak_start, then bring its files back
        for _ in $(seq "${s#soak_wait:}"); do
          pgrep -f benchmarks/serve_soak.py > /dev/null || break
          sleep 1
        done
        if pgrep -f benchmarks/serve_soak.py > /dev/null; then
          echo "soak still running" | tee -a "$W/steps.log"; tail -3 "$SOAK/soak.log"
        else
          cp "$SOAK"/* "$W/" && tail -8 "$W/soak.log"
        fi ;;
      soak:*) step soak $(( ${s#soak:} + 240 )) "${soak[@]}" --duration-s "${s#soak:}" --out "$W/soak.json" ;;
      *) echo "unknown step $s" ;;
    esac
  done
}

install_tritonclient() {  # the example client's HTTP client, if its wheels came
  compgen -G "$STASH/tritonclient-*.whl" > /dev/null || return 0
  # --no-deps: tritonclient pins ml-dtypes<=0.5.4, which the image has newer; its HTTP client does not need it
  python3 -m pip install --no-index --no-deps "$STASH"/{tritonclient,geventhttpclient,gevent,greenlet}-*.whl \
    "$STASH"/{zope_event,zope_interface,brotli,python_rapidjson}-*.whl
}

run() {
  local n=$1; shift
  stash "$n"
  join "$n"
  mkdir -p "$W"
  bash "$ROOT/scripts/install_offline.sh" "$STASH" > "$W/install.log" 2>&1 || { tail -30 "$W/install.log"; exit 6; }
  install_tritonclient >> "$W/install.log" 2>&1
  tail -3 "$W/install.log"
  steps "$@"
}

case ${1:-} in
  prepare) prepare ;;
  slim) slim "${2:?slim WHEEL}" ;;
  stash) stash "${2:?stash K}" ;;
  pieces) pieces "${2:?pieces DIR}" ;;
  join) join "${2:?join N}" ;;
  run) shift; run "${1:?run N STEP...: N is the number of the last folder}" "${@:2}" ;;
  steps) shift; steps "$@" ;;
  app) app ;;  # a step of `steps` (under its time limit)
  *) sed -n '2,/^set /p' "$0" | sed '$d'; exit 2 ;;
esac
