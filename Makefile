# The two commands: `make run` (the whole service, embedded default) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

RUN_LOCK := requirements/run.lock
TEST_LOCK := requirements/test.lock

.PHONY: run test lint stop bench clean soak promtool lock wheel-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Exactly the locked versions, then the project itself without resolving again; pip check
# fails when setup.cfg asks for something the lock does not have (make lock).
# Reinstalled whenever the declared dependencies or the locks change.
$(VENV)/.installed: $(RUN_LOCK) setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r $(RUN_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e '.[local]'
	$(BIN)/python -m pip check
	touch $@

$(VENV)/.installed-test: $(TEST_LOCK) client/pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r $(TEST_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e '.[test]' -e ./client
	$(BIN)/python -m pip check
	touch $@

# The locks: what setup.cfg (its >= bounds) and client/pyproject.toml allow, pinned for
# Python 3.11 and up on any platform. Versions already pinned are kept while still
# allowed; delete a lock first to take the newest of everything. The test lock holds the
# run lock's versions.
LOCK := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --custom-compile-command 'make lock'
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(LOCK) --extra local setup.cfg -o $(RUN_LOCK)
	$(LOCK) --extra local --extra test setup.cfg client/pyproject.toml -c $(RUN_LOCK) -o $(TEST_LOCK)

# The wheel, installed without the checkout, runs the whole service from another
# directory (scripts/check_wheel.py). CI runs it after the tests.
wheel-check: $(VENV)/.installed
	$(BIN)/python scripts/check_wheel.py

run: $(VENV)/.installed
	$(BIN)/python scripts/run_local.py

# promtool checks and unit-tests the alerting rules (tests/deploy/test_alert_rules.py). When it is
# missing, Debian's `prometheus` package (which has it) is installed; that needs root. If it
# cannot be, this says so and the rules' tests fail naming it. (Under systemd the package
# also enables a Prometheus server: `systemctl disable --now prometheus` if unwanted.)
promtool:
	@command -v promtool >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } \
	  || echo "promtool is missing and could not be installed (apt-get install prometheus)." >&2; }

# The /docs browser test drives Debian's Chromium (a test tool never downloads a browser
# of its own). Installed once, quietly; a machine that has it is left as it is.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@echo "Installing Debian's chromium for the /docs browser test"
	@export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# ruff's checks (pyproject.toml) first: a lint error fails the run before the suite starts.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

test: lint $(VENV)/.installed-test promtool | $(CHROMIUM)
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The soak run (issue 6): every process under steady load and scheduled faults for
# DURATION seconds, then a reconciliation report; non-zero exit on any loss or duplicate.
DURATION ?= 300
soak: $(VENV)/.installed-test
	$(BIN)/python -m soak --duration $(DURATION)

stop: $(VENV)/.installed
	$(BIN)/python -c "from shared import embedded; embedded.stop_all()"

clean: stop
	rm -rf var
