"""The train / validation hold-out: which text of a source is validation, decided one document at a time.

Whole documents, stratified. Document i (in source order) falls in stratum floor(i * f), f = ``data.val_fraction``,
and one document of each stratum, picked by a hash of (``data.split_seed``, stratum), is validation: a fraction f of
the documents to within one, fixed by the seed, with no count needed (a stream has none). A source with its own
validation split keeps it. A source known to hold fewer than 10 documents (one long text file) cannot spare whole
ones: the last f of each document is validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from .sources import FileDoc, TextDoc, TextSource

MIN_DOCS_FOR_HOLDOUT = 10  # fewer documents than this: the tail of each is validation


def _stratum_pick(seed: int, stratum: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{stratum}".encode(), digest_size=8).digest(), "little")


def is_validation(index: int, fraction: float, seed: int) -> bool:
    """Whether document ``index`` is held out: one document per stratum of about 1/fraction documents."""
    f = Fraction(fraction).limit_denominator(1_000_000)
    p, q = f.numerator, f.denominator
    stratum = index * p // q
    first = -(-stratum * q // p)  # the stratum's first document: ceil(stratum * q / p)
    size = -(-(stratum + 1) * q // p) - first
    return index - first == _stratum_pick(seed, stratum) % size


@dataclass(frozen=True)
class Piece:
    split: str  # "train" | "validation"
    text: str
    last: bool  # the last piece of its document in this split: an end-of-text token follows it


def route(source: TextSource, *, val_fraction: float, split_seed: int) -> Iterator[Piece]:
    """Every piece of the source in a fixed order, each assigned to the train or the validation split."""
    own_val = source.validation_split()
    if own_val is not None:
        for split, name in (("train", "train"), ("validation", own_val)):
            for doc in source.documents(name):
                yield from _doc_pieces(doc, split)
        return
    known = source.known_documents()
    for i, doc in enumerate(source.documents()):
        if known is not None and known < MIN_DOCS_FOR_HOLDOUT:
            cut = doc.cut(val_fraction)
            yield from _doc_pieces(doc, "train", 0, cut)
            yield from _doc_pieces(doc, "validation", cut, None)
        else:
            yield from _doc_pieces(doc, "validation" if is_validation(i, val_fraction, split_seed) else "train")


def _doc_pieces(doc: TextDoc | FileDoc, split: str, start: int = 0, stop: int | None = None) -> Iterator[Piece]:
    previous = None
    for text in doc.pieces(start, stop):
        if previous is not None:
            yield Piece(split, previous, False)
        previous = text
    if previous is not None:
        yield Piece(split, previous, True)


def sample_documents(spec: str, split: str = "train", *, max_chars: int = 1 << 21, text_field: str = "text",
                     val_fraction: float = 0.1, split_seed: int = 1234) -> list[str]:
    """The first documents of a split, up to ``max_chars`` characters in all (probes and calibration text)."""
    out: list[str] = []
    size = 0
    current = ""
    for piece in route(TextSource(spec, text_field=text_field), val_fraction=val_fraction, split_seed=split_seed):
        if piece.split != split:
            continue
        current += piece.text
        if piece.last or size + len(current) >= max_chars:
            out.append(current)
            size += len(current)
            current = ""
            if size >= max_chars:
                break
    if not out:
        raise ValueError(f"Dataset {spec!r} holds no {split} text")
    return out
