# syntax=docker/dockerfile:1
# querylift: the production (GPU) image. One image, two profiles:
#   QUERYLIFT_PROFILE=gpu       (default) Qwen3-Embedding-8B queries via vLLM -> Qwen3-Embedding-0.6B,
#                               bf16 on CUDA; weights download into HF_HOME (/models) on first start
#   QUERYLIFT_PROFILE=embedded  the CPU profile (mpnet -> MiniLM); build with
#                               --build-arg EMBEDDED_MODELS=1 to bake its models into the image
#
#   docker build -t querylift:0.1.0 .
#   docker run --gpus all -p 8080:8080 -v hf:/models -v adapters:/var/lib/querylift/adapters \
#     -v "$PWD/tenants.json:/etc/querylift/tenants.json:ro" \
#     -e QUERYLIFT_TENANTS_FILE=/etc/querylift/tenants.json \
#     -e QUERYLIFT_QDRANT_URL=http://qdrant:6333 querylift:0.1.0
#
# No tenants file, no start: the image binds 0.0.0.0, and `querylift serve` refuses development
# mode (no authentication) on an address other than loopback, exit 1 with one line naming the
# fix (docs/tenants.md; QUERYLIFT_ALLOW_UNAUTHENTICATED_NETWORK=true overrides it by name).
#
# Base images are pinned by tag (pin by digest too, `image@sha256:...`, in a regulated setup).
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# --- stage 1: build the querylift wheel (no dependencies, no compiler needed) -------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY encoders ./encoders
COPY service ./service
COPY training ./training
COPY querylift ./querylift
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- stage 2: the runtime ------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime
# vLLM, pinned; must equal the pin of the `gpu` extra in pyproject.toml (a test checks it)
ARG VLLM_VERSION=0.33.0
# 1 = run `querylift setup --no-demo` at build time so QUERYLIFT_PROFILE=embedded works offline
ARG EMBEDDED_MODELS=0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/querylift \
    PATH=/opt/querylift/bin:$PATH

# python3-dev + gcc: Triton (under vLLM) compiles small launchers at run time
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/querylift

COPY --from=build /wheels /wheels
# the local wheel by path (never a same-named package from the index), with the gpu extra
RUN wheel="$(ls /wheels/querylift-*.whl)" \
    && pip install "${wheel}[gpu]" "vllm==${VLLM_VERSION}" \
    && rm -rf /wheels \
    && python -c "from importlib.metadata import version as v; print('vllm', v('vllm'))"

# non-root user; the volumes' mount points are created (and owned) before VOLUME declares them
RUN groupadd --system --gid 10001 querylift \
    && useradd --system --uid 10001 --gid querylift --create-home --home-dir /home/querylift \
        --shell /usr/sbin/nologin querylift \
    && mkdir -p /app /models /var/lib/querylift/adapters /var/lib/querylift/qdrant \
    && chown -R querylift:querylift /app /models /var/lib/querylift
WORKDIR /app
USER querylift

# the embedded profile's models (relative paths models/... resolve against /app)
RUN if [ "$EMBEDDED_MODELS" = "1" ]; then querylift setup --no-demo --models-dir /app/models; fi

ENV QUERYLIFT_PROFILE=gpu \
    QUERYLIFT_MODEL_HUB=true \
    QUERYLIFT_HOST=0.0.0.0 \
    QUERYLIFT_PORT=8080 \
    QUERYLIFT_ADAPTER_STORE=/var/lib/querylift/adapters \
    QUERYLIFT_QDRANT_PATH=/var/lib/querylift/qdrant \
    HF_HOME=/models \
    VLLM_CACHE_ROOT=/models/vllm \
    HF_HUB_DISABLE_TELEMETRY=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
# QUERYLIFT_PROFILE=embedded selects the CPU profile (needs EMBEDDED_MODELS=1 at build time,
# or models/ mounted at /app/models). Set QUERYLIFT_QDRANT_URL for a Qdrant server; unset, the
# service uses an embedded local-mode Qdrant under /var/lib/querylift/qdrant (development only).
# QUERYLIFT_TENANTS_FILE is yours to set (see the top): without it the service does not start.

VOLUME ["/models", "/var/lib/querylift/adapters"]
EXPOSE 8080

# /readyz: 200 once the encoders are loaded and Qdrant answers. Loading Qwen3-8B (and the first
# download of its weights) takes minutes, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('QUERYLIFT_PORT', '8080'), timeout=4)" || exit 1

STOPSIGNAL SIGTERM
CMD ["querylift", "serve"]
