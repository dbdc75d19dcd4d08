# `make demo` and `make test` set everything up themselves: they create or reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alcap-installed
DEMO_DIR ?= demo
# The demo's music encoder: musicnn-msd (pretrained on the Million Song Dataset, from the musicnn
# wheel, offline), musicnn-mtt, tagger (train a CNNSA tagger on the corpus's tag columns first,
# `alcap train-tagger`), or cnnsa with CHECKPOINT=path/to/best_model.pth (the MSD CNNSA weights).
DEMO_ENCODER ?= $(if $(CHECKPOINT),cnnsa,musicnn-msd)
CHECKPOINT ?=
TAGGER_DIR := $(DEMO_DIR)/tagger
EMBED_DIR := $(DEMO_DIR)/embeddings-$(DEMO_ENCODER)
ENCODER_ARGS := $(if $(filter tagger,$(DEMO_ENCODER)),--checkpoint $(TAGGER_DIR),$(if $(filter cnnsa,$(DEMO_ENCODER)),--checkpoint $(CHECKPOINT),--encoder $(DEMO_ENCODER)))
DEMO_ALIGNMENT ?= 0.6  # 0: the independent corpus; give it its own DEMO_DIR and RUNS_DIR
PYTEST_ARGS ?=

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/torch-cpu.txt requirements/musicnn.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "keeping the torch already in $(VENV): $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
		$(BIN)/python -m pip install --disable-pip-version-check -r requirements/torch-cpu.txt; \
	fi
	$(BIN)/python -m pip install --disable-pip-version-check -c requirements/constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --disable-pip-version-check --no-deps --require-hashes -r requirements/musicnn.txt
	@bash scripts/install-wordnet.sh
	$(BIN)/python -m alcap.metrics.wordnet
	@touch $@

RUNS_DIR ?= runs/demo
DEMO_SEEDS ?= 2020
DEMO_SEED := $(firstword $(DEMO_SEEDS))

EXPERIMENT_ARGS = configs/demo.yaml --seeds $(DEMO_SEEDS) --output-dir $(RUNS_DIR) --quiet \
	--set data.manifest=$(DEMO_DIR)/corpus/manifest.jsonl --set data.embeddings=$(EMBED_DIR)
DEMO_MODELS := $(foreach m,bart bart-fusion alcap,$(RUNS_DIR)/$(m)/seed-$(DEMO_SEED)/best)
SIDE_BY_SIDE := $(MAKE) --no-print-directory -j2 --output-sync=target

# Independent steps run side by side (make -j2): tiny models and single-song jobs use a second
# thread poorly. The text stage needs no audio, so it trains (one thread) while the songs are
# embedded (one thread); the three methods then train together (--jobs 3).
demo: $(STAMP)
	$(BIN)/alcap data make-demo $(DEMO_DIR)/corpus --alignment $(DEMO_ALIGNMENT)
	$(BIN)/alcap data validate $(DEMO_DIR)/corpus/manifest.jsonl --max-issues 10 --quiet
	@$(SIDE_BY_SIDE) demo-embed demo-text-pretrain
	$(BIN)/alcap experiment $(EXPERIMENT_ARGS) --jobs 3
	@$(SIDE_BY_SIDE) demo-captions demo-attention demo-alignment demo-swap demo-library
	$(BIN)/alcap report $(RUNS_DIR) --captions $(RUNS_DIR)/captions.jsonl --title "alcap demo: BART vs BART-fusion vs ALCAP"
	@echo
	@echo "song library of the demo's validation and test songs ($(LIBRARY_DIR)), three example searches:"
	@cat $(LIBRARY_DIR)/example-searches.txt
	@echo
	@echo "demo corpus:     $(DEMO_DIR)/corpus (manifest.jsonl, audio/, corpus.json, attributes.json)"
	@echo "embedding store: $(EMBED_DIR)"
	@echo "report:          $(RUNS_DIR)/report.md (tables/, metrics.json, loss_curves.png, attention.png, alignment/, swap/)"
	@echo "song library:    $(LIBRARY_DIR) (alcap library search $(LIBRARY_DIR) \"your description\")"
	@echo
	@echo "serve the library and the model, then open http://127.0.0.1:8000/ in a browser:"
	@echo "  $(BIN)/alcap serve $(LIBRARY_DIR) --model $(RUNS_DIR)/alcap/seed-$(DEMO_SEED)/best"

.PHONY: demo-embed demo-text-pretrain demo-captions demo-attention demo-alignment demo-swap demo-library
demo-embed:
	$(if $(filter tagger,$(DEMO_ENCODER)),test -f $(TAGGER_DIR)/best_model.pth || $(BIN)/alcap train-tagger \
		$(DEMO_DIR)/corpus/manifest.jsonl --tags instrument tempo mode energy drums --epochs 20 --out $(TAGGER_DIR) --quiet)
	OMP_NUM_THREADS=1 $(BIN)/alcap embed $(DEMO_DIR)/corpus/manifest.jsonl --out $(EMBED_DIR) $(ENCODER_ARGS) \
		--workers 1 --quiet
	$(BIN)/alcap store info $(EMBED_DIR)
	$(BIN)/alcap probe $(EMBED_DIR) --manifest $(DEMO_DIR)/corpus/manifest.jsonl --columns tempo instrument mode energy drums

demo-text-pretrain:
	OMP_NUM_THREADS=1 $(BIN)/alcap experiment $(EXPERIMENT_ARGS) --methods text-pretrain --jobs $(words $(DEMO_SEEDS))

# Four held-out songs with their lyrics (from the manifest), as a user would caption them.
demo-captions:
	$(BIN)/alcap caption $(DEMO_DIR)/corpus/manifest.jsonl --split test --limit 4 --quiet \
		--model $(RUNS_DIR)/alcap/seed-$(DEMO_SEED)/best --jsonl $(RUNS_DIR)/captions.jsonl

demo-attention:
	$(BIN)/alcap attention $(wordlist 2,3,$(DEMO_MODELS)) --songs 3 --out $(RUNS_DIR)/attention.png

demo-alignment:
	$(BIN)/alcap alignment $(wordlist 2,3,$(DEMO_MODELS)) --out $(RUNS_DIR)/alignment

demo-swap:
	$(BIN)/alcap diagnose swap $(DEMO_MODELS) --num-beams 1 --out $(RUNS_DIR)/swap --quiet
# The library reuses the store's music embeddings (the same encoder), so no song is decoded twice.
LIBRARY_DIR := $(RUNS_DIR)/library
DEMO_QUERIES := "a slow sad piano song about losing someone" "an energetic guitar song about freedom" \
	"a gentle love song with strings"
demo-library:
	$(BIN)/alcap library add $(LIBRARY_DIR) $(DEMO_DIR)/corpus/manifest.jsonl --split val test --quiet \
		--model $(RUNS_DIR)/alcap/seed-$(DEMO_SEED)/best --embeddings $(EMBED_DIR)
	$(BIN)/alcap library search $(LIBRARY_DIR) $(DEMO_QUERIES) --top 3 > $(LIBRARY_DIR)/example-searches.txt

test: $(STAMP)
	@bash scripts/install-chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
