"""Tiny random models built locally (no download): a BERT-like encoder and a Qwen3.

The tokenizers are word-level, built from a fixed vocabulary, so tests are deterministic.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

WORDS = (
    "the a of and to in is for on with what how why does do are was were be by it this that "
    "cause causes malaria mosquito parasite cancer cell cells gene genes protein proteins brain "
    "heart blood drug drugs risk patients study results increase decrease effect effects "
    "disease treatment children women men mice human vitamin virus infection immune response "
    "find retrieve relevant passages answer query document claim evidence science instruct "
    "given web search"
).split()


def _vocab(special: list[str]) -> dict[str, int]:
    tokens = (
        special
        + WORDS
        + list(string.ascii_lowercase)
        + list(string.digits)
        + list(string.punctuation)
    )
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


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
    eos = "<|endoftext|>"
    vocab = _vocab([eos, "<unk>"])
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, vocab[eos])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token=eos,
        pad_token=eos,
        model_max_length=max_positions,
        padding_side=padding_side,
    )
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )
    model = Qwen3Model(cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
