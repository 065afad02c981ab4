# The two commands a researcher needs: `make serve` and `make test`. Each sets up what it uses.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

WHEELHOUSE := build/wheelhouse
PRECOMPRESSED := build/precompressed
RUNTIME := node_modules/.installed $(WHEELHOUSE)/.done $(PRECOMPRESSED)/.done

.PHONY: serve test lint bench wheelhouse dist browser graphviz clean

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
	$(PY) -m bench.machine
	$(PY) -m bench.server
	$(PY) -m bench.browser
	$(PY) -m bench.diagrams
	$(PY) -m bench.worker
	$(PY) -m bench.faults
	$(PY) -m bench.crash
	$(PY) -m bench.network
	$(PY) -m bench.snapshot
	$(PY) -m bench.multiplayer
	$(PY) -m bench.predecessor  # skips, naming the command, without the predecessor's venv

wheelhouse: $(WHEELHOUSE)/.done

# The wheel and sdist a researcher installs: setup.py stages the pinned runtime from node_modules and the wheelhouse.
dist: $(VENV)/.installed $(RUNTIME)
	$(PY) -m build --outdir dist .

# The Pyodide core and msgpack for the page, and mermaid (rendered in Chromium by the diagram tests),
# from the npm registry (package-lock.json pins them).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# micropip (and packaging) from PyPI for our own index; a study's own modules are packed by the server itself.
$(WHEELHOUSE)/.done: $(VENV)/.installed
	mkdir -p $(WHEELHOUSE)
	$(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.14 \
		--dest $(WHEELHOUSE) micropip==0.11.1 packaging==26.1
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
	rm -rf $(VENV) data build dist node_modules server/_bundle *.egg-info
