# Hearth: `make run` and `make test` are all the set-up a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ARGS ?=

.PHONY: run test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/hearth serve --data-dir ./data $(ARGS)

# Debian packages that tests and benchmarks drive for real, installed only when missing (as root, no prompts):
# websocketd is the benchmarks' peer; node and npm run the third-party `ws` client in the tests.
define apt_install_missing
	@missing=""; for p in $(1); do command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else echo "missing Debian packages:$$missing (run as root, or install them)"; exit 1; fi; \
	fi
endef

.PHONY: test-deps bench-deps
test-deps: $(TEST_STAMP)
	$(call apt_install_missing,node:nodejs npm:npm)
	@if [ -f tests/node/package.json ] && [ ! -d tests/node/node_modules/ws ]; then \
		cd tests/node && npm ci --no-audit --no-fund --loglevel=error; fi

bench-deps: $(TEST_STAMP)
	$(call apt_install_missing,websocketd:websocketd)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy .

unit: test-deps
	$(BIN)/pytest $(ARGS)

test: lint typecheck unit

bench: bench-deps
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
