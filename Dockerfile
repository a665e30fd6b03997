# The hpo image: `hpo worker`, and also the MLflow server and the Optuna dashboard of
# docker-compose.yml, so that every service runs the exact versions of requirements.lock.
#
# Debian bookworm, like the development and CI machines: the same Debian packages
# (dataset-fashion-mnist) and the same Python wheels as the lock was tested with.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TF_CPP_MIN_LOG_LEVEL=2

# Fashion-MNIST from Debian, where hpo looks first: the default study runs without a download.
# PgBouncer for the pgbouncer service (deploy/pgbouncer/start.sh), Debian's as on CI machines.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist pgbouncer \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, from the lock alone, so that code changes reuse this (large) layer.
# uv is pinned like in the Makefile. --compile-bytecode: with PYTHONDONTWRITEBYTECODE set, every
# worker and trial process would otherwise compile TensorFlow's, MLflow's and Optuna's sources
# again when it imports them.
COPY requirements.lock /app/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir "uv==0.13.9" \
    && uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python \
       -r /app/requirements.lock

# The GPU image (`docker build --build-arg GPU=1 -t hpo-gpu .`): Keras' JAX backend with
# CUDA 12 from PyPI, at the lock's JAX version; its workers run `--backend jax`.
ARG GPU=0
RUN if [ "$GPU" = 1 ]; then \
      uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python \
        "jax[cuda12]==$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(m.version("jax"))')"; \
    fi

WORKDIR /app
COPY pyproject.toml README.md /app/
COPY hpo /app/hpo
RUN uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-deps /app
COPY search_spaces /app/search_spaces

# An unprivileged user. The MLflow directories exist here, owned by it, so that the named
# volumes docker-compose.yml mounts on them start out writable by the services.
RUN useradd --create-home --uid 10001 --user-group hpo \
    && mkdir -p /mlflow/artifacts /mlflow/auth \
    && chown -R hpo:hpo /mlflow
USER hpo

ENTRYPOINT ["hpo"]
CMD ["--help"]
