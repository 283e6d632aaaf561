"""A TCP proxy on 127.0.0.1 in front of the test S3 server that injects the faults of a flaky object
store: connections that stall (accepted, never answered), answer 503, or drop mid-response.

Faults are dealt per new connection from a queue (`plan`), then connections pass through; a client
reconnects after each fault, so a queue of k faults means k failed tries.
"""

from __future__ import annotations

import socket
import threading
from collections import deque

_503 = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: 115\r\n"
        b"Connection: close\r\n\r\n<?xml version=\"1.0\"?><Error><Code>ServiceUnavailable</Code>"
        b"<Message>try again later</Message></Error>  ")


class FaultyProxy:
    """`with FaultyProxy(upstream_port) as p: p.plan(["503", "drop"]); p.stall_all = True ...`"""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.faults: deque[str] = deque()
        self.stall_all = False
        self.seen: list[str] = []  # what each connection got: pass, stall, 503, drop
        self.sent = bytearray()  # every byte clients sent through (request lines are counted in it)
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str, path_prefix: str) -> int:
        """How many `method` requests for paths starting with `path_prefix` clients sent."""
        import re
        return len(re.findall(rb"(?:^|\r\n)" + method.encode() + rb" " + re.escape(path_prefix.encode()),
                              bytes(self.sent)))

    def plan(self, faults: list[str]) -> None:
        with self._lock:
            self.faults.extend(faults)

    def __enter__(self) -> "FaultyProxy":
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()
        for s in list(self._open):
            try:
                s.close()
            except OSError:
                pass

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self._open.append(client)
            with self._lock:
                fault = "stall" if self.stall_all else (self.faults.popleft() if self.faults else "pass")
            self.seen.append(fault)
            threading.Thread(target=self._handle, args=(client, fault), daemon=True).start()

    def _handle(self, client: socket.socket, fault: str) -> None:
        try:
            if fault == "stall":
                self._stop.wait()  # hold the connection open, answer nothing
                return
            if fault == "503":
                _read_head(client)
                client.sendall(_503)
                client.close()
                return
            upstream = socket.create_connection(self.upstream)
            self._open.append(upstream)
            limit = 200 if fault == "drop" else None  # drop: the response is cut after its first bytes
            t = threading.Thread(target=_pipe, args=(client, upstream, None, self.sent), daemon=True)
            t.start()
            _pipe(upstream, client, limit)
            if limit is not None:
                client.shutdown(socket.SHUT_RDWR)
                client.close()
                upstream.close()
        except OSError:
            pass


def _read_head(s: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return
        data += chunk


def _pipe(src: socket.socket, dst: socket.socket, limit: int | None, log: bytearray | None = None) -> None:
    sent = 0
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            if log is not None:
                log.extend(chunk)
            if limit is not None and sent + len(chunk) >= limit:
                dst.sendall(chunk[:max(1, limit - sent)])
                return
            dst.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        if limit is None:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
