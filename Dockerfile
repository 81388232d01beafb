# syntax=docker/dockerfile:1
# mnist-serving image: CPU torch by default; measured size and memory in docs/deployment.md.
# CUDA variant (deploy/k8s/overlays/gpu):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                --build-arg TORCH_VERSION=2.13.0+cu126 -t mnist-serving:0.1.0-cuda .
# Where no registry is reachable the base is a local image (deploy/image/local-base.sh):
#   --build-arg PYTHON_IMAGE=localhost/mnist-base:bookworm
ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0+cpu
# PIP_CERT: the system's CA store (Debian's path) rather than pip's bundled one, so a CA added
# to the base image (a proxy's, see deploy/image/local-base.sh) is trusted.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH
# Optional local wheels (deploy/wheels/*.whl) for hosts that cannot reach TORCH_INDEX.
COPY deploy/wheels/ /wheels/
# torch alone from the variant's index: the lock below is resolved for the CPU build and leaves
# torch out, so one lock serves both variants and PyPI's CUDA-bundling torch never comes in.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --find-links /wheels --index-url "${TORCH_INDEX}" \
        --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}"
WORKDIR /src
COPY requirements/image.txt ./requirements/
# --no-deps: everything else comes from the hash-checked lock, nothing resolved at build time.
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements/image.txt
COPY pyproject.toml README.md ./
# Serving code and the client it depends on (its own distribution, not on PyPI); training/
# and evaluation/ stay out of the image.
COPY clients/python ./clients/python
COPY service ./service
RUN pip install --no-cache-dir --no-deps --no-build-isolation ./clients/python . \
    && python -c "import service.http.app, torch; print('torch', torch.__version__)"
# C++ headers and torch's own test binaries serve building extensions and testing torch, not
# loading a TorchScript model (make image-test checks the result serves).
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$site/torch/include" "$site/torch/test"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mnist-serving" \
      org.opencontainers.image.description="Handwritten-digit model server (REST + KServe V2)"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root models ./models
# Every setting is an MNIST_* variable; these are the container defaults.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MNIST_HOST=0.0.0.0 \
    MNIST_PORT=8000 \
    MNIST_MODEL_REPOSITORY=models \
    MNIST_DEVICE=auto
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('MNIST_PORT', '8000'), timeout=2).status == 200 else 1)"]
# Exec form: the server runs as PID 1, so `docker stop`'s SIGTERM reaches it and it drains.
CMD ["python", "-m", "service"]
