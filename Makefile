# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, distill the embedded digits demo end to end and
#                 export the student to onnxruntime and ExecuTorch (accuracy, latency in each)
#   make test   - create .venv, install, run the test suite
#   make test-arm - the AArch64 kernels, cross-built and checked under qemu (installs the Debian tools)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch 2.13.0: on this machine pip takes the CPU build that lies on disk (find-links);
# on a GPU machine the same pin pulls PyPI's CUDA build.
TORCH  ?= torch==2.13.0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-arm lint bench clean

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
	$(PY) -m pytest -q --durations=15 --ignore=tests/test_arm.py  # the emulated ARM tests: make test-arm

# The NEON / dot-product kernels, cross-built on this x86 machine and run under qemu-user on an
# emulated CPU with the dot product and one without (tests/test_arm.py), and the ExecuTorch kernels
# built for aarch64 running a .pte in the aarch64 executorch runtime. Installs Debian's
# g++-aarch64-linux-gnu and qemu-user when missing (apt-get, as root or through sudo) and fetches
# the executorch wheel for aarch64 of the installed version (pip download, into $(ARM_WHEELS)).
ARM_TOOLS := g++-aarch64-linux-gnu qemu-user
ARM_WHEELS := $(abspath $(VENV))/arm-wheels
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-arm: $(STAMP)
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(ARM_TOOLS); }
	@v=$$($(PY) -c 'import importlib.metadata as m; print(m.version("executorch"))') && \
	  ls $(ARM_WHEELS)/executorch-$$v-*aarch64.whl >/dev/null 2>&1 || \
	  $(PY) -m pip download -q --no-deps --only-binary=:all: -d $(ARM_WHEELS) "executorch==$$v" \
	    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
	    --python-version $$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	DISTILL_TEST_ARM=1 DISTILL_ARM_WHEELS=$(ARM_WHEELS) $(PY) -m pytest -v -s tests/test_arm.py

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
