"""A TCP proxy in front of the test database that can make its connections die silently.

`freeze()` stops forwarding on every connection made so far but keeps their
sockets open, as a network partition or a dropped NAT entry would: no FIN, no
RST, and the kernel still acknowledges what the client sends. Connections made
after a freeze are forwarded normally, as after the network heals.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from sqlalchemy.engine import URL, make_url


def upstream_address(url: URL) -> tuple[int, str | tuple[str, int]]:
    """The socket family and address a libpq URL connects to (Unix socket or TCP)."""
    host = url.host or str(url.query.get("host", "/tmp"))
    port = url.port or 5432
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


class TcpProxy:
    def __init__(self, url: URL | str) -> None:
        self._upstream_url = make_url(url)
        self._family, self._address = upstream_address(self._upstream_url)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._frozen: list[threading.Event] = []
        self._sockets: list[socket.socket] = [self._server]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> URL:
        """The upstream URL, pointed at the proxy."""
        query = {k: v for k, v in self._upstream_url.query.items() if k != "host"}
        port = self._server.getsockname()[1]
        return self._upstream_url.set(host="127.0.0.1", port=port, query=query)

    def freeze(self) -> None:
        for frozen in self._frozen:
            frozen.set()

    def close(self) -> None:
        self.freeze()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            upstream = socket.socket(self._family, socket.SOCK_STREAM)
            upstream.connect(self._address)
            frozen = threading.Event()
            self._frozen.append(frozen)
            self._sockets += [client, upstream]
            self.connections += 1
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=_forward, args=(source, target, frozen), daemon=True
                ).start()


def _forward(source: socket.socket, target: socket.socket, frozen: threading.Event) -> None:
    source.settimeout(0.05)
    while not frozen.is_set():
        try:
            data = source.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return
        if frozen.is_set():
            return
        try:
            if not data:  # the peer closed: pass that on
                target.shutdown(socket.SHUT_WR)
                return
            target.sendall(data)
        except OSError:
            return
