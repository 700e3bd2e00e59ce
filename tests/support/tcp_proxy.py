"""A TCP proxy in front of the test PostgreSQL server that can stop answering.

Modes, switchable at any time:

- ``forward``: relay both ways;
- ``hang``: accept new connections but never answer them, and stop relaying on every
  open one (a server that accepts TCP and never answers);
- ``failover``: connections open before the switch stay frozen, new ones are relayed (a
  silent failover behind a virtual address).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

__all__ = ["TcpProxy"]

_CHUNK = 65536


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket | None
    relay: threading.Event = field(default_factory=threading.Event)
    """Set while bytes may flow; cleared forever when the link is frozen."""
    closed: bool = False


class TcpProxy:
    """Listen on a free loopback port and relay to ``(host, port)`` (see the module)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "forward"
        self._links: list[_Link] = []
        self._guard = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` (a URL to the target) pointed at the proxy instead."""
        host, port = self.target
        return dsn.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")

    def set_mode(self, mode: str) -> None:
        """Switch to ``forward``, ``hang`` or ``failover`` (see the module)."""
        with self._guard:
            self.mode = mode
            if mode in ("hang", "failover"):
                for link in self._links:
                    link.relay.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._guard:
                mode = self.mode
            if mode == "hang":
                # Accepted, never answered: the client waits for the server's reply.
                with self._guard:
                    self._links.append(_Link(client, None))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            link.relay.set()
            with self._guard:
                self._links.append(link)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, source, sink), daemon=True).start()

    @staticmethod
    def _pump(link: _Link, source: socket.socket, sink: socket.socket) -> None:
        while True:
            # A frozen link stops reading: what is sent stays unanswered.
            link.relay.wait()
            if link.closed:
                return
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            if not link.relay.is_set():
                return  # frozen while waiting: drop it, as a dead route would
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        """Stop listening and drop every connection."""
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._guard:
            links, self._links = self._links, []
        for link in links:
            link.closed = True
            link.relay.set()
            for sock in (link.client, link.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
