"""transformers backend: one code path for CPU (fp32) and CUDA (bf16)."""

from __future__ import annotations

import threading

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from encoders.base import (
    EncoderBase,
    EncodeResult,
    EncoderSpec,
    InputKind,
    InputTooLongError,
    Instruction,
    Pooling,
)


def _resolve_dtype(spec: EncoderSpec, device: torch.device) -> torch.dtype:
    if spec.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec.dtype)


class TransformersEncoder(EncoderBase):
    """Pooling, prompts, truncation and normalisation around an `AutoModel`."""

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
        hidden = getattr(self.model.config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"{spec.path}: model config has no integer hidden_size")
        self._dim = hidden
        model_max = getattr(self.model.config, "max_position_embeddings", None) or spec.max_tokens
        self._max_tokens = min(spec.max_tokens, int(model_max))
        # torch modules are safe to call from several threads, but one forward at a time keeps
        # the CPU's cores on one batch instead of thrashing between several.
        self._lock = threading.Lock()

    def count_tokens(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> list[int]:
        if not texts:
            return []  # the fast tokenizer raises IndexError on an empty batch
        enc = self.tokenizer(
            self.format(texts, kind, instruction), add_special_tokens=True, verbose=False
        )
        return [len(ids) for ids in enc["input_ids"]]

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        kind: InputKind,
        instruction: Instruction = None,
        truncate: bool = True,
    ) -> EncodeResult:
        formatted = self.format(texts, kind, instruction)
        n = len(formatted)
        out = np.empty((n, self._dim), dtype=np.float32)
        counts = [0] * n
        if n == 0:
            return EncodeResult(out, counts)
        ids = self.tokenizer(formatted, add_special_tokens=True, verbose=False)["input_ids"]
        lengths = [len(x) for x in ids]
        if not truncate:
            for i, length in enumerate(lengths):
                if length > self._max_tokens:
                    raise InputTooLongError(i, length, self._max_tokens)
        # Length-sorted batches keep padding (wasted compute) low.
        order = sorted(range(n), key=lambda i: lengths[i])
        bs = self.spec.batch_size
        with self._lock:
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                batch = self.tokenizer(
                    [formatted[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self._max_tokens,
                    return_tensors="pt",
                ).to(self._device)
                hidden = self.model(**batch).last_hidden_state
                pooled = self._pool(hidden, batch["attention_mask"]).float()
                if self.spec.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out[idx] = pooled.cpu().numpy()
                mask_counts = batch["attention_mask"].sum(dim=1).tolist()
                for j, i in enumerate(idx):
                    counts[i] = int(mask_counts[j])
        return EncodeResult(out, counts)

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
