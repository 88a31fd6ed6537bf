# Every target bootstraps its own virtualenv in .venv from pyproject.toml: `serve` installs the
# runtime only; `test`, `lint`, `typecheck` add the test extra; `test` also installs the system
# packages the tests drive when they are missing (.ci/system-deps: chromium, redis-server,
# nodejs, npm) and the npm packages of the JavaScript test projects from their lockfiles.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
ARGS ?=

# The JavaScript projects the tests drive (the ai package's client, the example useChat page).
JS_PROJECTS := tests/js examples/ai-sdk-chat

.PHONY: serve test system-deps js-deps lint typecheck check bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

serve: $(VENV)/.installed  ## run the gateway on $(HOST):$(PORT)
	$(VENV)/bin/ssegate serve --host $(HOST) --port $(PORT) $(ARGS)

system-deps:  ## chromium, redis-server, nodejs and npm, if missing (apt-get)
	.ci/system-deps

# npm ci when a project's lockfile is newer than what is installed.
%/node_modules/.package-lock.json: %/package-lock.json | system-deps
	cd $* && npm ci --no-audit --no-fund --loglevel=error

js-deps: $(addsuffix /node_modules/.package-lock.json,$(JS_PROJECTS))  ## npm packages the tests use

test: $(VENV)/.test-installed system-deps js-deps  ## run every test
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy

check: lint typecheck test

$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench-installed  ## full benchmark suite, writes docs/performance.md
	$(PY) -m benchmarks $(ARGS)

bench-quick: $(VENV)/.bench-installed
	$(PY) -m benchmarks --quick $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
