"""LangChain embeddings backed by querylift (`pip install ".[langchain]"`).

Why not `langchain_openai.OpenAIEmbeddings`: it sends `embed_documents` through
`/v1/embeddings` as queries, so a vector store would index documents with the query encoder
and the adapter instead of the index's own document encoder. Here documents go to `/embed`
with `input_type="document"` and queries with `input_type="query"`.

    from querylift.integrations.langchain import QueryliftEmbeddings
    emb = QueryliftEmbeddings(base_url="http://127.0.0.1:8080", api_key="<tenant key>")
"""

from __future__ import annotations

from typing import Any

import httpx
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from querylift.integrations._client import (
    DEFAULT_BASE_URL,
    DEFAULT_BATCH_SIZE,
    DEFAULT_TIMEOUT_S,
    QueryliftClient,
    QueryliftError,
)

__all__ = ["QueryliftEmbeddings", "QueryliftError"]


class QueryliftEmbeddings(BaseModel, Embeddings):
    """Documents through the document encoder, queries through the query encoder and the
    tenant's adapter; both land in the index's vector space.

    Frozen: the HTTP client is built once from these fields. Errors from the service raise
    `QueryliftError` (`status`, `code`, `message`, `details`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr | None = Field(default=None, exclude=True, description="Tenant API key.")
    instruction: str | None = Field(default=None, description="Query instruction (prompt).")
    truncate: bool = Field(default=False, description="Cut over-long inputs instead of a 413.")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, gt=0, description="Texts per request.")
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="Seconds per request.")
    http_client: httpx.Client | None = Field(default=None, exclude=True)
    http_async_client: httpx.AsyncClient | None = Field(default=None, exclude=True)

    _client: QueryliftClient = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._client = QueryliftClient(
            self.base_url,
            self.api_key.get_secret_value() if self.api_key else None,
            instruction=self.instruction,
            truncate=self.truncate,
            batch_size=self.batch_size,
            timeout=self.timeout,
            client=self.http_client,
            async_client=self.http_async_client,
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._client.embed(texts, "document")

    def embed_query(self, text: str) -> list[float]:
        return self._client.embed([text], "query")[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self._client.aembed(texts, "document")

    async def aembed_query(self, text: str) -> list[float]:
        return (await self._client.aembed([text], "query"))[0]
