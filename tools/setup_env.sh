#!/usr/bin/env bash
# Create (or update) the project's virtual environment at .venv/ with the pinned OpenMMLab stack.
#
# mmcv 2.1.0 has no wheels for torch 2.14, so it is built from the PyPI sdist, with the C++
# standard raised from C++17 to C++20 (torch >= 2.13 headers refuse older standards).
# The built wheel is cached outside the repo, keyed by mmcv, torch and Python versions, so the
# second setup on a machine takes seconds instead of ~16 minutes.
#
# Environment:
#   VENV              venv location (default: <repo>/.venv)
#   PYTHON            interpreter used to create the venv (default: python3)
#   MMCV_WHEEL_CACHE  where built mmcv wheels are kept (default: ~/.cache/metaformer-dense/wheels)
#   MAX_JOBS          parallel compile jobs for the mmcv build (default: number of cores)
#   FORCE_CUDA=1      build mmcv's CUDA kernels too (needs nvcc; set TORCH_CUDA_ARCH_LIST)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
MMCV_VERSION=2.1.0
CACHE_ROOT="${MMCV_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metaformer-dense/wheels}"
STAMP="$VENV/.setup-stamp"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# The stamp records the exact inputs; if they have not changed, there is nothing to do.
want_stamp="$(cat "$ROOT/requirements/runtime.txt" "$ROOT/requirements/tests.txt" "$ROOT/setup.py" \
              "$ROOT/tools/setup_env.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  log "environment at $VENV is up to date"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a venv with $PYTHON (is the venv module installed?)"
fi
PY="$VENV/bin/python"
# pip install, minus one harmless warning some machines' pip configs print per package
# (an extra index folder that lacks the package); pipefail keeps pip's own exit status.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

log "installing torch and build tools (torch is a large download the first time)"
pip_install --upgrade pip wheel ninja
pip_install -r "$ROOT/requirements/runtime.txt"

# ---- mmcv: cached wheel, or build it -------------------------------------------------------
key="$("$PY" - <<'PY'
import sys, torch
cuda = 'cuda' if torch.cuda.is_available() or __import__('os').environ.get('FORCE_CUDA') == '1' else 'cpu'
print(f"mmcv-2.1.0_torch-{torch.__version__.split('+')[0]}_cp{sys.version_info[0]}{sys.version_info[1]}_{cuda}")
PY
)"
wheel_dir="$CACHE_ROOT/$key"
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  log "mmcv $MMCV_VERSION with compiled ops already installed"
else
  if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    log "no cached mmcv wheel for $key"
    log "building mmcv $MMCV_VERSION from source: this takes about 16 minutes on 2 cores (once per machine)"
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$build" || die "could not download the mmcv $MMCV_VERSION sdist from PyPI"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch >= 2.13 headers need C++20; mmcv's setup.py forces -std=c++17 for its C++ sources.
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/setup.py"
    grep -q "'-std=c++20'" "$src/setup.py" || die "the C++ standard patch did not apply to mmcv's setup.py"
    start=$SECONDS
    if ! (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
          "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps -w "$build/dist" . \
          > "$build/build.log" 2>&1); then
      tail -n 40 "$build/build.log" >&2
      die "mmcv build failed (last 40 lines above; compiler, torch headers or disk space are the usual causes)"
    fi
    mkdir -p "$wheel_dir"
    cp "$build"/dist/mmcv-*.whl "$wheel_dir/"
    log "mmcv built in $(( (SECONDS - start) / 60 )) min; cached at $wheel_dir"
  else
    log "using cached mmcv wheel from $wheel_dir"
  fi
  pip_install --no-deps "$wheel_dir"/mmcv-*.whl
  pip_install addict packaging pyyaml yapf opencv-python  # mmcv's own runtime deps
fi

pip_install -r "$ROOT/requirements/tests.txt"
pip_install --no-deps -e "$ROOT"
"$PY" -c "import mmcv.ops, mmdet, mmseg, timm, mmdet_plugin, mmseg_plugin" \
  || die "the environment was installed but imports fail (see the traceback above)"
echo "$want_stamp" > "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
