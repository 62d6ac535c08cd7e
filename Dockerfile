# One image for the API and the worker: `docker run IMAGE api`, `docker run IMAGE worker --gpu 0`,
# or `docker run IMAGE serve` for everything in one container.
# The CUDA runtime base gives the worker the driver-facing libraries; the API ignores them.
# Uploaded models are parsed and pruned in a bubblewrap sandbox (user namespaces: see the
# `security_opt` of docker-compose.yml); the service itself runs as an unprivileged user.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates tini \
    bubblewrap util-linux libseccomp2 \
 && rm -rf /var/lib/apt/lists/*

# Build stage: the virtual environment with the project and its pinned dependencies.
FROM base AS build
WORKDIR /src
RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip setuptools wheel
# Dependencies first, so editing the code does not re-download torch.
COPY pyproject.toml README.md ./
RUN mkdir -p app infra worker contract cli && touch app/__init__.py infra/__init__.py \
    worker/__init__.py contract/__init__.py cli/__init__.py \
 && /opt/venv/bin/pip install . && /opt/venv/bin/pip uninstall -y secateurs
COPY app ./app
COPY infra ./infra
COPY worker ./worker
COPY contract ./contract
COPY cli ./cli
RUN /opt/venv/bin/pip install --no-deps .

FROM base AS runtime
RUN groupadd --system --gid 10001 secateurs \
 && useradd --system --uid 10001 --gid secateurs --create-home --home-dir /home/secateurs secateurs \
 && mkdir -p /data && chown secateurs:secateurs /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    SECATEURS_DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000
USER secateurs
WORKDIR /home/secateurs
VOLUME ["/data"]
EXPOSE 8000
# tini reaps the worker's pool children and forwards SIGTERM for a warm shutdown.
ENTRYPOINT ["tini", "--", "secateurs"]
CMD ["serve"]
