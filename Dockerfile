# syntax=docker/dockerfile:1
# mnist-serving image. CPU by default (expected ~1 GB, most of it torch's CPU wheels).
# CUDA variant: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                 -t mnist-serving:cuda .   (run with --gpus all; MNIST_DEVICE=auto picks the GPU)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch/torchvision first, from the wheel index of the chosen variant, so the project's own
# install below finds them satisfied and pulls nothing from PyPI's (CUDA-bundling) default.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
        "torch>=2.4,<3" "torchvision>=0.19,<1"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN pip install --no-cache-dir .

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
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('MNIST_PORT', '8000'), timeout=2).status == 200 else 1)"]
# Exec form: the server runs as PID 1, so `docker stop`'s SIGTERM reaches it and it drains.
CMD ["python", "-m", "service"]
