"""The HTTP/JSON API's contract: /openapi.json against the proto (no field missing on either side,
every RPC a route), the error tree's HTTP statuses, and the signed image links."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from openapi_spec_validator import validate

from mediasearch import errors
from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.gateway.links import ImageLinks
from mediasearch.gateway.openapi import openapi_document
from mediasearch.rpc import http_status_for, status_for

_FD = FieldDescriptor
ROUTES = {  # RPC -> (method, path): the HTTP API's mirror of SearchService
    "SearchText": ("post", "/v1/search/text"),
    "SearchImage": ("post", "/v1/search/image"),
    "GetImage": ("get", "/v1/images/{id}"),
    "Stats": ("get", "/v1/stats"),
}


def _kind(field: FieldDescriptor) -> str:
    """What JSON a field is in proto3's JSON mapping, read off the descriptor alone."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return "object"
    if field.is_repeated:
        return "array"
    if field.message_type is not None:
        return "string" if field.message_type.full_name == "google.protobuf.Timestamp" else "ref"
    return {
        _FD.CPPTYPE_STRING: "string",
        _FD.CPPTYPE_BOOL: "boolean",
        _FD.CPPTYPE_INT32: "integer",
        _FD.CPPTYPE_UINT32: "integer",
        _FD.CPPTYPE_INT64: "int64",
        _FD.CPPTYPE_UINT64: "int64",
        _FD.CPPTYPE_FLOAT: "number",
        _FD.CPPTYPE_DOUBLE: "number",
    }[field.cpp_type]


def _schema_kind(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return "ref"
    if "anyOf" in schema or schema.get("format") == "int64":
        return "int64"
    kind: str = schema["type"]
    return kind


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document(auth=True)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_message_of_the_proto_has_a_schema_with_exactly_its_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    messages = dict(search_pb2.DESCRIPTOR.message_types_by_name)
    assert set(messages) <= set(schemas), set(messages) - set(schemas)
    for name, message in messages.items():
        properties = schemas[name]["properties"]
        fields = {f.json_name: f for f in message.fields}
        assert set(properties) == set(fields), (name, set(properties) ^ set(fields))
        for json_name, field in fields.items():
            assert _schema_kind(properties[json_name]) == _kind(field), (name, json_name)
            if field.message_type is not None and _kind(field) == "ref":
                assert properties[json_name]["$ref"].endswith("/" + field.message_type.name)


def test_every_rpc_is_a_route_whose_bodies_are_its_request_and_response(document: dict[str, Any]) -> None:
    service = search_pb2.DESCRIPTOR.services_by_name["SearchService"]
    assert {m.name for m in service.methods} == set(ROUTES)
    for method in service.methods:
        verb, path = ROUTES[method.name]
        operation = document["paths"][path][verb]
        assert operation["operationId"] == method.name
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.endswith("/" + method.output_type.name)
        if verb == "post":
            body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert body.endswith("/" + method.input_type.name)
        assert operation["security"] == [{"bearerAuth": []}]


def test_responses_list_every_field_and_requests_refuse_unknown_ones(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["SearchResponse"]["required"]) == set(schemas["SearchResponse"]["properties"])
    assert schemas["SearchTextRequest"]["additionalProperties"] is False
    assert schemas["SearchTextRequest"]["properties"]["topK"]["maximum"] == 100
    open_doc = openapi_document(auth=False, max_top_k=7)
    assert open_doc["paths"]["/v1/search/text"]["post"]["security"] == []
    assert open_doc["components"]["schemas"]["SearchImageRequest"]["properties"]["topK"]["maximum"] == 7


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInput("x"), 400),
        (errors.ImageError("x"), 400),
        (errors.Unauthenticated("x"), 401),
        (errors.PermissionDenied("x"), 403),
        (errors.NotFound("x"), 404),
        (errors.Conflict("x"), 409),
        (errors.Overloaded("x", retry_after_s=1.0), 429),
        (errors.Unavailable("x"), 503),
        (errors.DeadlineExceeded("x"), 504),
        (errors.CorruptData("x"), 500),
        (RuntimeError("x"), 500),
    ],
)
def test_the_error_tree_maps_to_the_http_status_of_its_grpc_code(error: Exception, status: int) -> None:
    assert http_status_for(status_for(error)) == status


def test_image_links_are_signed_per_image_expire_and_survive_a_key_rotation() -> None:
    now = [1_000_000.0]
    links = ImageLinks(
        ["current"], expiry_s=3600, base_url="https://search.example.com/", clock=lambda: now[0]
    )
    url = links.thumbnail_url(42)
    assert url.startswith("https://search.example.com/v1/images/42/thumbnail?expires=")
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    links.check(42, query["expires"], query["sig"])
    assert links.thumbnail_url(42) == url  # stable within its window: the browser caches it
    with pytest.raises(errors.PermissionDenied, match="not valid"):
        links.check(43, query["expires"], query["sig"])
    with pytest.raises(errors.PermissionDenied, match="not valid"):
        links.check(42, str(int(query["expires"]) + 1), query["sig"])
    with pytest.raises(errors.PermissionDenied, match="not signed"):
        links.check(42, None, None)
    rotated = ImageLinks(["next", "current"], expiry_s=3600, clock=lambda: now[0])
    rotated.check(42, query["expires"], query["sig"])  # the previous key still verifies
    now[0] += 3601
    with pytest.raises(errors.PermissionDenied, match="expired"):
        links.check(42, query["expires"], query["sig"])
