"""API keys (storage, scopes, rate limits), the gateway's start-up security rules, token key rotation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.cli import main
from mediasearch.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
)
from mediasearch.gateway.auth import Authorizer, KeyCache, RateLimiter, bearer
from mediasearch.gateway.paging import PageToken, decode_token, encode_token
from mediasearch.gateway.security import GatewaySecurity, is_loopback
from mediasearch.metadata.api_keys import ApiKey, create_key, hash_key, list_keys, revoke_key
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.settings import Settings


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    migrate(engine)
    return session_factory(engine)


def test_a_key_is_stored_only_as_its_hash_and_listed_without_it(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        key = create_key(s, "web", ["search"], rate_rps=5, burst=10)
    assert key.startswith("ms_") and len(key) > 40
    with sessions() as s:
        (listed,) = list_keys(s)
    assert listed.key_hash == hash_key(key) and key not in repr(listed)
    assert (listed.name, listed.scopes, listed.rate_rps, listed.burst) == ("web", ("search",), 5, 10)
    assert key.startswith(listed.prefix)


def test_key_names_scopes_and_duplicates_are_checked(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        create_key(s, "web", ["search"])
    for name, scopes, error in [
        ("web", ["search"], Conflict),
        ("has space", ["search"], InvalidInput),
        ("ok", ["root"], InvalidInput),
        ("ok", [], InvalidInput),
    ]:
        with pytest.raises(error), sessions.begin() as s:
            create_key(s, name, scopes)
    with pytest.raises(NotFound), sessions.begin() as s:
        revoke_key(s, "nobody")


def test_a_revoked_name_can_be_used_again_and_stays_listed_as_revoked(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        create_key(s, "web", ["search"])
    with sessions.begin() as s:
        revoke_key(s, "web")
    with sessions.begin() as s:
        create_key(s, "web", ["admin"])
    with sessions() as s:
        keys = list_keys(s)
        active = list_keys(s, include_revoked=False)
    assert [(k.name, k.revoked is not None) for k in keys] == [("web", True), ("web", False)]
    assert [k.scopes for k in active] == [("admin",)]


def _key(name: str, scopes: tuple[str, ...], rate: float | None = None, burst: int | None = None) -> ApiKey:
    from datetime import UTC, datetime

    return ApiKey(name, f"h-{name}", "ms_x", scopes, rate, burst, datetime.now(UTC), None, None)


def test_the_rate_limiter_allows_the_burst_then_says_when_to_retry() -> None:
    now = [100.0]
    limiter = RateLimiter(rate_rps=2.0, burst=3, clock=lambda: now[0])
    key = _key("k", ("search",))
    for _ in range(3):
        limiter.check(key)
    with pytest.raises(Overloaded) as info:
        limiter.check(key)
    assert info.value.retry_after_s == pytest.approx(0.5)
    now[0] += 0.5
    limiter.check(key)  # refilled one
    limiter.check(_key("other", ("search",)))  # each key has its own bucket
    unlimited = _key("batch", ("search",), rate=0)
    for _ in range(100):
        limiter.check(unlimited)


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ((("authorization", "Bearer ms_abc"),), "ms_abc"),
        ((("authorization", "bearer   ms_abc  "),), "ms_abc"),
        ((("authorization", "Basic ms_abc"),), None),
        ((("authorization", "Bearer "),), None),
        ((("x-api-key", "ms_abc"),), None),
        ((), None),
    ],
)
def test_bearer_reads_only_an_authorization_bearer_header(metadata: tuple, key: str | None) -> None:
    assert bearer(metadata) == key


def test_scopes_decide_each_method_and_health_is_open(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        search = create_key(s, "searcher", ["search"])
        admin = create_key(s, "operator", ["admin"])

    async def decide(method: str, key: str | None) -> str:
        cache = KeyCache(sessions)
        await cache.refresh()
        authorizer = Authorizer(cache, RateLimiter(0, 1))
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        try:
            await authorizer.authorize(f"/mediasearch.v1.SearchService/{method}", metadata)
            return "ok"
        except Unauthenticated:
            return "unauthenticated"
        except PermissionDenied:
            return "denied"

    async def all_cases() -> dict[tuple[str, str], str]:
        out = {}
        for method in ("SearchText", "SearchImage", "GetImage", "Stats"):
            for who, key in (("search", search), ("admin", admin), ("none", None), ("bad", "ms_nope")):
                out[(method, who)] = await decide(method, key)
        return out

    got = asyncio.run(all_cases())
    for method in ("SearchText", "SearchImage", "GetImage"):
        assert got[(method, "search")] == got[(method, "admin")] == "ok"
    assert got[("Stats", "search")] == "denied" and got[("Stats", "admin")] == "ok"
    assert {got[(m, w)] for m in ("SearchText", "Stats") for w in ("none", "bad")} == {"unauthenticated"}

    async def health() -> None:
        authorizer = Authorizer(KeyCache(sessions), RateLimiter(0, 1))
        assert await authorizer.authorize("/grpc.health.v1.Health/Check", ()) is None

    asyncio.run(health())


def _settings(**changes: object) -> Settings:
    return Settings.defaults().with_overrides(**changes)


CLUSTER = {"shard_addresses": ("127.0.0.1:7001",)}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (CLUSTER, "MEDIASEARCH_GATEWAY_TOKEN_SECRET"),
        ({**CLUSTER, "gateway_token_secret": "k"}, "MEDIASEARCH_GATEWAY_PRESIGN_URLS"),
        ({"gateway_host": "0.0.0.0"}, "--insecure"),
        ({"gateway_host": "search.example.com", "gateway_auth": "off"}, "--insecure"),
        ({"gateway_tls_cert": Path("/x.crt")}, "give both the certificate and the key"),
        ({"gateway_tls_client_ca": Path("/ca.pem")}, "MEDIASEARCH_GATEWAY_TLS_CLIENT_CA needs"),
    ],
)
def test_the_gateway_refuses_to_start_insecurely_and_names_the_setting(changes: dict, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        GatewaySecurity.from_settings(_settings(**changes))
    assert named in str(info.value)


def test_defaults_require_keys_in_cluster_mode_and_not_on_an_embedded_loopback() -> None:
    cluster = GatewaySecurity.from_settings(
        _settings(**CLUSTER, gateway_token_secret="k", gateway_presign_urls=False)
    )
    assert cluster.auth_required and not cluster.presign_urls
    embedded = GatewaySecurity.from_settings(_settings())
    assert not embedded.auth_required and embedded.presign_urls
    exposed = GatewaySecurity.from_settings(_settings(gateway_host="0.0.0.0", gateway_auth="required"))
    assert exposed.auth_required
    assert GatewaySecurity.from_settings(_settings(gateway_host="0.0.0.0", gateway_insecure=True))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_secrets_are_hidden_from_the_settings_repr() -> None:
    s = _settings(gateway_token_secret="hunter2", api_key="ms_secret")
    assert "hunter2" not in repr(s) and "ms_secret" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_tokens_of_the_previous_key_are_accepted_until_it_is_dropped() -> None:
    token = PageToken(b"12345678", "m1", 1.0, 0.5, 7, 10, np.full(4, 0.5, np.float32))
    old = encode_token(token, "old-key")
    rotated = _settings(
        gateway_token_secret="new-key", gateway_token_secret_previous="old-key"
    ).token_secrets()
    assert rotated == ("new-key", "old-key")
    back = decode_token(old, rotated, fingerprint=b"12345678", model_version="m1", dim=4)
    assert back.after_id == 7
    with pytest.raises(InvalidInput, match="not a token this service issued"):
        decode_token(old, ("new-key",), fingerprint=b"12345678", model_version="m1", dim=4)
    with pytest.raises(InvalidInput, match="unknown format"):  # a vector of another width
        decode_token(old, rotated, fingerprint=b"12345678", model_version="m1", dim=8)


def test_an_embedded_gateway_without_a_token_key_makes_a_random_one() -> None:
    (key,) = _settings().token_secrets()
    assert len(key) >= 32 and key not in json.dumps(Settings.defaults().model_dump(mode="json"))


def test_keys_create_prints_the_key_alone_on_its_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    assert main(["keys", "create", "--name", "ci", "--scope", "search", "--database-url", db]) == 0
    key = capsys.readouterr().out.rstrip("\n").splitlines()[-1]
    assert key.startswith("ms_") and " " not in key
    assert main(["keys", "list", "--database-url", db]) == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and key not in listing
    assert main(["keys", "revoke", "ci", "--database-url", db]) == 0
    assert main(["keys", "revoke", "ci", "--database-url", db]) == 2  # gone: NotFound, a clear message
    assert "no key named 'ci'" in capsys.readouterr().err


def test_a_bad_database_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        make_engine("mysql://app:hunter2@db.internal/search")
    assert "hunter2" not in str(info.value) and "app:***@db.internal" in str(info.value)
