# hftl: `make demo` runs the offline demo fine-tuning, `make test` runs the tests.
# Each creates the virtual environment in .venv on first use and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0# a local CPU wheel on the project's machines; elsewhere add --index-url .../whl/cpu for CPU
BIN := $(VENV)/bin
STAMP := $(VENV)/.hftl-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

EXTRA ?=# more --key value overrides, e.g. make demo-scratch EXTRA="--learning_rate 5e-4"

.PHONY: demo demo-scratch test test-fast bench env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[builtin,test]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/text-classification.yaml --overwrite_output_dir true

demo-scratch: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/text-classification.yaml --from_scratch true \
		--output_dir runs/demo-text-classification-scratch --overwrite_output_dir true $(EXTRA)

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/bench.py --out bench/results.md

test-fast: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
