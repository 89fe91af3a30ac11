#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the pinned OpenMMLab stack.
#
# Usage: tools/setup_env.sh [--mmcv-only]
#   --mmcv-only   only the mmcv step (cached wheel, or download/patch/build/cache), into an
#                 existing venv; the test suite drives the build branch through this
#
# mmcv 2.1.0 has no wheels for torch 2.14, so it is built from its sdist, with the C++ standard
# raised from C++17 to C++20 (torch >= 2.13 headers refuse older standards). The built wheel is
# cached outside the repo, keyed by mmcv, torch and Python versions and CPU/CUDA, so the second
# setup on a machine takes seconds instead of ~11-16 minutes.
# Every package version comes from requirements/constraints.txt (the lock; see README.md); the
# package's own dependencies (setup.py) are the ranges in requirements/runtime.txt and mminstall.txt.
#
# Environment (relative paths are taken from the directory you run this from):
#   VENV              venv location (default: <repo>/.venv)
#   PYTHON            interpreter used to create the venv (default: python3)
#   MMCV_WHEEL_CACHE  where built mmcv wheels are kept (default: ~/.cache/metaformer-dense/wheels)
#   MMCV_SDIST        a local mmcv sdist (.tar.gz) to build instead of downloading one from PyPI
#   WHEELHOUSE        a folder of wheels to install from with no network (pip --no-index)
#   MAX_JOBS          parallel compile jobs for the mmcv build (default: number of cores)
#   FORCE_CUDA=1      build mmcv's CUDA kernels too (needs nvcc; set TORCH_CUDA_ARCH_LIST)
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
# An absolute path for a path given relative to the caller's working directory. It must be
# resolved before anything changes directory (the mmcv build does).
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

MODE=all
case "${1:-}" in
  '') ;;
  --mmcv-only) MODE=mmcv ;;
  -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (usage: tools/setup_env.sh [--mmcv-only])" ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(abspath "${VENV:-$ROOT/.venv}")"
PYTHON="${PYTHON:-python3}"
CACHE_ROOT="$(abspath "${MMCV_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metaformer-dense/wheels}")"
SDIST="${MMCV_SDIST:+$(abspath "$MMCV_SDIST")}"
WHEELHOUSE="${WHEELHOUSE:+$(abspath "$WHEELHOUSE")}"
LOCK="$ROOT/requirements/constraints.txt"
STAMP="$VENV/.setup-stamp"
PY="$VENV/bin/python"
# The one place the mmcv version is named: the lock.
MMCV_VERSION="$(sed -n 's/^mmcv==\([^ ]*\).*/\1/p' "$LOCK")"
[[ -n "$MMCV_VERSION" ]] || die "requirements/constraints.txt names no 'mmcv==' version"

# pip install against the lock, minus one harmless warning some machines' pip configs print per
# package (an extra index folder that lacks the package); pipefail keeps pip's own exit status.
pip_install() {
  local offline=()
  [[ -n "$WHEELHOUSE" ]] && offline=(--no-index --find-links "$WHEELHOUSE")
  "$PY" -m pip install --disable-pip-version-check -q -c "$LOCK" "${offline[@]}" "$@" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

# ---- mmcv: installed already, a cached wheel, or build one -----------------------------------
install_mmcv() {
  [[ -x "$PY" ]] || die "no Python at $PY: create the venv first (run tools/setup_env.sh without --mmcv-only)"
  local key wheel_dir src start
  # Installed in this venv (not merely importable from somewhere else on sys.path)?
  if "$PY" - "$MMCV_VERSION" <<'PY' 2>/dev/null
import os, sys
import mmcv, mmcv.ops
assert mmcv.__version__ == sys.argv[1]
assert os.path.realpath(mmcv.__file__).startswith(os.path.realpath(sys.prefix) + os.sep)
PY
  then
    log "mmcv $MMCV_VERSION with compiled ops already installed"
    return
  fi
  key="$("$PY" - "$MMCV_VERSION" <<'PY'
import os, sys, torch
cuda = 'cuda' if torch.cuda.is_available() or os.environ.get('FORCE_CUDA') == '1' else 'cpu'
torch_version = torch.__version__.split('+')[0]
print(f"mmcv-{sys.argv[1]}_torch-{torch_version}_cp{sys.version_info[0]}{sys.version_info[1]}_{cuda}")
PY
)"
  wheel_dir="$CACHE_ROOT/$key"
  if ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
    log "using cached mmcv wheel from $wheel_dir"
  else
    build="$(mktemp -d)"
    trap 'rm -rf "${build:-}"' EXIT
    log "no cached mmcv wheel for $key"
    if [[ -n "$SDIST" ]]; then
      [[ -f "$SDIST" ]] || die "MMCV_SDIST=$SDIST is not a file"
      cp "$SDIST" "$build/"
    else
      "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
          --no-build-isolation "mmcv==$MMCV_VERSION" -d "$build" \
        || die "could not download the mmcv $MMCV_VERSION sdist from PyPI (no network? put it in MMCV_SDIST=path)"
    fi
    tar -xzf "$build"/mmcv-*.tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    [[ -f "$src/setup.py" ]] || die "the mmcv sdist did not unpack to mmcv-$MMCV_VERSION/setup.py"
    # torch >= 2.13 headers need C++20; mmcv's setup.py forces -std=c++17 for its C++ sources.
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/setup.py"
    grep -q "'-std=c++20'" "$src/setup.py" || die "the C++ standard patch did not apply to mmcv's setup.py"
    log "building mmcv $MMCV_VERSION from source: about 11-16 minutes on 2 cores (once per machine)"
    start=$SECONDS
    if ! (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
          "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps -w "$build/dist" . \
          > "$build/build.log" 2>&1); then
      tail -n 40 "$build/build.log" >&2
      die "mmcv build failed (last 40 lines above; compiler, torch headers or disk space are the usual causes)"
    fi
    mkdir -p "$wheel_dir"
    cp "$build"/dist/mmcv-*.whl "$wheel_dir/"
    log "mmcv built in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s; cached at $wheel_dir"
  fi
  pip_install --no-deps "$wheel_dir"/mmcv-*.whl
  "$PY" -c "import mmcv.ops" || die "mmcv was installed from $wheel_dir but 'import mmcv.ops' fails"
}

if [[ "$MODE" == mmcv ]]; then
  install_mmcv
  exit 0
fi

# The stamp records the exact inputs; if they have not changed, there is nothing to do.
# (every requirements file, and what the editable install's metadata is made from).
want_stamp="$(cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$ROOT/metaformer_dense/version.py" \
              "$ROOT/tools/setup_env.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  log "environment at $VENV is up to date"
  exit 0
fi

if [[ ! -x "$PY" ]]; then
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a venv with $PYTHON (is the venv module installed?)"
fi

log "installing torch and build tools (torch is a large download the first time)"
pip_install --upgrade pip setuptools wheel ninja
pip_install -r "$ROOT/requirements/runtime.txt"
install_mmcv
pip_install -r "$ROOT/requirements/tests.txt" -r "$ROOT/requirements/tools.txt"
pip_install --no-deps -e "$ROOT"
# The lock must satisfy the ranges the package declares (requirements/runtime.txt, mminstall.txt).
"$PY" -m pip check --disable-pip-version-check \
  || die "the lock (requirements/constraints.txt) breaks a declared requirement (above)"
"$PY" -c "import mmcv.ops, mmdet, mmseg, timm, mmdet_plugin, mmseg_plugin" \
  || die "the environment was installed but imports fail (see the traceback above)"
echo "$want_stamp" > "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
