# The worker as a container: `docker build -t shipment-notifier .` then
# `docker run --env-file worker.env --stop-timeout 30 -v notifier-data:/var/lib/shipment-notifier
# shipment-notifier` (configuration: README.md). The stop timeout must exceed SHUTDOWN_TIMEOUT
# (25 s): Docker's default of 10 s kills the worker mid-drain, which loses nothing but
# redelivers more. Where python:3.11-slim cannot be pulled, scripts/image builds an equivalent
# base and passes it as BASE_IMAGE.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
# wheels for the project and every runtime dependency; compilers, if any were needed, stay here.
# --use-pep517: a dependency published as a source archive alone (dkimpy) is built in an
# isolated environment, not by a setup.py that needs the wheel package the base may lack
RUN python -m pip wheel --use-pep517 --wheel-dir /wheels . \
    && cd /wheels && sha256sum -- *.whl > /wheels.sha256

FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TEMPLATES_DIR=/app/templates \
    DATA_DIR=/var/lib/shipment-notifier \
    METRICS_PORT=9464
RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --home-dir /app --shell /usr/sbin/nologin worker \
    && mkdir -p /app /var/lib/shipment-notifier \
    && chown worker:worker /var/lib/shipment-notifier
# the wheels' checksums: a RUN's cache does not look into what it mounts, so without a file
# that changes with the wheels a rebuild would keep the previous build's packages
COPY --from=build /wheels.sha256 /usr/local/share/shipment-notifier/wheels.sha256
# install from the build stage's wheels without copying them into a layer, then drop the
# packaging tools the worker does not need at run time
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels shipment-notifier \
    && python -m pip uninstall -y pip setuptools wheel
COPY --chown=root:root templates /app/templates
WORKDIR /app
# numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
USER 10001:10001
# the default SQLite dedup store lives here: mount a volume so it survives restarts
VOLUME ["/var/lib/shipment-notifier"]
# /metrics, /livez and /readyz
EXPOSE 9464
# the exec probe asks /livez on METRICS_PORT; the start period covers the render check and
# joining the consumer group
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "worker", "health"]
# SIGTERM stops fetching and drains in-flight work for up to SHUTDOWN_TIMEOUT, then exits 0
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker", "run"]
