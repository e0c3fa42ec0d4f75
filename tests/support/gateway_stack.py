"""The gateway tests' cluster: two shard-server processes and ``mediasearch serve`` over
PostgreSQL, the micro CLIP encoding a gallery of labelled scenes (half in a local folder, half in
moto's S3), API keys required as in production. The ``stack`` fixture (module scope) is
registered by tests/integration/conftest.py; the gRPC and the HTTP/JSON tests each get one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.client import SearchClient
from mediasearch.dev import emulated_aws
from mediasearch.dev.emulated_aws import ENV as AWS_ENV
from mediasearch.dev.processes import Child, mediasearch_command, start_gateway
from mediasearch.encoders import LocalEncoder
from mediasearch.export.micro.scenes import GalleryItem, read_gallery, write_gallery
from mediasearch.metadata.api_keys import create_key
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.vector_index.store import LocalFolderStore
from tests.support.gateway import publish_images
from tests.support.postgres import Postgres

N_SCENES = 120
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Stack:
    tmp: Path
    sessions: sessionmaker[Session]
    store: LocalFolderStore
    repository: Path
    model_version: str
    items: dict[int, GalleryItem]  # image id -> scene
    rows: dict[int, dict[str, object]]
    client: SearchClient
    shards: dict[int, tuple[Child, int]]  # shard -> (process, port)
    db_url: str
    metrics_port: int
    api_key: str  # the stack runs as production does: API keys required
    http: str = ""  # the gateway's HTTP/JSON API, http://127.0.0.1:PORT


def scene_rows(items: list[GalleryItem]) -> list[dict[str, object]]:
    rows = []
    for i, item in enumerate(items):
        local = i % 2 == 0
        rows.append(
            dict(
                bucket="local" if local else "archive",
                key=item.image.name if local else f"{'old' if i % 3 else 'new'}/{item.image.name}",
                content_type="image/jpeg" if i % 4 else "image/png",
                width=128,
                height=128,
                tags=[item.label.colour, item.label.shape],
                created=START + timedelta(days=i),
            )
        )
    return rows


def start_shard(stack_tmp: Path, shard: int, url: str, store: Path, port: int = 0) -> tuple[Child, int]:
    name = f"shard{shard}-{time.monotonic_ns()}"
    port_file = stack_tmp / f"{name}.port"
    argv = mediasearch_command(
        "shard-server", shard=shard, port=port, port_file=port_file, database_url=url,
        store_url=store.as_uri(), cache_dir=stack_tmp / "cache", poll_interval=0.3, workers=2,
    )  # fmt: skip
    child = Child(name, argv, log_path=stack_tmp / f"{name}.log").start()
    return child, child.wait_port_file(port_file, 60)[0]


@pytest.fixture(scope="module")
def stack(
    micro_repository: Path, tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, module_endpoint: str
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateway")
    write_gallery(tmp / "gallery", N_SCENES, seed=11)
    items = read_gallery(tmp / "gallery")
    s3 = emulated_aws.client("s3", module_endpoint)
    s3.create_bucket(Bucket="archive")
    for row, item in zip(scene_rows(items), items, strict=True):  # the S3 images' originals, in moto
        if row["bucket"] == "archive":
            s3.put_object(Bucket="archive", Key=row["key"], Body=item.image.read_bytes())

    async def encode() -> tuple[np.ndarray, str]:
        async with LocalEncoder(micro_repository) as encoder:
            vectors = (await encoder.encode_images([it.image.read_bytes() for it in items])).raise_first()
            return vectors, encoder.model_version

    vectors, version = asyncio.run(encode())
    with postgres() as url:
        engine = make_engine(url)
        migrate(engine)
        sessions = session_factory(engine)
        store = LocalFolderStore(tmp / "store")
        rows = scene_rows(items)
        ids = publish_images(sessions, store, vectors, rows, num_shards=2, model_version=version)
        shards = {s: start_shard(tmp, s, url, store.root) for s in (0, 1)}
        env = {
            "MEDIASEARCH_DATABASE_URL": url,
            "MEDIASEARCH_SHARD_ADDRESSES": json.dumps([f"127.0.0.1:{shards[s][1]}" for s in (0, 1)]),
            "MEDIASEARCH_MODEL_REPOSITORY": str(micro_repository),
            "MEDIASEARCH_ENCODER": "local",
            "MEDIASEARCH_ROUTER_ALLOW_PARTIAL": "true",
            "MEDIASEARCH_IMAGES_ROOT": str(tmp / "gallery"),
            "MEDIASEARCH_S3_ENDPOINT_URL": module_endpoint,
            "MEDIASEARCH_GATEWAY_MAX_TOP_K": "200",
            "MEDIASEARCH_GATEWAY_LOG_JSON": "true",
            "MEDIASEARCH_GATEWAY_TOKEN_SECRET": "test-page-token-key",
            "MEDIASEARCH_GATEWAY_PRESIGN_URLS": "true",
            "MEDIASEARCH_GATEWAY_REFLECTION": "true",
            **AWS_ENV,
        }
        with sessions.begin() as session:
            api_key = create_key(session, "gateway-tests", ["admin"])
        gateway, port, metrics_port = start_gateway("gateway", env, tmp)
        client = None
        try:
            client = SearchClient(f"127.0.0.1:{port}", timeout_s=10, api_key=api_key)
            client.wait_ready()
            yield Stack(
                tmp, sessions, store, micro_repository, version,
                {int(i): it for i, it in zip(ids, items, strict=True)},
                {int(i): r for i, r in zip(ids, rows, strict=True)},
                client, shards, url, metrics_port, api_key, f"http://127.0.0.1:{gateway.http_port}",
            )  # fmt: skip
        finally:
            if client is not None:
                client.close()
            gateway.stop()
            for child, _ in shards.values():
                child.stop()
            engine.dispose()
