"""transformers backend: one code path for CPU (fp32) and CUDA (bf16)."""

from __future__ import annotations

import threading

import numpy as np
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from encoders.base import (
    EncoderBase,
    EncodeResult,
    EncoderSpec,
    InputKind,
    Instruction,
    Pooling,
    Tokenized,
)


def _resolve_dtype(spec: EncoderSpec, device: torch.device) -> torch.dtype:
    if spec.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec.dtype)


class TransformersEncoder(EncoderBase):
    """Pooling, prompts, truncation and normalisation around an `AutoModel`."""

    @property
    def engine(self) -> str:
        return f"transformers=={transformers.__version__} torch=={torch.__version__}"

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self._device = torch.device(spec.device)
        self._dtype = _resolve_dtype(spec, self._device)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(
            spec.path, revision=spec.revision, dtype=self._dtype
        ).to(self._device)
        self.model.eval()
        spec.fingerprint()  # the weights' identity read now, at load, not on a first request
        hidden = getattr(self.model.config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"{spec.path}: model config has no integer hidden_size")
        self._dim = hidden
        model_max = getattr(self.model.config, "max_position_embeddings", None) or spec.max_tokens
        self._max_tokens = min(spec.max_tokens, int(model_max))
        # torch modules are safe to call from several threads, but one forward at a time keeps
        # the CPU's cores on one batch instead of thrashing between several.
        self._lock = threading.Lock()
        # HF fast tokenizers fail ("Already borrowed") when called from two threads with
        # different truncation settings: requests tokenise on the event loop, batches may cut.
        self._tok_lock = threading.Lock()
        self._pad_id = int(self.tokenizer.pad_token_id or 0)

    def tokenize(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> Tokenized:
        formatted = self.format(texts, kind, instruction)
        if not formatted:
            return Tokenized([], [], [])  # the fast tokenizer raises IndexError on []
        with self._tok_lock:
            ids = self.tokenizer(formatted, add_special_tokens=True, verbose=False)["input_ids"]
        return Tokenized(formatted, [len(x) for x in ids], [list(x) for x in ids])

    @torch.inference_mode()
    def encode_tokenized(self, tokens: Tokenized, truncate: bool = True) -> EncodeResult:
        n = len(tokens)
        out = np.empty((n, self._dim), dtype=np.float32)
        if n == 0:
            return EncodeResult(out, [])
        if not truncate:
            self.check_length(tokens)
        ids = tokens.ids if tokens.ids is not None else self.tokenize_formatted(tokens.texts)
        ids = self._cut(tokens.texts, ids)
        counts = [len(x) for x in ids]
        # Length-sorted batches keep padding (wasted compute) low.
        order = sorted(range(n), key=lambda i: counts[i])
        bs = self.spec.batch_size
        with self._lock:
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                input_ids, mask = self._pad([ids[i] for i in idx])
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                pooled = self._pool(hidden, mask).float()
                if self.spec.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out[idx] = pooled.cpu().numpy()
        return EncodeResult(out, counts)

    def tokenize_formatted(self, formatted: list[str]) -> list[list[int]]:
        with self._tok_lock:
            ids = self.tokenizer(formatted, add_special_tokens=True, verbose=False)["input_ids"]
        return [list(x) for x in ids]

    def _cut(self, texts: list[str], ids: list[list[int]]) -> list[list[int]]:
        """Rows over the limit re-tokenised with the tokenizer's own truncation (it keeps the
        special tokens); the rare path, so the common one tokenises once."""
        over = [i for i, x in enumerate(ids) if len(x) > self._max_tokens]
        if not over:
            return ids
        with self._tok_lock:
            cut = self.tokenizer(
                [texts[i] for i in over],
                add_special_tokens=True,
                truncation=True,
                max_length=self._max_tokens,
                verbose=False,
            )["input_ids"]
        ids = list(ids)
        for i, row in zip(over, cut, strict=True):
            ids[i] = list(row)
        return ids

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad on the tokenizer's side (left for Qwen3), as `tokenizer.pad` would."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for j, r in enumerate(rows):
            lo = width - len(r) if left else 0
            input_ids[j, lo : lo + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[j, lo : lo + len(r)] = 1
        return input_ids.to(self._device), mask.to(self._device)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.spec.pooling == Pooling.CLS:
            # The first position whose mask is 1 (position 0 only under right padding; a
            # left-padding tokenizer puts pads there).
            first = mask.argmax(dim=1)
            return hidden[rows, first]
        if self.spec.pooling == Pooling.LAST:
            # Works for left and right padding: the last position whose mask is 1.
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask * positions).argmax(dim=1)
            return hidden[rows, last]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
