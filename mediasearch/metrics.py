"""What every service's Prometheus metrics share: a registry of their own (several services can
live in one process, as in tests and the embedded demo) and a ``/metrics`` HTTP endpoint."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


class ServiceMetrics:
    """Base of a service's metrics: subclasses add their counters and histograms to ``registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http: Any = None

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
