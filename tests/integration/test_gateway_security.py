"""The gateway as an attacker and an operator meet it: API keys and scopes, revocation, rate limits,
TLS and mTLS with certificate renewal, message-size limits, start-up refusals, secrets kept out of
logs. A real `mediasearch serve` (embedded, micro model) with certificates made at test time."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc
from mediasearch.cli import main
from mediasearch.dev.processes import Child, mediasearch_command, start_gateway
from mediasearch.metadata.api_keys import create_key
from mediasearch.metadata.db import make_engine, migrate, session_factory
from tests.support.certs import CA, Pair

TOKEN_SECRET = "tok-3f9a1c7e-never-in-logs"


@dataclass
class Secured:
    tmp: Path
    address: str
    db_url: str
    ca: CA
    server: Pair
    keys: dict[str, str]  # name -> key
    log: Path
    child: Child

    @property
    def http_address(self) -> str:
        return f"localhost:{self.child.http_port}"

    def https(
        self, method: str, path: str, key: str | None = None, client: Pair | None = None
    ) -> tuple[int, bytes]:
        """One HTTPS call to the gateway's HTTP port, verified against the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca.path))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        connection = http.client.HTTPSConnection(
            "localhost", self.child.http_port, context=context, timeout=10
        )
        try:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            body = b'{"text": "a red circle"}' if method == "POST" else None
            connection.request(method, path, body=body, headers=headers)
            reply = connection.getresponse()
            return reply.status, reply.read()
        finally:
            connection.close()

    def channel(self, *, tls: bool = True) -> grpc.Channel:
        if not tls:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.ca.path.read_bytes()))

    def stub(self, channel: grpc.Channel) -> search_pb2_grpc.SearchServiceStub:
        return search_pb2_grpc.SearchServiceStub(channel)


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _start(tmp: Path, env: dict[str, str], name: str = "gateway") -> tuple[Child, str]:
    child, port, _ = start_gateway(name, env, tmp)
    return child, f"localhost:{port}"  # the name the test certificates carry


def _env(tmp: Path, db_url: str, repository: Path, server: Pair, **more: str) -> dict[str, str]:
    return {
        "MEDIASEARCH_DATABASE_URL": db_url,
        "MEDIASEARCH_MODEL_REPOSITORY": str(repository),
        "MEDIASEARCH_SEGMENT_STORE_URL": (tmp / "segments").as_uri(),
        "MEDIASEARCH_SEGMENT_CACHE_DIR": str(tmp / "cache"),
        "MEDIASEARCH_GATEWAY_AUTH": "required",
        "MEDIASEARCH_GATEWAY_TOKEN_SECRET": TOKEN_SECRET,
        "MEDIASEARCH_GATEWAY_TLS_CERT": str(server.cert),
        "MEDIASEARCH_GATEWAY_TLS_KEY": str(server.key),
        "MEDIASEARCH_MAX_IMAGE_BYTES": str(1 << 20),
        "MEDIASEARCH_LOG_LEVEL": "DEBUG",
        **more,
    }


@pytest.fixture(scope="module")
def secured(micro_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("secured")
    db_url = f"sqlite:///{tmp / 'meta.db'}"
    engine = make_engine(db_url)
    migrate(engine)
    with session_factory(engine).begin() as session:
        keys = {
            "searcher": create_key(session, "searcher", ["search"]),
            "operator": create_key(session, "operator", ["admin"]),
            "slow": create_key(session, "slow", ["search"], rate_rps=0.5, burst=2),
        }
    engine.dispose()
    ca = CA(tmp / "pki")
    server = ca.issue("gateway")
    child, address = _start(tmp, _env(tmp, db_url, micro_repository, server))
    try:
        yield Secured(tmp, address, db_url, ca, server, keys, tmp / "gateway.log", child)
    finally:
        child.stop()


def _code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_plaintext_is_unavailable_and_tls_without_a_key_is_unauthenticated(secured: Secured) -> None:
    request = search_pb2.SearchTextRequest(text="a red circle")
    with secured.channel(tls=False) as channel:
        assert (
            _code(lambda: secured.stub(channel).SearchText(request, timeout=5)) == grpc.StatusCode.UNAVAILABLE
        )
    with secured.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            secured.stub(channel).SearchText(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <key>" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            secured.stub(channel).SearchText(request, timeout=5, metadata=_auth("ms_not-a-key"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == "the API key is not valid: it is unknown or was revoked"
        malformed = (("authorization", "Basic dXNlcjpwYXNz"),)
        assert _code(lambda: secured.stub(channel).SearchText(request, timeout=5, metadata=malformed)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


def test_a_search_key_searches_but_only_an_admin_key_reads_stats(secured: Secured) -> None:
    with secured.channel() as channel:
        stub = secured.stub(channel)
        response = stub.SearchText(
            search_pb2.SearchTextRequest(text="a red circle"),
            timeout=10,
            metadata=_auth(secured.keys["searcher"]),
        )
        assert response.request_id
        with pytest.raises(grpc.RpcError) as info:
            stub.Stats(search_pb2.StatsRequest(), timeout=5, metadata=_auth(secured.keys["searcher"]))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == "key 'searcher' has scope search; Stats needs scope admin"
        stats = stub.Stats(search_pb2.StatsRequest(), timeout=5, metadata=_auth(secured.keys["operator"]))
        assert stats.mode == "embedded"


def test_health_needs_no_key_and_reflection_is_off_by_default(secured: Secured) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with secured.channel() as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_new_key_works_at_once_and_a_revoked_one_is_refused_within_5_s(secured: Secured) -> None:
    request = search_pb2.SearchTextRequest(text="a blue square")
    engine = make_engine(secured.db_url)
    with session_factory(engine).begin() as session:
        key = create_key(session, "short-lived", ["search"])
    engine.dispose()
    with secured.channel() as channel:
        stub = secured.stub(channel)
        stub.SearchText(request, timeout=10, metadata=_auth(key))  # no wait for the next refresh
        assert main(["keys", "revoke", "short-lived", "--database-url", secured.db_url]) == 0
        revoked_at = time.monotonic()
        while _code(lambda: stub.SearchText(request, timeout=10, metadata=_auth(key))) == grpc.StatusCode.OK:
            assert time.monotonic() - revoked_at < 5.0, "a revoked key still works after 5 s"
            time.sleep(0.1)
        assert _code(lambda: stub.SearchText(request, timeout=10, metadata=_auth(key))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


def test_a_key_over_its_rate_gets_resource_exhausted_with_retry_after(secured: Secured) -> None:
    request = search_pb2.SearchTextRequest(text="a green triangle")
    with secured.channel() as channel:
        stub = secured.stub(channel)
        codes, refusal = [], None
        for _ in range(4):  # burst 2, 0.5 requests/s: the third and fourth are over
            try:
                stub.SearchText(request, timeout=10, metadata=_auth(secured.keys["slow"]))
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                refusal = exc
        assert codes[:2] == [grpc.StatusCode.OK] * 2
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[2:]
        assert refusal is not None and "rate limit of key 'slow'" in refusal.details()
        trailing = dict(refusal.trailing_metadata() or ())
        assert trailing.get("retry-after") in {"1", "2"}
        # the others' keys are not affected
        stub.SearchText(request, timeout=10, metadata=_auth(secured.keys["searcher"]))


def test_a_message_over_the_size_limit_is_refused_and_says_so(secured: Secured) -> None:
    image = b"\xff\xd8" + bytes(2 << 20)  # 2 MiB; the gateway takes images up to 1 MiB here
    with secured.channel() as channel, pytest.raises(grpc.RpcError) as info:
        secured.stub(channel).SearchImage(
            search_pb2.SearchImageRequest(image=image),
            timeout=10,
            metadata=_auth(secured.keys["searcher"]),
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()


def _served_cert(address: str, ca: Path) -> x509.Certificate:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_http_port_serves_tls_with_the_same_certificate_and_keys(secured: Secured) -> None:
    assert secured.https("GET", "/healthz") == (200, b'{"status":"SERVING"}')
    status, body = secured.https("POST", "/v1/search/text")
    assert status == 401 and json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    assert secured.https("POST", "/v1/search/text", secured.keys["searcher"])[0] == 200
    assert secured.https("GET", "/v1/stats", secured.keys["searcher"])[0] == 403
    plain = http.client.HTTPConnection("localhost", secured.child.http_port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")
        plain.getresponse().read()
    plain.close()


def test_a_renewed_certificate_is_served_without_a_restart(secured: Secured) -> None:
    before = _served_cert(secured.address, secured.ca.path)
    before_http = _served_cert(secured.http_address, secured.ca.path)
    assert before_http.serial_number == before.serial_number
    renewed = secured.ca.issue("gateway-renewed", common_name="gateway renewed")
    os.replace(renewed.key, secured.server.key)
    os.replace(renewed.cert, secured.server.cert)
    deadline = time.monotonic() + 10
    while True:
        after = _served_cert(secured.address, secured.ca.path)
        if after.serial_number != before.serial_number:
            break
        assert time.monotonic() < deadline, "the renewed certificate was not picked up"
        time.sleep(0.2)
    assert after.subject.rfc4514_string() == "CN=gateway renewed"
    assert _served_cert(secured.http_address, secured.ca.path).serial_number == after.serial_number
    with secured.channel() as channel:  # and the service still answers over it
        secured.stub(channel).SearchText(
            search_pb2.SearchTextRequest(text="a red circle"),
            timeout=10,
            metadata=_auth(secured.keys["searcher"]),
        )


def test_no_key_or_token_secret_reaches_the_log(secured: Secured) -> None:
    with secured.channel() as channel:
        stub = secured.stub(channel)
        for key in (*secured.keys.values(), "ms_wrong-key-also-secret"):
            _code(
                lambda k=key: stub.SearchText(
                    search_pb2.SearchTextRequest(text="x"), timeout=10, metadata=_auth(k)
                )
            )
        _code(
            lambda: stub.SearchText(
                search_pb2.SearchTextRequest(text=""), metadata=_auth(secured.keys["operator"])
            )
        )
    time.sleep(0.3)
    log = secured.log.read_text()
    assert "UNAUTHENTICATED" in log and "INVALID_ARGUMENT" in log, "the calls were not logged at all"
    for secret in (*secured.keys.values(), "ms_wrong-key-also-secret", TOKEN_SECRET):
        assert secret not in log


def test_mtls_refuses_a_caller_without_a_client_certificate(secured: Secured, micro_repository: Path) -> None:
    client_ca = CA(secured.tmp / "clients", name="client CA")
    client = client_ca.issue("client", server=False)
    env = _env(
        secured.tmp, secured.db_url, micro_repository, secured.server,
        MEDIASEARCH_GATEWAY_TLS_CLIENT_CA=str(client_ca.path),
    )  # fmt: skip
    child, address = _start(secured.tmp, env, name="mtls-gateway")
    request = search_pb2.SearchTextRequest(text="a red circle")
    key = _auth(secured.keys["searcher"])
    try:
        plain = grpc.ssl_channel_credentials(secured.ca.path.read_bytes())
        with grpc.secure_channel(address, plain) as channel:
            code = _code(
                lambda: search_pb2_grpc.SearchServiceStub(channel).SearchText(
                    request, timeout=5, metadata=key
                )
            )
            assert code == grpc.StatusCode.UNAVAILABLE
        mutual = grpc.ssl_channel_credentials(
            secured.ca.path.read_bytes(), client.key.read_bytes(), client.cert.read_bytes()
        )
        with grpc.secure_channel(address, mutual) as channel:
            search_pb2_grpc.SearchServiceStub(channel).SearchText(request, timeout=10, metadata=key)
        mtls = Secured(secured.tmp, address, secured.db_url, secured.ca, secured.server, secured.keys,
                       secured.log, child)  # fmt: skip
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            mtls.https("GET", "/healthz")  # the HTTP port asks for the client certificate too
        assert mtls.https("GET", "/healthz", client=client)[0] == 200
    finally:
        child.stop()


def _serve_fails(env: dict[str, str], *args: str) -> str:
    run = subprocess.run(
        mediasearch_command("serve", *args),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    return run.stderr


def test_start_up_refuses_an_exposed_gateway_without_keys_and_a_cluster_without_secrets(
    tmp_path: Path,
) -> None:
    db = {"MEDIASEARCH_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}"}
    err = _serve_fails({**db, "MEDIASEARCH_GATEWAY_AUTH": "off"}, "--host", "0.0.0.0")
    assert "refusing to serve 0.0.0.0 without API keys" in err and "--insecure" in err
    cluster = {**db, "MEDIASEARCH_SHARD_ADDRESSES": json.dumps(["127.0.0.1:1"])}
    assert "MEDIASEARCH_GATEWAY_TOKEN_SECRET is not set" in _serve_fails(cluster)
    err = _serve_fails({**cluster, "MEDIASEARCH_GATEWAY_TOKEN_SECRET": "k"})
    assert "MEDIASEARCH_GATEWAY_PRESIGN_URLS is not set" in err
    err = _serve_fails({**db, "MEDIASEARCH_GATEWAY_TLS_CERT": str(tmp_path / "missing.crt")})
    assert "give both the certificate and the key" in err
