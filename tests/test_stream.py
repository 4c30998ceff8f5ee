"""Streaming (``data.streaming``) from a local Hugging Face dataset directory read with ``streaming=True``: the same
tokens as the prepared path, each rank its own documents, exact resume, and a stop when the stream runs out."""

import json

import numpy as np
import pytest
import torch

from kanformer.config import DataConfig, load_config
from kanformer.data import StreamBlocks, build_lm_data, read_manifest
from kanformer.train import train
from tests.corpora import documents, hf_directory, split_documents


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return hf_directory(tmp_path_factory.mktemp("hf") / "docs", documents(400, seed=2))


def _cfg(tmp_path, dataset, **kw):
    return DataConfig(dataset=f"hf:{dataset}", cache_dir=str(tmp_path / "cache"), vocab_size=300, **kw)


def test_streaming_gives_the_prepared_tokens_and_each_rank_its_own_documents(tmp_path, dataset):
    prepared = build_lm_data(_cfg(tmp_path, dataset), block_size=32)
    streamed = build_lm_data(_cfg(tmp_path, dataset, streaming=True, stream_val_tokens=10**9), block_size=32)
    assert isinstance(streamed.train, StreamBlocks) and streamed.meta["train_tokens"] is None
    assert streamed.folder != prepared.folder and not list(streamed.folder.glob("train_*.bin"))
    assert json.loads((streamed.folder / "tokenizer" / "tokenizer.json").read_text()) == \
        json.loads((prepared.folder / "tokenizer" / "tokenizer.json").read_text())  # same sample, same BPE
    n = len(prepared.train)
    assert torch.equal(streamed.train.blocks(0, n), prepared.train[0:n])
    assert torch.equal(streamed.val[0:len(prepared.val)], prepared.val[0:len(prepared.val)])
    # two ranks: rank r packs the training documents whose ordinal is r modulo 2
    eos = prepared.tokenizer.eos_token_id
    docs = split_documents(prepared.train.tokens(0, 10**9).numpy(), eos)
    for rank in (0, 1):
        share = np.concatenate(docs[rank::2])
        stream = StreamBlocks(streamed.train.cfg, streamed.folder / "tokenizer" / "tokenizer.json", eos, 32,
                              rank=rank, world=2)
        k = len(share) // 32 - 8  # short of the share's end, where a pass would wrap around
        assert np.array_equal(stream.blocks(0, k).numpy().ravel(), share[: 32 * k])
        position = stream.position(k - 3)
        resumed = StreamBlocks(streamed.train.cfg, streamed.folder / "tokenizer" / "tokenizer.json", eos, 32,
                               rank=rank, world=2)
        resumed.restore(k - 3, position)  # from a saved position: no tokenizing of what came before
        assert torch.equal(resumed.blocks(k - 3, 3), stream.blocks(k - 3, 3))
        stream.close()
        resumed.close()


def test_preparing_a_hub_dataset_read_as_a_stream_gives_the_same_shards(tmp_path, dataset):
    plain = build_lm_data(_cfg(tmp_path, dataset), block_size=32)
    streamed = build_lm_data(_cfg(tmp_path, dataset, hf_streaming=True, prepared_dir=str(tmp_path / "s")), 32)
    for split in ("train", "validation"):
        a, b = (read_manifest(d.folder)["splits"][split] for d in (plain, streamed))
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]] and a["tokens"] > 0


def _run_cfg(tmp_path, dataset, name, **over):
    overrides = [f"out_dir={tmp_path}", f"name={name}", "log.wandb=disabled", f"data.dataset=hf:{dataset}",
                 "data.streaming=true", f"data.cache_dir={tmp_path / 'cache'}", "train.log_every=1",
                 "train.save_every=100", "train.max_steps=8", "train.eval_every=4"]
    return load_config(preset="debug", overrides=overrides + [f"{k}={v}" for k, v in over.items()])


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "train"]


def test_a_streamed_run_resumes_exactly_with_or_without_the_saved_position(tmp_path, dataset):
    straight = _run_cfg(tmp_path, dataset, "straight")
    train(straight)
    parts = _run_cfg(tmp_path, dataset, "parts")
    assert train(parts, stop_at=4)["step"] == 4
    state_file = next((parts.run_dir / "checkpoints").glob("step_*")) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["stream"]["world"] == 1 and state["stream"]["positions"][0][1] > 0
    train(parts, resume="auto")
    lost = _run_cfg(tmp_path, dataset, "lost")
    train(lost, stop_at=4)
    state_file = next((lost.run_dir / "checkpoints").glob("step_*")) / "trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "stream": None}))
    train(lost, resume="auto")  # no saved position: the rank reads its share from the start up to the step
    a, b, c = (torch.tensor(_losses(cfg.run_dir)) for cfg in (straight, parts, lost))
    assert len(a) == 8
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    torch.testing.assert_close(c, a, rtol=0, atol=1e-6)
    records = [json.loads(line) for line in (straight.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["data_frac"] < 1 for r in records if r["type"] == "train")


def test_a_stream_that_runs_out_stops_the_run(tmp_path):
    small = hf_directory(tmp_path / "small", documents(40, seed=3, words=(5, 10)))
    cfg = _run_cfg(tmp_path, small, "short", **{"train.max_steps": 200, "train.eval_every": 1000})
    with pytest.raises(ValueError, match=r"streamed corpus .* ran out: a rank began pass 2 .*data.max_epochs=1"):
        train(cfg)
    again = _run_cfg(tmp_path, small, "again", **{"train.max_steps": 20, "data.max_epochs": "null"})
    assert train(again)["finished"]
