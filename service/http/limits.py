"""Request-body size limits, one rule for every reader: refuse on the declared length before
reading, and count while reading, so a body that lies about its length is cut off too.

Used by the body-limit middleware (QUERYLIFT_MAX_BODY_BYTES for every route but the upload),
the fast path, the adapter upload (its own caps) and the validation-set upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

TooLarge = Callable[[], Exception]


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
