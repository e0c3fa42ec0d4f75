"""The gateway's security posture, decided once from settings before anything starts.

- **API keys**: ``MEDIASEARCH_GATEWAY_AUTH`` (required | off). Unset, a cluster gateway requires
  them and an embedded one does not. A gateway without keys binds only a loopback address unless
  ``MEDIASEARCH_GATEWAY_INSECURE`` (``serve --insecure``) says, in so many words, to expose it.
- **Secrets without defaults in cluster mode**: the page-token key
  (``MEDIASEARCH_GATEWAY_TOKEN_SECRET``: tokens signed with a key in the source could be forged)
  and the presigning policy (``MEDIASEARCH_GATEWAY_PRESIGN_URLS``: a presigned URL hands out the
  original) must be set; start-up fails naming the setting. An embedded gateway signs with a random
  key per process and presigns.
- **TLS**: certificate and key (both or neither), an optional client CA (mTLS), all checked here so
  a missing file fails the start, not the first handshake.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import grpc

from mediasearch.errors import ConfigError
from mediasearch.settings import Settings
from mediasearch.tls import check_pair, server_credentials

_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve anywhere


@dataclass(frozen=True)
class GatewaySecurity:
    settings: Settings
    auth_required: bool
    presign_urls: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewaySecurity:
        cluster = settings.cluster_mode
        auth = settings.gateway_auth or ("required" if cluster else "off")
        if cluster and settings.gateway_token_secret is None:
            raise ConfigError(
                "MEDIASEARCH_GATEWAY_TOKEN_SECRET is not set: a cluster gateway signs page tokens with a "
                "key every replica shares and no one else knows (generate one: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'; docs/security.md)"
            )
        if cluster and settings.gateway_presign_urls is None:
            raise ConfigError(
                "MEDIASEARCH_GATEWAY_PRESIGN_URLS is not set: say whether results carry presigned URLs "
                "(true: anyone holding a result can download the original until it expires, "
                "MEDIASEARCH_GATEWAY_URL_EXPIRY_S) or s3:// URLs (false)"
            )
        if auth == "off" and not is_loopback(settings.gateway_host) and not settings.gateway_insecure:
            raise ConfigError(
                f"refusing to serve {settings.gateway_host} without API keys: anyone who reaches it could "
                "search every image. Require keys (MEDIASEARCH_GATEWAY_AUTH=required, then mediasearch "
                "keys create), bind 127.0.0.1, or say --insecure (MEDIASEARCH_GATEWAY_INSECURE=true)"
            )
        tls = check_pair(
            settings.gateway_tls_cert, settings.gateway_tls_key, "MEDIASEARCH_GATEWAY_TLS_CERT/KEY"
        )
        if settings.gateway_tls_client_ca and not tls:
            raise ConfigError("MEDIASEARCH_GATEWAY_TLS_CLIENT_CA needs MEDIASEARCH_GATEWAY_TLS_CERT and _KEY")
        presign = True if settings.gateway_presign_urls is None else settings.gateway_presign_urls
        return cls(settings, auth == "required", presign)

    def credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        if s.gateway_tls_cert is None or s.gateway_tls_key is None:
            return None
        return server_credentials(s.gateway_tls_cert, s.gateway_tls_key, s.gateway_tls_client_ca)
