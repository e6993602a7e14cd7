"""`open_store(location)`: the one module that knows every kind of store, so that the protocol
(adapters.store) imports none of its implementations and they import only it."""

from __future__ import annotations

import os

from adapters.folder import FolderStore
from adapters.store import AdapterStore, S3Location, parse_location


def open_store(location: str | os.PathLike[str]) -> AdapterStore:
    """The store at `location` (QUERYLIFT_ADAPTER_STORE): a folder (created on first use) or
    an S3-protocol bucket (which must exist). ValueError for a location or an endpoint that is
    refused."""
    where = parse_location(location)
    if isinstance(where, S3Location):
        # boto3 is imported only where an object store is asked for
        from adapters.objects import ObjectStore
        from adapters.s3 import S3Objects

        return ObjectStore(S3Objects.connect(where))
    return FolderStore(where)
