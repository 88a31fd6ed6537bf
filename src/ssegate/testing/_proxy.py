"""A TCP proxy on loopback that can cut every connection at once, as a network failure would.

Tests put it between a client (a browser, ``ssegate chat``) and the gateway to check that
streams resume exactly after a drop.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from typing import Any

__all__ = ["DroppingProxy"]

_REQUEST_HEAD = re.compile(
    rb"(?:GET|POST|DELETE|PUT|HEAD|OPTIONS) \S+ HTTP/1\.1\r\n.*?\r\n\r\n", re.S
)


class DroppingProxy:
    """A TCP proxy on 127.0.0.1:0 in front of ``target_port`` that can cut every connection.

    ``drop_all()`` closes all current connections on both sides, as a network failure would;
    new connections are still accepted. ``client_bytes`` holds the start of what each client
    connection sent (request heads), to see what a reconnecting browser asked for.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.client_bytes: list[bytearray] = []
        self.connections = 0
        self.drops = 0

    def start(self) -> DroppingProxy:
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was shut down
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            seen = bytearray()
            with self._lock:
                self.connections += 1
                self._sockets.update((client, upstream))
                self.client_bytes.append(seen)
            self._spawn(self._pump, client, upstream, seen)
            self._spawn(self._pump, upstream, client, None)

    def _pump(self, src: socket.socket, dst: socket.socket, seen: bytearray | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if seen is not None and len(seen) < 64 * 1024:
                    seen.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._sockets.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def drop_all(self) -> int:
        """Cut every open connection; return how many sockets were closed."""
        with self._lock:
            socks = list(self._sockets)
            self.drops += 1
        self._close(*socks)
        return len(socks)

    def sent(self, needle: bytes) -> list[bytes]:
        """The request heads (lowercased) that clients sent and that contain ``needle``."""
        with self._lock:
            streams = [bytes(b) for b in self.client_bytes]
        heads = [m.group(0).lower() for raw in streams for m in _REQUEST_HEAD.finditer(raw)]
        return [h for h in heads if needle in h]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.drop_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
