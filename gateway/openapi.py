"""The HTTP/JSON API's OpenAPI 3.1 document, generated from the proto's descriptors.

The request and response bodies are the ``mediasearch.v1`` messages in proto3's JSON mapping
(what :mod:`google.protobuf.json_format` reads and writes), so the schemas are derived from the
same descriptors the gRPC stubs are: a field added to the proto appears here without an edit.
Per the mapping: field names are lowerCamelCase (``topK``; the proto's ``top_k`` is accepted in
requests too), 64-bit integers are JSON strings in responses (requests may send numbers),
``bytes`` are base64 strings, ``google.protobuf.Timestamp`` is an RFC 3339 string, and every field
of a response is present, default values included.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from mediasearch._proto.mediasearch.v1 import search_pb2

_FD = FieldDescriptor
_INT32 = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32, _FD.TYPE_UINT32, _FD.TYPE_FIXED32}
_INT64 = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}
_REF = "#/components/schemas/"
# messages clients send: they refuse fields that are not in the proto
REQUESTS = ("SearchTextRequest", "SearchImageRequest", "Filters")
ERROR_STATUSES = {
    "400": "INVALID_ARGUMENT: a field is wrong (the message says which); the body is not JSON",
    "401": "UNAUTHENTICATED: no API key, or one that is unknown or revoked",
    "403": "PERMISSION_DENIED: the key lacks the scope, or an image link is not valid",
    "404": "NOT_FOUND: no indexed image with that id",
    "413": "the request body is larger than the gateway accepts",
    "415": "the body is not application/json (or multipart/form-data for an image upload)",
    "429": "RESOURCE_EXHAUSTED: the key's rate limit or the gateway's queue; see Retry-After",
    "503": "UNAVAILABLE: the encoder, the shards or the database cannot be reached now",
    "504": "DEADLINE_EXCEEDED: the search ran out of time",
}


def _field_schema(field: FieldDescriptor, response: bool) -> dict[str, Any]:
    if field.type == _FD.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            return {
                "type": "object",
                "additionalProperties": _field_schema(entry.fields_by_name["value"], response),
            }
        if entry.full_name == "google.protobuf.Timestamp":
            item: dict[str, Any] = {"type": "string", "format": "date-time"}
        else:
            item = {"$ref": _REF + entry.name}
    elif field.type in _INT64:
        item = (
            {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
            if response
            else {
                "anyOf": [{"type": "integer", "format": "int64"}, {"type": "string", "pattern": "^-?[0-9]+$"}]
            }
        )
    elif field.type in _INT32:
        item = {"type": "integer", "format": "int32"}
    elif field.type in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
        item = {"type": "number", "format": "float" if field.type == _FD.TYPE_FLOAT else "double"}
    elif field.type == _FD.TYPE_BOOL:
        item = {"type": "boolean"}
    elif field.type == _FD.TYPE_BYTES:
        item = {"type": "string", "format": "byte", "contentEncoding": "base64"}
    else:
        item = {"type": "string"}
    if field.is_repeated:
        return {"type": "array", "items": item}
    return item


def message_schema(message: Descriptor, response: bool) -> dict[str, Any]:
    """The JSON Schema of one message in proto3's JSON mapping."""
    properties = {f.json_name: _field_schema(f, response) for f in message.fields}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if response:
        schema["required"] = [f.json_name for f in message.fields if f.containing_oneof is None]
    else:
        schema["additionalProperties"] = False
    oneofs = [o for o in message.oneofs if len(o.fields) > 1]
    for oneof in oneofs:
        names = ", ".join(f.json_name for f in oneof.fields)
        schema["description"] = f"at most one of {names}"
    return schema


def _messages() -> dict[str, Descriptor]:
    out: dict[str, Descriptor] = {}
    pending = list(search_pb2.DESCRIPTOR.message_types_by_name.values())
    while pending:
        message = pending.pop()
        if message.GetOptions().map_entry or message.full_name.startswith("google.protobuf."):
            continue
        out[message.name] = message
        pending.extend(f.message_type for f in message.fields if f.message_type is not None)
    return out


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF + ref}}}


def _operation(
    summary: str,
    rpc: str,
    ok: str | dict[str, Any],
    *,
    errors: tuple[str, ...],
    redirect: dict[str, Any] | None = None,
) -> dict[str, Any]:
    content = _json(ok) if isinstance(ok, str) else ok
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    if redirect is not None:
        responses["307"] = redirect
    for status in errors:
        responses[status] = {
            "description": ERROR_STATUSES[status],
            "content": _json("Error"),
            **({"headers": {"Retry-After": {"schema": {"type": "integer"}}}} if status == "429" else {}),
        }
    return {"summary": summary, "operationId": rpc, "responses": responses}


_COMMON = ("401", "403", "429", "503")


def _constrain(schemas: dict[str, Any], max_top_k: int, max_query_chars: int) -> None:
    """What the gateway checks beyond the types, where a schema can say it."""
    text = schemas["SearchTextRequest"]
    text["required"] = ["text"]
    text["properties"]["text"] |= {"minLength": 1, "maxLength": max_query_chars, "pattern": "\\S"}
    image = schemas["SearchImageRequest"]
    image["description"] = "exactly one of image (base64) and imageId"
    for name in ("SearchTextRequest", "SearchImageRequest"):
        schemas[name]["properties"]["topK"] |= {
            "minimum": 0,
            "maximum": max_top_k,
            "description": f"1..{max_top_k}; 0 or absent: 10",
        }


def openapi_document(*, auth: bool, max_top_k: int = 100, max_query_chars: int = 1000) -> dict[str, Any]:
    """The whole document; ``auth``: the search and image routes need ``Authorization: Bearer``;
    the limits are the gateway's settings (``MEDIASEARCH_GATEWAY_MAX_TOP_K``, ``..._MAX_QUERY_CHARS``)."""
    messages = _messages()
    schemas: dict[str, Any] = {
        name: message_schema(d, response=name not in REQUESTS) for name, d in sorted(messages.items())
    }
    _constrain(schemas, max_top_k, max_query_chars)
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "message", "requestId"],
                "properties": {
                    "code": {"type": "string", "description": "the gRPC status name, e.g. INVALID_ARGUMENT"},
                    "status": {"type": "integer"},
                    "message": {"type": "string"},
                    "requestId": {"type": "string", "description": "quote it when reporting a problem"},
                },
            }
        },
    }
    secured: list[dict[str, list[str]]] = [{"bearerAuth": []}] if auth else []
    redirect = {
        "description": "the original is in S3: its presigned URL",
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
    image_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 2**63 - 1},
    }
    link = [
        image_id,
        {"name": "expires", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "sig", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    upload = {
        "type": "object",
        "properties": {
            "image": {
                "type": "string",
                "format": "binary",
                "description": "the picture (JPEG, PNG, WebP, ...)",
            },
            "imageId": {"type": "string", "description": "or an indexed image's id"},
            "topK": {"type": "string"},
            "minScore": {"type": "string"},
            "pageToken": {"type": "string"},
            "filters": {"type": "string", "description": "a Filters object as JSON text"},
        },
    }
    search_errors = ("400", *_COMMON, "413", "415", "504")
    paths: dict[str, Any] = {
        "/v1/search/text": {
            "post": {
                **_operation(
                    "SearchText: the images that best match a sentence",
                    "SearchText",
                    "SearchResponse",
                    errors=search_errors,
                ),
                "requestBody": {"required": True, "content": _json("SearchTextRequest")},
                "security": secured,
            }
        },
        "/v1/search/image": {
            "post": {
                **_operation(
                    "SearchImage: the images that look most like a picture, or like an indexed "
                    "image (more like this)",
                    "SearchImage",
                    "SearchResponse",
                    errors=(*search_errors, "404"),
                ),
                "requestBody": {
                    "required": True,
                    "content": {**_json("SearchImageRequest"), "multipart/form-data": {"schema": upload}},
                },
                "security": secured,
            }
        },
        "/v1/images/{id}": {
            "get": {
                **_operation(
                    "GetImage: one indexed image's metadata",
                    "GetImage",
                    "ImageResult",
                    errors=("400", *_COMMON, "404"),
                ),
                "parameters": [image_id],
                "security": secured,
            }
        },
        "/v1/images/{id}/thumbnail": {
            "get": {
                **_operation(
                    "A small WebP of the image (a result's thumbnailUrl is signed: no key needed)",
                    "GetThumbnail",
                    {"image/webp": {"schema": {"type": "string", "format": "binary"}}},
                    errors=("400", *_COMMON, "404"),
                ),
                "parameters": link,
            }
        },
        "/v1/images/{id}/original": {
            "get": {
                **_operation(
                    "The image itself (signed like thumbnailUrl; redirects to a presigned S3 URL)",
                    "GetOriginal",
                    {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    errors=("400", *_COMMON, "404"),
                    redirect=redirect,
                ),
                "parameters": link,
            }
        },
        "/v1/stats": {
            "get": {
                **_operation(
                    "Stats: vectors per shard, images by status, model version (scope admin)",
                    "Stats",
                    "StatsResponse",
                    errors=_COMMON,
                ),
                "security": secured,
            }
        },
        "/healthz": {
            "get": {
                "summary": "Serving or not (no key needed): load balancers and probes",
                "operationId": "Health",
                "security": [],
                "responses": {
                    "200": {"description": "serving", "content": _json("Health")},
                    "503": {"description": "shutting down", "content": _json("Health")},
                },
            }
        },
    }
    schemas["Health"] = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]}},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "mediasearch",
            "version": "v1",
            "description": "Text-to-image search over HTTP/JSON: mediasearch.v1.SearchService one to one, "
            "in proto3's JSON mapping (docs/http-api.md).",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "mediasearch keys create"}
        }
    return document
