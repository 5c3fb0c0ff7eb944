# The two Quickstart commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test build bench clean nghttp2-headers

$(VENV)/.installed: pyproject.toml setup.py | nghttp2-headers
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=68" wheel "cython>=3.0" "numpy>=1.26" "grpcio-tools>=1.60"
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

# libnghttp2's headers, for the optional native HTTP/2 transport (docs/transport.md): installed with
# apt-get when missing and we are root; otherwise a note, and everything else builds without it.
nghttp2-headers:
	@if [ -f /usr/include/nghttp2/nghttp2.h ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing libnghttp2-dev (apt-get) for the native HTTP/2 transport"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnghttp2-dev) >/dev/null \
	    || echo "note: apt-get could not install libnghttp2-dev: building without the native HTTP/2 transport"; \
	else echo "note: no libnghttp2 headers: building without the native HTTP/2 transport (sudo apt-get install libnghttp2-dev)"; fi

# Rebuild the Cython extension and the gRPC stubs in place (incremental, seconds).
build: $(VENV)/.installed
	$(PY) setup.py -q build_protos build_ext --inplace

demo: build
	$(VENV)/bin/mve demo

# The proxy's gRPC door runs on the native transport where it was built (docs/transport.md); the
# modules that test that door run a second time on grpc.aio, so that both transports stay green.
GRPC_AIO_DOOR_TESTS := $(addprefix tests/integration/,test_proxy.py test_proxy_auth.py test_batching.py \
	test_backpressure.py test_proxy_workers.py test_tracing_e2e.py test_outlier_ejection.py \
	test_proxy_restart.py test_fuzz.py::test_hostile_payload_gets_a_clear_error \
	'test_fuzz.py::test_every_method_answers_hostile_bytes_with_a_clear_error_and_nothing_dies[proxy]')

test: build
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)
	@if $(PY) -c "import mve._h2transport" 2>/dev/null; then \
	  echo "the proxy's gRPC door again, on grpc.aio (MVE_PROXY_TRANSPORT=grpc-aio):"; \
	  MVE_PROXY_TRANSPORT=grpc-aio $(VENV)/bin/pytest -q $(GRPC_AIO_DOOR_TESTS); fi

bench: build
	$(PY) -m pip install -q --no-build-isolation -e '.[bench]'
	$(PY) benchmarks/bench_fastroute.py
	$(PY) benchmarks/bench_mesh.py
	$(PY) benchmarks/bench_autoscaling.py

clean:
	rm -rf build $(VENV) mve/_fastroute.c mve/_h2transport.c mve/*.so mve/_proto/*_pb2*.py mve/_proto/*_pb2.pyi
