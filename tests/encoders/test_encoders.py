"""Tests for the `encoders` package, on tiny random models built locally (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModel, AutoTokenizer

from encoders import Encoder, EncodeResult, EncoderSpec, Pooling, build_encoder
from encoders.base import InputTooLongError, format_texts
from tests.conftest import long_text
from tests.encoders.conftest import assert_empty_input_ok
from tests.tiny_models import build_tiny_bert, build_tiny_qwen3

QWEN3_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
DEFAULT_INSTRUCTION = "given a web search query retrieve relevant passages"
BERT_MAX_POS = 64
QWEN_MAX_POS = 128
ATOL = 1e-5

# Very different lengths, in an order that length-sorting reshuffles.
TEXTS = [
    "what causes malaria in children and women and men in the study of the disease",
    "cell",
    "the mosquito is the parasite",
    "does vitamin a decrease the risk of heart disease in patients with cancer and "
    "how does the immune response to the virus infection change with the drug treatment",
    "a",
    "gene and protein",
]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def bert_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert") / "model", max_positions=BERT_MAX_POS)


@pytest.fixture(scope="session")
def qwen_left_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(
        tmp_path_factory.mktemp("qwen_left") / "model",
        max_positions=QWEN_MAX_POS,
        padding_side="left",
    )


@pytest.fixture(scope="session")
def qwen_right_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(
        tmp_path_factory.mktemp("qwen_right") / "model",
        max_positions=QWEN_MAX_POS,
        padding_side="right",
    )


@pytest.fixture(scope="session", params=["left", "right"])
def qwen_path(request: pytest.FixtureRequest, qwen_left_path: Path, qwen_right_path: Path) -> Path:
    return qwen_left_path if request.param == "left" else qwen_right_path


_REFERENCE_CACHE: dict[str, tuple] = {}


def reference(path: Path):
    """(tokenizer, model) loaded straight from the directory, independent of the encoder."""
    key = str(path)
    if key not in _REFERENCE_CACHE:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        _REFERENCE_CACHE[key] = (tok, model)
    return _REFERENCE_CACHE[key]


@torch.inference_mode()
def manual_hidden(path: Path, text: str, max_length: int | None = None) -> tuple[list, np.ndarray]:
    """Token ids and last_hidden_state for one text, unpadded (so no mask is involved)."""
    tok, model = reference(path)
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    enc = tok([text], return_tensors="pt", **kwargs)
    hidden = model(**enc).last_hidden_state[0].numpy()
    return enc["input_ids"][0].tolist(), hidden


def make_spec(path: Path, **kw) -> EncoderSpec:
    kw.setdefault("name", "tiny")
    return EncoderSpec(path=str(path), **kw)


def make(path: Path, **kw) -> Encoder:
    return build_encoder(make_spec(path, **kw))


def qwen_spec_kwargs(**kw) -> dict:
    base = {
        "pooling": Pooling.LAST,
        "query_template": QWEN3_TEMPLATE,
        "default_instruction": DEFAULT_INSTRUCTION,
    }
    base.update(kw)
    return base


def one_by_one(enc: Encoder, texts: list[str], kind: str = "document", **kw) -> np.ndarray:
    return np.stack([enc.encode([t], kind, **kw).vectors[0] for t in texts])


# ---------------------------------------------------------------- protocol / factory


def test_build_encoder_returns_protocol_object(bert_path: Path) -> None:
    enc = make(bert_path)
    assert isinstance(enc, Encoder)
    assert enc.name == "tiny"
    assert enc.dim == 32
    assert enc.spec.name == "tiny"


def test_build_encoder_rejects_unknown_backend(bert_path: Path) -> None:
    # model_copy skips validation, so this is how an unknown backend could reach the factory.
    spec = make_spec(bert_path).model_copy(update={"backend": "nope"})
    with pytest.raises(ValueError, match="unknown encoder backend"):
        build_encoder(spec)


def test_spec_validation() -> None:
    with pytest.raises(ValidationError):
        EncoderSpec(name="x", path="p", unknown_field=1)
    with pytest.raises(ValidationError):
        EncoderSpec(name="x", path="p", max_tokens=0)
    with pytest.raises(ValidationError):
        EncoderSpec(name="x", path="p", batch_size=0)
    with pytest.raises(ValidationError):
        EncoderSpec(name="x", path="p", pooling="max")
    spec = EncoderSpec(name="x", path="p", pooling="last")
    assert spec.pooling is Pooling.LAST
    with pytest.raises(ValidationError):
        spec.max_tokens = 5  # frozen


# ---------------------------------------------------------------- pooling vs manual


@pytest.mark.parametrize("pooling", [Pooling.MEAN, Pooling.CLS])
def test_bert_pooling_matches_manual(bert_path: Path, pooling: Pooling) -> None:
    enc = make(bert_path, pooling=pooling, normalize=False, batch_size=4)
    res = enc.encode(TEXTS, "document")
    for i, text in enumerate(TEXTS):
        ids, hidden = manual_hidden(bert_path, text)
        expected = hidden.mean(axis=0) if pooling == Pooling.MEAN else hidden[0]
        np.testing.assert_allclose(res.vectors[i], expected, atol=ATOL, rtol=0)
        assert res.token_counts[i] == len(ids)


def test_bert_cls_is_the_cls_token(bert_path: Path) -> None:
    tok, _ = reference(bert_path)
    ids, _ = manual_hidden(bert_path, "the cell")
    assert ids[0] == tok.cls_token_id
    assert ids[-1] == tok.sep_token_id


@pytest.mark.parametrize("pooling", [Pooling.MEAN, Pooling.LAST, Pooling.CLS])
def test_qwen3_pooling_matches_manual(qwen_path: Path, pooling: Pooling) -> None:
    """Pooling over a padded batch equals pooling over each unpadded text, either padding side."""
    enc = make(qwen_path, pooling=pooling, normalize=False, batch_size=len(TEXTS))
    res = enc.encode(TEXTS, "document")
    for i, text in enumerate(TEXTS):
        ids, hidden = manual_hidden(qwen_path, text)
        expected = {
            Pooling.MEAN: hidden.mean(axis=0),
            Pooling.LAST: hidden[-1],
            Pooling.CLS: hidden[0],
        }[pooling]
        np.testing.assert_allclose(res.vectors[i], expected, atol=ATOL, rtol=0)
        assert res.token_counts[i] == len(ids)


def test_qwen3_last_token_is_appended_eos(qwen_path: Path) -> None:
    tok, _ = reference(qwen_path)
    for text in TEXTS:
        ids, _ = manual_hidden(qwen_path, text)
        assert ids[-1] == tok.eos_token_id
        assert tok.convert_ids_to_tokens(ids[-1]) == "<|endoftext|>"


def test_qwen3_padding_sides_agree(qwen_left_path: Path, qwen_right_path: Path) -> None:
    """Same weights (same seed), different padding side: same vectors."""
    left = make(qwen_left_path, **qwen_spec_kwargs(batch_size=len(TEXTS)))
    right = make(qwen_right_path, **qwen_spec_kwargs(batch_size=len(TEXTS)))
    assert left.tokenizer.padding_side == "left"
    assert right.tokenizer.padding_side == "right"
    for kind in ("query", "document"):
        np.testing.assert_allclose(
            left.encode(TEXTS, kind).vectors, right.encode(TEXTS, kind).vectors, atol=ATOL
        )


@pytest.mark.parametrize("kind", ["query", "document"])
def test_qwen3_batch_independence(qwen_path: Path, kind: str) -> None:
    enc = make(qwen_path, **qwen_spec_kwargs(normalize=False, batch_size=len(TEXTS)))
    batched = enc.encode(TEXTS, kind).vectors
    single = one_by_one(enc, TEXTS, kind)
    np.testing.assert_allclose(batched, single, atol=ATOL, rtol=0)
    # And with a different batch company: the first text next to a very long one.
    pair = enc.encode([TEXTS[1], TEXTS[3]], kind).vectors
    np.testing.assert_allclose(pair[0], single[1], atol=ATOL, rtol=0)
    np.testing.assert_allclose(pair[1], single[3], atol=ATOL, rtol=0)
    assert np.isfinite(batched).all()


def test_pad_token_falls_back_to_eos(qwen_left_path: Path, tmp_path: Path) -> None:
    """A tokenizer without a pad token still batches (pads with eos)."""
    path = tmp_path / "nopad"
    tok = AutoTokenizer.from_pretrained(qwen_left_path)
    tok.pad_token = None
    tok.save_pretrained(path)
    AutoModel.from_pretrained(qwen_left_path).save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).pad_token is None
    enc = make(path, **qwen_spec_kwargs(batch_size=len(TEXTS)))
    assert enc.tokenizer.pad_token == enc.tokenizer.eos_token
    ref = make(qwen_left_path, **qwen_spec_kwargs(batch_size=1))
    np.testing.assert_allclose(
        enc.encode(TEXTS, "document").vectors, ref.encode(TEXTS, "document").vectors, atol=ATOL
    )


# ---------------------------------------------------------------- prompts


def test_query_template_applied_to_queries_only(qwen_left_path: Path) -> None:
    enc = make(qwen_left_path, **qwen_spec_kwargs())
    texts = ["what causes malaria", "cell"]
    assert enc.format(texts, "query") == [
        f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:what causes malaria",
        f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:cell",
    ]
    assert enc.format(texts, "document") == texts
    # The instruction is ignored for documents too.
    assert enc.format(texts, "document", instruction="find evidence") == texts


def test_query_prompt_reaches_the_model(qwen_left_path: Path) -> None:
    enc = make(qwen_left_path, **qwen_spec_kwargs())
    text = "what causes malaria"
    prompted = f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:{text}"
    q = enc.encode([text], "query")
    d = enc.encode([text], "document")
    d_prompted = enc.encode([prompted], "document")
    np.testing.assert_allclose(q.vectors, d_prompted.vectors, atol=ATOL)
    assert q.token_counts == d_prompted.token_counts
    assert q.token_counts[0] > d.token_counts[0]
    assert not np.allclose(q.vectors, d.vectors, atol=1e-3)
    # count_tokens formats the same way.
    assert enc.count_tokens([text], "query") == q.token_counts
    assert enc.count_tokens([text], "document") == d.token_counts


def test_instruction_override(qwen_left_path: Path) -> None:
    enc = make(qwen_left_path, **qwen_spec_kwargs())
    text = "what causes malaria"
    assert enc.format([text], "query", instruction="find evidence") == [
        "Instruct: find evidence\nQuery:what causes malaria"
    ]
    # An explicit empty instruction overrides the default too (None means "use the default").
    assert enc.format([text], "query", instruction="") == ["Instruct: \nQuery:what causes malaria"]
    default = enc.encode([text], "query").vectors
    override = enc.encode([text], "query", instruction="find evidence").vectors
    explicit_default = enc.encode([text], "query", instruction=DEFAULT_INSTRUCTION).vectors
    assert not np.allclose(default, override, atol=1e-3)
    np.testing.assert_allclose(default, explicit_default, atol=ATOL)
    manual = enc.encode(["Instruct: find evidence\nQuery:what causes malaria"], "document")
    np.testing.assert_allclose(override, manual.vectors, atol=ATOL)


def test_braces_in_user_text_are_not_expanded() -> None:
    spec = EncoderSpec(
        name="x", path="p", query_template=QWEN3_TEMPLATE, default_instruction="search {text}"
    )
    assert format_texts(spec, ["a {instruction} b {text} c {other}"], "query", None) == [
        "Instruct: search {text}\nQuery:a {instruction} b {text} c {other}"
    ]
    assert format_texts(spec, ["x"], "query", "use {instruction} and {text}") == [
        "Instruct: use {instruction} and {text}\nQuery:x"
    ]
    assert format_texts(spec, ["{text}"], "document", "ignored") == ["{text}"]


def test_braces_through_encoder(qwen_left_path: Path) -> None:
    enc = make(qwen_left_path, **qwen_spec_kwargs())
    assert enc.format(["{instruction}"], "query", instruction="{text}") == [
        "Instruct: {text}\nQuery:{instruction}"
    ]
    res = enc.encode(["{instruction} {text}"], "query", instruction="{text}")
    assert res.vectors.shape == (1, enc.dim)


def test_custom_document_template() -> None:
    spec = EncoderSpec(name="x", path="p", document_template="passage: {text}")
    assert format_texts(spec, ["a", "b"], "document", None) == ["passage: a", "passage: b"]
    assert format_texts(spec, ["a"], "query", None) == ["a"]


# ---------------------------------------------------------------- normalisation, dtype, order


@pytest.mark.parametrize("model", ["bert", "qwen"])
def test_normalize(bert_path: Path, qwen_left_path: Path, model: str) -> None:
    path, kw = (bert_path, {}) if model == "bert" else (qwen_left_path, qwen_spec_kwargs())
    normed = make(path, **kw).encode(TEXTS, "query")
    raw = make(path, normalize=False, **kw).encode(TEXTS, "query")
    for res in (normed, raw):
        assert isinstance(res, EncodeResult)
        assert res.vectors.dtype == np.float32
        assert res.vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(normed.vectors, axis=1), 1.0, atol=1e-5)
    raw_norms = np.linalg.norm(raw.vectors, axis=1)
    assert not np.allclose(raw_norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(normed.vectors, raw.vectors / raw_norms[:, None], atol=ATOL, rtol=0)
    assert normed.token_counts == raw.token_counts


@pytest.mark.parametrize("model", ["bert", "qwen_left", "qwen_right"])
def test_rows_in_input_order(
    bert_path: Path, qwen_left_path: Path, qwen_right_path: Path, model: str
) -> None:
    path, kw = {
        "bert": (bert_path, {}),
        "qwen_left": (qwen_left_path, qwen_spec_kwargs()),
        "qwen_right": (qwen_right_path, qwen_spec_kwargs()),
    }[model]
    enc = make(path, batch_size=2, **kw)
    lengths = enc.count_tokens(TEXTS, "document")
    assert sorted(lengths) != lengths  # the input really is out of length order
    res = enc.encode(TEXTS, "document")
    single = [enc.encode([t], "document") for t in TEXTS]
    np.testing.assert_allclose(res.vectors, np.concatenate([s.vectors for s in single]), atol=ATOL)
    assert res.token_counts == [s.token_counts[0] for s in single] == lengths
    # Distinct texts give distinct rows, so a permutation would have been caught above.
    assert len({tuple(np.round(v, 4)) for v in res.vectors}) == len(TEXTS)
    # Duplicates are fine and land in both places.
    dup = enc.encode([TEXTS[0], TEXTS[1], TEXTS[0]], "document").vectors
    np.testing.assert_allclose(dup[0], dup[2], atol=ATOL)
    np.testing.assert_allclose(dup[0], res.vectors[0], atol=ATOL)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_batch_size_does_not_change_vectors(bert_path: Path, batch_size: int) -> None:
    ref = make(bert_path, batch_size=len(TEXTS)).encode(TEXTS, "document").vectors
    got = make(bert_path, batch_size=batch_size).encode(TEXTS, "document").vectors
    np.testing.assert_allclose(got, ref, atol=ATOL)


@pytest.mark.parametrize("model", ["bert", "qwen"])
def test_empty_input(bert_path: Path, qwen_left_path: Path, model: str) -> None:
    path, kw = (bert_path, {}) if model == "bert" else (qwen_left_path, qwen_spec_kwargs())
    enc = make(path, **kw)
    assert_empty_input_ok(enc)


def test_empty_string(bert_path: Path) -> None:
    enc = make(bert_path)
    res = enc.encode(["", "cell"], "document")
    assert res.token_counts == [2, 3]  # [CLS] [SEP] and [CLS] cell [SEP]
    assert np.isfinite(res.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- truncation and limits


def test_count_tokens_is_untruncated(bert_path: Path) -> None:
    enc = make(bert_path, max_tokens=16)
    assert enc.count_tokens(["the cell", long_text(100)], "document") == [4, 102]


def test_truncate_false_raises_with_details(bert_path: Path) -> None:
    enc = make(bert_path, max_tokens=16)
    texts = ["the cell", long_text(14), long_text(15), long_text(40)]
    assert enc.count_tokens(texts, "document") == [4, 16, 17, 42]
    with pytest.raises(InputTooLongError) as info:
        enc.encode(texts, "document", truncate=False)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.index, err.tokens, err.max_tokens) == (2, 17, 16)
    assert "input 2" in str(err) and "17" in str(err) and "16" in str(err)
    # Exactly at the limit is fine.
    ok = enc.encode(texts[:2], "document", truncate=False)
    assert ok.token_counts == [4, 16]


def test_truncate_false_counts_the_prompt(qwen_left_path: Path) -> None:
    enc = make(qwen_left_path, **qwen_spec_kwargs(max_tokens=16))
    text = long_text(10)
    assert enc.count_tokens([text], "document") == [11]
    q_tokens = enc.count_tokens([text], "query")[0]
    assert q_tokens > 16
    enc.encode([text], "document", truncate=False)
    with pytest.raises(InputTooLongError) as info:
        enc.encode([text], "query", truncate=False)
    assert (info.value.index, info.value.tokens, info.value.max_tokens) == (0, q_tokens, 16)


def test_truncate_true_cuts_and_reports(bert_path: Path) -> None:
    enc = make(bert_path, max_tokens=16, normalize=False, batch_size=2)
    texts = [long_text(40), "the cell", "cancer " + long_text(30)]
    res = enc.encode(texts, "document", truncate=True)
    assert res.token_counts == [16, 4, 16]
    for i, text in enumerate(texts):
        ids, hidden = manual_hidden(bert_path, text, max_length=16)
        assert len(ids) == res.token_counts[i]
        np.testing.assert_allclose(res.vectors[i], hidden.mean(axis=0), atol=ATOL, rtol=0)
    # Truncation keeps the head: anything past the limit does not matter.
    tail = enc.encode([long_text(40) + " cancer cell gene"], "document")
    np.testing.assert_allclose(tail.vectors[0], res.vectors[0], atol=ATOL)
    # count_tokens still reports the untruncated count.
    assert enc.count_tokens(texts, "document") == [42, 4, 33]
    # truncate=True is the default.
    np.testing.assert_allclose(enc.encode(texts, "document").vectors, res.vectors, atol=ATOL)


def test_qwen3_truncation_keeps_eos(qwen_path: Path) -> None:
    enc = make(qwen_path, **qwen_spec_kwargs(max_tokens=12, normalize=False))
    text = long_text(30)
    res = enc.encode([text, "cell"], "document")
    assert res.token_counts == [12, 2]
    tok, _ = reference(qwen_path)
    ids, hidden = manual_hidden(qwen_path, text, max_length=12)
    assert len(ids) == 12 and ids[-1] == tok.eos_token_id
    np.testing.assert_allclose(res.vectors[0], hidden[-1], atol=ATOL, rtol=0)


def test_max_tokens_capped_by_model(bert_path: Path, qwen_left_path: Path) -> None:
    assert make(bert_path).max_tokens == BERT_MAX_POS  # spec default 512
    assert make(bert_path, max_tokens=10_000).max_tokens == BERT_MAX_POS
    assert make(bert_path, max_tokens=16).max_tokens == 16
    assert make(qwen_left_path, max_tokens=4096).max_tokens == QWEN_MAX_POS
    enc = make(bert_path, max_tokens=10_000)
    text = long_text(100)
    with pytest.raises(InputTooLongError) as info:
        enc.encode([text], "document", truncate=False)
    assert info.value.max_tokens == BERT_MAX_POS
    assert info.value.tokens == 102
    res = enc.encode([text], "document", truncate=True)
    assert res.token_counts == [BERT_MAX_POS]
    assert np.isfinite(res.vectors).all()
