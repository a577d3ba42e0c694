# Two entry points: `make demo` (the main job, end to end, on the synthetic market) and `make test`.
# Each creates .venv with the pinned dependencies on first use and is safe to re-run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SYSTEM_PACKAGES := redis-server chromium chromium-driver

.PHONY: demo test bench clean system-packages

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/featurestore demo --store $(or $(STORE),store)

# Debian packages the tests and benchmarks run for real (a redis-server per session, a headless Chromium for
# the dashboard), installed when missing.
system-packages:
	tools/system-packages.sh $(SYSTEM_PACKAGES)

test: $(STAMP) system-packages
	$(BIN)/ruff check --no-cache .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: $(STAMP) system-packages
	$(BIN)/python -m pytest benchmarks -q --benchmark-enable --benchmark-only -s --bench-results benchmarks/results.md

clean:
	rm -rf $(VENV) store
