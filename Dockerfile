# capshard as a batch job, writing as the caller:
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/data:/data" capshard build SOURCE --out shards/NAME
# It runs under any uid: it needs no home directory, no passwd entry and no fixed uid (HOME and
# the caches point at /tmp). Started as root without --user, the entrypoint runs capshard as the
# owner of the working folder (the mounted /data), so the files belong to that folder's owner.
# The ETL image carries no torch; `--build-arg EXTRAS=loader` adds it (the 2.13.0 CPU wheel) for
# `diagnose` and `smoke-train`. It always carries the object-storage backends (s3fs, gcsfs), so
# s3:// and gs:// inputs and outputs work as in deploy/.
FROM python:3.11-slim

ARG EXTRAS=""
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/capshard
# Dependencies first, in a layer that only setup.cfg invalidates (an empty README and the
# package's __init__ stand in for the rest); then the code.
COPY setup.cfg pyproject.toml ./
COPY pipeline/__init__.py ./pipeline/__init__.py
RUN touch README.md \
    && case ",$EXTRAS," in *,loader,*|*,dev,*) python -m pip install torch==2.13.0 ;; esac \
    && python -m pip install ".[s3,gcs${EXTRAS:+,$EXTRAS}]" \
    && python -m pip uninstall -y capshard \
    && mkdir -m 1777 /data
COPY README.md ./
COPY pipeline ./pipeline
COPY docker-entrypoint.sh /usr/local/bin/capshard-entrypoint
RUN python -m pip install --no-deps . && chmod 0755 /usr/local/bin/capshard-entrypoint

WORKDIR /data
# capshard handles SIGTERM itself (exit 143, no half-written shard left), also as PID 1:
# the entrypoint execs it.
ENTRYPOINT ["capshard-entrypoint"]
CMD ["--help"]
