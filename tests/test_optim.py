"""AdamW's implementation (train.adamw): what auto picks, the errors, and that the picks train alike."""

import pytest
import torch

from kanformer import create_ffn
from kanformer.config import load_config
from kanformer.train.optim import adamw, adamw_impl, running_impl


def test_auto_takes_fused_for_float_parameters_on_cpu_and_the_default_under_deepspeed():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2, dtype=torch.bfloat16))]
    assert adamw_impl("auto", params) == "fused"
    assert adamw_impl("auto", params, deepspeed=True) == "default"
    assert adamw_impl("auto", [torch.zeros(2, dtype=torch.int64)]) == "default"
    assert adamw_impl("auto", []) == "default"
    assert adamw_impl("loop", params) == "loop"


def test_bad_implementations_are_named_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"train.adamw must be one of auto, fused, foreach, loop, got 'fast'"):
        adamw_impl("fast", [])
    with pytest.raises(ValueError, match=r"train.adamw=fused needs every parameter floating point .*torch.int64 on "
                                         r"cpu.*use auto, foreach or loop"):
        adamw_impl("fused", [torch.zeros(2, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"train.adamw must be one of auto, fused, foreach, loop, got 'fast'"):
        load_config(preset="debug", overrides=["train.adamw=fast"])


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_every_implementation_takes_the_loops_steps(impl):
    """Ten AdamW steps on a KAN FFN's parameters (groups with and without weight decay), implementation ``impl``
    against PyTorch's per-tensor loop: the same parameters to fp32 rounding."""
    torch.manual_seed(0)
    ffns = [create_ffn("rbf", 16, 24) for _ in range(2)]
    ffns[1].load_state_dict(ffns[0].state_dict())
    start = [p.detach().clone() for p in ffns[0].parameters()]
    opts = []
    for ffn, kind in zip(ffns, (impl, "loop"), strict=True):
        params = list(ffn.parameters())
        groups = [{"params": params[::2], "weight_decay": 0.1}, {"params": params[1::2], "weight_decay": 0.0}]
        opts.append(adamw(groups, impl=kind, lr=1e-2, betas=(0.9, 0.95)))
    assert [running_impl(o) for o in opts] == [impl, "loop"]
    x = torch.randn(32, 16)
    for _ in range(10):
        for ffn, opt in zip(ffns, opts, strict=True):
            ffn(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert min((p - s).abs().max().item() for p, s in zip(ffns[0].parameters(), start, strict=True)) > 1e-3
    for a, b in zip(ffns[0].parameters(), ffns[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adamw_benchmark_times_each_implementation_in_turns(tmp_path, capsys):
    """``benchmarks.bench_adamw``: per FFN's GPT-2, every implementation's optimizer and training step, as same-round
    ratios to the loop's."""
    import json

    from benchmarks import bench_adamw
    from kanformer.layers.dispatch import kernel

    out = tmp_path / "adamw.json"
    with kernel("lean"):
        bench_adamw.main(["--arms", "mlp", "rbf", "--n-layer", "1", "--d-model", "16", "--n-head", "2", "--seq",
                          "8", "--batch", "2", "--vocab", "32", "--steps", "1", "--rounds", "2", "--device", "cpu",
                          "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["ffn"] for r in rows] == ["mlp", "rbf"] and rows[1]["tensors"] > rows[0]["tensors"]  # its LayerNorms
    for row in rows:
        assert row["loop_optimizer_x_loop"] == row["loop_train_x_loop"] == 1.0
        assert all(row[f"{impl}_{what}_ms"] > 0 for impl in bench_adamw.IMPLS for what in ("train", "optimizer"))
    assert "2 rounds of 1 steps per implementation, interleaved" in capsys.readouterr().out
