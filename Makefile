# custody: `make run` shows the demo on the embedded default; `make test` installs and tests
# everything (PostgreSQL included); `make bench` measures against cp.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench install postgres clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/custody demo

postgres:
	@scripts/postgres-test-db.sh >/dev/null

test: install
	CUSTODY_TEST_PG_URL="$$(scripts/postgres-test-db.sh)" $(BIN)/pytest -q -p no:cacheprovider

bench: install
	@command -v restic >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .custody bench/results bench/work
