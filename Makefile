# confhook: `make run` starts the product on SQLite with the provider emulator; `make test`
# runs the test suite. Both set up .venv from requirements.txt first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint migrate clean bench

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m scripts.local

demo: $(STAMP)
	$(BIN)/python -m scripts.local --demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

migrate: $(STAMP)
	$(BIN)/flask --app wsgi migrate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

bench: $(STAMP)
	$(BIN)/python -m bench.sqlite_durability
	$(BIN)/python -m bench.query
