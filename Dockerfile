# syntax=docker/dockerfile:1
#
# One image for every role: `docker run IMAGE api | ingest | scheduler | mosquitto-files | up`.
# Build: docker build -t replenish .   (or `docker compose build`, see docs/deployment.md)

# --- build stage: the project and its dependencies in a virtualenv that is copied as a whole ------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache

RUN python -m venv /opt/venv
WORKDIR /build

# Dependencies first, from pyproject.toml alone with a stub package, so this slow layer stays cached
# until the dependencies change. Every dependency ships manylinux wheels (psycopg[binary], numpy,
# uvloop...), so the slim image needs no compiler.
COPY pyproject.toml ./
RUN mkdir -p src/replenish && touch src/replenish/__init__.py \
    && /opt/venv/bin/pip install .

# Then the project itself (.dockerignore lets in only pyproject.toml, README.md and src/).
COPY . .
RUN /opt/venv/bin/pip install --no-deps --force-reinstall . \
    && /opt/venv/bin/replenish --help > /dev/null \
    && /opt/venv/bin/python -c "from replenish.forecasting.model import compile_ahead; compile_ahead()"

# --- runtime stage -------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache

# A fixed numeric uid/gid, so orchestrators can check "runs as non-root" and volume ownership is
# predictable.
RUN groupadd --system --gid 10001 replenish \
    && useradd --system --uid 10001 --gid replenish --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin replenish

COPY --from=build /opt/venv /opt/venv
# The forecast model compiled at build time (forecasting/compiled.py), where the service user may add to it.
COPY --from=build --chown=10001:10001 /opt/numba-cache /opt/numba-cache

# The working directory is writable by the service user: REPLENISH_DATA_DIR defaults to ./var
# (the SQLite database when no REPLENISH_DATABASE_URL is given, demo files).
WORKDIR /app
RUN mkdir var && chown -R replenish:replenish /app

# `replenish mosquitto-files` (compose service broker-auth) writes Mosquitto's password files and ACL
# here, into the mosquitto-auth volume, which takes this directory's owner and mode when first
# mounted. Group 1883 is the mosquitto group of the eclipse-mosquitto image: the broker reads the
# files (mode 0640) through it. The setgid bit gives every file written here that group.
RUN mkdir -p /var/lib/replenish/broker-auth \
    && chown 10001:1883 /var/lib/replenish/broker-auth \
    && chmod 2750 /var/lib/replenish/broker-auth

USER 10001:10001

# The HTTP API (`replenish api`, with REPLENISH_API_HOST=0.0.0.0 to be reachable from outside), and the
# metrics port compose gives the other roles (REPLENISH_METRICS_PORT, REPLENISH_METRICS_HOST=0.0.0.0).
EXPOSE 8000 9100

ENTRYPOINT ["replenish"]
CMD ["--help"]
