# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# The CPU wheel of torch: installed first and on its own, so that no other package's open range
# pulls a multi-GB CUDA build onto a machine without a GPU. On a GPU box, install torch yourself first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m rlft.demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow and not e2e and not browser" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: install
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/run.py

clean:
	rm -rf .rlft .demo .bench .models
