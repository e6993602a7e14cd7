"""The pytest fixtures that point boto3 at a real S3-protocol server: bench/s3_local.py's
`S3Server` (moto's S3 over HTTP on a loopback port, one request at a time, in a thread of the
test process; its docstring lists what moto does not emulate)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.s3_local import REGION, S3Server, s3_client

__all__ = ["REGION", "S3Server", "s3_bucket", "s3_client", "s3_env", "s3_server"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The standard AWS variables pointed at the test server, and nothing else read: no
    profile, no shared files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_server.aws_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A new empty bucket on the test server, for one test."""
    return s3_env.create_bucket()
