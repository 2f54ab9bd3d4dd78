# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first, pinned to the CPU build that lies on disk; the extras then accept it.
TORCH := torch==2.13.0

.PHONY: demo test lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[all,test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

typecheck: lint

test: lint
	$(VENV)/bin/pytest -n 2 --durations=15

bench: $(VENV)/.installed
	$(PY) bench/cli_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
