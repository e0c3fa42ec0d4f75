"""The gateway's HTTP/JSON API against the same cluster as the gRPC tests (shard servers,
PostgreSQL, API keys required): one query path behind both protocols, the error mapping, keys and
limits, image uploads, signed thumbnail links, and schemathesis fuzzing of ``/openapi.json``."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from mediasearch.metadata.api_keys import create_key
from tests.support.gateway_stack import Stack

Reply = tuple[int, dict[str, str], bytes]


def _call(
    stack: Stack,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    key: str | None = "",
    headers: dict[str, str] | None = None,
) -> Reply:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Content-Type": "application/json", **(headers or {})}
    key = stack.api_key if key == "" else key
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(stack.http + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _json(reply: Reply, status: int = 200) -> dict[str, Any]:
    code, _headers, body = reply
    assert code == status, body[:500]
    result: dict[str, Any] = json.loads(body)
    return result


def _error(reply: Reply, status: int, code: str) -> str:
    error = _json(reply, status)["error"]
    assert error["code"] == code and error["status"] == status
    assert error["requestId"] and reply[1].get("x-request-id") == error["requestId"]
    message: str = error["message"]
    return message


def test_search_text_over_http_returns_what_grpc_returns_in_proto3_json(stack: Stack) -> None:
    over_grpc = stack.client.search_text("two red circles", top_k=8)
    body = _json(_call(stack, "POST", "/v1/search/text", {"text": "two red circles", "topK": 8}))
    assert [int(r["id"]) for r in body["results"]] == [r.id for r in over_grpc.results]
    assert [r["score"] for r in body["results"]] == pytest.approx([r.score for r in over_grpc.results])
    first = body["results"][0]
    assert isinstance(first["id"], str)  # proto3 JSON: int64 as a string
    assert set(first) >= {"id", "score", "bucket", "key", "url", "width", "height", "tags", "created"}
    assert set(first) >= {"contentType", "thumbnailUrl"}
    assert body["partial"] is False and body["modelVersion"] == over_grpc.model_version
    assert body["timings"]["totalMs"] > 0 and body["timings"]["rounds"] >= 1
    assert len(body["requestId"]) > 0
    # snake_case names (the proto's) are accepted too
    snake = _json(_call(stack, "POST", "/v1/search/text", {"text": "two red circles", "top_k": 8}))
    assert [r["id"] for r in snake["results"]] == [r["id"] for r in body["results"]]


def test_pages_over_http_follow_the_token_without_repeats(stack: Stack) -> None:
    whole = _json(_call(stack, "POST", "/v1/search/text", {"text": "blue squares", "topK": 12}))
    ids: list[str] = []
    token = ""
    for _ in range(3):
        page = _json(
            _call(stack, "POST", "/v1/search/text", {"text": "blue squares", "topK": 4, "pageToken": token})
        )
        ids += [r["id"] for r in page["results"]]
        token = page["nextPageToken"]
    assert ids == [r["id"] for r in whole["results"]] and len(set(ids)) == 12


def test_search_image_by_base64_by_multipart_upload_and_by_id(stack: Stack) -> None:
    image_id, item = next((i, it) for i, it in stack.items.items() if stack.rows[i]["bucket"] == "local")
    data = item.image.read_bytes()
    by_json = _json(
        _call(stack, "POST", "/v1/search/image", {"image": base64.b64encode(data).decode(), "topK": 3})
    )
    assert by_json["results"][0]["id"] == str(image_id) and by_json["results"][0]["score"] > 0.99
    boundary = uuid.uuid4().hex
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data
    form += f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="topK"\r\n\r\n3\r\n'.encode()
    form += f"--{boundary}--\r\n".encode()
    upload = _call(
        stack,
        "POST",
        "/v1/search/image",
        form,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert [r["id"] for r in _json(upload)["results"]] == [r["id"] for r in by_json["results"]]
    # a later page needs only the token: the picture is not sent again
    token = _json(upload)["nextPageToken"]
    second = _json(_call(stack, "POST", "/v1/search/image", {"pageToken": token, "topK": 3}))
    both = _json(
        _call(stack, "POST", "/v1/search/image", {"image": base64.b64encode(data).decode(), "topK": 6})
    )
    assert [r["id"] for r in _json(upload)["results"] + second["results"]] == [
        r["id"] for r in both["results"]
    ]
    assert _call(stack, "POST", "/v1/search/image", {"pageToken": token, "topK": 4})[0] == 400  # not the same
    like = _json(_call(stack, "POST", "/v1/search/image", {"imageId": str(image_id), "topK": 3}))
    assert str(image_id) not in {r["id"] for r in like["results"]} and len(like["results"]) == 3


def test_get_image_stats_health_and_the_openapi_document(stack: Stack) -> None:
    some = next(iter(stack.items))
    image = _json(_call(stack, "GET", f"/v1/images/{some}"))
    assert image["key"] == stack.rows[some]["key"] and image["id"] == str(some)
    stats = _json(_call(stack, "GET", "/v1/stats"))
    assert stats["mode"] == "cluster" and len(stats["shards"]) == 2 and int(stats["vectors"]) >= 120
    assert _json(_call(stack, "GET", "/healthz", key=None)) == {"status": "SERVING"}
    document = _json(_call(stack, "GET", "/openapi.json", key=None))
    assert document["openapi"].startswith("3.1") and "/v1/search/text" in document["paths"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_errors_map_to_http_statuses_with_a_json_body_naming_the_request_id(stack: Stack) -> None:
    assert "text is empty" in _error(
        _call(stack, "POST", "/v1/search/text", {"text": "  "}), 400, "INVALID_ARGUMENT"
    )
    assert "no field named" in _error(
        _call(stack, "POST", "/v1/search/text", {"text": "red", "colour": "blue"}), 400, "INVALID_ARGUMENT"
    )
    assert "not a valid" in _error(
        _call(stack, "POST", "/v1/search/text", b"{not json"), 400, "INVALID_ARGUMENT"
    )
    assert "no indexed image" in _error(_call(stack, "GET", "/v1/images/999999999"), 404, "NOT_FOUND")
    assert "needs an API key" in _error(
        _call(stack, "POST", "/v1/search/text", {"text": "red"}, key=None), 401, "UNAUTHENTICATED"
    )
    assert "not valid" in _error(
        _call(stack, "POST", "/v1/search/text", {"text": "red"}, key="wrong"), 401, "UNAUTHENTICATED"
    )
    with stack.sessions.begin() as session:
        searcher = create_key(session, f"http-search-{uuid.uuid4().hex[:6]}", ["search"])
        slow = create_key(session, f"http-slow-{uuid.uuid4().hex[:6]}", ["search"], rate_rps=0.2, burst=1)
    assert "needs scope admin" in _error(
        _call(stack, "GET", "/v1/stats", key=searcher), 403, "PERMISSION_DENIED"
    )
    assert _call(stack, "GET", "/v1/images/1", key=slow)[0] in (200, 404)
    limited = _call(stack, "GET", "/v1/images/1", key=slow)
    _error(limited, 429, "RESOURCE_EXHAUSTED")
    assert int(limited[1]["retry-after"]) >= 1
    # a body over the limit is refused from its declared length, before it is read
    host, port = stack.http.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    connection.putrequest("POST", "/v1/search/text")
    for name, value in (("Content-Length", str(8 << 20)), ("Authorization", f"Bearer {stack.api_key}")):
        connection.putheader(name, value)
    connection.endheaders()
    too_large = connection.getresponse()
    assert too_large.status == 413 and json.loads(too_large.read())["error"]["status"] == 413
    connection.close()
    # the request id the caller sends is the one logged and returned
    mine = _call(stack, "GET", "/v1/images/999999999", headers={"x-request-id": "trace-me-42"})
    assert json.loads(mine[2])["error"]["requestId"] == "trace-me-42"


def test_thumbnail_links_are_signed_per_image_and_serve_webp_without_a_key(stack: Stack) -> None:
    query = {"text": "three yellow stars", "topK": 2, "filters": {"bucket": "local"}}
    body = _json(_call(stack, "POST", "/v1/search/text", query))
    first, second = body["results"]
    status, headers, data = _call(stack, "GET", first["thumbnailUrl"], key=None)
    assert status == 200 and headers["content-type"] == "image/webp" and data[:4] == b"RIFF"
    assert "private" in headers["cache-control"]
    original = _call(stack, "GET", first["thumbnailUrl"].replace("/thumbnail?", "/original?"), key=None)
    assert original[0] == 200 and len(original[2]) > 0
    # another image's signature, a tampered expiry, no signature: refused
    query = second["thumbnailUrl"].split("?", 1)[1]
    assert _call(stack, "GET", f"/v1/images/{first['id']}/thumbnail?{query}", key=None)[0] == 403
    expires = int(first["thumbnailUrl"].split("expires=")[1].split("&")[0])
    tampered = first["thumbnailUrl"].replace(f"expires={expires}", f"expires={expires + 3600}")
    assert _call(stack, "GET", tampered, key=None)[0] == 403
    assert _call(stack, "GET", f"/v1/images/{first['id']}/thumbnail", key=None)[0] == 403
    # a key works instead of a signature
    assert _call(stack, "GET", f"/v1/images/{first['id']}/thumbnail")[0] == 200


def test_the_search_page_is_served_with_a_content_security_policy(stack: Stack) -> None:
    status, headers, page = _call(stack, "GET", "/", key=None)
    assert status == 200 and page.lower().startswith(b"<!doctype html")
    assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, script = _call(stack, "GET", "/static/app.js", key=None)
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"import" in script
    again = _call(stack, "GET", "/static/app.js", key=None, headers={"If-None-Match": headers["etag"]})
    assert again[0] == 304 and again[2] == b""
    assert _call(stack, "GET", "/static/../http_api.py", key=None)[0] == 404
    assert _call(stack, "GET", "/static/nothing.js", key=None)[0] == 404


def test_schemathesis_finds_no_server_error_and_no_response_outside_the_schema(stack: Stack) -> None:
    """Property-based requests from /openapi.json (coverage and fuzzing phases, a small budget):
    no 5xx, every status documented, every body and header as the schema says, 405s with Allow.
    Not checked: that every schema-valid request is accepted (an image's bytes must decode and a
    page token must be one the service issued, which a schema cannot say)."""
    started = time.monotonic()
    run = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "schemathesis"),
            "run",
            f"{stack.http}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance,negative_data_rejection",
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            "25",
            "--workers",
            "2",
            "--seed",
            "18",
            "--header",
            f"Authorization: Bearer {stack.api_key}",
            "--request-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and time.monotonic() - started < 300


def test_a_keep_alive_connection_is_not_held_up_by_delayed_acks(stack: Stack) -> None:
    """Responses are written as headers then body: without TCP_NODELAY on the accepted sockets each
    request after a connection's first waited out the client's delayed ACK (40 ms on Linux)."""
    host, port = stack.http.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    took = []
    for _ in range(7):
        started = time.perf_counter()
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b'{"status":"SERVING"}'
        took.append(time.perf_counter() - started)
    connection.close()
    assert sorted(took)[3] < 0.03, took
