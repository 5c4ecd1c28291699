# Two commands for a fresh machine:
#   make demo   creates .venv, installs, starts the demo control tower on http://127.0.0.1:8050
#   make test   creates .venv, installs with test extras (and the Debian servers the tests use), runs the suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?=
# Servers and browser the integration tests start themselves (Debian package names).
SYSTEM_PACKAGES := mosquitto influxdb victoria-metrics chromium chromium-driver
SYSTEM_BINARIES := mosquitto influxd victoria-metrics chromium chromedriver

.PHONY: demo test install install-test system-deps interop-deps bench reliability soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/controltower demo $(DEMO_ARGS)

# Installs the test servers with apt-get when one is missing (root, or through sudo).
system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "missing test servers:$$missing; installing $(SYSTEM_PACKAGES) with apt-get"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

# Independent stacks for the interoperability tests (tests/interop/package.json: node-opcua,
# sparkplug-client). Installed again whenever package.json changes (a stamp in node_modules),
# so a package added there reaches every clone that already has node_modules.
INTEROP_STAMP := tests/interop/node_modules/.installed
interop-deps: $(INTEROP_STAMP)

$(INTEROP_STAMP): tests/interop/package.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js (Debian: apt-get install npm)"; exit 1; }
	npm install --silent --no-package-lock --no-audit --no-fund --prefix tests/interop
	@touch $@

test: system-deps interop-deps $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python bench/detectors.py
	$(BIN)/python bench/historian.py
	$(BIN)/python bench/collector.py
	$(BIN)/python bench/skab.py
	$(BIN)/python bench/simulator.py
	$(BIN)/python bench/ingest.py

# Not part of CI: the fault tests with minutes-long faults, and an hour's soak (docs/reliability.md).
reliability: $(VENV)/.installed-test
	$(BIN)/python bench/reliability.py

soak: $(VENV)/.installed
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache data *.egg-info
