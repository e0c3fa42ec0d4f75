# mediasearch — every target creates .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= export/micro/model
OUT    ?= model_repository
NAME   ?= clip

.PHONY: help install lint test test-fast demo up export train-micro eval-micro bench-encode-local triton bench-encoders clean proto bench-index bench-query bench-ingest bench-decode bench-decode-memory chaos soak chart lock image image-test image-export wheelhouse fuzz audit bench-http bench-reindex

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[export,triton,dev]'
	# CLIP's BPE vocabulary ships in this wheel; --no-deps keeps its CUDA torch out.
	$(BIN)/pip install --quiet --no-deps open_clip_torch
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install mediasearch with every extra

# gRPC stubs are generated from proto/ by grpcio-tools, never edited, never committed.
PROTOS      := $(shell find proto -name '*.proto' 2>/dev/null)
PROTO_STAMP := mediasearch/_proto/mediasearch/.generated

$(PROTO_STAMP): $(PROTOS) $(STAMP)
	$(BIN)/python -m mediasearch._proto.generate
	touch $@

proto: $(PROTO_STAMP)  ## generate the gRPC stubs from proto/ into mediasearch/_proto

lint: $(STAMP) proto  ## ruff (every Python folder) + mypy (the whole namespace, services included)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mediasearch.dev.typecheck

# checkov lives in a venv of its own (its pins clash with ours); the chart tests run it.
CHECKOV := .venv-checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet 'checkov==3.3.30'

test: lint $(CHECKOV)  ## lint, then the whole test suite (unit, integration, e2e, slow; the chart and the image)
	$(BIN)/pytest

test-fast: $(STAMP) proto  ## the suite without the slow (ViT-B/32-sized) tests
	$(BIN)/pytest -m "not slow"

demo: $(STAMP) proto  ## export the micro model, index sample scenes, serve them, run example queries (ARGS=--serve keeps serving)
	$(BIN)/mediasearch demo $(ARGS)

$(OUT)/$(NAME).manifest.json: | $(STAMP)
	$(BIN)/mediasearch export --model $(MODEL) --out $(OUT) --name $(NAME)

up: $(STAMP) proto $(OUT)/$(NAME).manifest.json  ## the whole cluster on loopback (moto S3+SQS, Triton, 2 shards, indexer, gateway) until Ctrl-C
	$(BIN)/mediasearch up --repository $(OUT) $(ARGS)

export: $(STAMP)  ## export MODEL (hub id or folder) into OUT as NAME
	$(BIN)/mediasearch export --model $(MODEL) --out $(OUT) --name $(NAME)

train-micro: $(STAMP)  ## train the offline micro CLIP into export/micro/model (CPU; run it on a quiet machine)
	$(BIN)/python -m mediasearch.export.micro.train --out export/micro/model --seed 0

eval-micro: $(STAMP)  ## precision@10 of the exported micro CLIP (ONNX, serving encoder) on a held-out gallery vs a random floor
	$(BIN)/python -m mediasearch.export.micro.evaluate --model export/micro/model --onnx

bench-encode-local: $(STAMP)  ## ONNX Runtime latency of the ViT-B/32-shaped export on this machine
	$(BIN)/python -m bench.encode_local

bench-query: $(STAMP) proto  ## query path: 200k vectors, ViT-B/32 text tower on Triton; overhead, efficiency, vs baseline 3
	$(BIN)/python -m bench.query $(ARGS)

bench-index: $(STAMP) proto  ## vector index: 1M x 512, 4 shard servers over gRPC vs numpy, hnswlib, pgvector
	$(BIN)/python -m bench.index $(ARGS)

bench-http: $(STAMP) proto  ## HTTP/JSON vs gRPC on the same gateway (SearchText, GetImage) and the page's time to first results (chromium)
	$(BIN)/python -m bench.http $(ARGS)

triton: $(STAMP)  ## serve OUT's models with a local tritonserver (CPU flavour, loopback ports) until Ctrl-C
	$(BIN)/mediasearch triton --repository $(OUT) --name $(NAME)

bench-encoders: $(STAMP)  ## naive ONNX Runtime vs LocalEncoder vs TritonEncoder under load (ViT-B/32 shapes)
	$(BIN)/python -m bench.encoders $(ARGS)

bench-ingest: $(STAMP) proto  ## a realistic bucket (12 Mpx JPEGs, screenshots, WebP): S3 PUT -> SQS -> indexer (Triton) -> searchable, vs the raw encoder
	$(BIN)/python -m bench.ingest $(ARGS)

bench-reindex: $(STAMP) proto  ## a model upgrade under searches: mediasearch reindex with a ViT-B/32-shaped second model, the switch; failed/wrong searches, vs the raw encoder
	$(BIN)/python -m bench.reindex $(ARGS)

bench-decode: $(STAMP)  ## reduced vs exact decoding of large photos: pixel and embedding differences, speed
	$(BIN)/python -m bench.decode_fidelity $(ARGS)

bench-decode-memory: $(STAMP)  ## the largest images the limits allow, 20 at once: peak and after-burst RSS, worst decode time
	$(BIN)/python -m bench.decode_memory $(ARGS)

CHAOS ?=
chaos: $(STAMP) proto $(OUT)/$(NAME).manifest.json  ## faults (indexer, shard replica, Triton, compactor, gateway kills; PostgreSQL restart; emulator outage; rolling restart) under load, then lost/duplicated/resurrected (CHAOS=args)
	$(BIN)/python -m bench.chaos --repository $(OUT) $(CHAOS)

SOAK_S ?= 600
soak: $(STAMP) proto $(OUT)/$(NAME).manifest.json  ## 64 callers (valid and invalid searches) plus ingestion for SOAK_S seconds: unexpected codes, p99 drift, RSS growth
	$(BIN)/python -m bench.soak --repository $(OUT) --seconds $(SOAK_S) $(ARGS)

chart: $(STAMP) proto $(CHECKOV)  ## render helm/mediasearch's profiles: schema, kubernetes-validate, policies, checkov, the wiring test
	$(BIN)/python -m mediasearch.dev.chart --wiring

lock: $(STAMP)  ## re-pin requirements/*.lock (the image's dependencies) from pyproject.toml
	$(BIN)/python -m mediasearch.dev.lockfile

FUZZ_S ?= 60
fuzz: $(STAMP) proto  ## fuzz the parsers (atheris: image, page token, S3 events, filters) and the live gateway (hypothesis), FUZZ_S seconds each
	$(BIN)/python -m mediasearch.dev.fuzz --seconds $(FUZZ_S)

# pip-audit lives in a venv of its own (its pins are not the project's), under build/ (ignored).
# It needs a vulnerability database: PyPI's JSON API (per-version pages) or OSV (-s osv in
# AUDIT_ARGS). --strict: a dependency it could not look up fails the audit instead of passing it.
AUDIT      := build/venv-audit/bin/pip-audit
AUDIT_ARGS ?=
$(AUDIT):
	$(PYTHON) -m venv build/venv-audit
	build/venv-audit/bin/pip install --quiet 'pip-audit==2.10.1'

audit: $(AUDIT)  ## known vulnerabilities in the locked dependencies (requirements/*.lock) with pip-audit
	$(AUDIT) -r requirements/runtime.lock --require-hashes --disable-pip --strict --progress-spinner off $(AUDIT_ARGS)
	$(AUDIT) -r requirements/export.lock --require-hashes --disable-pip --strict --progress-spinner off $(AUDIT_ARGS)

image: $(STAMP) proto  ## build the service image with podman (localhost/mediasearch:dev)
	$(BIN)/python -m mediasearch.dev.image

image-test: $(STAMP) proto  ## build the image and run the chart's workloads from it (as uid 10001) through a search
	$(BIN)/python -m mediasearch.dev.image --test

TORCH_WHEELS ?= /opt/wheels
image-export: $(STAMP) proto  ## build the export image (the service image plus torch's CPU build from TORCH_WHEELS)
	$(BIN)/python -m mediasearch.dev.image --target export --tag localhost/mediasearch-export:dev --torch-wheels $(TORCH_WHEELS)

wheelhouse: $(STAMP) proto  ## only download the image's wheels into build/wheelhouse (then: docker build .)
	$(BIN)/python -m mediasearch.dev.image --wheelhouse-only

clean:  ## remove build outputs (keeps .venv)
	rm -rf $(OUT) build .pytest_cache .mypy_cache .ruff_cache
