"""Language-model data: documents -> tokens (end-of-text between documents) -> fixed-length blocks, cached with
``datasets`` under the cache directory, keyed by the corpus fingerprint, tokenizer and block size."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import torch

from ..config import DataConfig
from .corpus import cache_root, load_text
from .tokenizer import build_tokenizer


@dataclass
class LMData:
    train: torch.Tensor  # (n_train_blocks, block_size) int64
    val: torch.Tensor  # (n_val_blocks, block_size)
    tokenizer: object
    meta: dict  # val_bytes, val_tokens (for bits per byte), train_tokens, fingerprint


def _pack(tokenizer, docs: list[str], block_size: int) -> tuple[torch.Tensor, int]:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size), len(ids)


def build_lm_data(cfg: DataConfig, block_size: int) -> LMData:
    """Tokenised, packed train / validation blocks for ``cfg`` (cached after the first call)."""
    import datasets

    splits = load_text(cfg.dataset, text_field=cfg.text_field, val_fraction=cfg.val_fraction,
                       split_seed=cfg.split_seed, cache_dir=cfg.cache_dir)
    key = hashlib.sha256(json.dumps([splits.fingerprint, cfg.tokenizer, cfg.vocab_size, block_size]).encode())
    folder = cache_root(cfg.cache_dir) / "lm" / key.hexdigest()[:16]
    if not (folder / "meta.json").exists():
        tokenizer = build_tokenizer(cfg.tokenizer, splits.train, cfg.vocab_size)
        train, n_train = _pack(tokenizer, splits.train, block_size)
        val, n_val = _pack(tokenizer, splits.val, block_size)
        for name, blocks, n_tok in (("train", train, n_train), ("validation", val, n_val)):
            if len(blocks) == 0:
                raise ValueError(f"The {name} split of {cfg.dataset!r} has {n_tok} tokens, fewer than one block of "
                                 f"model.block_size={block_size}: use a smaller block size or more data")
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        datasets.Dataset.from_dict({"input_ids": train.tolist()}).save_to_disk(str(tmp / "train"))
        datasets.Dataset.from_dict({"input_ids": val.tolist()}).save_to_disk(str(tmp / "validation"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        meta = {"fingerprint": splits.fingerprint, "dataset": cfg.dataset, "tokenizer": cfg.tokenizer,
                "vocab": len(tokenizer), "block_size": block_size, "train_tokens": n_train, "val_tokens": n_val,
                "val_bytes": sum(len(d.encode("utf-8")) for d in splits.val)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, folder)  # another process may have won the race: theirs is identical
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    from transformers import AutoTokenizer

    meta = json.loads((folder / "meta.json").read_text())
    load = lambda split: datasets.load_from_disk(str(folder / split)).with_format("torch")[:]["input_ids"]
    return LMData(train=load("train"), val=load("validation"),
                  tokenizer=AutoTokenizer.from_pretrained(str(folder / "tokenizer")), meta=meta)


