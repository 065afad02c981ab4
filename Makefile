# The two commands a researcher needs: `make serve` and `make test`. Each sets up what it uses.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

WHEELHOUSE := build/wheelhouse
GAME := server/examples/gridworld_env
PRECOMPRESSED := build/precompressed
RUNTIME := node_modules/.installed $(WHEELHOUSE)/.done $(PRECOMPRESSED)/.done

.PHONY: serve test lint bench wheelhouse browser graphviz clean

serve: $(VENV)/.installed $(RUNTIME) graphviz
	$(PY) -m server $(ARGS)

test: $(VENV)/.installed $(RUNTIME) browser graphviz lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Style and types, enforced by the same command CI runs.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.installed $(RUNTIME) browser graphviz
	$(PY) bench/machine.py
	$(PY) bench/server.py
	$(PY) bench/browser.py
	$(PY) bench/diagrams.py
	$(PY) bench/worker.py
	$(PY) bench/faults.py
	$(PY) -m bench.network
	$(PY) -m bench.snapshot

wheelhouse: $(WHEELHOUSE)/.done

# The Pyodide core and msgpack for the page, and mermaid (rendered in Chromium by the diagram tests),
# from the npm registry (package-lock.json pins them).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# micropip (and packaging) from PyPI, plus the example game built as a real wheel, for our own index.
$(WHEELHOUSE)/.done: $(VENV)/.installed $(GAME)/pyproject.toml $(GAME)/preflight_gridworld/__init__.py
	mkdir -p $(WHEELHOUSE)
	$(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.14 \
		--dest $(WHEELHOUSE) micropip==0.11.1 packaging==26.1
	$(VENV)/bin/pip wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE) ./$(GAME)
	rm -rf $(GAME)/build $(GAME)/*.egg-info
	touch $@

# Brotli and gzip copies of the runtime's files (about 40 s, once), so the first participant already gets them.
$(PRECOMPRESSED)/.done: node_modules/.installed $(WHEELHOUSE)/.done
	$(PY) -m server.precompress --cache-dir $(PRECOMPRESSED)
	touch $@

# Browser tests drive Debian's chromium (Playwright never downloads a browser here).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Diagrams (`python -m statemachine diagram --format svg`, the /admin page) are drawn by Debian's Graphviz.
graphviz:
	@test -x /usr/bin/dot || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz; }

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) data build node_modules *.egg-info
