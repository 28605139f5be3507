# Two commands do all set-up on a fresh machine:
#   make serve   installs what is missing and runs the GSLB on zones/example.yaml
#   make test    installs what is missing (Python packages, dig, dnsperf, redis-server,
#                chromium) and runs the whole suite
# The venv's interpreter: the distribution's Python 3.11+ when it has one with venv,
# else python3 from PATH. Distributions build CPython with PGO and LTO; pyenv and plain
# source builds do not by default, and a computed answer costs about 1.3 times the CPU
# on those (BENCHMARKS.md, "The interpreter's build"). PYTHON=... chooses another.
PYTHON ?= $(shell for p in /usr/bin/python3 python3; do \
	$$p -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; exit; }; done; echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test lint system-test-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-deps

serve: $(VENV)/.run-deps
	$(BIN)/gslb serve $(ARGS)

# dig for the end-to-end tests, chromium for the dashboard test
system-test-deps:
	@missing=""; \
	command -v dig >/dev/null || missing="$$missing bind9-dnsutils"; \
	command -v dnsperf >/dev/null || missing="$$missing dnsperf"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

lint: $(VENV)/.test-deps
	$(BIN)/ruff check gslb tests examples benchmarks fuzz
	$(BIN)/mypy gslb

test: $(VENV)/.test-deps system-test-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
