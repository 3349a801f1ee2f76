# Two images from one file:
#   docker build --target api    -t lrprobe-api .     # FastAPI + Celery client, no torch
#   docker build --target worker -t lrprobe-worker .  # + torch (CUDA wheel), intake, numeric core
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 lrprobe
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY client ./client
COPY rules ./rules
COPY service ./service
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
COPY lrprobe ./lrprobe

FROM base AS api
# The service never imports torch (import-linter enforces it), so its image does without.
RUN pip install '.[service]'
USER lrprobe
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["lrprobe", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker", "--no-migrate"]

FROM base AS worker
# The default PyPI torch wheel for Linux bundles CUDA; the host only needs the NVIDIA driver and
# the container toolkit. Pinned first so the extras cannot pull another build.
RUN pip install torch==2.13.0 && pip install '.[worker,service,lion]'
USER lrprobe
# One process per GPU: --pool=solo, one probe at a time (see docker-compose.yml).
CMD ["celery", "-A", "lrprobe.worker.celery_app", "worker", "--pool=solo", "--concurrency=1", \
     "--loglevel=INFO", "--without-gossip", "--without-mingle"]
