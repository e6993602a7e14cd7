"""The small HTTP client both framework integrations share: `POST /embed`, batched.

Why `/embed` and not `/v1/embeddings`: it takes `input_type`, so documents go through the
document encoder (the index's own space) and queries through the query encoder and the
tenant's adapter. Only httpx is used, so the service's own dependencies are enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import httpx

InputType = Literal["query", "document"]

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_BATCH_SIZE = 64
DEFAULT_TIMEOUT_S = 60.0


class QueryliftError(Exception):
    """An error answer from the service, in its one shape `{"error": {"code", "message",
    "details"}}` (or `http_error` when the body is not that shape, e.g. a proxy's page)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"querylift answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def _error_of(response: httpx.Response) -> QueryliftError:
    try:
        err = response.json()["error"]
        return QueryliftError(response.status_code, err["code"], err["message"], err["details"])
    except (ValueError, KeyError, TypeError):
        text = response.text[:200] or response.reason_phrase
        return QueryliftError(response.status_code, "http_error", text)


def _vectors_of(response: httpx.Response, expected: int) -> list[list[float]]:
    if response.status_code >= 400:
        raise _error_of(response)
    data = sorted(response.json()["data"], key=lambda d: d["index"])
    if len(data) != expected:
        raise QueryliftError(
            response.status_code,
            "unexpected_response",
            f"asked for {expected} embeddings, got {len(data)}",
        )
    return [d["embedding"] for d in data]


class QueryliftClient:
    """Embeds texts through `POST {base_url}/embed`, `batch_size` texts per request.

    When the service refuses a batch as `413 too_many_inputs` it says its limit
    (`details.max_inputs`); the client then keeps to that limit and retries, so a
    `batch_size` above the server's `QUERYLIFT_MAX_INPUTS` costs one refused request, not an
    error. Async calls use `async_client` when given, else a client per call: an
    `httpx.AsyncClient` is bound to the event loop it first ran on, and frameworks call from
    many loops (`asyncio.run` per call).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        instruction: str | None = None,
        truncate: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be 1 or more")
        self.url = base_url.rstrip("/") + "/embed"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.instruction = instruction
        self.truncate = truncate
        self.batch_size = batch_size
        self.timeout = timeout
        self._client = client
        self._owns_client = client is None
        self._async_client = async_client

    def _body(self, texts: list[str], input_type: InputType) -> dict[str, Any]:
        body: dict[str, Any] = {"input": texts, "input_type": input_type}
        if self.truncate:
            body["truncate"] = True
        if self.instruction is not None and input_type == "query":
            body["instruction"] = self.instruction  # a query prompt; documents have none
        return body

    def _shrink(self, error: QueryliftError, sent: int) -> bool:
        """Adopt the server's input limit after a `too_many_inputs`; False when it gives none."""
        limit = error.details.get("max_inputs") if isinstance(error.details, dict) else None
        if error.code != "too_many_inputs" or not isinstance(limit, int) or not 0 < limit < sent:
            return False
        self.batch_size = limit
        return True

    def embed(self, texts: Sequence[str], input_type: InputType) -> list[list[float]]:
        """One vector per text, in order; raises QueryliftError on an error answer."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        todo = list(texts)
        out: list[list[float]] = []
        while todo:
            batch = todo[: self.batch_size]
            response = self._client.post(
                self.url, json=self._body(batch, input_type), headers=self.headers
            )
            try:
                out.extend(_vectors_of(response, len(batch)))
            except QueryliftError as e:
                if self._shrink(e, len(batch)):
                    continue
                raise
            todo = todo[len(batch) :]
        return out

    async def aembed(self, texts: Sequence[str], input_type: InputType) -> list[list[float]]:
        """`embed` without blocking the event loop."""
        if self._async_client is not None:
            return await self._aembed(self._async_client, list(texts), input_type)
        if not texts:
            return []
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await self._aembed(client, list(texts), input_type)

    async def _aembed(
        self, client: httpx.AsyncClient, todo: list[str], input_type: InputType
    ) -> list[list[float]]:
        out: list[list[float]] = []
        while todo:
            batch = todo[: self.batch_size]
            response = await client.post(
                self.url, json=self._body(batch, input_type), headers=self.headers
            )
            try:
                out.extend(_vectors_of(response, len(batch)))
            except QueryliftError as e:
                if self._shrink(e, len(batch)):
                    continue
                raise
            todo = todo[len(batch) :]
        return out

    def close(self) -> None:
        """Close the sync connection pool this client opened (a given client is the caller's)."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None
