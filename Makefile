# `make demo` and `make test` set everything up themselves: they create or reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alcap-installed
DEMO_DIR ?= demo
CHECKPOINT ?=
EMBED_DIR := $(DEMO_DIR)/embeddings-$(if $(CHECKPOINT),checkpoint,random0)
PYTEST_ARGS ?=

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/torch-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "keeping the torch already in $(VENV): $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
		$(BIN)/python -m pip install --disable-pip-version-check -r requirements/torch-cpu.txt; \
	fi
	$(BIN)/python -m pip install --disable-pip-version-check -c requirements/constraints.txt -e '.[dev]'
	@bash scripts/install-wordnet.sh
	$(BIN)/python -m alcap.metrics.wordnet
	@touch $@

demo: $(STAMP)
	$(BIN)/alcap data make-demo $(DEMO_DIR)/corpus
	$(BIN)/alcap data validate $(DEMO_DIR)/corpus/manifest.jsonl --max-issues 10 --quiet
	$(BIN)/alcap embed $(DEMO_DIR)/corpus/manifest.jsonl --out $(EMBED_DIR) \
		$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),--random-init 0)
	$(BIN)/alcap store info $(EMBED_DIR)
	@echo
	@echo "demo corpus:     $(DEMO_DIR)/corpus (manifest.jsonl, audio/, corpus.json)"
	@echo "embedding store: $(EMBED_DIR)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
