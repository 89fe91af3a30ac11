# The README's two commands: `make demo` and `make test`. Each sets up .venv/ first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test demo-seg report lock gpu-check gpu-quick
setup:
	@bash tools/setup_env.sh

## demo: train RetinaNet-PoolFormer-S12 on the carried tiny COCO set (CPU ok), evaluate, draw detections
demo: setup
	$(PY) demo/quickstart.py

## test: the test suite (what CI runs)
test: setup
	$(PY) -m pytest tests -q -ra

## demo-seg: the same for Semantic FPN-PoolFormer-S12 on the carried tiny ADE20K set: train, report mIoU, draw label maps
demo-seg: setup
	$(PY) demo/quickstart.py --config configs/demo/semantic_fpn_poolformer_s12_tiny.py

## report: params, FLOPs, GPU speed/memory and your work_dirs AP/mIoU vs the paper -> benchmarks/results/report.{md,png}
report: setup
	OMP_NUM_THREADS=2 $(PY) -m benchmarks.report

## lock: rewrite requirements/constraints.txt from what .venv holds now (after upgrading a package in it)
lock:
	@{ sed -n '/^#/p;/^mmcv==/p' requirements/constraints.txt; \
	   $(PY) -m pip freeze --all --exclude-editable --disable-pip-version-check 2>/dev/null \
	     | grep -v -i '^mmcv[ =]\|^metaformer'; } > requirements/constraints.txt.new
	@mv requirements/constraints.txt.new requirements/constraints.txt
	@echo "requirements/constraints.txt: $$(grep -c '==' requirements/constraints.txt) pinned packages"

## gpu-check: on a CUDA machine: mmcv with CUDA kernels, tests/test_gpu.py, the suite, speed on CUDA
## (WHEELHOUSE=folder made by tools/gpu_wheelhouse.sh; works offline)
gpu-check:
	bash tools/gpu_check.sh

## gpu-quick: on a CUDA machine, no mmcv build: the CUDA path's tests, the kernel-table profile and
## the backbone speed comparison (WHEELHOUSE as for gpu-check)
gpu-quick:
	STEPS="norm-tests profile backbone-speed" bash tools/gpu_check.sh
