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

# pip installs without byte-compiling (one file after another: 80 s of the 140 on 2 cores),
# then compileall compiles the same files on every core (35 s). The .pyc files matter: where
# PYTHONDONTWRITEBYTECODE is set, Python never writes them, and every process the tests
# start would compile torch again (11 s each).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet --no-compile -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(PY) -m compileall -q -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))") >/dev/null || true
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

# Two workers (pytest-xdist), each test file on one of them and the dearest files first
# (tests/conftest.py), each worker with one OpenMP thread (torch, BLAS). One process left
# most of a core idle (subprocess starts, servers, Ray); two workers of two OpenMP threads
# each spun against each other (CPU time +55%). One each: 1,133 s -> 806 s on 2 cores. The
# compiled engines keep their default threads (the path users run). `pytest` alone still
# runs everything in one process.
PYTEST_THREADS := OMP_NUM_THREADS=1
pytest: setup browser
	$(PYTEST_THREADS) $(PY) -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

# mypy (one core, 30 s) runs beside the tests; make fails when either fails
test: setup lint
	$(MAKE) --no-print-directory -j 2 typecheck pytest

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
