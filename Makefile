# The two commands a new user runs: `make demo` and `make test`.
# Each sets up what it needs first (a .venv with the package and its dependencies,
# Debian's Fashion-MNIST files when apt is usable) and is safe to run again.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tlearn-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup demo test lint typecheck pytest bench clean data

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import tlearn, torch, timm, sklearn" && touch $(STAMP)

# Fashion-MNIST for the demo: Debian ships the original files; without apt the
# library downloads them on first use (and says so when offline).
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "note: could not install dataset-fashion-mnist with apt; tlearn will download it"; \
	fi

demo: setup
	$(VENV)/bin/tlearn demo --out demo-output

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: setup
	$(PY) -m pytest

test: setup lint typecheck pytest

bench: setup
	$(PY) benchmarks/features.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
