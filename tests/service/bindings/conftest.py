"""The S3 test server's fixtures (tests/s3_server.py) for the replica and store-fault tests."""

from tests.s3_server import s3_bucket, s3_env, s3_server

__all__ = ["s3_bucket", "s3_env", "s3_server"]
