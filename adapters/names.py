"""The one rule for names that become a path component or an object key: tenants, adapter ids,
replicas. Letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 128: safe in
a folder, an S3 key and a URL path segment, with no `..` escape possible."""

from __future__ import annotations

import re

SAFE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SAFE_NAME = re.compile(rf"\A{SAFE_NAME_PATTERN}\Z")


def is_safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.match(name))


def safe_name(name: str) -> str:
    """`name` itself when it is safe; ValueError otherwise."""
    if not is_safe_name(name):
        raise ValueError(f"not a safe name: {name[:128]!r}")
    return name
