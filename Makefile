# Everything goes through the project's own virtualenv in .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# `make serve` installs what serving needs; every other target adds the dev tools.
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev
TORCH_STAMP := $(VENV)/.installed-torch
# The KServe Python SDK, for its compatibility test, in a virtualenv of its own: it depends on
# python-multipart, whose `multipart` package shadows the parser the server imports.
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed
# A virtualenv with the client's dependencies and no torch: tests/e2e/test_client_wheel.py
# builds the client's wheel and installs it there, as another app would.
CLIENT_VENV := .venv-client
CLIENT_STAMP := $(CLIENT_VENV)/.installed
# Node's gRPC packages, for the test that calls the server from the served .proto.
NODE_GRPC := .node-grpc
NODE_STAMP := $(NODE_GRPC)/.installed
# CPU-only torch (~0.2 GB of wheels instead of several GB of CUDA libraries) where there is
# no GPU; when the index cannot be reached, pip's default index is used instead.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SPEC := torch>=2.4,<3
# Where torch really came from, read from pip's install report (pip's configuration may add
# other indexes or local folders to the one named here).
TORCH_REPORT := $(VENV)/torch-install.json
TORCH_FROM := import json, sys; r = json.load(open(sys.argv[1])); print(*('torch ' + i['metadata']['version'] + ' from ' + i['download_info']['url'] for i in r['install'] if i['metadata']['name'] == 'torch'))

.PHONY: install install-serve serve test test-fast lint train artifacts bench lock image image-test manifests clean

install: $(DEV_STAMP) $(KSERVE_STAMP) $(CLIENT_STAMP) $(NODE_STAMP)

install-serve: $(SERVE_STAMP)

$(TORCH_STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@rm -f $(TORCH_REPORT)
	@if $(PY) -c 'import torch' 2>/dev/null; then \
	  echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install --quiet --report $(TORCH_REPORT) '$(TORCH_SPEC)'; \
	elif ! $(PY) -m pip install --quiet --timeout 15 --retries 1 --report $(TORCH_REPORT) \
	    --index-url $(TORCH_CPU_INDEX) '$(TORCH_SPEC)'; then \
	  echo "$(TORCH_CPU_INDEX) failed: torch from pip's default index"; \
	  $(PY) -m pip install --quiet --report $(TORCH_REPORT) '$(TORCH_SPEC)'; \
	fi
	@test ! -f $(TORCH_REPORT) || $(PY) -c "$(TORCH_FROM)" $(TORCH_REPORT)
	@touch $@

# Reinstall only when the dependency list changes, so repeated runs are quick.
# The client distribution (clients/python) is not on PyPI: installed from here in the same
# pip call, it is the `mnist-client` that the server's dependency list names.
CLIENT := clients/python

$(SERVE_STAMP): pyproject.toml $(CLIENT)/pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install --quiet -e ./$(CLIENT) -e .
	@touch $@

$(DEV_STAMP): pyproject.toml $(CLIENT)/pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install --quiet -e ./$(CLIENT) -e '.[dev]'
	@touch $@ $(SERVE_STAMP)

$(KSERVE_STAMP): Makefile
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV) || python3 -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet 'kserve>=0.15,<1' 'numpy>=1.26'
	@touch $@

$(CLIENT_STAMP): clients/python/pyproject.toml
	@test -x $(CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(CLIENT_VENV) || python3 -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install --quiet ./clients/python
	@touch $@

$(NODE_STAMP): Makefile
	mkdir -p $(NODE_GRPC)
	npm install --silent --no-audit --no-fund --prefix $(NODE_GRPC) @grpc/grpc-js@1 @grpc/proto-loader@0.7
	@touch $@

serve: install-serve
	$(PY) -m service $(ARGS)

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not e2e and not browser" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

train: install
	$(PY) -m training $(ARGS)

# The compiled artifacts (ONNX model.onnx, AOTInductor model.pt2; the latter needs a C++
# compiler) of version folders.
# Default: the newest shipped version. ARGS="models/mnist-cnn/N ..." for others.
NEWEST_VERSION = $(shell ls -d models/mnist-cnn/[0-9]* | sort -t/ -k3 -n | tail -1)
artifacts: install
	$(PY) -m training artifacts $(or $(ARGS),$(NEWEST_VERSION))

bench: install
	$(PY) -m bench $(ARGS)

# The image's lock: runtime dependencies for CPU torch on Linux x86_64, torch itself left out
# (the Dockerfile installs it from the variant's index). Needs uv (`pip install uv`).
# TORCH_WHEEL_DIR: a folder with the CPU torch wheel, where the PyTorch index is unreachable.
lock:
	uv pip compile pyproject.toml --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu \
	  $(if $(TORCH_WHEEL_DIR),--find-links $(TORCH_WHEEL_DIR),--extra-index-url $(TORCH_CPU_INDEX)) \
	  --index-strategy unsafe-best-match --override requirements/image-overrides.txt \
	  --no-emit-package torch --no-emit-package mnist-client --generate-hashes --no-header --quiet -o requirements/image.txt

# Build with docker or podman, whichever is present (deploy/image/imagetest.py lists the knobs).
image: install
	$(PY) deploy/image/imagetest.py --build-only

# Not part of `make test`: it needs a container engine (and root for sandboxed podman).
image-test: install
	$(PY) deploy/image/imagetest.py

# Re-render deploy/rendered/ after editing deploy/k8s or deploy/kserve (needs kubectl or kustomize).
manifests:
	deploy/render.sh

clean:
	rm -rf $(VENV) $(CLIENT_VENV) $(NODE_GRPC) .pytest_cache .ruff_cache .mypy_cache .hypothesis
