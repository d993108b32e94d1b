# Lake in the production profile. Build: docker build -t lake .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/lake
RUN pip install --no-cache-dir uv==0.13.9 \
    && useradd --system --create-home --shell /usr/sbin/nologin lake

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY lake ./lake
COPY config ./config
RUN uv sync --frozen --no-dev

USER lake
ENV PATH=/opt/lake/bin:$PATH LAKE_ENV=production
EXPOSE 50051
STOPSIGNAL SIGTERM
CMD ["lake", "serve"]
