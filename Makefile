# Two commands do everything: `make serve` and `make test`. Both create the environment when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NODE_CLIENTS := tests/node
# The Node agents framework in its own package: it needs @livekit/rtc-node 0.13.x, tests/node pins 1.1.0.
NODE_AGENTS := tests/node_agents

.PHONY: serve test lint bench install clean

# Re-install only when the project's dependencies change.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(NODE_CLIENTS)/node_modules/.installed: $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(NODE_AGENTS)/node_modules/.installed: $(NODE_AGENTS)/package.json $(NODE_AGENTS)/package-lock.json
	cd $(NODE_AGENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/switchboard serve --dev --agents agents

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

test: $(BIN)/.installed $(NODE_CLIENTS)/node_modules/.installed $(NODE_AGENTS)/node_modules/.installed lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

bench: $(BIN)/.installed
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) $(NODE_CLIENTS)/node_modules $(NODE_AGENTS)/node_modules
