# Two commands for a fresh machine (Python 3.11, pip, make): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the tests use: Mosquitto (a broker and a client we did not write) and the PostgreSQL server, the
# production stack the tests start natively from deploy/ (tests/support/brokers.py); Chromium and a font for the web app's
# browser tests (Playwright drives the system's browser: its own download is not available here).
SYSTEM_PACKAGES := mosquitto mosquitto-clients postgresql chromium fonts-liberation
# Most tests wait on sockets, timers and processes, so more workers than cores pay: on a 2-core machine the 698 tests
# took 2:55-3:00 on four workers with worksteal (slow tests first, spread over them: tests/conftest.py), 3:06 on
# five; both cores are busy by then. tests/support/brokers.py gives each worker ports of its own.
TEST_WORKERS ?= 4
# Python's bytecode cache, also where the environment turns it off (PYTHONDONTWRITEBYTECODE=1): without it every
# worker rewrites the assertions of every test module again (4 s of CPU each, half of a worker's start), and every
# role process a test starts compiles the package again. The files go to __pycache__ (ignored by git).
test bench screenshots: export PYTHONDONTWRITEBYTECODE :=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install system-deps run test lint format bench screenshots clean

help:
	@echo "make run    start the platform with the demo (embedded broker + SQLite)"
	@echo "make test   lint and run the test suite"
	@echo "make bench  run the benchmarks (bench/README.md), not part of CI"
	@echo "make screenshots  a PNG of every web page, desktop and phone width, into docs/screenshots/"

$(STAMP): pyproject.toml
	@# Debian ships venv separately (python3-venv); fall back to installing it, or to virtualenv from PyPI.
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); } || \
		{ rm -rf $(VENV); $(PYTHON) -m pip install --quiet --user virtualenv 2>/dev/null || \
		  $(PYTHON) -m pip install --quiet --user --break-system-packages virtualenv; $(PYTHON) -m virtualenv $(VENV); }; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		# The packages start a system broker on port 1883, where `make run` puts the embedded one, and a database \
		# server; tests start their own of each. \
		$(SUDO) systemctl disable --now mosquitto postgresql >/dev/null 2>&1 || true; \
		$(SUDO) service postgresql stop >/dev/null 2>&1 || true; \
	fi

run: install
	$(BIN)/replenish up --demo

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

screenshots: install system-deps
	$(BIN)/python -m pytest tests/test_web.py -m screenshots -q

bench: install system-deps
	$(BIN)/python bench/ingest.py --broker embedded
	$(BIN)/python bench/ingest.py --broker mosquitto
	$(BIN)/python bench/broker_restart.py
	$(BIN)/python bench/prompt_stop.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
