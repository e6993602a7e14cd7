"""LlamaIndex embeddings backed by querylift (`pip install ".[llama-index]"`).

Why not LlamaIndex's `OpenAIEmbedding`: over `/v1/embeddings` its text (node) embeddings
would go through the query path. Here `get_text_embedding*` (what indexing calls) goes to
`/embed` with `input_type="document"`, `get_query_embedding` with `input_type="query"`.

    from querylift.integrations.llama_index import QueryliftEmbedding
    Settings.embed_model = QueryliftEmbedding(api_key="<tenant key>")
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import Field, PrivateAttr, SecretStr

from querylift.integrations._client import (
    DEFAULT_BASE_URL,
    DEFAULT_BATCH_SIZE,
    DEFAULT_TIMEOUT_S,
    QueryliftClient,
    QueryliftError,
)

__all__ = ["QueryliftEmbedding", "QueryliftError"]


class QueryliftEmbedding(BaseEmbedding):
    """Texts (nodes) through the document encoder, queries through the query encoder and the
    tenant's adapter. `embed_batch_size` is the texts per request. Errors from the service
    raise `QueryliftError` (`status`, `code`, `message`, `details`).

    `api_key` is excluded from serialisation: LlamaIndex persists embed models with an index.
    """

    model_name: str = Field(default="querylift", description="Reported name; not sent.")
    embed_batch_size: int = Field(default=DEFAULT_BATCH_SIZE, gt=0, le=2048)
    base_url: str = Field(default=DEFAULT_BASE_URL, description="The querylift service.")
    api_key: SecretStr | None = Field(default=None, exclude=True, description="Tenant API key.")
    instruction: str | None = Field(default=None, description="Query instruction (prompt).")
    truncate: bool = Field(default=False, description="Cut over-long inputs instead of a 413.")
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="Seconds per request.")

    _client: QueryliftClient = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._client = QueryliftClient(
            self.base_url,
            self.api_key.get_secret_value() if self.api_key else None,
            instruction=self.instruction,
            truncate=self.truncate,
            batch_size=self.embed_batch_size,
            timeout=self.timeout,
        )

    @classmethod
    def class_name(cls) -> str:
        return "QueryliftEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._client.embed([query], "query")[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._client.aembed([query], "query"))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._client.embed([text], "document")[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._client.aembed([text], "document"))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._client.embed(texts, "document")

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._client.aembed(texts, "document")
