"""Several processes on CPU (gloo): the 2-process accelerate config really starts 2 ranks that stay identical and
match one process with the same global batch; FSDP2 (fully_shard) shards a KAN block and trains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from kanformer import create_ffn
from kanformer.config import load_config
from kanformer.train import train
from kanformer.train.optim import adamw, running_impl
from tests.gloo import free_port, gloo_group

ROOT = Path(__file__).resolve().parents[1]


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


@pytest.mark.slow
def test_two_cpu_processes_match_one_process(tmp_path):
    common = ["log.wandb=disabled", "train.max_steps=8", "train.log_every=1", "train.save_every=100",
              "ffn.name=chebyshev", f"out_dir={tmp_path}"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
              str(ROOT / "tests/dist_worker.py"), str(tmp_path), *common, "name=two", "train.batch_size=4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["head"] == ranks[1]["head"] and ranks[0]["sum"] == ranks[1]["sum"]
    # one process, same global batch (2 x 4 = 8), same data order
    train(load_config(preset="debug", overrides=[*common, "name=one", "train.batch_size=8"]))
    one, two = torch.tensor(_losses(tmp_path / "one")), torch.tensor(_losses(tmp_path / "two"))
    assert len(two) == 8
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4)


def _fsdp_worker(rank, world, port, result_dir):
    from torch.distributed.fsdp import fully_shard

    with gloo_group(rank, world, port):
        torch.manual_seed(0)
        ffn = create_ffn("bspline", 16, 12, grid_size=4)
        before = {n: p.detach().clone() for n, p in ffn.named_parameters()}
        fully_shard(ffn.fc1)
        fully_shard(ffn.fc2)
        fully_shard(ffn)
        local = next(iter(ffn.parameters()))
        sharded = local.to_local().numel() < local.numel()
        opt = adamw(ffn.parameters(), lr=1e-2)  # auto: fused, on the DTensor shards
        assert running_impl(opt) == "fused"
        torch.manual_seed(1 + rank)  # each rank its own data
        x = torch.randn(32, 16)
        loss = ffn(x).square().mean()
        loss.backward()
        opt.step()
        full = {n: p.full_tensor() for n, p in ffn.named_parameters()}
        changed = all(not torch.equal(full[n], before[n]) for n in before)
        torch.save({"sharded": sharded, "changed": changed, "loss": loss.item(), "full": full},
                   f"{result_dir}/fsdp{rank}.pt")


@pytest.mark.slow
def test_fsdp2_shards_and_trains_a_kan_block(tmp_path):
    mp.spawn(_fsdp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"fsdp{r}.pt") for r in (0, 1))
    assert r0["sharded"] and r1["sharded"] and r0["changed"] and r1["changed"]
    assert r0["loss"] != r1["loss"]  # different data per rank ...
    for name, tensor in r0["full"].items():  # ... yet one model after the reduced update
        torch.testing.assert_close(r1["full"][name], tensor, rtol=0, atol=0)


def _fsdp_auto_worker(rank, world, port, result_dir):
    """``auto`` inside FSDP2 on each rank: an FFN sharded as a whole (its layers unsharded in its forward: timed as
    usual, locally) and one whose layers are sharded units of their own (timing would run their collectives on one
    rank, outside the training step: the rule instead, untimed). Neither leaves timing gradients behind."""
    from torch.distributed.fsdp import fully_shard

    from kanformer.layers import autotune, dispatch

    dispatch.set_kernel("auto")
    os.environ.update(KANFORMER_AUTOTUNE="1", KANFORMER_CACHE=f"{result_dir}/cache{rank}")
    autotune._compile_state = lambda warm: "failed: no compiler in this test"
    timed = []
    measure = autotune._measure
    autotune._measure = lambda ffn, x, candidates: timed.append(ffn.hidden) or measure(ffn, x, candidates)
    with gloo_group(rank, world, port):
        out = {}
        for name, inner in (("whole", False), ("layers", True)):
            torch.manual_seed(0)
            ffn = create_ffn("chebyshev", 16, 12 if inner else 10)
            if inner:
                fully_shard(ffn.fc1)
                fully_shard(ffn.fc2)
            fully_shard(ffn)
            torch.manual_seed(1 + rank)
            x = torch.randn(32, 16)
            ffn(x).square().mean().backward()
            grads = {n: p.grad.full_tensor() for n, p in ffn.named_parameters()}
            with dispatch.kernel("lean"):  # the same step on a pinned path: the gradients it should have given
                for p in ffn.parameters():
                    p.grad = None
                ffn(x).square().mean().backward()
            out[name] = {"grads": grads, "pinned": {n: p.grad.full_tensor() for n, p in ffn.named_parameters()}}
        out["timed"] = timed
        out["decisions"] = {k.split(" | ")[0][:40]: v for k, v in autotune.decisions().items()}
        torch.save(out, f"{result_dir}/auto{rank}.pt")


@pytest.mark.slow
def test_fsdp2_auto_times_an_ffn_sharded_whole_and_takes_the_rule_for_sharded_layers(tmp_path):
    mp.spawn(_fsdp_auto_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        out = torch.load(tmp_path / f"auto{r}.pt")
        assert out["timed"] == [10]  # the FFN sharded whole only
        assert all(k.startswith("ChebyshevFFN(") for k in out["decisions"])  # keyed as unsharded (cache shared)
        sources = sorted(v["source"] for v in out["decisions"].values())
        assert sources[0].startswith("rule") and sources[1] == "timed", sources
        for name in ("whole", "layers"):
            for n, g in out[name]["grads"].items():
                torch.testing.assert_close(g, out[name]["pinned"][n], rtol=1e-5, atol=1e-6)
