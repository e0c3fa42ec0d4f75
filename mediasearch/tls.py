"""TLS for every gRPC server and client of the project, from PEM files.

Servers get *dynamic* credentials: gRPC asks for the certificate on each new connection's
handshake, and :class:`_Reloader` answers with a new one when the files changed (their mtime and
size), so a renewed certificate (cert-manager rewrites the Secret's files in place) is served
without a restart; connections already open keep the certificate they started with. A renewal
that leaves the pair unreadable or mismatched is logged and the previous certificate stays.
With a client CA, callers must present a certificate it signed (mTLS). The gateway's HTTP server
gets the same from :func:`server_ssl_context`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

import grpc

from mediasearch.errors import ConfigError
from mediasearch.settings import Settings

log = logging.getLogger(__name__)


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path} is not PEM (no -----BEGIN line)")
    return data


class _Reloader:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = (Path(cert), Path(key), *((Path(client_ca),) if client_ca else ()))
        self.client_ca = client_ca
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.initial = self._config()

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self.paths:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def _config(self) -> grpc.ServerCertificateConfiguration:
        cert = _read(self.paths[0], "TLS certificate")
        key = _read(self.paths[1], "TLS key")
        ca = _read(self.paths[2], "client CA") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep)."""
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            try:
                config = self._config()
            except ConfigError as exc:
                log.warning("TLS files changed but cannot be used (keeping the previous ones): %s", exc)
                return None
            self._stamp = stamp
            log.info("TLS certificate reloaded from %s", self.paths[0])
            return config


class _SslReloader(_Reloader):
    """The same files and rule for an :class:`ssl.SSLContext` (the gateway's HTTP server)."""

    def _config(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.paths[0], self.paths[1])
            if self.client_ca:
                context.load_verify_locations(cafile=self.paths[2])
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS certificate {self.paths[0]} and key {self.paths[1]}: {exc}") from exc
        return context


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` serving ``cert``/``key`` with the same renewal as
    :func:`server_credentials`: every handshake (OpenSSL calls the SNI hook with or without a
    server name) checks the files and, once they changed, is served from a freshly loaded context.
    mTLS with ``client_ca``."""
    reloader = _SslReloader(cert, key, client_ca)
    listening: ssl.SSLContext = reloader.initial
    current = [listening]

    def handshake(sock: ssl.SSLObject, _name: str | None, _context: ssl.SSLContext) -> None:
        fresh = reloader()
        if fresh is not None:
            current[0] = fresh
        if current[0] is not listening:
            sock.context = current[0]

    listening.sni_callback = handshake
    return listening


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """Credentials that serve ``cert``/``key`` (reloaded when they change); mTLS with ``client_ca``."""
    reloader = _Reloader(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial, reloader, require_client_authentication=client_ca is not None
    )


def channel_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: verify the server with ``ca`` (None: the system's roots); present
    ``cert``/``key`` when the server wants a client certificate."""
    root = _read(ca, "TLS CA") if ca else None
    chain = _read(cert, "TLS client certificate") if cert else None
    private = _read(key, "TLS client key") if key else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=private, certificate_chain=chain)


def check_pair(cert: Path | None, key: Path | None, what: str) -> bool:
    """True when both are set, False when neither; ConfigError naming the settings when one is."""
    if (cert is None) != (key is None):
        raise ConfigError(f"{what}: give both the certificate and the key, or neither")
    return cert is not None


def internal_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """A shard server's (or the local Triton's) TLS from ``MEDIASEARCH_INTERNAL_TLS_CERT/KEY``."""
    if not check_pair(
        settings.internal_tls_cert, settings.internal_tls_key, "MEDIASEARCH_INTERNAL_TLS_CERT/KEY"
    ):
        return None
    assert settings.internal_tls_cert is not None and settings.internal_tls_key is not None
    return server_credentials(settings.internal_tls_cert, settings.internal_tls_key)


def internal_channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS to the shard servers when ``MEDIASEARCH_INTERNAL_TLS_CA`` is set, else None (plaintext)."""
    return channel_credentials(settings.internal_tls_ca) if settings.internal_tls_ca else None
