"""The few S3 calls the object store makes, through boto3, with its errors mapped to ours.

Why boto3: it is the reference S3 client, so it brings the whole standard credential chain
(environment, shared config and profiles, SSO, web identity / IRSA, ECS and EC2 instance roles)
and reads `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` itself for MinIO, Ceph or a local server;
and it sends `If-Match` / `If-None-Match` on PutObject (botocore's S3 model has both since the
conditional writes of 2024). Credentials never come from the store URL.

Every call is bounded: a few seconds to connect and per read, three attempts in botocore's
standard retry mode (throttling, 5xx, dropped connections). A store that is down or slow
fails the call with `StoreUnavailable` (an OSError) instead of holding the caller.
A plain-http endpoint is refused unless it is a loopback address (a local test server).
Checksums follow botocore's defaults; a store that rejects them (some older S3 layers) is set
with botocore's own `AWS_REQUEST_CHECKSUM_CALCULATION=when_required`.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from adapters.store import S3Location, StoreUnavailable

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0  # per socket read, not per object: a large adapter still downloads
MAX_ATTEMPTS = 3  # the first try and two retries
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class PreconditionFailed(Exception):  # S3's own name for the answer (412)
    """A conditional write lost: the object is not what the caller read (or not absent).
    Also S3's 409 ConditionalRequestConflict (a concurrent write), retried the same way."""


class NotModified(Exception):  # HTTP's name (304)
    """A conditional read found the object unchanged since the ETag the caller holds."""


def check_endpoint(url: str) -> None:
    """Refuse an endpoint that would send requests in the clear to another machine."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise ValueError(
        f"object store endpoint {url!r}: only https is accepted, or plain http on a loopback "
        "address (127.0.0.1, localhost, ::1) for a local server; fix AWS_ENDPOINT_URL"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(e: ClientError) -> tuple[str, int]:
    err: dict[str, Any] = e.response.get("Error") or {}
    status = int((e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return str(err.get("Code") or status), status


class S3Objects:
    """One bucket and prefix; keys are relative to the prefix. Thread-safe (one boto3 client)."""

    def __init__(self, location: S3Location, client: Any) -> None:
        self.location = location
        self._client = client

    @classmethod
    def connect(
        cls,
        location: S3Location,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> S3Objects:
        """A client from the standard chain (no network call yet); ValueError for a refused
        endpoint. boto3 is imported here, so a folder store never pays for it."""
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"mode": "standard", "max_attempts": max_attempts},
        )
        client = boto3.session.Session().client("s3", config=config)
        check_endpoint(client.meta.endpoint_url)
        return cls(location, client)

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def _unavailable(self, op: str, key: str, e: Exception) -> StoreUnavailable:
        where = f"{self.location.url}/{key}" if key else self.location.url
        if isinstance(e, ClientError):
            code, status = _error(e)
            if code == "NoSuchBucket":
                what = f"bucket {self.location.bucket!r} does not exist (create it first)"
            else:
                msg = (e.response.get("Error") or {}).get("Message") or ""
                what = f"{code} (HTTP {status}){': ' + msg if msg else ''}"
        else:
            what = f"{type(e).__name__}: {e}"
        return StoreUnavailable(f"object store: {op} {where}: {what}")

    def get(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        """(body, ETag), or None when there is no such object; NotModified when
        `if_none_match` is the object's ETag."""
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.location.key(key)}
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        try:
            found = self._client.get_object(**kwargs)
            return found["Body"].read(), str(found["ETag"])
        except ClientError as e:
            code, status = _error(e)
            if code in _MISSING:
                return None
            if status == 304 or code in ("304", "NotModified"):
                raise NotModified(key) from None
            raise self._unavailable("read", key, e) from e
        except BotoCoreError as e:
            raise self._unavailable("read", key, e) from e

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.location.bucket, Key=self.location.key(key))
            return True
        except ClientError as e:
            if _error(e)[0] in _MISSING:
                return False
            raise self._unavailable("check", key, e) from e
        except BotoCoreError as e:
            raise self._unavailable("check", key, e) from e

    def put(
        self, key: str, data: bytes, if_match: str | None = None, if_absent: bool = False
    ) -> str:
        """Write the whole object; the new ETag. With `if_match` only over that version, with
        `if_absent` only where there is none: else PreconditionFailed, and nothing changed."""
        kwargs: dict[str, Any] = {
            "Bucket": self.location.bucket,
            "Key": self.location.key(key),
            "Body": data,
        }
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            return str(self._client.put_object(**kwargs)["ETag"])
        except ClientError as e:
            code, _ = _error(e)
            conditional = if_match is not None or if_absent
            # If-Match on an object that is gone answers 404: it is not what was read either
            if conditional and (code in _CONFLICT or (if_match is not None and code in _MISSING)):
                raise PreconditionFailed(key) from None
            raise self._unavailable("write", key, e) from e
        except BotoCoreError as e:
            raise self._unavailable("write", key, e) from e

    def delete(self, key: str) -> None:
        """Remove the object (S3 answers the same whether it was there or not)."""
        try:
            self._client.delete_object(Bucket=self.location.bucket, Key=self.location.key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._unavailable("delete", key, e) from e

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (relative, sorted), all pages."""
        full = self.location.key(prefix)
        strip = len(self.location.key(""))
        out: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=full
            )
            for page in pages:
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise self._unavailable("list", prefix, e) from e
        return sorted(out)
