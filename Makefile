# The two commands a newcomer needs: `make serve` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint docs screenshots mutation openapi lock grpc-stubs bench bench-store bench-tenants bench-history bench-dataset bench-peers clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

serve: $(VENV)/.runtime
	mkdir -p data
	$(BIN)/loss-service serve

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

screenshots: $(VENV)/.dev
	LOSS_SERVICE_SCREENSHOTS=docs/images $(BIN)/pytest -q tests/served/test_pages.py

openapi: $(VENV)/.runtime
	$(BIN)/loss-service openapi > openapi.json

lock: $(VENV)/.dev
	$(BIN)/python scripts/lock.py

grpc-stubs: $(VENV)/.dev
	$(BIN)/python scripts/grpc_stubs.py

# Mutation testing of the guards, body readers, OIP route, reduction and monitoring ([tool.mutmut]
# in pyproject.toml); the score and what survives are in docs/testing.md.
mutation: $(VENV)/.dev
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python scripts/mutation_score.py

bench-peers: $(VENV)/.dev
	$(BIN)/python bench/peers.py

bench: $(VENV)/.dev
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/inprocess.py
	$(BIN)/python bench/serving.py

bench-dataset: $(VENV)/.dev
	$(BIN)/python bench/dataset.py

bench-store: $(VENV)/.dev
	$(BIN)/python bench/store.py

bench-tenants: $(VENV)/.dev
	$(BIN)/python bench/tenants.py

# Loss history: the join's cost, history queries at 10^6 and 10^7 pairs, the Arrow export, the
# retention sweep under writes; smaller sizes: ARGS="--pairs 1000000 --large 2000000".
bench-history: $(VENV)/.dev
	$(BIN)/python bench/history.py $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
