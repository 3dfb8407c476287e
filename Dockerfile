# Build stage: a virtual environment with the locked dependencies (hash-checked), then the service.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/pip install --no-deps .

# Runtime stage: the venv only, run as an unprivileged user. It works with a read-only root
# filesystem when /tmp is writable (the multi-worker metrics directory lives there) and
# /var/lib/loss-service is a volume (the delayed-labels SQLite file; unused with PostgreSQL).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    LOSS_SERVICE_HOST=0.0.0.0 \
    LOSS_SERVICE_METRICS_DIR=/tmp/loss-service-metrics \
    LOSS_SERVICE_STORE_URL=sqlite:////var/lib/loss-service/loss-service.sqlite3
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 /var/lib/loss-service
VOLUME /var/lib/loss-service
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
# 8000: HTTP; 8001: the Open Inference Protocol over gRPC, as Triton serves it.
ENV LOSS_SERVICE_GRPC_PORT=8001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["loss-service", "serve", "--host", "0.0.0.0"]
