# capshard as a batch job: `docker run IMAGE build SOURCE --out /data/shards ...`
# The ETL image carries no torch (the loader and smoke-train need the `loader` extra).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/capshard
COPY setup.cfg pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN python -m pip install . \
    && useradd --create-home --uid 10001 capshard \
    && mkdir /data && chown capshard /data

USER capshard
WORKDIR /data
# capshard handles SIGTERM itself (exit 143, no half-written shard left), also as PID 1.
ENTRYPOINT ["capshard"]
CMD ["--help"]
