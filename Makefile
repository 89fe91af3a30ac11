# The README's two commands: `make demo` and `make test`. Each sets up .venv/ first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test demo-seg report
setup:
	@bash tools/setup_env.sh

## demo: train RetinaNet-PoolFormer-S12 on the carried tiny COCO set (CPU ok), evaluate, draw detections
demo: setup
	$(PY) tools/run_demo.py

## test: the test suite (what CI runs)
test: setup
	$(PY) -m pytest tests -q -ra

## demo-seg: train Semantic FPN PoolFormer-S12 on the carried tiny ADE20K set (CPU, minutes), report mIoU
demo-seg: setup
	$(PY) tools/train.py configs/demo/semantic_fpn_poolformer_s12_tiny.py

## report: params, FLOPs, GPU speed/memory and your work_dirs AP/mIoU vs the paper -> docs/benchmark_report.{md,png}
report: setup
	OMP_NUM_THREADS=2 $(PY) tools/analysis/benchmark_report.py
