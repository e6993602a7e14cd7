"""Pseudo-queries cut from the corpus itself, for distillation when a tenant has no traffic yet.

No generator model: nothing on the package registry ships one (doc2query-style T5 packages
fetch their weights from a model hub at install or run time), and the service must train
offline. A pseudo-query is one span of a document, cut to `max_words` words: short like a
query, and about what the document is about. Which span was measured at the distillation
defaults, 3 seeds (`python -m bench.label_free --parts rules`, bench/README.md "Adapters
without labels"), on SciFact test and in domain on both topic halves: the last sentence
(+0.2 / -0.1 / +0.1 nDCG@10 points against the document model alone) never lost more than
0.2 in domain; the title (+0.5 / -1.0 / +0.4) gained most on SciFact but lost a point on
half A, the first (+0.2 / -0.3 / +0.3) and a random sentence (+0.1 / -0.6 / +0.0) less. The
rule that loses least is `DEFAULT_RULE`, as the pull was chosen; on a corpus whose last
sentences are boilerplate, pick `title` or `first`.

Every rule is deterministic: the same corpus, rule and seed give the same texts, so a run is
reproducible and its vectors come from the embedding cache the second time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from training.data import Document

PseudoRule = Literal["title", "first", "last", "random"]
PSEUDO_RULES: tuple[PseudoRule, ...] = ("title", "first", "last", "random")
DEFAULT_RULE: PseudoRule = "last"
MAX_WORDS = 20
MIN_WORDS = 3  # shorter spans ("Background.", "n = 12.") say nothing about the document

# A sentence ends at . ! or ? (maybe closed by a quote or bracket) followed by space and a
# capital, digit or opening bracket; common abbreviations inside a sentence do not end it.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "vs.", "fig.", "figs.", "approx.", "no.", "dr.")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, stripped, in order (a text without a boundary is one)."""
    parts: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        head = text[start : m.start()].rstrip()
        if head.casefold().endswith(_ABBREVIATIONS):
            continue
        parts.append(text[start : m.end()].strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def cut_words(text: str, max_words: int = MAX_WORDS) -> str:
    """The first `max_words` whitespace-separated words of `text`, single-spaced."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    return " ".join(text.split()[:max_words])


def _title_and_body(doc: Document) -> tuple[str, str]:
    """(title, body): BEIR documents keep their title in the payload and their text starts
    with it (training.data.document_text); other documents have no title."""
    title = doc.payload.get("title")
    title = title.strip() if isinstance(title, str) else ""
    text = doc.text.strip()
    if title and text.startswith(title):
        return title, text[len(title) :].strip() or title
    return "", text


def _pick(sentences: list[str], rule: PseudoRule, key: str) -> str:
    useful = [s for s in sentences if len(s.split()) >= MIN_WORDS] or sentences
    if rule == "last":
        return useful[-1]
    if rule == "random":
        # per document, from its id and the seed: independent of corpus order and size
        digest = hashlib.sha256(key.encode()).digest()
        return useful[int.from_bytes(digest[:8], "big") % len(useful)]
    return useful[0]


def pseudo_query(
    doc: Document, rule: PseudoRule = DEFAULT_RULE, max_words: int = MAX_WORDS, seed: int = 0
) -> str:
    """One pseudo-query for `doc`: its title (`title`; the first sentence when it has none),
    its body's first, last or a seeded random sentence, cut to `max_words` words."""
    if rule not in PSEUDO_RULES:
        raise ValueError(f"unknown pseudo-query rule {rule!r} (one of {list(PSEUDO_RULES)})")
    title, body = _title_and_body(doc)
    if rule == "title" and title:
        return cut_words(title, max_words)
    sentences = split_sentences(body) or [body]
    return cut_words(_pick(sentences, rule, f"{seed}\0{doc.id}"), max_words)


def pseudo_queries(
    corpus: Iterable[Document],
    rule: PseudoRule = DEFAULT_RULE,
    max_words: int = MAX_WORDS,
    seed: int = 0,
) -> list[str]:
    """One pseudo-query per document, in corpus order, empty and repeated texts dropped
    (a repeated text would count twice in the loss for no reason)."""
    return list(
        dict.fromkeys(
            t for doc in corpus if (t := pseudo_query(doc, rule, max_words, seed)).strip()
        )
    )


def mix_queries(queries: Sequence[str], pseudo: Sequence[str], seed: int = 0) -> list[str]:
    """Real queries plus at most as many pseudo-queries (a seeded sample): measured real
    traffic beats pseudo-queries, so it keeps at least half of the loss."""
    real = list(dict.fromkeys(queries))
    seen = set(real)
    rest = [p for p in dict.fromkeys(pseudo) if p not in seen]
    if len(rest) > len(real):
        order = sorted(
            range(len(rest)),
            key=lambda i: hashlib.sha256(f"{seed}\0{rest[i]}".encode()).digest(),
        )
        rest = [rest[i] for i in sorted(order[: len(real)])]
    return real + rest
