#!/usr/bin/env bash
# Gather what `make gpu-check` installs on a GPU machine that has no network: the pure-Python
# OpenMMLab packages (and the few compiled ones they need) as wheels for that machine's Python,
# plus the mmcv sdist, into one folder. Run it on a connected machine; carry the folder over.
#
# Usage: tools/gpu_wheelhouse.sh [DIR]        (default DIR: .wheelhouse-gpu)
# Environment:
#   GPU_PYTHON_VERSION   the GPU machine's Python, e.g. 3.12 (default: 3.12)
#   PYTHON               the interpreter that runs pip here (default: .venv/bin/python, else python3)
# Versions come from requirements/constraints.txt, the same lock the CPU setup uses. torch,
# numpy, opencv and the other large packages are not gathered: the GPU machine's own are used.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-.wheelhouse-gpu}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"
# the repo venv has setuptools and wheel, which preparing the mmcv sdist's metadata needs
if [[ -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; fi
PYTHON="${PYTHON:-python3}"
LOCK="$ROOT/requirements/constraints.txt"
# What a CUDA image with torch, numpy, opencv, matplotlib, scipy, rich, pyyaml and
# huggingface_hub lacks to run mmdet / mmseg / mmpretrain and this toolkit.
PACKAGES=(setuptools mmengine mmdet mmsegmentation mmpretrain timm addict yapf platformdirs tomli termcolor
          terminaltables pycocotools shapely ftfy wcwidth prettytable model-index click markdown mat4py ordered-set
          importlib_metadata lazy-importer zipp)
pin() {  # the lock's version of a package, or the bare name if the lock has none
  local line
  line="$(grep -i "^$1==" "$LOCK" || true)"
  printf '%s\n' "${line:-$1}"
}
mkdir -p "$DIR"
for pkg in "${PACKAGES[@]}"; do
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$DIR" "$(pin "$pkg")"
done
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  --no-build-isolation -d "$DIR" "$(pin mmcv)"
echo "wheelhouse for Python $PY_VERSION in $DIR:"; ls "$DIR"
