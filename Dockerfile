# model-serve container image.
#
#   docker build -t model-serve:cpu .                                   # CPU (default)
#   docker build --build-arg VARIANT=cuda -t model-serve:cuda .         # CUDA torch wheels
#   docker build --build-arg VARIANT=cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t model-serve:cuda .
#   docker build --build-arg CONFIG_DIR=deploy/my-models -t my-models .  # bake a config in
#
#   docker run -p 8000:8000 model-serve:cpu                  # built-in demo models
#   docker run -p 8000:8000 -v "$PWD/conf:/etc/model-serve:ro" \
#       -e MODEL_SERVE_CONFIG=/etc/model-serve/config.yaml model-serve:cpu
#   docker run --gpus all -p 8000:8000 model-serve:cuda
#
# Configuration (see README and k8s/):
#   /etc/model-serve/config.yaml       the model config; mount it (read-only) and set
#                                      MODEL_SERVE_CONFIG to it. With CONFIG_DIR the folder's
#                                      contents are copied here and MODEL_SERVE_CONFIG is set;
#                                      relative checkpoint paths in it resolve against it.
#   /var/lib/model-serve/checkpoints   checkpoints volume (point checkpoint_root here)
#   MODEL_SERVE_ADMIN_TOKEN            bearer token for /models/{name}/reload and /rollback
#   Any other MODEL_SERVE_* variable   overrides the config's server section (see config.py)
#
# The CUDA variant needs no CUDA base image: the PyTorch CUDA wheels bring their own CUDA
# runtime libraries; the host (or the Kubernetes device plugin) provides only the driver.

ARG PYTHON_VERSION=3.11

# ---- builder: a virtual environment with torch and model-serve installed -------------------
FROM python:${PYTHON_VERSION}-slim AS builder

# cpu: CPU-only torch wheels (small); cuda: PyPI's default (CUDA) wheels, or TORCH_INDEX_URL.
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# torch first, in its own layer: it is most of the image and changes least often.
# The version bounds match pyproject.toml's.
RUN set -eu; \
    case "$VARIANT" in \
      cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
      *)    echo "VARIANT must be 'cpu' or 'cuda', not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "$index" "torch>=2.3" "torchvision>=0.18"

WORKDIR /src
COPY . .
# torch is already satisfied, so only model-serve and its other dependencies are added.
RUN pip install . && model-serve --help > /dev/null

# Optional baked-in configuration: CONFIG_DIR is a folder of the build context holding
# config.yaml (and, if wanted, the checkpoints it names by relative path).
ARG CONFIG_DIR=
RUN set -eu; \
    mkdir -p /out/config; \
    if [ -n "$CONFIG_DIR" ]; then \
      cp -R "$CONFIG_DIR"/. /out/config/; \
      test -f /out/config/config.yaml || { echo "$CONFIG_DIR/config.yaml is missing" >&2; exit 1; }; \
    fi

# ---- runtime: the venv on a clean slim Python, as a non-root user -------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

ARG CONFIG_DIR=
# MODEL_SERVE_CONFIG is set only when a config was baked in (empty otherwise: the demo models).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MODEL_SERVE_CONFIG=${CONFIG_DIR:+/etc/model-serve/config.yaml}

# A numeric UID so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/model-serve/checkpoints \
    && chown app:app /var/lib/model-serve/checkpoints

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /out/config /etc/model-serve

USER 10001:10001
WORKDIR /home/app
EXPOSE 8000

# Liveness only (/healthz); readiness (/readyz) is for load balancers and Kubernetes probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["model-serve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
