"""A real S3-protocol server on loopback, for the tests and the benchmarks: moto's S3
(`moto[server]`) served over HTTP on a free loopback port, in a thread of the calling process.

moto's own `ThreadedMotoServer` serves the same app; this one differs in one way: it runs one
request at a time. moto checks a PutObject's `If-Match` / `If-None-Match` and then writes, in
two steps with no lock between them (moto/s3/responses.py `put_object`), so two concurrent
conditional writes could both pass; S3 decides each conditional write atomically, and that is
what a compare-and-swap test must run against. Clients still run concurrently.

What moto does not emulate, so nothing run against it can show it:
- S3's 409 `ConditionalRequestConflict` between concurrent conditional writes (serialised
  here, so never sent; the client treats it as a lost race, like a 412);
- authentication and authorisation: any access key works, no IAM or bucket policies;
- upload checksums are echoed, not verified; ETags are plain MD5s (no SSE-KMS, no multipart);
- latency, throttling (503 SlowDown) and outages, except by stopping this server.
The data lives in moto's in-process backend, so `stop()` then `start()` on the same port is a
restart that keeps the objects.

The pytest fixtures over this server are in tests/s3_server.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

REGION = "us-east-1"
ACCESS_KEY = "testing"  # any key works: moto checks none


class _QuietHandler(MotoRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log line per request on stderr."""


class _OneAtATime:
    """The WSGI app behind a lock: each request is handled whole before the next starts."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            return list(self.app(environ, start_response))


class S3Server:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve (again, on the same port after a `stop`)."""
        self._server = make_server(
            "127.0.0.1", self.port, self._app, threaded=True, request_handler=_QuietHandler
        )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    def aws_env(self, scratch: Path) -> dict[str, str]:
        """The standard AWS variables that point a boto3 client (this process's, or a child
        process's) at this server and at nothing else: no profile, no shared files (both named
        in `scratch`, where none exists), no instance metadata. Replace every `AWS_*` variable
        with these."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def create_bucket(self, name: str | None = None) -> str:
        """A new empty bucket (a random name unless given); returns its name. Needs no AWS
        variable: the client is pointed at this server explicitly."""
        import boto3

        name = name or f"qa-{uuid.uuid4().hex[:16]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=ACCESS_KEY,
        )
        client.create_bucket(Bucket=name)
        return name


def s3_client() -> Any:
    """A plain boto3 client from the environment (`S3Server.aws_env` set in `os.environ`), for
    setup and inspection."""
    import boto3

    return boto3.session.Session().client("s3")
