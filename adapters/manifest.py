"""manifest.json: the contract between training and the service (DESIGN.md section 3)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 1


class AdapterKind(StrEnum):
    LINEAR = "linear"
    IDENTITY = "identity"


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


def consistency_problems(m: Manifest) -> list[str]:
    """Every cross-field inconsistency in a manifest whose fields are individually valid."""
    problems: list[str] = []
    if m.format_version != FORMAT_VERSION:
        problems.append(f"unsupported format_version {m.format_version}")
    if m.query_model.dim != m.in_dim:
        problems.append(f"query_model.dim ({m.query_model.dim}) != in_dim ({m.in_dim})")
    if m.document_model.dim != m.out_dim:
        problems.append(f"document_model.dim ({m.document_model.dim}) != out_dim ({m.out_dim})")
    if m.kind == AdapterKind.IDENTITY and m.in_dim != m.out_dim:
        problems.append(
            f"identity adapter needs in_dim == out_dim (got {m.in_dim} and {m.out_dim})"
        )
    return problems
