"""Language-model data for a run: its token shards (prepared on first use), read as blocks with positional reads, or
for ``data.streaming`` the source itself with prepared validation shards. One path for every corpus, the built-in
ones included."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig
from .preparation import prepare
from .shards import TokenBlocks, TokenSplit, read_manifest
from .stream import StreamBlocks


@dataclass
class LMData:
    train: TokenBlocks | StreamBlocks  # (n_train_blocks, block_size) int64 on indexing; a stream reads in order
    val: TokenBlocks
    tokenizer: Any
    meta: dict  # val_bytes, val_tokens (for bits per byte), train_tokens (None when streamed), fingerprint, ...
    folder: Path  # the prepared corpus


def build_lm_data(cfg: DataConfig, block_size: int, *, verify: bool = True, progress: bool = True) -> LMData:
    """Blocks of ``block_size`` tokens of ``cfg``'s corpus, preparing it first where needed.

    Args:
        verify: check each shard's SHA-256 (else only its size) — one process per machine is enough.
    """
    from transformers import AutoTokenizer

    folder = prepare(cfg, progress=progress)  # checks that a prepared corpus is the one cfg asks for
    manifest = read_manifest(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    checksums = verify and cfg.verify_checksums
    val_split = TokenSplit(folder, manifest, "validation")
    val_split.verify(checksums, progress=progress)
    val = TokenBlocks(val_split, block_size)
    if cfg.streaming:
        train = StreamBlocks(cfg, folder / "tokenizer" / "tokenizer.json", tokenizer.eos_token_id, block_size)
        train_tokens = None
    else:
        train_split = TokenSplit(folder, manifest, "train")
        train_split.verify(checksums, progress=progress)
        train, train_tokens = TokenBlocks(train_split, block_size), len(train_split)
    for name, blocks, n_tok in (("train", train, train_tokens), ("validation", val, len(val_split))):
        if n_tok is not None and len(blocks) == 0:
            raise ValueError(f"The {name} split of {cfg.dataset!r} has {n_tok} tokens, fewer than one block of "
                             f"model.block_size={block_size}: use a smaller block size or more data")
    splits = manifest["splits"]
    meta = {"fingerprint": manifest["source"]["fingerprint"], "dataset": cfg.dataset, "tokenizer": cfg.tokenizer,
            "vocab": len(tokenizer), "block_size": block_size, "train_tokens": train_tokens,
            "val_tokens": splits["validation"]["tokens"], "val_bytes": splits["validation"]["bytes"],
            "dtype": manifest["dtype"], "prepared_dir": str(folder),
            # what identifies these tokens (a resumed run checks it): the request, the source and the tokenizer
            "data_key": hashlib.sha256(json.dumps([manifest["request"], manifest["source"]["fingerprint"],
                                                   manifest["tokenizer"]], sort_keys=True).encode()).hexdigest()[:16]}
    return LMData(train=train, val=val, tokenizer=tokenizer, meta=meta, folder=folder)
