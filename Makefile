# The two commands: `make run` (the whole service, embedded default) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test stop bench clean soak promtool

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever the declared dependencies change.
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml client/pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]' -e ./client
	touch $@

run: $(VENV)/.installed
	$(BIN)/python scripts/run_local.py

# promtool checks and unit-tests the alerting rules (tests/test_alert_rules.py). When it is
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

test: $(VENV)/.installed-test promtool | $(CHROMIUM)
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
