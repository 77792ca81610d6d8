# odernn: `make demo` runs the quick-start demo, `make test` runs the test suite.
# `make reproduce` runs the full-length protocols of issues 13 and 17 (DEVICE=cuda on a GPU machine; extra flags of
# python -m recipes.reproduce in REPRODUCE_ARGS). All create a local virtual environment (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision builds that go together; override e.g. TORCH_SPEC="torch torchvision" elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ODERNN_DATA ?= $(abspath ../shared/data)
DEVICE ?= auto
REPRODUCE_ARGS ?=
export ODERNN_DATA

.PHONY: demo test test-slow bench reproduce clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,vision,cde]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m recipes.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed
	$(PY) -m benchmarks.overhead

reproduce: $(VENV)/.installed
	$(PY) -m recipes.reproduce --device $(DEVICE) $(REPRODUCE_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
