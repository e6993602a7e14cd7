"""Tiny random models built locally (no download): a BERT-like encoder and a Qwen3.

The tokenizers are word-level, built from a fixed vocabulary, so tests are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from querylift.random_qwen3 import WORDS, build_random_qwen3
from querylift.random_qwen3 import word_vocab as _vocab

__all__ = ["WORDS", "build_tiny_bert", "build_tiny_qwen3"]


def build_tiny_bert(path: Path, hidden: int = 32, max_positions: int = 64, seed: int = 0) -> Path:
    """A 2-layer BERT with a word-level tokenizer: [CLS] text [SEP], right padding."""
    vocab = _vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=max_positions,
        padding_side="right",
    )
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
    )
    model = BertModel(cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_tiny_qwen3(
    path: Path,
    hidden: int = 32,
    max_positions: int = 128,
    seed: int = 0,
    padding_side: str = "left",
) -> Path:
    """A 2-layer Qwen3 with a word-level tokenizer that appends <|endoftext|> (as Qwen3 does)."""
    return build_random_qwen3(
        path,
        "tiny",
        max_positions=max_positions,
        seed=seed,
        padding_side=padding_side,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        head_dim=hidden // 4,
    )
