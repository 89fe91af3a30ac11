#!/usr/bin/env bash
# `make gpu-check`: the toolkit's CUDA path on a GPU machine, with no network needed.
#
#  1. a venv that uses the machine's own CUDA torch (and numpy, opencv, ...), plus the wheels of
#     WHEELHOUSE (made by tools/gpu_wheelhouse.sh on a connected machine), installed offline;
#  2. mmcv built with its CUDA kernels (FORCE_CUDA=1, the GPU's arch) by tools/setup_env.sh;
#  3. tests/test_gpu.py on the GPU (backbone CUDA vs CPU, mmcv CUDA NMS/RoIAlign, RetinaNet and
#     Mask R-CNN training steps, fp16/bf16 training without NaN), then the rest of the suite;
#  4. benchmarks/speed.py on CUDA into benchmarks/results/speed_cuda.{md,json};
#  5. benchmarks/studies/train_step.py on CUDA (lean blocks vs timm modules, NHWC vs NCHW: time, peak
#     memory, gradients) into benchmarks/studies/results/train_step_cuda.{md,json}.
# The record of the run goes to benchmarks/results/gpu_check.md.
#
# `make gpu-quick` (STEPS="norm-tests profile backbone-speed") needs no mmcv, so no 4-6 minute
# build: the CUDA path's tests (tests/test_gpu.py -k "group_norm1 or cuda_path or cuda_graph",
# then tests/test_group_norm.py, tests/test_cuda_path.py and tests/test_cuda_graphs.py), the
# kernel-table profile
# (benchmarks/studies/profile_norms.py -> benchmarks/studies/results/profile_norms_cuda.{md,json})
# and the backbone speed comparison without the detector (benchmarks/speed.py: S12 and M48 at
# 800x1216, batch 1 forward, batch 2 forward+backward, fp32 and bf16 autocast, mmpretrain where it
# imports -> benchmarks/results/speed_cuda_backbone.{md,json}); its record is
# benchmarks/results/gpu_quick.md.
#
# Environment:
#   WHEELHOUSE    folder from tools/gpu_wheelhouse.sh (required); it holds the mmcv sdist too
#   PYTHON        the interpreter whose torch sees the GPU (default: python3)
#   VENV          where the venv goes (default: <repo>/.venv-gpu)
#   STEPS         which of: build tests suite speed train-step (default: all five), and
#                 norm-tests profile backbone-speed (the quick steps; none of them needs mmcv)
#   SPEED_ARGS    extra arguments for benchmarks/speed.py
set -euo pipefail
log() { printf '[gpu-check] %s\n' "$*"; }
die() { printf '[gpu-check] ERROR: %s\n' "$*" >&2; exit 1; }
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -n "${WHEELHOUSE:-}" ]] || die "set WHEELHOUSE to the folder tools/gpu_wheelhouse.sh made"
WHEELHOUSE="$(abspath "$WHEELHOUSE")"
[[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE=$WHEELHOUSE is not a folder"
PYTHON="${PYTHON:-python3}"
VENV="$(abspath "${VENV:-$ROOT/.venv-gpu}")"
STEPS="${STEPS:-build tests suite speed train-step}"
PY="$VENV/bin/python"
has_step() { [[ " $STEPS " == *" $1 "* ]]; }
needs_mmcv() { has_step tests || has_step suite || has_step speed || has_step train-step; }
RECORD="$ROOT/benchmarks/results/gpu_check.md"
needs_mmcv || has_step build || RECORD="$ROOT/benchmarks/results/gpu_quick.md"

"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || die "$PYTHON's torch sees no CUDA GPU (nvidia-smi? a CUDA build of torch?)"

if [[ ! -x "$PY" ]]; then
  log "creating $VENV on top of $PYTHON's packages"
  "$PYTHON" -m venv --without-pip "$VENV"
  # The machine's own torch, numpy, pip, ... stay visible; what the venv installs comes first.
  "$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' \
    > "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_machine_packages.pth"
fi
log "installing the wheels of $WHEELHOUSE (no network)"
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps "$WHEELHOUSE"/*.whl

if has_step build || { needs_mmcv && ! "$PY" -c "import mmcv.ops" 2>/dev/null; }; then
  arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  sdist="$(ls "$WHEELHOUSE"/mmcv-*.tar.gz | head -n1)"
  start=$SECONDS
  VENV="$VENV" MMCV_SDIST="$sdist" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" \
    MMCV_WHEEL_CACHE="${MMCV_WHEEL_CACHE:-$VENV/mmcv-wheels}" bash "$ROOT/tools/setup_env.sh" --mmcv-only
  echo "$(( SECONDS - start ))" > "$VENV/.mmcv-seconds"
fi

# mmpretrain (the speed benchmark's third implementation and its RetinaNet step) imports its
# multimodal models, written for transformers 4, whenever the installed transformers passes its
# version check (>=4.28); a newer one (the H200 image's) lacks names they import, and
# `import mmpretrain.models` fails. This venv then hides that transformers from mmpretrain's
# check with a metadata-only record (nothing here uses transformers); the machine keeps it.
if ! "$PY" -c "import mmpretrain.models" >/dev/null 2>&1; then
  tf_version="$("$PY" -c 'import importlib.metadata as m; print(m.version("transformers"))' 2>/dev/null || true)"
  if [[ -n "$tf_version" ]] && ! "$PY" -c "from transformers.modeling_utils import apply_chunking_to_forward" >/dev/null 2>&1; then
    purelib="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    log "transformers $tf_version lacks what mmpretrain's multimodal models import: hiding it from mmpretrain in $VENV"
    mkdir -p "$purelib/transformers-0.0.0.dist-info"
    printf 'Metadata-Version: 2.1\nName: transformers\nVersion: 0.0.0\nSummary: %s\n' \
      "hides the machine's transformers $tf_version from mmpretrain 1.2 (tools/gpu_check.sh)" \
      > "$purelib/transformers-0.0.0.dist-info/METADATA"
  fi
  if ! "$PY" -c "import mmpretrain.models" >/dev/null 2>&1; then
    log "WARNING: mmpretrain does not import here; the speed step will fail. The cause:"
    "$PY" -c "import mmpretrain.models" 2>&1 | tail -n 1 >&2 || true
  fi
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
mkdir -p "$ROOT/benchmarks/results"
rm -f "$VENV"/{test_gpu,suite,speed,train_step,norm_tests,profile,backbone_speed}.log  # this run's only
status=0
if has_step tests; then
  log "tests/test_gpu.py on $("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
  "$PY" -m pytest tests/test_gpu.py -q -ra -p no:cacheprovider 2>&1 | tee "$VENV/test_gpu.log" || status=1
fi
if has_step suite; then
  log "the rest of the test suite with this machine's torch"
  "$PY" -m pytest tests -q -ra -p no:cacheprovider --ignore tests/test_setup_env.py \
    --ignore tests/test_gpu.py 2>&1 | tee "$VENV/suite.log" || status=1
fi
if has_step speed; then
  log "benchmarks/speed.py on CUDA"
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.speed --device cuda --out benchmarks/results/speed_cuda ${SPEED_ARGS:-} \
    2>&1 | tee "$VENV/speed.log" || status=1
fi
if has_step norm-tests; then
  log "the CUDA path's tests: group_norm1 and the backbone on CUDA, then its CPU tests"
  "$PY" -m pytest tests/test_gpu.py -k "group_norm1 or cuda_path or cuda_graph" -q -ra \
    -p no:cacheprovider 2>&1 | tee "$VENV/norm_tests.log" || status=1
  "$PY" -m pytest tests/test_group_norm.py tests/test_cuda_path.py tests/test_cuda_graphs.py \
    -q -ra -p no:cacheprovider \
    2>&1 | tee -a "$VENV/norm_tests.log" || status=1
fi
if has_step profile; then
  log "benchmarks/studies/profile_norms.py on CUDA (kernel tables)"
  "$PY" -m benchmarks.studies.profile_norms --device cuda --rewrites \
    2>&1 | tee "$VENV/profile.log" || status=1
fi
if has_step backbone-speed; then
  log "benchmarks/speed.py on CUDA, backbones only (no mmcv needed)"
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.speed --device cuda --archs poolformer_s12 poolformer_m48 --sizes 800x1216 \
    --batch-backward 2 --repeats 10 --warmup 3 --skip retinanet scaling \
    --out benchmarks/results/speed_cuda_backbone ${SPEED_ARGS:-} \
    2>&1 | tee "$VENV/backbone_speed.log" || status=1
fi
if has_step train-step; then
  log "benchmarks/studies/train_step.py on CUDA"
  "$PY" -m benchmarks.studies.train_step --device cuda 2>&1 | tee "$VENV/train_step.log" || status=1
fi

{
  echo "# GPU check record"
  echo
  echo "Written by \`make gpu-check\` (tools/gpu_check.sh) on $(date -u +%Y-%m-%d)."
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PY" - <<'PY'
import importlib.metadata as md, platform, torch
found = []
for dist in ('mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'timm', 'mmpretrain'):
    try:
        found.append(f'{dist} {md.version(dist)}')
    except md.PackageNotFoundError:
        found.append(f'{dist} (not installed)')
print(f'python {platform.python_version()}  torch {torch.__version__} (CUDA {torch.version.cuda})  '
      + '  '.join(found))
PY
  [[ -f "$VENV/.mmcv-seconds" ]] && echo "mmcv $(cat "$VENV/.mmcv-seconds") s to build with CUDA kernels (0-5 s: cached)"
  echo '```'
  for part in test_gpu suite speed train_step norm_tests profile backbone_speed; do
    [[ -f "$VENV/$part.log" ]] || continue
    echo
    echo "## $part (last lines)"
    echo
    echo '```'
    grep -v '^\s*$' "$VENV/$part.log" | tail -n 25
    echo '```'
  done
} > "$RECORD"
log "record: $RECORD (exit status $status)"
exit $status
