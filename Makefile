# custody: `make run` serves the portal on a demo workspace (embedded default: SQLite, local zones,
# local custodian); `make story` tells the demo story; `make test` installs and tests everything
# (PostgreSQL, Chromium and SoftHSM2 included; the suite once per key custodian); `make bench` measures
# against cp, restic and load, and each key custodian's unwraps and revocations.
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

# The whole suite once per key custodian: the local keyring, a SoftHSM2 token, a moto KMS server.
TESTS := $(BIN)/pytest -q -p no:cacheprovider -n 3

test: install chromium softhsm
	export CUSTODY_TEST_PG_URL="$$(scripts/postgres-test-db.sh)" && \
	CUSTODY_TEST_CUSTODIAN=local $(TESTS) && \
	CUSTODY_TEST_CUSTODIAN=pkcs11 $(TESTS) && \
	CUSTODY_TEST_CUSTODIAN=aws-kms $(TESTS)

bench: install
	@command -v restic >/dev/null && command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic wrk)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .custody bench/results bench/work
