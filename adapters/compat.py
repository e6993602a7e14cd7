"""Whether an adapter fits the encoders it would run between: the one rule for every side.

The service checks it on activation and on every load; `querylift eval` and training check it
before scoring. One function, so a checkpoint cannot pass the offline evaluation and then be
refused at activation (issue 17). It compares the manifest with what is served: the widths
(the hybrid's [query; document] input included), the output width and the model names. The
prompt and pooling checks stay with the service (`Runtime.validate_for_tenant`), which knows
the served encoder spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.checkpoint import Adapter
from adapters.manifest import Manifest

if TYPE_CHECKING:  # the protocol only: adapters/ does not import an encoder at run time
    from encoders import Encoder


def compatibility_problems(
    adapter: Adapter | Manifest, query_encoder: Encoder, document_encoder: Encoder
) -> list[str]:
    """Reasons an adapter cannot serve this deployment (empty when it can)."""
    m = adapter.manifest if isinstance(adapter, Adapter) else adapter
    problems: list[str] = []
    if "document" in m.inputs:
        # hybrid: the input is [query-encoder vector; document-encoder vector] of the query
        qd, dd = query_encoder.dim, document_encoder.dim
        if m.in_dim != qd + dd:
            problems.append(
                f"in_dim {m.in_dim} != query encoder dim + document encoder dim "
                f"({qd} + {dd} = {qd + dd})"
            )
        for key, served, label in (
            ("query_dim", qd, "query"),
            ("document_dim", dd, "document"),
        ):
            if m.params.get(key) != served:
                problems.append(f"params.{key} {m.params.get(key)} != {label} encoder dim {served}")
    elif m.in_dim != query_encoder.dim:
        problems.append(f"in_dim {m.in_dim} != query encoder dim {query_encoder.dim}")
    if m.out_dim != document_encoder.dim:
        problems.append(f"out_dim {m.out_dim} != document encoder dim {document_encoder.dim}")
    if m.query_model.name != query_encoder.name:
        problems.append(
            f"query model {m.query_model.name!r} != served query model {query_encoder.name!r}"
        )
    if m.document_model.name != document_encoder.name:
        problems.append(
            f"document model {m.document_model.name!r} != served document model "
            f"{document_encoder.name!r}"
        )
    return problems
