# sio-gateway: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
NODE_STAMP := tests/interop/node_modules/.package-lock.json
# The built @socket.io/admin-ui (ADMIN_UI_DIR) and the browser test's puppeteer-core (no browser
# download: it drives the system's chromium), both from their committed locks.
ADMIN_UI_STAMP := admin-ui/node_modules/.package-lock.json
ADMIN_UI_DIST  := admin-ui/node_modules/@socket.io/admin-ui/ui/dist
BROWSER_STAMP  := tests/browser/node_modules/.package-lock.json
DEV_API_KEY := dev-key

.PHONY: run test test-unit test-fast conformance install install-test clean admin-ui

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# The bench extra too: the bench smoke test renders the report's PNG plots (matplotlib).
$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -q -e '.[test,bench]'
	touch $@

$(NODE_STAMP): tests/interop/package.json tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

$(ADMIN_UI_STAMP): admin-ui/package.json admin-ui/package-lock.json
	npm ci --prefix admin-ui --no-audit --no-fund --loglevel=error

$(BROWSER_STAMP): tests/browser/package.json tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

## admin-ui: the built @socket.io/admin-ui 0.5.1 from admin-ui/package-lock.json; serve it with
## ADMIN_UI_DIR=admin-ui/node_modules/@socket.io/admin-ui/ui/dist (at /admin/)
admin-ui: $(ADMIN_UI_STAMP)
	@echo "ADMIN_UI_DIR=$(CURDIR)/$(ADMIN_UI_DIST)"

install: $(STAMP)
install-test: $(TEST_STAMP) $(NODE_STAMP) $(ADMIN_UI_STAMP) $(BROWSER_STAMP)

## run: a gateway on 127.0.0.1:3001 (PORT, HOST, REDIS_URL, ... override; see `sio-gateway --help`).
## For a first look it runs with AUTH_MODE=none (it says so loudly) and, unless API_KEYS is set, the
## development API key `dev-key` (printed); set AUTH_MODE=jwt + JWT_SECRET and API_KEYS for real use.
## `exec`: the gateway replaces the recipe's shell, so Ctrl-C stops it cleanly and make reports no error.
run: $(STAMP)
	@[ -n "$${API_KEYS:-}" ] || echo "make run: API_KEYS is unset; using the development key: curl -H 'Authorization: Bearer $(DEV_API_KEY)' ..."
	AUTH_MODE=$${AUTH_MODE:-none} API_KEYS=$${API_KEYS:-$(DEV_API_KEY)} exec $(VENV)/bin/sio-gateway

## test: every test (unit, integration, interop, conformance suites)
test: install-test
	$(PY) -m pytest -q

test-unit: $(TEST_STAMP)
	$(PY) -m pytest -q tests/unit

## conformance: the official suites against a gateway started here
conformance: install-test
	$(PY) -m pytest -q tests/integration/test_conformance.py

clean:
	rm -rf $(VENV) tests/interop/node_modules admin-ui/node_modules tests/browser/node_modules .pytest_cache

## bench: the benchmark sweep, ours and the peers side by side (see bench/run.py); writes bench/results/
BENCH_STAMP      := $(VENV)/.installed-bench
BENCH_NODE_STAMP := bench/node/node_modules/.package-lock.json
BENCH_ARGS       ?=

.PHONY: bench

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -q -e '.[bench]'
	touch $@

$(BENCH_NODE_STAMP): bench/node/package.json bench/node/package-lock.json
	npm ci --prefix bench/node --no-audit --no-fund --loglevel=error

bench: $(BENCH_STAMP) $(BENCH_NODE_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

## cluster: on this machine, a redis-server, NODES gateway nodes (ports PORT, PORT+1, ...) and nginx
## in front on PROXY_PORT (the top-level nginx.conf rendered for those ports); prints the URL;
## restarts a member that dies (with backoff); Ctrl-C stops everything it started and exits 0.
## AUTH_MODE=none unless set, as for `make run`.
NODES      ?= 3
PROXY_PORT ?= 8080

.PHONY: cluster

cluster: $(STAMP)
	AUTH_MODE=$${AUTH_MODE:-none} exec $(VENV)/bin/sio-gateway cluster --nodes $(NODES) --proxy-port $(PROXY_PORT)
