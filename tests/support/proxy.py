"""A loopback TCP forwarder that a test can cut: an endpoint that goes down and comes back.

The services under test talk to :attr:`TcpProxy.endpoint` instead of the real server. :meth:`cut`
closes the listening socket and resets every open connection (what clients see when a load
balancer or the server itself is gone: connection refused, connection reset); :meth:`restore`
listens again on the same port. The server behind it keeps its state, which a restarted emulator
would lose.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from mediasearch.dev.processes import free_port


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self.port = free_port(host)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def restore(self) -> TcpProxy:
        """Listen (again) on :attr:`port`."""
        listener = socket.create_server((self.host, self.port), backlog=64)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy accept", daemon=True).start()
        return self

    start = restore

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for s in sockets:  # linger 0: RST, not FIN; shutdown wakes the pump blocked on it
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), name="proxy pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._open.difference_update((source, sink))
