# syntax=docker/dockerfile:1
#
# The bookrec image: one image for `bookrec init`, the serving workers, the trainer and `bookrec dashboard`
# (target `app`, the default), and an `rq-dashboard` target that adds rq-dashboard on top of it.
#
#   docker build -t bookrec .                                     # target app
#   docker build --target rq-dashboard -t bookrec-rq-dashboard .
#   docker compose build                                          # both, as docker-compose.yml uses them
#
# Needs BuildKit (the default builder since Docker 23): the project source is bind-mounted into
# the install step instead of copied, so neither the source nor pip's download cache ends up in a
# layer. tensorflow-cpu and the other dependencies ship manylinux wheels, so no compiler is
# installed at any point.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- bookrec: the project and its dependencies in /opt/bookrec, run as a non-root user --------
FROM ${PYTHON_IMAGE} AS bookrec

# A fixed uid, so files on the shared volume keep their owner across rebuilds (USER below names
# it by number, so an orchestrator can verify it is not root). /var/lib/bookrec/* is created
# here, owned by that user: Docker copies it (with its owner) into a named volume the first time
# the volume is mounted there, which is what makes the volume writable for the user.
# /app/data is where another catalogue's books file can be mounted read-only for
# `bookrec init --books-from /app/data/books.csv` (see docker-compose.yml); without one, init's synthetic readers
# rate goodbooks-10k's books.csv, which the bookrec package ships.
RUN groupadd --system --gid 10001 bookrec \
 && useradd --system --uid 10001 --gid bookrec --create-home --home-dir /home/bookrec bookrec \
 && mkdir -p /var/lib/bookrec/models /var/lib/bookrec/data /app/data \
 && chown -R bookrec:bookrec /var/lib/bookrec

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/bookrec/bin:$PATH

# `pip install /src` builds the bookrec wheel in a throwaway build environment; the rw bind
# mount lets setuptools write its build/ and *.egg-info scratch files, which are discarded.
RUN --mount=type=bind,target=/src,rw \
    --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/bookrec \
 && /opt/bookrec/bin/pip install '/src[worker,web]'

# Where `bookrec` keeps models, data and the ratings store inside the container (docker-compose.yml
# mounts the shared `bookrec-data` volume at /var/lib/bookrec; /app is not writable by uid 10001).
ENV BOOKREC_MODEL_STORE=/var/lib/bookrec/models \
    BOOKREC_DATA_DIR=/var/lib/bookrec/data \
    BOOKREC_DATABASE_URL=sqlite:////var/lib/bookrec/bookrec.db

WORKDIR /app
USER 10001:10001
ENTRYPOINT ["bookrec"]
CMD ["--help"]

# ---- rq-dashboard: RQ's raw queues, on top of the bookrec layers ------------------------------
# Built on the bookrec stage so it shares its layers on disk and uses exactly the rq version the
# workers run (the dashboard reads RQ's job hashes, whose format changes between rq majors).
# `six` is listed because rq-dashboard 0.9.0 imports it without declaring it as a dependency.
FROM bookrec AS rq-dashboard
USER root
RUN --mount=type=bind,target=/src,rw \
    --mount=type=cache,target=/root/.cache/pip \
    pip install '/src[dashboard]' 'six>=1.16'
USER 10001:10001
EXPOSE 9181
ENTRYPOINT ["rq-dashboard"]
# Jobs are stored with RQ's JSON serializer (never pickle): --json makes the dashboard read them so.
CMD ["--json", "--bind", "0.0.0.0", "--port", "9181"]

# ---- app (default target): the bookrec stage, named so `docker build .` builds it -------------
# The last stage is what a build without --target produces; this keeps that the lean image.
FROM bookrec AS app
