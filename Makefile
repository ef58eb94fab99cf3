# The two commands a new user runs: `make demo` and `make test`; and `make check` while
# working on the code. Each sets up what it needs first (a .venv with the package and its
# dependencies, Debian's Fashion-MNIST files when apt is usable) and is safe to run again.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tlearn-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup demo test check lint typecheck pytest pytest-fast bench clean data browser

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import tlearn, torch, timm, sklearn" && touch $(STAMP)

# Debian packages: Fashion-MNIST for the demo (without apt the library downloads it on
# first use), and Chromium, in which the tests render the HTML report.
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -q
define apt_ensure
	@if [ ! -e $(1) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		$(APT_INSTALL) $(2) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && $(APT_INSTALL) $(2) >/dev/null 2>&1; } || \
		echo "note: could not install $(2) with apt"; \
	fi
endef

data:
	$(call apt_ensure,$(FMNIST),dataset-fashion-mnist)

browser:
	$(call apt_ensure,/usr/bin/chromium,chromium)

demo: setup
	$(VENV)/bin/tlearn demo --out demo-output

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: setup browser
	$(PY) -m pytest

test: setup lint typecheck pytest

# For iteration: lint, types and the tests marked neither slow (servers, clusters, browsers,
# subprocess pipelines; tests/conftest.py lists them) nor needs_data. Under 3 minutes on 2
# cores; `make test`, which CI runs, still runs everything.
pytest-fast: setup browser
	$(PY) -m pytest -m "not slow and not needs_data" -q

check: setup lint typecheck pytest-fast

bench: setup
	$(PY) benchmarks/features.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
