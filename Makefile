# The two Quickstart commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test build bench clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=68" wheel "cython>=3.0" "numpy>=1.26" "grpcio-tools>=1.60"
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

# Rebuild the Cython extension and the gRPC stubs in place (incremental, seconds).
build: $(VENV)/.installed
	$(PY) setup.py -q build_protos build_ext --inplace

demo: build
	$(VENV)/bin/mve demo

test: build
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_fastroute.py
	$(PY) benchmarks/bench_mesh.py

clean:
	rm -rf build $(VENV) mve/_fastroute.c mve/*.so mve/_proto/*_pb2*.py mve/_proto/*_pb2.pyi
