# Lake in the production profile: docker build -t lake .
# Two stages: uv builds the environment from the lock (no dev group, so neither
# the test tools nor the embedded-server wheels, which production never runs),
# and the runtime stage copies only that environment. No compiler, no uv, no
# source tree beyond the installed package in the final image.
FROM python:3.11-slim AS build

ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/lake
RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY lake ./lake
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim

# A fixed numeric user: Kubernetes' runAsNonRoot can only check a number
# (deploy/kubernetes runs the pods as 10001).
RUN groupadd --system --gid 10001 lake \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --shell /usr/sbin/nologin lake
COPY --from=build /opt/lake /opt/lake
# Settings: the bundled file, read from the working directory.
WORKDIR /app
COPY config/settings.toml ./config/settings.toml

ENV PATH=/opt/lake/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LAKE_ENV=production
USER 10001:10001
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
# Ready or not, through Lake's own health command: exit 0 ready, 1 answering but
# not ready, 2 no answer. With TLS on the port, also set LAKE_CLIENT__TLS__CA_FILE
# (and __SERVER_NAME), as docker-compose.yml does.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["lake", "health", "--address", "127.0.0.1:50051", "--timeout", "2"]
CMD ["lake", "serve"]
