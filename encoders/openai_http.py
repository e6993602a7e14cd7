"""openai_http backend: any OpenAI-compatible `/v1/embeddings` upstream.

A `vllm serve` sidecar, TEI, another querylift, or a hosted API. What stays local:

- the prompt template (`format_texts`), so Qwen3 instructions work against an upstream that
  only embeds the text it is given; documents go bare unless the spec says otherwise;
- the tokenizer (`spec.path`, a local tokenizer folder): token counts, refusing over-long
  inputs (`truncate=False`) and cutting them (`truncate=True`: the text is cut at the offset
  of the last token that fits, so the upstream sees a prefix of the original text);
- L2 normalisation (when `spec.normalize`), so the vectors do not depend on whether the
  upstream normalises.

Per-text `token_counts` are therefore the *local* tokenizer's counts (after any truncation).
The upstream's own `usage` is passed through untouched as `last_usage` (summed over the
batches of the calling thread's last `encode`), for billing or cross-checking.

Transport: one pooled `httpx.Client` (thread-safe; keep-alive connections), `spec.timeout_s`
per request, batches of `spec.batch_size` sent concurrently. Retries with exponential backoff
and jitter on 5xx, timeouts and connection errors only, at most `spec.max_retries`; a 4xx is
never retried. Failures raise `UpstreamError` (`.status` = the HTTP status, or None when no
response came back), which the service maps to its own error.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
import numpy as np
from transformers import AutoTokenizer

from encoders.base import (
    EncoderBase,
    EncoderError,
    EncodeResult,
    EncoderSpec,
    InputKind,
    InputTooLongError,
    Instruction,
    Tokenized,
)

log = logging.getLogger(__name__)

# HF tokenizers report model_max_length = 1e30 when the checkpoint does not say
_UNSET_MODEL_MAX = 1_000_000
_PROBE_TEXT = "ping"


class UpstreamError(EncoderError):
    """The upstream failed: a 4xx, 5xx after the retries, a timeout, a dead or bad upstream.

    `status` is the last HTTP status seen, or None when no usable response came back
    (connection refused, timeout, malformed body). `attempts` is how many requests were made.
    """

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def _error_message(resp: httpx.Response, limit: int = 500) -> str:
    """The upstream's own message, whatever its error shape (OpenAI, TEI, vLLM, FastAPI)."""
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return resp.text[:limit] or resp.reason_phrase
    msg: Any = body
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:  # OpenAI, querylift
            msg = err["message"]
        elif isinstance(err, str):  # TEI
            msg = err
        elif "message" in body:  # vLLM
            msg = body["message"]
        elif "detail" in body:  # FastAPI
            msg = body["detail"]
    text = msg if isinstance(msg, str) else json.dumps(msg)
    return text[:limit]


def _retry_after(resp: httpx.Response | None) -> float | None:
    if resp is None:
        return None
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return None  # absent, or an HTTP date: ignore it


class OpenAIHTTPEncoder(EncoderBase):
    """The `Encoder` protocol over an OpenAI-compatible embeddings endpoint."""

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        dim: int | None = None,
        encoding_format: Literal["base64", "float"] = "base64",
        concurrency: int = 4,
        max_connections: int = 32,
        backoff_s: float = 0.1,
        backoff_cap_s: float = 2.0,
    ) -> None:
        if not spec.url:
            raise ValueError(f"encoder {spec.name!r}: backend openai_http needs `url` (…/v1)")
        self.spec = spec
        base = spec.url.rstrip("/")
        if base.endswith("/embeddings"):  # tolerate the full endpoint URL
            base = base[: -len("/embeddings")]
        self.url = base + "/embeddings"
        self.model = spec.upstream_model or spec.name
        self.encoding_format = encoding_format
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s

        self.tokenizer = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision)
        spec.fingerprint()  # the weights' identity read now, at load, not on a first request
        model_max = getattr(self.tokenizer, "model_max_length", None)
        self._max_tokens = spec.max_tokens
        if isinstance(model_max, int) and 0 < model_max < _UNSET_MODEL_MAX:
            self._max_tokens = min(self._max_tokens, model_max)

        headers = {"User-Agent": "querylift-openai-http"}
        if spec.api_key:
            headers["Authorization"] = f"Bearer {spec.api_key.get_secret_value()}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
        )
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, concurrency), thread_name_prefix="openai-http"
        )
        self._local = threading.local()
        self._dim: int | None = dim
        try:
            if self._dim is None:
                vectors, _ = self._embed_batch([_PROBE_TEXT])
                self._dim = int(vectors.shape[1])
                log.info("upstream %s (%s): %d-d vectors", self.url, self.model, self._dim)
        except BaseException:
            self.close()
            raise

    # -- protocol ---------------------------------------------------------------------------
    @property
    def last_usage(self) -> dict[str, int] | None:
        """The upstream's `usage` for this thread's last `encode` (summed over its batches).

        None when the upstream reported none. Per-text counts in `EncodeResult` are local.
        """
        return getattr(self._local, "usage", None)

    def tokenize(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> Tokenized:
        formatted = self.format(texts, kind, instruction)
        return Tokenized(formatted, self._count(formatted))  # text goes upstream, not ids

    def encode_tokenized(self, tokens: Tokenized, truncate: bool = True) -> EncodeResult:
        formatted = list(tokens.texts)
        self._local.usage = None
        n = len(formatted)
        if n == 0:
            return EncodeResult(np.empty((0, self.dim), dtype=np.float32), [])
        counts = list(tokens.counts)
        limit = self._max_tokens
        for i, c in enumerate(counts):
            if c > limit:
                if not truncate:
                    raise InputTooLongError(i, c, limit)
                formatted[i], counts[i] = self._cut(formatted[i], limit)
        bs = self.spec.batch_size
        batches = [formatted[s : s + bs] for s in range(0, n, bs)]
        if len(batches) == 1:
            results = [self._embed_batch(batches[0])]
        else:
            results = list(self._pool.map(self._embed_batch, batches))
        out = np.concatenate([v for v, _ in results]).astype(np.float32, copy=False)
        if self.spec.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.maximum(norms, 1e-12)
        usages = [u for _, u in results if u is not None]
        if usages:
            self._local.usage = {
                "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usages),
                "total_tokens": sum(u.get("total_tokens", 0) for u in usages),
            }
        return EncodeResult(np.ascontiguousarray(out, dtype=np.float32), counts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> OpenAIHTTPEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens -----------------------------------------------------------------------------
    def _count(self, formatted: list[str]) -> list[int]:
        if not formatted:
            return []  # the fast tokenizer raises IndexError on an empty batch
        enc = self.tokenizer(formatted, add_special_tokens=True, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _cut(self, text: str, limit: int) -> tuple[str, int]:
        """The longest prefix of `text` (at a token boundary) whose count is within `limit`.

        The upstream re-tokenizes the prefix; a BPE merge across the cut can change the
        count, so the prefix is re-counted and shortened until it fits.
        """
        budget = limit
        while True:
            cut = self._prefix(text, budget)
            (count,) = self._count([cut])
            if count <= limit or not cut:
                return cut, count
            budget -= max(1, count - limit)

    def _prefix(self, text: str, budget: int) -> str:
        tok = self.tokenizer
        if budget <= 0:
            return ""
        if tok.is_fast:
            enc = tok(
                text,
                add_special_tokens=True,
                truncation=True,
                max_length=budget,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                verbose=False,
            )
            ends = [
                end
                for (_, end), special in zip(
                    enc["offset_mapping"], enc["special_tokens_mask"], strict=True
                )
                if not special
            ]
            return text[: ends[-1]] if ends else ""
        ids = tok(text, add_special_tokens=True, truncation=True, max_length=budget)["input_ids"]
        return tok.decode(ids, skip_special_tokens=True)

    # -- transport --------------------------------------------------------------------------
    def _embed_batch(self, texts: list[str]) -> tuple[np.ndarray, dict[str, int] | None]:
        payload = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}
        resp = self._post(payload)
        try:
            return self._parse(resp, len(texts))
        except UpstreamError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise UpstreamError(
                f"upstream {self.url} sent a malformed embeddings response: {type(e).__name__}: {e}"
            ) from e

    def _parse(self, resp: httpx.Response, n: int) -> tuple[np.ndarray, dict[str, int] | None]:
        body = resp.json()
        data = body["data"]
        if not isinstance(data, list) or len(data) != n:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise UpstreamError(f"upstream {self.url} returned {got} embeddings for {n} inputs")
        rows: list[np.ndarray | None] = [None] * n
        for pos, item in enumerate(data):
            idx = item.get("index", pos)
            if not isinstance(idx, int) or not 0 <= idx < n or rows[idx] is not None:
                raise UpstreamError(f"upstream {self.url} returned a bad or repeated index {idx}")
            emb = item["embedding"]
            if isinstance(emb, str):
                vec = np.frombuffer(base64.b64decode(emb), dtype="<f4")
            else:
                vec = np.asarray(emb, dtype=np.float32)
            if vec.ndim != 1 or (self._dim is not None and vec.shape[0] != self._dim):
                raise UpstreamError(
                    f"upstream {self.url} returned a {vec.shape}-shaped vector; "
                    f"expected ({self._dim},)"
                )
            rows[idx] = vec
        out = np.stack(rows).astype(np.float32)  # type: ignore[arg-type]
        if not np.isfinite(out).all():
            raise UpstreamError(f"upstream {self.url} returned non-finite values")
        usage = body.get("usage")
        if isinstance(usage, dict):
            usage = {k: int(v) for k, v in usage.items() if isinstance(v, int | float)}
        else:
            usage = None
        return out, usage

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        attempts = self.spec.max_retries + 1
        for attempt in range(1, attempts + 1):
            resp: httpx.Response | None = None
            try:
                resp = self._client.post(self.url, json=payload)
            except httpx.TimeoutException as e:
                err = UpstreamError(
                    f"upstream {self.url} timed out after {self.spec.timeout_s}s "
                    f"({type(e).__name__}; {attempt} attempt(s))",
                    attempts=attempt,
                )
                err.__cause__ = e
            except httpx.TransportError as e:  # refused, reset, DNS, protocol errors
                err = UpstreamError(
                    f"upstream {self.url} unreachable: {type(e).__name__}: {e} "
                    f"({attempt} attempt(s))",
                    attempts=attempt,
                )
                err.__cause__ = e
            else:
                if resp.is_success:
                    return resp
                err = UpstreamError(
                    f"upstream {self.url} answered {resp.status_code}: {_error_message(resp)}"
                    + (f" ({attempt} attempt(s))" if resp.status_code >= 500 else ""),
                    status=resp.status_code,
                    attempts=attempt,
                )
                if resp.status_code < 500:
                    raise err  # the request itself is wrong: sending it again will not help
            if attempt < attempts:
                delay = self._backoff(attempt - 1, _retry_after(resp))
                log.warning("%s; retrying in %.2fs", err, delay)
                time.sleep(delay)
        raise err

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.backoff_cap_s, self.backoff_s * 2**retry) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_cap_s))
        return delay
