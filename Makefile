# custody: `make run` serves the portal on a demo workspace (embedded default: SQLite, local zones,
# local custodian); `make story` tells the demo story; `make test` installs and tests everything
# (PostgreSQL and Chromium included); `make bench` measures against cp, restic and load.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run story test bench install postgres chromium softhsm clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/custody serve --seed-demo --host 127.0.0.1 --port 8700

story: install
	$(BIN)/custody demo

# Debian's Chromium, for the portal's browser tests.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# SoftHSM2, the PKCS#11 token the pkcs11 custodian's tests run against.
softhsm:
	@command -v softhsm2-util >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null)

postgres:
	@scripts/postgres-test-db.sh >/dev/null

test: install chromium softhsm
	CUSTODY_TEST_PG_URL="$$(scripts/postgres-test-db.sh)" $(BIN)/pytest -q -p no:cacheprovider

bench: install
	@command -v restic >/dev/null && command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic wrk)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .custody bench/results bench/work
