# `make demo` and `make test` work on a fresh clone: each creates .venv and installs what it needs once.
#
# Two test lanes, both linting first (`make lint`: ruff check and ruff format --check on the project's own files):
#   make test       every test: what CI runs (.ci/run, on a fresh clone) and what to run before pushing.
#   make test-fast  the edit loop: the tests not marked @pytest.mark.slow (those take over a second or so each on
#                   a 2-core CPU), under a minute on the 2-core machine this project is developed on. When you
#                   change what a slow test covers, run it by name (`.venv/bin/python -m pytest tests/... -k ...`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# Extra flags for `make bench`, e.g. BENCH_ARGS="--only mixer" or BENCH_ARGS="--quick".
BENCH_ARGS ?=
# What `make lint` checks: the Python files git tracks, so that a user's untracked scripts cannot fail it (new files
# count once `git add`ed); outside a git checkout, the package, the tests and the benchmarks.
LINT_FILES = $(or $(wildcard $(shell git ls-files '*.py' 2>/dev/null)),lightnet_vision tests benchmarks)

.PHONY: install demo demo-generate test test-fast lint bench quality-peers quality clean

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

test: lint
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/models.py $(BENCH_ARGS)

# LightNet against DeiT and DiT on the digits quickstarts, then the classifiers at other resolutions (docs/peers.md):
# benchmarks/results/peers_quality.csv and resolution_transfer.csv, about half an hour on a 2-core CPU.
quality-peers: $(BENCH_STAMP)
	$(BIN)/python benchmarks/peers_quality.py
	$(BIN)/python benchmarks/resolution_transfer.py

# Every learning-quality table (docs/results.md, docs/peers.md): the generation quickstart's sample quality (trains
# it first when no run exists), the demo's checkpoint rule over three seeds, then the peers and resolution transfer.
quality: quality-peers
	$(BIN)/python benchmarks/sample_quality.py
	$(BIN)/python benchmarks/demo_selection.py

lint: $(STAMP)
	@echo "ruff check and ruff format --check on $(words $(LINT_FILES)) paths"
	@$(BIN)/ruff check --force-exclude $(LINT_FILES)
	@$(BIN)/ruff format --check --force-exclude $(LINT_FILES)

clean:
	rm -rf $(VENV) lightning_logs runs
