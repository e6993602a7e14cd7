"""Request and response models of the HTTP contract (docs/architecture.md, docs/api.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from qdrant_client.local.json_path_parser import parse_json_path


def _check_texts(v: str | list[str]) -> str | list[str]:
    items = [v] if isinstance(v, str) else v
    if not items:
        raise ValueError("input must not be an empty list")
    for i, t in enumerate(items):
        if not t.strip():
            raise ValueError(f"input[{i}] is empty")
    return v


MAX_FILTER_DEPTH = 16
MAX_FILTER_NODES = 2048


def _check_unicode(value: Any, where: str) -> None:
    """Refuse lone surrogates (JSON can spell them as escapes): no tokenizer, Qdrant or
    response encoder can take them, so they would otherwise surface as a 500 far away."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{at} is not valid Unicode (a lone surrogate)") from None
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((k, f"{at} (a key)"))
                stack.append((x, f"{at}.{str(k)[:32]}" if str(k).isascii() else at))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))


def _check_filter_shape(v: Any) -> Any:
    """Bound a client filter's nesting and size before anything walks it recursively, and
    refuse what Qdrant refuses only at search time (payload paths, `min_count` < 1), so that
    a bad filter is a 422 here rather than a failed search."""
    if not isinstance(v, dict):
        return v
    stack: list[tuple[Any, int]] = [(v, 1)]
    nodes = 0
    while stack:
        x, depth = stack.pop()
        nodes += 1
        if depth > MAX_FILTER_DEPTH:
            raise ValueError(f"filter is nested deeper than {MAX_FILTER_DEPTH} levels")
        if nodes > MAX_FILTER_NODES:
            raise ValueError(f"filter has more than {MAX_FILTER_NODES} elements")
        if isinstance(x, dict):
            _check_filter_node(x)
        children = x.values() if isinstance(x, dict) else x if isinstance(x, list) else ()
        stack.extend((c, depth + 1) for c in children)
    return v


def _check_filter_node(node: dict[Any, Any]) -> None:
    key = node.get("key")
    if isinstance(key, str):
        try:
            parse_json_path(key)
        except ValueError:
            raise ValueError(f"filter key {key[:64]!r} is not a valid payload path") from None
    ms = node.get("min_should")
    count = ms.get("min_count") if isinstance(ms, dict) else None
    if isinstance(count, int | float) and not isinstance(count, bool) and count < 1:
        raise ValueError("filter min_should.min_count must be 1 or more")


class _UnicodeChecked(BaseModel):
    """Every string of the request, dict keys included, must be encodable as UTF-8."""

    @model_validator(mode="after")
    def _valid_unicode(self) -> Any:
        for name in type(self).model_fields:
            _check_unicode(getattr(self, name), name)
        return self


class EmbedRequest(_UnicodeChecked):
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


class TruncatedInput(BaseModel):
    index: int
    tokens: int = Field(description="The input's tokens before the cut.")
    kept: int = Field(description="Tokens the encoder read (its limit).")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    truncated: list[TruncatedInput] | None = Field(
        default=None, description="Inputs cut to the encoder's limit (truncate=true only)."
    )

    @model_serializer(mode="wrap")
    def _omit_empty_truncated(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """OpenAI's usage shape unless something was actually cut."""
        data: dict[str, Any] = handler(self)
        if not data.get("truncated"):
            data.pop("truncated", None)
        return data


class EmbeddingItem(BaseModel):
    index: int
    embedding: list[float]


class EmbedResponse(BaseModel):
    data: list[EmbeddingItem]
    model: str
    adapter: AdapterRef | None
    usage: Usage


class OpenAIEmbeddingsRequest(_UnicodeChecked):
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


# deepest result a page may reach (offset + top_k): Qdrant scores every skipped point too,
# so deep paging costs what one large top_k costs
MAX_SEARCH_WINDOW = 1000


class SearchRequest(_UnicodeChecked):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, le=100)
    offset: int = Field(
        default=0,
        ge=0,
        description=f"Results to skip (paging); offset + top_k <= {MAX_SEARCH_WINDOW}.",
    )
    score_threshold: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Qdrant's score_threshold: under Cosine and Dot only results scoring at "
        "least this are returned (under Euclid, at most this distance).",
    )
    filter: dict[str, Any] | None = Field(
        default=None, description="Qdrant filter JSON; it can only narrow the tenant's points."
    )
    with_payload: bool = True
    with_vectors: bool = Field(
        default=False, description="Return each result's stored vector (the searched one)."
    )
    instruction: str | None = Field(default=None, max_length=2048)

    _filter_shape = field_validator("filter", mode="before")(_check_filter_shape)

    @model_validator(mode="after")
    def _window(self) -> SearchRequest:
        if self.offset + self.top_k > MAX_SEARCH_WINDOW:
            raise ValueError(
                f"offset + top_k is {self.offset + self.top_k}; at most {MAX_SEARCH_WINDOW}"
            )
        return self

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
    vector: list[float] | None = Field(
        default=None, description="Only with `with_vectors: true` (absent otherwise)."
    )


class SearchResponse(BaseModel):
    results: list[SearchResult]
    adapter: AdapterRef | None
    model: str
    timings_ms: dict[str, float]
    warnings: list[str] | None = Field(
        default=None,
        description="Present only when an empty answer has a reason that is not an error "
        "(the tenant has no documents yet, the collection is empty).",
    )
