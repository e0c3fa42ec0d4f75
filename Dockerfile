# One image for every mediasearch service; the command picks the service (the Helm chart's args):
#   serve (gateway) | shard-server --shard N | indexer | compact --every S | migrate
#   backfill --part I/N | pull-model SOURCE --out DIR
# Triton is not in it: it runs NVIDIA's own image over the exported model repository in S3.
#
# Built from a wheelhouse, never from a package index: `make image` downloads every wheel named in
# requirements/runtime.lock (pinned, with hashes) into build/wheelhouse on the host, with the
# project's own wheel beside them; the build installs them with --no-index --require-hashes. The
# same wheelhouse builds the image in an air-gapped network. See docs/deploy.md.
#
#   podman build --isolation chroot --build-arg BASE_IMAGE=localhost/debian:bookworm-py -t mediasearch .
#   docker build -t mediasearch .
#   docker build --target export -t mediasearch-export .     (torch; `make image-export`)
#
# BASE_IMAGE: any Debian bookworm with python3.11 and python3-venv (the wheels are cp311,
# manylinux_2_28, x86_64).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# -- the virtual environment: wheels only, no compiler --------------------------------------------
FROM ${BASE_IMAGE} AS venv
COPY requirements/runtime.lock /build/runtime.lock
COPY build/wheelhouse/ /build/wheelhouse/
RUN python3 -m venv /opt/mediasearch \
 && /opt/mediasearch/bin/pip install --no-cache-dir --no-index --find-links /build/wheelhouse \
      --require-hashes --only-binary=:all: -r /build/runtime.lock \
 && /opt/mediasearch/bin/pip install --no-cache-dir --no-index --no-deps /build/wheelhouse/mediasearch-*.whl \
 && /opt/mediasearch/bin/pip uninstall --yes pip \
 && /opt/mediasearch/bin/mediasearch --help > /dev/null

# -- what every service image shares: the user, the environment, the entrypoint ---------------------
FROM ${BASE_IMAGE} AS base
LABEL org.opencontainers.image.title="mediasearch" \
      org.opencontainers.image.description="mediasearch services: gateway, shard server, indexer, compactor, migrations, backfill" \
      org.opencontainers.image.licenses="Apache-2.0"
# The user the chart runs as (runAsUser 10001); written directly, minbase images have no useradd.
RUN echo "mediasearch:x:10001:10001:mediasearch:/tmp:/usr/sbin/nologin" >> /etc/passwd \
 && echo "mediasearch:x:10001:" >> /etc/group
ENV PATH=/opt/mediasearch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/opt/mediasearch/bin/mediasearch"]
CMD ["--help"]

# -- the export image: torch's CPU build and transformers besides (`make image-export`) -------------
# `mediasearch export --model HUB_ID_OR_FOLDER --out DIR`, then upload DIR (docs/deploy.md).
FROM ${BASE_IMAGE} AS export-venv
COPY requirements/export.lock /build/export.lock
COPY build/wheelhouse-export/ /build/wheelhouse/
RUN python3 -m venv /opt/mediasearch \
 && /opt/mediasearch/bin/pip install --no-cache-dir --no-index --find-links /build/wheelhouse \
      --require-hashes --only-binary=:all: -r /build/export.lock \
 && /opt/mediasearch/bin/pip install --no-cache-dir --no-index --no-deps /build/wheelhouse/mediasearch-*.whl \
 && /opt/mediasearch/bin/pip uninstall --yes pip

FROM base AS export
COPY --from=export-venv /opt/mediasearch /opt/mediasearch

# -- the service image (the last stage: what a plain build makes) ------------------------------------
FROM base AS runtime
COPY --from=venv /opt/mediasearch /opt/mediasearch
