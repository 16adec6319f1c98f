# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, distill the embedded digits demo end to end and
#                 export the student to onnxruntime and ExecuTorch (accuracy, latency in each)
#   make test   - create .venv, install, run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch 2.13.0: on this machine pip takes the CPU build that lies on disk (find-links);
# on a GPU machine the same pin pulls PyPI's CUDA build.
TORCH  ?= torch==2.13.0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/distill teachers train configs/demo.yaml
	$(VENV)/bin/distill run configs/demo.yaml
	$(VENV)/bin/distill export runs/demo --to onnx
	$(VENV)/bin/distill export runs/demo --to executorch

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# Short form of every benchmark. The first run packs the CIFAR-10 shards and teaches the soft
# labels (3 min 24 s measured: `time distill teach configs/cifar10/base.yaml`). Full forms: BENCHMARKS.md.
bench: $(STAMP)
	test -f data_cache/cifar10/soft-ensemble/meta.json || $(VENV)/bin/distill teach configs/cifar10/base.yaml
	$(PY) -m benchmarks.kernels --quick
	$(PY) -m benchmarks.export --quick
	$(PY) -m benchmarks.cifar10_cost --quick
	$(PY) -m benchmarks.teacher_modes --quick
	$(PY) -m benchmarks.cifar10_accuracy --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check distill teachers students kernels cluster tests benchmarks

clean:
	rm -rf runs data_cache
