#!/usr/bin/env bash
# The serving-overhead benchmark (benchmarks/serve_overhead.py) on the GPU machine, which has torch but
# neither Ray Serve nor a package registry: its wheels travel with the working tree, in pieces.
#
# A call to the device machine carries at most 64 MiB: the working tree (about 34 MB now, 30 MB of it
# benchmarks/profiles) plus the carried paths. The ray wheel alone is about 79 MB, so it is split into
# chunks that each fit beside the tree, carried one per call, back to back (the machine stays warm for
# 30 s after a call and keeps what earlier calls carried), and joined again with cat on the machine.
#
# 1. Here, on a connected machine, from the repository root (once):
#        echo /.whl/ >> .git/info/exclude
#        bash scripts/gpu_serve_overhead.sh prepare          # -> .whl/1 .whl/2 ... and the number of calls
#    It downloads ray[serve] and what it needs for CPython 3.12 on manylinux x86_64, drops the wheels of
#    packages the GPU image already has (KINDS.md), and cuts every file larger than CHUNK_MB (default 30;
#    the tree's size plus CHUNK_MB MiB must stay under 64 MiB) into pieces, one per folder .whl/1 ...
#    .whl/N; the last, smallest piece also holds the small wheels, SHA256SUMS and PIECES. With the tree
#    at 34 MB and ray 2.60's 79.3 MB wheel that is 3 calls (30 + 30 + 15.6 MiB); with a tree under
#    25 MB and CHUNK_MB=40, 2 calls (ray in two chunks).
# 2. On the device machine, calls back to back, each carrying one folder (the device tool's `run`):
#        run(carry=[".whl/1"], command="bash scripts/gpu_serve_overhead.sh stash 1")
#        run(carry=[".whl/2"], command="bash scripts/gpu_serve_overhead.sh stash 2")      # ... up to N-1
#        run(carry=[".whl/N"], command="bash scripts/gpu_serve_overhead.sh run N")
#    `stash K` copies .whl/K to /tmp/eclip-wheels; `run N` stashes the last piece, joins the pieces
#    (cat, then sha256 against SHA256SUMS: a piece missing fails here), installs with
#    scripts/install_offline.sh (torch, torchvision and numpy stay as they are), then runs
#        python3 benchmarks/serve_overhead.py --backend cuda ...   (the command line below)
#    writing serve_overhead.json, serve_overhead.md and the logs under $OUT. If the machine went back
#    between calls (more than 30 s idle), `run` fails on the count or the checksum: start again at step 2.
# 3. Here: copy serve_overhead.json and .md to benchmarks/results/h100/ and commit them.
# `pieces DIR` and `join N` are the halves of prepare and run (WHL, STASH and CHUNK_MB may be set to try them).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STASH=${STASH:-/tmp/eclip-wheels}
WHL=${WHL:-$ROOT/.whl}
CHUNK_MB=${CHUNK_MB:-30}
# Packages the GPU image already has (KINDS.md, "Python packages already there"): not carried. If pip there
# wants a newer version of one of them, take its name out and prepare again.
HAVE="aiofiles aiohappyeyeballs aiohttp aiosignal annotated_doc anyio attrs certifi charset_normalizer click
cloudpickle filelock frozenlist fsspec grpcio h11 httpcore httpx idna jinja2 markupsafe msgpack multidict numpy
packaging pillow prometheus_client propcache protobuf psutil pyyaml requests rich six typing_extensions urllib3
uvloop yarl pygments markdown_it_py mdurl shellingham typer wrapt zipp setuptools wheel pip tqdm"
BENCH=(python3 benchmarks/serve_overhead.py --backend cuda --models resnet50 bert-base --batch-sizes 1 8
  --clients 1 --warmup-s 2 --duration-s 5 --http-client requests)

prepare() {
  local dl="$WHL/download"
  rm -rf "$WHL" && mkdir -p "$dl"
  python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$dl" "ray[serve]>=2.40" "fastapi>=0.110" "pydantic>=2.6"
  for w in "$dl"/*.whl; do
    name=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
    if grep -qw -- "$name" <<< "$HAVE"; then rm "$w"; fi
  done
  pieces "$dl"
}

pieces() {  # pieces DIR: every piece of a big wheel into a folder of its own, .whl/1 ... .whl/N; the small
            # wheels, SHA256SUMS and PIECES (N) go with the last, the smallest piece
  local dl=$1 n=0 w p
  for w in "$dl"/*.whl; do
    if (( $(stat -c %s "$w") > CHUNK_MB * 1048576 )); then
      split -b "${CHUNK_MB}M" -d -a 2 "$w" "$w.part"
    fi
  done
  (cd "$dl" && sha256sum ./*.whl > SHA256SUMS)
  for p in "$dl"/*.part*; do
    [[ -e $p ]] || break
    rm -f "${p%.part*}"
    n=$((n + 1)); mkdir -p "$WHL/$n"; mv "$p" "$WHL/$n/"
  done
  n=$((n > 0 ? n : 1)); mkdir -p "$WHL/$n"
  echo "$n" > "$dl/PIECES"
  mv "$dl"/* "$WHL/$n/"
  rmdir "$dl"
  du -sh "$WHL"/*
  echo "carry them in $n calls: stash 1 ... stash $((n - 1)), then run $n (see this script's header)"
}

stash() {
  mkdir -p "$STASH"
  cp "$WHL/$1"/* "$STASH/"
  echo "piece $1 stashed in $STASH"
}

join() {  # join N: the stashed pieces back into whole, checked wheels
  local want part whl
  want=$(cat "$STASH/PIECES" 2>/dev/null || echo "?")
  [[ $want == "$1" ]] || { echo "the count of pieces is $want, this is $1: start again" >&2; exit 3; }
  for part in "$STASH"/*.part00; do
    [[ -e $part ]] || break
    whl=${part%.part00}
    cat "$whl".part* > "$whl" && rm "$whl".part*  # a missing piece fails the checksum below
  done
  (cd "$STASH" && sha256sum --quiet -c SHA256SUMS) || { echo "a wheel did not join whole: start again" >&2; exit 4; }
}

run() {
  stash "$1"
  join "$1"
  OUT=${OUT:-/tmp/eclip-out}
  mkdir -p "$OUT"
  bash "$ROOT/scripts/install_offline.sh" "$STASH" 2>&1 | tail -5 | tee "$OUT/install.log"
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/versions.txt" 2>&1 || true
  echo "${BENCH[*]} --out \$OUT/serve_overhead.json" >> "$OUT/versions.txt"
  (cd "$ROOT" && timeout 520 "${BENCH[@]}" --out "$OUT/serve_overhead.json" 2>&1 | tee "$OUT/serve_overhead.log" \
    | grep -v -E '^\(|INFO')
}

case ${1:-} in
  prepare) prepare ;;
  stash) stash "${2:?stash K}" ;;
  pieces) pieces "${2:?pieces DIR}" ;;
  join) join "${2:?join N}" ;;
  run) run "${2:?run N: the number of the last piece}" ;;
  *) sed -n '2,/^set /p' "$0" | sed '$d'; exit 2 ;;
esac
