# `make build-all` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILD_ARGS ?=
KERNEL_ARGS ?=
PYTEST_ARGS ?=

RUNTIME_VENV ?= .venv-runtime
RUNTIME_STAMP := $(RUNTIME_VENV)/.installed
SMOKE_DIR ?= /tmp/buildsys-runtime-smoke
# Architectures builds.yaml builds for besides this host's: their cross compiler, qemu-user and
# mmdebstrap are installed by .ci/cross-deps (names from buildsys/platforms.py).
CROSS_ARCHS ?= aarch64

.PHONY: onnx-models venv cross-deps runtime-smoke-aarch64 build-all build-aarch64 tune bench detector-report test test-all test-slow runtime-venv runtime-smoke bench-loader bench-fairness bench-kernels bench-plan stress clean-artifacts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[build,test]'
	touch $(STAMP)

venv: $(STAMP)

## Cross compilers, qemu-user and mmdebstrap for CROSS_ARCHS (apt-get when root, else a note).
cross-deps: $(STAMP)
	.ci/cross-deps $(BIN)/python $(CROSS_ARCHS)

## The ONNX files builds.yaml names (models/, never committed): a small BERT-style text encoder, one of
## BERT-base's shape (438 MB) and resnet18, exported by buildsys/models/text.py with seeded weights
## (the same bytes each time; about 15 s).
ONNX_MODELS := models/text_encoder.onnx models/bert_base.onnx models/resnet18.onnx
$(ONNX_MODELS) &: buildsys/models/text.py | $(STAMP)
	$(BIN)/python -m buildsys.models.text models

onnx-models: $(ONNX_MODELS)

## Build the default matrix in builds.yaml (cached entries are not rebuilt).
build-all: $(STAMP) cross-deps onnx-models
	$(BIN)/buildsys build $(BUILD_ARGS)

## The eight detectors for aarch64 (builds.aarch64.yaml): parity under qemu-user, about 30 minutes cold.
build-aarch64: $(STAMP) cross-deps
	$(BIN)/buildsys -c builds.aarch64.yaml build $(BUILD_ARGS)

## Fast default test run: unit tests plus small model builds (the slow tier is deselected).
test: $(STAMP) cross-deps onnx-models
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Everything: the fast run plus the slow tier (every full-size detector of builds.yaml with parity).
test-all: $(STAMP) cross-deps onnx-models
	BUILDSYS_SLOW_TESTS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

## The slow tier alone (tests/slow: about 8 minutes on 2 cores).
test-slow: $(STAMP) onnx-models
	BUILDSYS_SLOW_TESTS=1 $(BIN)/python -m pytest -m slow tests/slow $(PYTEST_ARGS)

$(RUNTIME_STAMP): pyproject.toml
	test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[runtime,image,signing]'
	touch $(RUNTIME_STAMP)

## A deployment's venv: the runtime and image extras only (no torch, no compiler).
runtime-venv: $(RUNTIME_STAMP)

## Build a tiny detector with the builder venv, then load and run it in the runtime-only venv.
runtime-smoke: $(STAMP) $(RUNTIME_STAMP)
	rm -rf $(SMOKE_DIR) && mkdir -p $(SMOKE_DIR)
	$(BIN)/buildsys -c tests/smoke/builds.yaml --store $(SMOKE_DIR)/artifacts build
	$(RUNTIME_VENV)/bin/python tests/smoke/runtime_smoke.py $(SMOKE_DIR)

## The same on aarch64: a tiny detector built here for aarch64 (parity under qemu-user), then loaded by
## key, alias and bundle by the runtime alone in an aarch64 sysroot under qemu-user.
runtime-smoke-aarch64: $(STAMP) cross-deps
	$(BIN)/python tests/smoke/cross_smoke.py $(SMOKE_DIR)-aarch64

## MetaSchedule tuning (resumable) and the tuned builds of builds.tune.yaml (kept out of build-all).
TUNE_CONFIG ?= builds.tune.yaml
tune: $(STAMP)
	$(BIN)/buildsys -c $(TUNE_CONFIG) tune $(TUNE_ARGS)
	$(BIN)/buildsys -c $(TUNE_CONFIG) build $(BUILD_ARGS)

## Built artifacts against PyTorch eager, torch.compile and onnxruntime (prints a table).
bench: $(STAMP)
	$(BIN)/buildsys bench $(BENCH_ARGS)

## Generated matmul and convolution kernels on hot model shapes vs numpy and torch (GFLOP/s table).
bench-kernels: $(STAMP)
	$(BIN)/python benchmarks/kernels.py $(KERNEL_ARGS)

## The eight torchvision detectors: build figures, and a run on a real photo in the runtime venv.
detector-report: $(STAMP) $(RUNTIME_STAMP)
	$(BIN)/python benchmarks/detector_report.py --runtime-python $(RUNTIME_VENV)/bin/python

## Planning time: `buildsys plan` and a no-op build on a generated 1000-entry matrix, all cached.
bench-plan: $(STAMP)
	$(BIN)/python benchmarks/plan_bench.py $(PLAN_BENCH_ARGS)

## Thin loader vs torch + torchvision: start-up, first inference, RSS (needs a built REF).
bench-loader: $(STAMP) $(RUNTIME_STAMP)
	$(BIN)/python benchmarks/loader_bench.py $(REF) --runtime-python $(RUNTIME_VENV)/bin/python

## Is `buildsys bench` fair? REF timed interleaved, interleaved with waiting runners left running, and each alone.
bench-fairness: $(STAMP)
	$(BIN)/python benchmarks/bench_fairness.py $(REF) $(FAIR_ARGS)

## Full-size reliability runs: 50 kill -9 rounds, 4 concurrent builders (prints the counts).
stress: $(STAMP)
	$(BIN)/python -m tests.stress.crash_loop --rounds 50
	$(BIN)/python -m tests.stress.concurrent_builders --procs 4

## Remove the local store and registry (generated; never committed).
clean-artifacts:
	find artifacts -mindepth 1 -maxdepth 1 ! -name README.md -exec chmod -R u+w {} + -exec rm -rf {} +
