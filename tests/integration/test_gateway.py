"""The search gateway (`mediasearch serve`) against real shard servers and PostgreSQL.

The gateway and two shard servers run as processes on free loopback ports; the micro CLIP encodes
queries (in the gateway, ONNX Runtime) and the indexed scenes, so semantic answers can be judged
with the scenes' labels. Errors, paging, filters, partial results, metrics and stats go through
the real gRPC API.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from datetime import timedelta

import numpy as np
import pytest

from mediasearch.client import SearchClient
from mediasearch.encoders import LocalEncoder
from mediasearch.errors import DeadlineExceeded, InvalidInput, NotFound, Unavailable
from mediasearch.export.micro.scenes import (
    label_matches,
    parse_query,
)
from tests.support.gateway import publish_images
from tests.support.gateway_stack import N_SCENES, START, Stack, start_shard


def test_search_text_returns_matching_scenes_best_first_with_their_metadata(stack: Stack) -> None:
    pairs: dict[tuple[str, str], int] = {}
    for item in stack.items.values():
        pairs[(item.label.colour, item.label.shape)] = pairs.get((item.label.colour, item.label.shape), 0) + 1
    (colour, shape), count = max(pairs.items(), key=lambda kv: kv[1])
    text = f"{colour} {shape}s"
    response = stack.client.search_text(text, top_k=3)
    assert not response.partial and response.model_version == stack.model_version
    assert len(response.results) == 3
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    query = parse_query(text)
    matching = [r for r in response.results if label_matches(stack.items[r.id].label, query)]
    assert len(matching) >= 2, (text, count, [stack.items[r.id].caption for r in response.results])
    top = response.results[0]
    row = stack.rows[top.id]
    assert (top.bucket, top.key, top.width, list(top.tags)) == (row["bucket"], row["key"], 128, row["tags"])
    assert top.created == row["created"]
    assert top.url.startswith("file://" if top.bucket == "local" else "http://")
    assert response.timings_ms["total"] > 0 and response.request_id


def test_pages_concatenate_to_the_single_page_ranking_without_repeats_or_skips(stack: Stack) -> None:
    whole = [r.id for r in stack.client.search_text("small blue shapes", top_k=N_SCENES).results]
    assert sorted(whole) == sorted(stack.items)
    paged, token = [], None
    while True:
        response = stack.client.search_text("small blue shapes", top_k=7, page_token=token)
        paged += [r.id for r in response.results]
        token = response.next_page_token
        if not token:
            break
    assert paged == whole


def test_later_pages_leave_out_images_indexed_after_the_first_page(stack: Stack) -> None:
    text = "three green triangles"
    first = stack.client.search_text(text, top_k=5)

    async def encode() -> np.ndarray:
        async with LocalEncoder(stack.repository) as encoder:
            return await encoder.encode_texts([text])

    vector = asyncio.run(encode())
    new = publish_images(
        stack.sessions, stack.store, np.repeat(vector, 2, axis=0),
        [dict(bucket="archive", key=f"late/{i}.jpg", tags=["late"]) for i in range(2)],
        num_shards=2, model_version=stack.model_version,
    )  # fmt: skip
    deadline = time.monotonic() + 5
    while (fresh := stack.client.search_text(text, top_k=2)).results[0].id not in new:
        assert time.monotonic() < deadline, "the new images were never served"
        time.sleep(0.1)
    assert {r.id for r in fresh.results} == set(new.tolist())
    second = stack.client.search_text(text, top_k=5, page_token=first.next_page_token)
    assert not set(new.tolist()) & {r.id for r in second.results}
    before = [r.id for r in stack.client.search_text(text, top_k=12).results if r.id not in new]
    assert [r.id for r in first.results + second.results] == before[:10]


@pytest.mark.parametrize(
    "filters",
    [
        {"tags_all": ["circle", "yellow"]},
        {"tags_any": ["yellow", "purple"]},
        {"bucket": "archive", "key_prefix": "new/"},
        {"content_types": ["image/png"]},
        {"created_after": START + timedelta(days=30), "created_before": START + timedelta(days=50)},
    ],
)
def test_filters_return_top_k_matches_whenever_that_many_exist(stack: Stack, filters: dict) -> None:
    def ok(row: dict) -> bool:
        tags = set(row["tags"])  # type: ignore[arg-type]
        return (
            set(filters.get("tags_all", ())) <= tags
            and (not filters.get("tags_any") or bool(tags & set(filters["tags_any"])))
            and row["bucket"] == filters.get("bucket", row["bucket"])
            and str(row["key"]).startswith(filters.get("key_prefix", ""))
            and row["content_type"] in filters.get("content_types", [row["content_type"]])
            and filters.get("created_after", START) <= row["created"]  # type: ignore[operator]
            and row["created"] < filters.get("created_before", START + timedelta(days=999))  # type: ignore[operator]
        )

    matching = {i for i, row in stack.rows.items() if ok(row)}
    assert len(matching) >= 3
    top_k = min(8, len(matching))
    response = stack.client.search_text("a large shape on a white background", top_k=top_k, **filters)
    assert len(response.results) == top_k
    assert {r.id for r in response.results} <= matching
    everything = stack.client.search_text("a large shape", top_k=len(matching) + 5, **filters)
    assert {r.id for r in everything.results} == matching and not everything.next_page_token


def test_min_score_drops_weaker_results(stack: Stack) -> None:
    results = stack.client.search_text("a red circle", top_k=50).results
    floor = results[10].score
    kept = stack.client.search_text("a red circle", top_k=50, min_score=floor).results
    assert kept and all(r.score >= floor for r in kept) and len(kept) <= 11 + 5


def test_search_image_by_bytes_and_more_like_this(stack: Stack) -> None:
    image_id, item = next((i, it) for i, it in stack.items.items() if stack.rows[i]["bucket"] == "local")
    by_bytes = stack.client.search_image(item.image.read_bytes(), top_k=3)
    assert by_bytes.results[0].id == image_id and by_bytes.results[0].score > 0.99
    like = stack.client.search_image(image_id=image_id, top_k=3)
    assert image_id not in {r.id for r in like.results} and len(like.results) == 3
    assert like.results[0].id == by_bytes.results[1].id


def test_get_image_and_stats(stack: Stack) -> None:
    some = next(iter(stack.items))
    assert stack.client.get_image(some).key == stack.rows[some]["key"]
    with pytest.raises(NotFound):
        stack.client.get_image(10**12)
    stats = stack.client.stats()
    assert stats.mode == "cluster" and len(stats.shards) == 2 and all(s.available for s in stats.shards)
    assert stats.index_generation == 0  # 120 vectors: the exact layout, no generation yet
    assert stats.vectors >= N_SCENES and stats.images_by_status["indexed"] >= N_SCENES


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.search_text("   "), "text is empty"),
        (lambda c: c.search_text("red " * 300), "characters; at most 1000"),
        (lambda c: c.search_text("red", top_k=201), "top_k must be between 1 and 200"),
        (lambda c: c.search_text("red", top_k=-1), "top_k must be between"),
        (lambda c: c.search_text("red", page_token="not-a-token"), "page_token is not a token"),
        (lambda c: c.search_image(b"definitely not an image"), "image"),
        (lambda c: c.search_image(b""), "give an image"),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_readable_message(stack: Stack, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="INVALID_ARGUMENT") as info:
        call(stack.client)
    assert message in str(info.value)


def test_a_page_token_of_another_query_is_refused(stack: Stack) -> None:
    token = stack.client.search_text("red circles", top_k=2).next_page_token
    with pytest.raises(InvalidInput, match="different request"):
        stack.client.search_text("blue squares", top_k=2, page_token=token)


def test_a_passed_deadline_is_deadline_exceeded(stack: Stack) -> None:
    client = SearchClient(stack.client.address, timeout_s=0.0005, api_key=stack.api_key)
    try:
        with pytest.raises(DeadlineExceeded):
            client.search_text("two red circles")
    finally:
        client.close()


def test_metrics_count_requests_by_status_and_time_every_stage(stack: Stack) -> None:
    stack.client.search_text("a purple star")
    with pytest.raises(InvalidInput):
        stack.client.search_text("")
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    requests = "mediasearch_gateway_requests_total"
    assert f'{requests}{{code="OK",method="SearchText",protocol="grpc"}}' in text
    assert f'{requests}{{code="INVALID_ARGUMENT",method="SearchText",protocol="grpc"}}' in text
    for stage in ("encode", "search", "merge", "metadata"):
        count = [
            ln
            for ln in text.splitlines()
            if ln.startswith(f'mediasearch_gateway_stage_seconds_count{{stage="{stage}"}}')
        ]
        assert count and float(count[0].split()[-1]) > 0


def test_partial_when_one_shard_server_is_down_unavailable_when_all_are_and_full_after_restart(
    stack: Stack,
) -> None:
    proc1, port1 = stack.shards[1]
    proc1.kill()
    proc1.wait()
    response = stack.client.search_text("orange squares", top_k=5)
    assert response.partial and response.results
    proc0, _ = stack.shards[0]
    proc0.stop()
    with pytest.raises(Unavailable, match="UNAVAILABLE"):
        stack.client.search_text("orange squares", top_k=5)
    stack.shards[0] = start_shard(stack.tmp, 0, stack.db_url, stack.store.root, port=stack.shards[0][1])
    stack.shards[1] = start_shard(stack.tmp, 1, stack.db_url, stack.store.root, port=port1)
    deadline = time.monotonic() + 15
    while True:
        try:
            if not stack.client.search_text("orange squares", top_k=5).partial:
                break
        except Unavailable:
            pass
        assert time.monotonic() < deadline, "never full again after the restart"
        time.sleep(0.2)


def test_health_needs_no_key_and_reflection_is_served_when_enabled(stack: Stack) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(stack.client.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "mediasearch.v1.SearchService"):
            status = check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"mediasearch.v1.SearchService", "grpc.health.v1.Health"} <= services


def test_query_command_prints_a_ranked_table_and_writes_a_contact_sheet(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from mediasearch.cli import main

    sheet = stack.tmp / "sheet.png"
    argv = [
        "query",
        "two red circles",
        "--address",
        stack.client.address,
        "--top-k",
        "4",
        "--sheet",
        str(sheet),
        "--api-key",
        stack.api_key,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "“two red circles”" in out and "contact sheet:" in out
    expected = stack.client.search_text("two red circles", top_k=4).results
    for r in expected:
        assert str(r.id) in out
    with Image.open(sheet) as img:
        assert img.width >= 4 * 150  # four tiles side by side
    assert main(["query", "--address", stack.client.address]) == 2  # neither text, --image nor --like


def test_log_lines_are_json_with_the_request_id(stack: Stack) -> None:
    with pytest.raises(InvalidInput):
        stack.client.search_text("")
    deadline = time.monotonic() + 5
    while True:
        lines = [
            json.loads(ln)
            for ln in (stack.tmp / "gateway.log").read_text().splitlines()
            if ln.startswith("{")
        ]
        refused = [ln for ln in lines if "SearchText -> INVALID_ARGUMENT" in ln["msg"]]
        if refused:
            break
        assert time.monotonic() < deadline, "no log line for the refused request"
        time.sleep(0.1)
    assert len(refused[-1]["request_id"]) == 16 and refused[-1]["level"] == "INFO"
