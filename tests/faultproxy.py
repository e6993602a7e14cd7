"""A TCP proxy that injects the faults of a remote store, for tests: in front of a server on
loopback (the S3 test server), it forwards bytes both ways and, on request,

- adds a fixed delay before every HTTP request it forwards (`delay`): a slow store;
- resets every connection, new and open (`refuse`): a store that is down or unreachable;
- cuts the connection after N bytes of any request body longer than that (`cut_uploads`):
  an upload that breaks off half-way, at every retry, until `resume`;
- forwards untouched again (`resume`).

It reads the client's side as HTTP/1.1 (a request line and headers, then a body framed by
Content-Length or chunked) so that each request on a kept-alive connection is delayed on its
own and a body can be cut at an exact byte; the server's answers pass through as bytes.
Threads, not asyncio: the tests that use it are synchronous and run it beside a server
that is threaded too. Only for loopback tests; it never logs or keeps what it forwards.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

_CHUNK = 65536
_MAX_HEAD = 65536


@dataclass
class Counts:
    """What the proxy did, for assertions: requests forwarded (fully or not), connections
    reset by `refuse` (or because the upstream was down), request bodies cut."""

    connections: int = 0
    requests: int = 0
    refused: int = 0
    cut: int = 0


class _Cut(Exception):
    """This connection is to be closed now (a fault, or the proxy stopping)."""


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a host that drops the connection does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # close() alone neither wakes a thread blocked in recv() on this socket nor tells the peer
    # while that recv holds the file open; shutdown() does both
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.counts = Counts()
        self._delay_s = 0.0
        self._refusing = False
        self._cut_after: int | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.port = 0

    # -- control ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def delay(self, seconds: float) -> None:
        """Hold every request this long before forwarding it (0: no delay)."""
        self._delay_s = max(0.0, seconds)

    def refuse(self) -> None:
        """Down: reset the open connections and every new one until `resume`."""
        with self._lock:
            self._refusing = True
            victims = list(self._open)
        for sock in victims:
            _reset(sock)

    def cut_uploads(self, after_bytes: int) -> None:
        """Cut every request whose body is longer than `after_bytes` right after that many
        body bytes (both sides closed), until `resume`; shorter requests pass whole."""
        if after_bytes < 0:
            raise ValueError(f"after_bytes must be >= 0, got {after_bytes}")
        self._cut_after = after_bytes

    def resume(self) -> None:
        """Forward everything untouched again (no delay, no refusal, no cut)."""
        self._delay_s = 0.0
        self._cut_after = None
        with self._lock:
            self._refusing = False

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            victims = list(self._open)
        for sock in victims:
            _reset(sock)
        for t in self._threads:
            t.join(5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the forwarding ---------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by stop()
                return
            self._count("connections")
            if self._refusing:
                self._count("refused")
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:  # the store itself is down: the client sees it as such
                self._count("refused")
                _reset(client)
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                if self._refusing:  # refused while this one was connecting
                    _reset(client)
                    _reset(server)
                    continue
                self._open.update((client, server))
            self._spawn(self._requests, "faultproxy-up", client, server)
            self._spawn(self._answers, "faultproxy-down", server, client)

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.counts, what, getattr(self.counts, what) + 1)

    def _close_pair(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            self._open.discard(a)
            self._open.discard(b)
        _reset(a)
        _reset(b)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """Server to client: bytes as they come."""
        try:
            while True:
                data = server.recv(_CHUNK)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        self._close_pair(server, client)

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server, one HTTP request at a time: delay it, forward it, maybe cut it."""
        reader = _Reader(client)
        try:
            while True:
                head = reader.head()
                if head is None:
                    break
                if self._delay_s and self._stopping.wait(self._delay_s):
                    raise _Cut  # stopping
                if self._refusing:
                    raise _Cut
                self._count("requests")
                server.sendall(head)
                length, chunked = _framing(head)
                cut = self._cut_after
                body = _Body(server, cut if cut is not None and (chunked or length > cut) else None)
                try:
                    if chunked:
                        reader.chunked(body)
                    else:
                        reader.exactly(length, body)
                finally:  # _Body.send raises _Cut where it cuts
                    if body.was_cut:
                        self._count("cut")
        except (OSError, _Cut):
            pass
        self._close_pair(client, server)


class _Body:
    """Forwards a request body to the server, stopping after `limit` bytes (then `was_cut`)."""

    def __init__(self, server: socket.socket, limit: int | None) -> None:
        self.server = server
        self.limit = limit
        self.sent = 0
        self.was_cut = False

    def send(self, data: bytes) -> None:
        if self.limit is not None and self.sent + len(data) >= self.limit:
            keep = self.limit - self.sent
            if keep:
                self.server.sendall(data[:keep])
            self.sent += keep
            self.was_cut = True
            raise _Cut
        self.server.sendall(data)
        self.sent += len(data)


class _Reader:
    """The client's bytes, read as HTTP/1.1 requests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(_CHUNK)
        if not data:
            return False
        self.buf += data
        return True

    def head(self) -> bytes | None:
        """The next request line and headers (through the blank line); None at a clean end."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > _MAX_HEAD:
                raise _Cut
            if not self._fill():
                if self.buf:
                    raise _Cut
                return None
        end = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:end], self.buf[end:]
        return head

    def exactly(self, n: int, body: _Body) -> None:
        while n > 0:
            if not self.buf and not self._fill():
                raise _Cut
            part, self.buf = self.buf[:n], self.buf[n:]
            body.send(part)
            n -= len(part)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > _MAX_HEAD or not self._fill():
                raise _Cut
        end = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def chunked(self, body: _Body) -> None:
        """A chunked body through its last chunk and trailers, forwarded as it came."""
        while True:
            line = self._line()
            body.send(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            self.exactly(size + 2, body)  # the data and its CRLF
        while True:  # trailers, up to the blank line
            line = self._line()
            body.send(line)
            if line == b"\r\n":
                return


def _framing(head: bytes) -> tuple[int, bool]:
    """(Content-Length, chunked) of a request head; no body when it says neither."""
    length, chunked = 0, False
    for raw in head.split(b"\r\n")[1:]:
        name, _, value = raw.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked
