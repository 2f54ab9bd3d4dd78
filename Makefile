# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first, pinned to the CPU build that lies on disk; the extras then accept it. The ray
# extra too, for tests/test_ray.py (a two-node Ray cluster on loopback); it is not in `all`.
TORCH := torch==2.13.0

.PHONY: demo test test-contended lint typecheck bench gpu-check gpu-wheelhouse clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[all,test,ray]'
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

# The same tests on a machine with every core busy: one spinning Python process per core
# (nproc of them, tools/cpu_hog.py) for as long as pytest runs, stopped by PID however it
# ends (and each exits by itself if this recipe's shell dies); exits with pytest's status.
# Not part of CI (no lint here: `make test` has it).
test-contended: $(VENV)/.installed
	@pids=""; \
	for _ in $$(seq "$$(nproc)"); do \
		$(PYTHON) tools/cpu_hog.py & pids="$$pids $$!"; \
	done; \
	trap 'kill $$pids 2>/dev/null' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	echo "test-contended: $$(nproc) CPU hogs running (pids$$pids)"; \
	status=0; $(VENV)/bin/pytest -n 2 --durations=15 || status=$$?; \
	exit $$status

bench: $(VENV)/.installed
	$(PY) bench/cli_latency.py

# On a GPU host: bench/gpu_check.py (CI runs it with --device cpu --quick, .ci/run).
gpu-check:
	PYTHONPATH=src $(PYTHON) bench/gpu_check.py

# What bench/gpu_check.py needs on a GPU host without network, whose Python has torch already:
# tiffin's wheel and its dependencies, mlflow-skinny, numpy and pandas, for GPU_PYTHON on
# manylinux x86_64, into .gpu-wheelhouse/ (ignored by git; not run by CI). On the host:
#   pip install --no-index --find-links .gpu-wheelhouse tiffin mlflow-skinny
GPU_WHEELHOUSE := .gpu-wheelhouse
GPU_PYTHON ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GPU_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64
gpu-wheelhouse:
	rm -rf $(GPU_WHEELHOUSE) && mkdir -p $(GPU_WHEELHOUSE)
	$(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir $(GPU_WHEELHOUSE) .
	$(PYTHON) -m pip download --quiet --dest $(GPU_WHEELHOUSE) --only-binary=:all: \
		--python-version $(GPU_PYTHON) $(addprefix --platform ,$(GPU_PLATFORMS)) \
		$(GPU_WHEELHOUSE)/tiffin-*.whl 'mlflow-skinny>=2.10,<4' numpy pandas
	@ls $(GPU_WHEELHOUSE) | wc -l | xargs echo "wheels in $(GPU_WHEELHOUSE):"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
