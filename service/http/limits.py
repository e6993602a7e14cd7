"""Request-body size limits, one rule for every reader: refuse on the declared length before
reading, and count while reading, so a body that lies about its length is cut off too.

Used by the body-limit middleware (QUERYLIFT_MAX_BODY_BYTES, or a route's own limit), the fast
path, the adapter upload (its own caps) and the validation and query-set uploads.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

TooLarge = Callable[[], Exception]


@dataclass(frozen=True)
class RouteLimit:
    """A route whose body limit is not QUERYLIFT_MAX_BODY_BYTES: `max_bytes`, or None where
    the route caps what it reads itself (the adapter upload). `what` is named in the 413."""

    method: str
    path: re.Pattern[str]
    max_bytes: int | None
    what: str

    @classmethod
    def of(cls, method: str, template: str, max_bytes: int | None, what: str) -> RouteLimit:
        """`template` as the route declares it: `{name}` matches one path segment."""
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        return cls(method, re.compile(pattern), max_bytes, what)

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.path.fullmatch(path) is not None


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """Content-Length from raw ASGI headers; None when absent or not a number."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def check_declared(declared: int | None, limit: int, too_large: TooLarge) -> None:
    if declared is not None and declared > limit:
        raise too_large()


async def capped(
    chunks: AsyncIterator[bytes], limit: int, too_large: TooLarge
) -> AsyncIterator[bytes]:
    """The chunks, raising `too_large()` as soon as more than `limit` bytes have come."""
    n = 0
    async for chunk in chunks:
        n += len(chunk)
        if n > limit:
            raise too_large()
        yield chunk


async def read_capped(
    headers: Iterable[tuple[bytes, bytes]],
    chunks: AsyncIterator[bytes],
    limit: int,
    too_large: TooLarge,
) -> bytes:
    """The whole body, within `limit` by its declared length and by what arrives."""
    check_declared(declared_length(headers), limit, too_large)
    return b"".join([c async for c in capped(chunks, limit, too_large)])
