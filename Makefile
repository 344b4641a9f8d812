# callengine: the two commands a newcomer needs are `make demo` and `make test`.
# Both create .venv and install the project into it when needed (and again when pyproject.toml
# changes), so they work on a bare machine with Python >= 3.11.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo sim-demo test test-fast bench lint walkthrough clean help

help:
	@echo "make demo     run the main job (installs into .venv first if needed)"
	@echo "make sim-demo a call walk-through, then the contact centre in the simulator"
	@echo "make test     run every test (installs first if needed)"
	@echo "make bench    run the benchmark scripts in bench/ (figures: last line of each is JSON)"
	@echo "make lint     ruff on the tree, mypy on engine/"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "callengine needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The main job: the engine end to end (FreeSWITCH emulator over real ESL, embedded NATS and
# PostgreSQL, the API with simulated agent desktops over WebSocket) for a bounded time.
demo: $(STAMP)
	$(VENV)/bin/callengine demo --seconds 60

# The contact-centre scenario through the deterministic simulator, with an HTML report.
sim-demo: $(STAMP)
	$(VENV)/bin/callengine walkthrough
	@echo
	$(VENV)/bin/callengine sim examples/contact_centre/scenario.yaml --seed 1 --report reports/contact_centre

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP)
	@set -e; for script in bench/*.py; do echo "== $$script"; $(PY) $$script; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy engine/

walkthrough: $(STAMP)
	$(VENV)/bin/callengine walkthrough

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis reports
