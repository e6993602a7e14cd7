"""Qwen3-architecture model folders with random weights, built locally (no download).

For the real-engine tier and its benchmark: vLLM and the transformers backend run exactly the
code paths of Qwen3-Embedding (last-token pooling, the instruction prompt, an appended
`<|endoftext|>`) on a model whose size is chosen, not fetched. The vectors mean nothing; the
speed and the agreement between engines are what is measured.

The tokenizer is either word-level over a small fixed vocabulary (tests: deterministic) or a
real WordPiece vocabulary borrowed from a local folder (e.g. the embedded MiniLM), so that
real text gets realistic token counts. Either way it appends `<|endoftext|>`, as Qwen3's does.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"

# Qwen3-Embedding-0.6B's shape (config.json of the published model), vocabulary aside.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {  # head_dim 64: the smallest vLLM's CPU attention accepts
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
    },
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
}

WORDS = (
    "the a of and to in is for on with what how why does do are was were be by it this that "
    "cause causes malaria mosquito parasite cancer cell cells gene genes protein proteins brain "
    "heart blood drug drugs risk patients study results increase decrease effect effects "
    "disease treatment children women men mice human vitamin virus infection immune response "
    "find retrieve relevant passages answer query document claim evidence science instruct "
    "given web search"
).split()


def word_vocab(special: list[str]) -> dict[str, int]:
    tokens = (
        special
        + WORDS
        + list(string.ascii_lowercase)
        + list(string.digits)
        + list(string.punctuation)
    )
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def qwen3_tokenizer(max_positions: int, vocab_from: Path | None = None, padding: str = "left"):
    """A fast tokenizer that appends `<|endoftext|>` (Qwen3's convention for embeddings)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_from is not None:
        tok = Tokenizer.from_file(str(vocab_from / "tokenizer.json"))
        tok.add_special_tokens([EOS])
        unk = "[UNK]"
    else:
        vocab = word_vocab([EOS, "<unk>"])
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
        )
        unk = "<unk>"
    tok.no_padding()
    tok.no_truncation()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=max_positions,
        padding_side=padding,
    )


def build_random_qwen3(
    path: Path,
    preset: str = "tiny",
    *,
    max_positions: int = 128,
    seed: int = 0,
    vocab_from: Path | None = None,
    padding_side: str = "left",
    **overrides: Any,
) -> Path:
    """Write a Qwen3Model with random weights and its tokenizer to `path`; return `path`."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    shape = dict(PRESETS[preset])
    shape.update(overrides)
    fast = qwen3_tokenizer(max_positions, vocab_from, padding_side)
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(fast),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **shape,
    )
    model = Qwen3Model(cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
