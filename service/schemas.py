"""Request and response models of the HTTP contract (DESIGN.md section 2a)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _check_texts(v: str | list[str]) -> str | list[str]:
    items = [v] if isinstance(v, str) else v
    if not items:
        raise ValueError("input must not be an empty list")
    for i, t in enumerate(items):
        if not t.strip():
            raise ValueError(f"input[{i}] is empty")
    return v


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input: str | list[str] = Field(description="One text or a list of texts.")
    input_type: Literal["query", "document"] = "query"
    instruction: str | None = Field(
        default=None, max_length=2048, description="Query instruction (query encoder prompt)."
    )
    truncate: bool = Field(
        default=False, description="Cut over-long inputs instead of refusing them."
    )

    _texts = field_validator("input")(_check_texts)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class AdapterRef(BaseModel):
    id: str
    version: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingItem(BaseModel):
    index: int
    embedding: list[float]


class EmbedResponse(BaseModel):
    data: list[EmbeddingItem]
    model: str
    adapter: AdapterRef | None
    usage: Usage


class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI's shape; unknown fields are tolerated as OpenAI's API does."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None
    # querylift extensions (send with the openai client's `extra_body`)
    input_type: Literal["query", "document"] = "query"
    instruction: str | None = Field(default=None, max_length=2048)


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, le=100)
    filter: dict[str, Any] | None = Field(
        default=None, description="Qdrant filter JSON; it can only narrow the tenant's points."
    )
    with_payload: bool = True
    instruction: str | None = Field(default=None, max_length=2048)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query is empty")
        return v


class SearchResult(BaseModel):
    id: str
    score: float
    payload: dict[str, Any] | None


class SearchResponse(BaseModel):
    results: list[SearchResult]
    adapter: AdapterRef | None
    model: str
    timings_ms: dict[str, float]
