"""Small generated corpora for the data tests: documents of seeded random words (some of them not ASCII), written as
JSON lines, a local Hugging Face dataset directory, and a reader of prepared shards back into documents."""

import json
import random
from pathlib import Path

import numpy as np

WORDS = ("the of and to in is for that with as on by this are from or an it at not be was which one all can has "
         "function module naïve café value return über object class import straße time ✓ data λ").split()


def documents(n: int, seed: int = 0, words: tuple[int, int] = (20, 120)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + "." for _ in range(n)]


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs), encoding="utf-8")
    return path


def hf_directory(root: Path, docs: list[str], *, validation: list[str] | None = None) -> Path:
    """A local dataset directory that ``datasets.load_dataset(root)`` reads offline: train.parquet (and
    validation.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), root / "train.parquet")
    if validation is not None:
        pq.write_table(pa.table({"text": validation, "id": list(range(len(validation)))}), root / "validation.parquet")
    return root


def split_documents(ids: np.ndarray, eos: int) -> list[np.ndarray]:
    """A split's token stream cut after each end-of-text id."""
    ends = np.flatnonzero(ids == eos)
    return [ids[a + 1: b + 1] for a, b in zip(np.r_[-1, ends[:-1]], ends, strict=True)]
