# `make build-all` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILD_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv build-all test test-all clean-artifacts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[build,test]'
	touch $(STAMP)

venv: $(STAMP)

## Build the default matrix in builds.yaml (cached entries are not rebuilt).
build-all: $(STAMP)
	$(BIN)/buildsys build $(BUILD_ARGS)

## Fast default test run: unit tests plus small model builds (no full-size models).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Everything, full-size model builds included (slow).
test-all: $(STAMP)
	BUILDSYS_SLOW_TESTS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

## Remove the local store and registry (generated; never committed).
clean-artifacts:
	find artifacts -mindepth 1 -maxdepth 1 ! -name README.md -exec chmod -R u+w {} + -exec rm -rf {} +
