# One image for the API, the migrations and the GPU workers (docker-compose.yml picks the command).
#   docker build -t rlft:latest .
# torch is installed first and on its own: the default index's Linux wheel carries CUDA, which the workers
# need. For a slimmer API-only image, pass a CPU wheel index: --build-arg TORCH_INDEX_URL=<index URL>.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RLFT_DATA_DIR=/data \
    HF_HOME=/cache/huggingface

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else pip install "$TORCH_SPEC"; fi

WORKDIR /app
# Dependencies before the source, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p rlcore service worker rlft && touch rlcore/__init__.py service/__init__.py \
        worker/__init__.py rlft/__init__.py \
    && pip install . && pip uninstall -y rlft
# Editable: migrations/ and examples/ are read from /app, where the source is.
COPY . .
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 rlft \
    && mkdir -p /data /artifacts /cache/huggingface /gpu-locks \
    && chown -R rlft:rlft /data /artifacts /cache /gpu-locks /app
USER rlft

EXPOSE 8000
# The API by default; compose overrides the command for migrate and worker.
CMD ["rlft", "serve", "--host", "0.0.0.0", "--port", "8000"]
