#!/usr/bin/env bash
# Install eclip_ray (with Ray Serve) on a machine that reaches no package registry, from a folder of wheels.
#
#   scripts/install_offline.sh WHEEL_DIR              # on the offline machine, from the repository root
#   scripts/install_offline.sh --download WHEEL_DIR   # on a connected machine with the same OS, CPU and Python
#
# The preinstalled torch (and torchvision, numpy) is never replaced: they are pinned to the installed
# versions while the missing dependencies (ray[serve], fastapi, pydantic, ...) come from WHEEL_DIR only,
# and the project itself goes in with --no-deps. A dependency the folder lacks is an error, not a download.
set -euo pipefail
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# What the serve extra needs beyond what the GPU machine has (docs/hardware.md section 7).
SERVE_DEPS=("ray[serve]>=2.40" "fastapi>=0.110" "pydantic>=2.6" "pyyaml>=6" "tqdm>=4.66")

if [[ ${1:-} == "--download" ]]; then
  dir=${2:?usage: $0 --download WHEEL_DIR}
  # torch is left out on purpose: the target machine has its own CUDA build.
  "$PY" -m pip download --only-binary=:all: --dest "$dir" "${SERVE_DEPS[@]}"
  echo "wheels in $dir: copy the folder to the offline machine and run $0 $dir there"
  exit 0
fi

wheels=${1:?usage: $0 WHEEL_DIR   (or: $0 --download WHEEL_DIR on a connected machine)}
[[ -d $wheels ]] || { echo "no wheel folder at $wheels" >&2; exit 2; }

pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
"$PY" - "$pins" <<'PY'
import importlib.metadata as md, sys
with open(sys.argv[1], "w") as f:
    for name in ("torch", "torchvision", "numpy"):
        try:
            f.write(f"{name}=={md.version(name)}\n")
        except md.PackageNotFoundError:
            pass
PY
echo "keeping: $(tr '\n' ' ' < "$pins")"

"$PY" -m pip install --no-index --find-links "$wheels" --constraint "$pins" "${SERVE_DEPS[@]}"
"$PY" -m pip install --no-index --no-deps --no-build-isolation -e "$ROOT"
"$PY" - <<'PY'
import ray, fastapi, pydantic, torch
import eclip_ray.serve
print(f"eclip_ray installed: ray {ray.__version__}, fastapi {fastapi.__version__}, pydantic {pydantic.__version__}, "
      f"torch {torch.__version__} (unchanged)")
PY
