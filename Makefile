# make test   - create .venv if missing, install pinned deps, build fastlayers, run the test suite
# make bench  - the same set-up, then every benchmark (benchmarks/run.py), writing benchmarks/results/
# make build  - set-up and build only
# make lint   - ruff check over the repository (the ruff pinned in requirements-dev.txt, into .venv; fast: no build)
# make fuzz   - >= 10,000 generated valid and broken inputs per op family, each run in a child process that may crash
#              without ending the run; writes benchmarks/results/robustness-fuzz.md (FUZZ_CASES, FUZZ_SEED)
# make asan   - the extension built with AddressSanitizer + UBSan in build/asan-tree, the test suite and a fuzz slice
#              run against it (fuzz/asan.sh)
# make wheel    - dist/: the sdist, a CPU wheel built from it and, where nvcc is found, a CUDA wheel (sm_80, sm_90 +
#                PTX); abi3, the stable-ABI library for torch >= 2.13 plus one pinned to this torch's minor release,
#                auditwheel-repaired (packaging/build_wheels.sh)
# make wheel-test - each wheel in a fresh venv with torch from the registry and no compiler: fastlayers info and the
#                test suite from outside the source tree; under torch 2.13 the stable-ABI families' tests pass
#                and the pinned ones refuse clearly
# make test-isa - every family's correctness tests again under FASTLAYERS_CPU_ISA=avx2 and =scalar (make test runs the
#                 best path the CPU has, so that one is skipped here); a path this CPU lacks is skipped with a note
# make gpu-check - compile every Triton and CUDA kernel for sm_80 and sm_90 (no GPU needed) and check the
#                  resource report: no compile error, no spill, shared memory within the limit
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.14.1
SCATTER := torch_scatter-2.1.2
# torch-scatter's wheel only loads under the torch it was built against: cache it per torch version.
WHEELS := $(HOME)/.cache/fastlayers/wheels/torch-$(TORCH_VERSION)-cpu
DEPS_STAMP := $(VENV)/.deps-stamp
PYTEST_ARGS ?=

FUZZ_CASES ?= 10000
FUZZ_SEED ?= 0

.PHONY: all build lint test test-isa bench bench-quick info gpu-check device-check-dry fuzz asan wheel wheel-test clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(DEPS_STAMP): requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	mkdir -p $(WHEELS)
	ls $(WHEELS)/$(SCATTER)-*.whl >/dev/null 2>&1 || \
		FORCE_ONLY_CPU=1 MAX_JOBS=2 $(BIN)/pip wheel --no-cache-dir --no-build-isolation --no-deps \
			-w $(WHEELS) torch-scatter==2.1.2
	$(BIN)/pip install -q --no-deps --force-reinstall $(WHEELS)/$(SCATTER)-*.whl
	touch $@

# Only ruff, at its pin: lint runs first in CI and needs neither the other dependencies nor a build.
$(BIN)/ruff: requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q "$$(grep -E '^ruff==' requirements-dev.txt)"
	touch $@

lint: $(BIN)/ruff
	$(BIN)/ruff check .

build: $(DEPS_STAMP)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .

test: build
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

# The kernel families' correctness tests (not models, not Triton-only, not packaging), on the non-default paths.
ISA_TESTS := tests/test_eca.py tests/test_hyper.py tests/test_align.py tests/test_isonet_layer.py tests/test_mp_ops.py \
	tests/test_ncache.py tests/test_double_backward.py tests/test_cpu_isa.py
test-isa: build
	@best=$$($(BIN)/python -c "import fastlayers; print(fastlayers.cpu_isa())"); \
	for isa in avx2 scalar; do \
		if [ "$$isa" = "$$best" ]; then echo "== FASTLAYERS_CPU_ISA=$$isa: the default path here, make test ran it"; \
		elif FASTLAYERS_CPU_ISA=$$isa $(BIN)/python -c "import fastlayers" 2>/dev/null; then \
			echo "== FASTLAYERS_CPU_ISA=$$isa"; \
			FASTLAYERS_CPU_ISA=$$isa $(BIN)/python -m pytest -q $(PYTEST_ARGS) -m "not triton" $(ISA_TESTS) || exit 1; \
		else echo "== FASTLAYERS_CPU_ISA=$$isa: this CPU lacks it, skipped"; fi; \
	done

bench: build
	$(BIN)/python benchmarks/run.py

bench-quick: build
	$(BIN)/python benchmarks/run.py --quick

fuzz: build
	$(BIN)/python -m fuzz.run --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --report benchmarks/results/robustness-fuzz.md

asan: build
	PYTHON=$(abspath $(BIN)/python) fuzz/asan.sh

wheel: build
	PYTHON=$(BIN)/python packaging/build_wheels.sh

wheel-test:
	TORCH_VERSION=$(TORCH_VERSION) packaging/wheel_test.sh

gpu-check: build
	$(BIN)/python benchmarks/gpu_check.py

# What benchmarks/device_check.sh does on a GPU machine, minus the GPU steps (CI runs it so the script cannot rot).
device-check-dry: build
	DRY_RUN=1 PYTHON=$(BIN)/python benchmarks/device_check.sh /tmp/fastlayers-device-check-dry

info: build
	$(BIN)/python -m fastlayers info

clean:
	rm -rf build dist $(VENV) python/fastlayers/*.so python/fastlayers/_build_config.json *.egg-info python/*.egg-info
