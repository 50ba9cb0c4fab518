# `make demo` and `make test` work on a fresh clone: each creates .venv and installs what it needs once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# Extra flags for `make bench`, e.g. BENCH_ARGS="--only mixer" or BENCH_ARGS="--quick".
BENCH_ARGS ?=

.PHONY: install demo demo-generate test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The benchmark's peers and plot (timm, matplotlib), installed once on top of the dev install.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(BIN)/python -m lightnet_vision.demo classify

demo-generate: $(STAMP)
	$(BIN)/python -m lightnet_vision.demo generate

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/models.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) lightning_logs runs
