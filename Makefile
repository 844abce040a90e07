# Two entry points: `make demo` and `make test`. Both create .venv (Python 3.11) on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench extension clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flash_engine demo --out out/demo

# One process per core (at most 4), a test file per process so module fixtures are built once.
test: $(STAMP)
	$(PY) -m pytest -q --numprocesses auto --maxprocesses 4 --dist loadfile

bench: $(STAMP)
	$(PY) bench/run_benchmarks.py

extension: $(STAMP)
	$(PY) tools/build_extension.py --out dist

clean-venv:
	rm -rf $(VENV)
