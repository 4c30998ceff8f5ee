"""Interpretability: activity, pruning (exactness, round trip), symbolic snapping of planted edges, formulas,
`kanformer inspect` / `kanformer prune` on a trained checkpoint, MultKAN nodes."""

import json
import math

import pytest
import sympy
import torch

from kanformer import KAN, KANLinear, create_ffn, kanify
from kanformer.cli import main
from kanformer.config import load_config
from kanformer.interpret import drop_units, edge_activity, fit_symbolic, kan_formula, prune_model, snap_kan
from kanformer.interpret.symbolic import SymbolicFit, _score
from kanformer.train import train
from tests.tiny_models import build


def _kan_gpt2():
    model = build("gpt2")
    kanify(model, "bspline", hidden=12, grid_size=4)
    return model.eval()


def test_pruning_an_inactive_unit_leaves_outputs_unchanged(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _kan_gpt2()
    ffn = model.transformer.h[0].mlp.ffn
    with torch.no_grad():  # unit 3 of block 0 feeds nothing: its outgoing edges are zero
        ffn.fc2.coef[:, 3] = 0
        ffn.fc2.base_weight[:, 3] = 0
    ids = torch.randint(0, 97, (3, 16))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    report = prune_model(model, [{"input_ids": ids}], unit_threshold=1e-6)
    assert [e["hidden_after"] for e in report.layers] == [11, 12, 12]
    assert report.params_removed == 2 * 32 * (4 + 3 + 1) + 1  # fc1 row (coef, base, bias) + fc2 column (coef, base)
    assert model.config.kan["hidden"] == [11, 12, 12]
    with torch.no_grad():
        pruned = model(input_ids=ids).logits
    torch.testing.assert_close(pruned, ref, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "p")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, pruned, rtol=0, atol=0)


def test_edge_pruning_zeroes_the_weakest_edges_only():
    layer = KANLinear(4, 3, grid_size=4)
    x = torch.randn(256, 4)
    with torch.no_grad():
        layer.coef[1, 2] *= 1e-4
        layer.base_weight[1, 2] *= 1e-4
    act = edge_activity(layer, x)
    assert act.argmin().item() == 1 * 4 + 2
    from kanformer.interpret import prune_edges

    zeroed = prune_edges(layer, act, 0.01 * act.max())
    assert zeroed == 4 + 3 + 1 and (layer.coef[1, 2] == 0).all() and (layer.coef != 0).sum() == (12 - 1) * 7


def test_unit_pruning_refuses_rbf_layernorm_and_keeps_the_layer():
    ffn = create_ffn("rbf", 8, 6)
    before = ffn.fc1.coef.clone()
    with pytest.raises(ValueError, match="prune edges instead"):
        drop_units(ffn.fc1, ffn.fc2, torch.tensor([0, 1, 2]))
    assert torch.equal(ffn.fc1.coef, before)


def _planted_layer():
    """A KAN layer 1 -> 3 whose edges are fitted to sin(pi x), exp(x) and x^2 on [-1, 1]."""
    torch.manual_seed(0)
    layer = KANLinear(1, 3, grid_size=20, grid_range=(-1, 1)).double()
    x = torch.linspace(-1, 1, 400, dtype=torch.float64)[:, None]
    target = torch.cat([torch.sin(math.pi * x), torch.exp(x), x**2], dim=1)
    assert layer.fit_least_squares(x, target) < 1e-4
    return layer, x


def test_symbolic_snapping_recovers_planted_edges():
    layer, x = _planted_layer()
    with torch.no_grad():
        from kanformer.interpret import edge_function

        phi = edge_function(layer, x)  # (N, 1, 3)
    for o, want in enumerate(["sin", "exp", "x^2"]):
        best = fit_symbolic(x[:, 0], phi[:, 0, o])[0]
        assert best.name == want and best.r2 > 0.99, (o, best)


def test_symbolic_fit_errors_name_the_problem():
    with pytest.raises(ValueError, match="Unknown symbolic function"):
        fit_symbolic(torch.randn(10), torch.randn(10), ["cosh"])
    with pytest.raises(ValueError, match="matching 1-D samples"):
        fit_symbolic(torch.randn(10), torch.randn(9))


def test_formula_of_a_snapped_kan_evaluates_like_the_network():
    kan = KAN([2, 1], grid_size=10, grid_range=(-1, 1)).double()
    x = torch.rand(500, 2, dtype=torch.float64) * 2 - 1
    kan.layers[0].fit_least_squares(x, (torch.sin(math.pi * x[:, :1]) + x[:, 1:] ** 2))
    fits = snap_kan(kan, x, ["sin", "x^2", "x", "exp"])
    assert [f.name for f in fits[0][0]] == ["sin", "x^2"]
    (expr,) = kan_formula(kan, fits, ["x", "y"])
    f = sympy.lambdify(sympy.symbols("x y"), expr, "math")
    err = max(abs(f(a, b) - (math.sin(math.pi * a) + b * b)) for a, b in x[:50].tolist())
    assert err < 1e-2, (expr, err)
    assert isinstance(SymbolicFit("x", 1, 0, 1, 0, 1).expr(sympy.Symbol("x")), sympy.Expr)


@pytest.mark.parametrize("ffn", ["bspline", "rational"])
def test_inspect_and_prune_commands_on_a_trained_checkpoint(tmp_path, ffn, capsys):
    from transformers import AutoModelForCausalLM

    cfg = load_config(preset="debug", overrides=[f"out_dir={tmp_path}", "name=r", f"ffn.name={ffn}",
                                                 "train.max_steps=10", "log.wandb=disabled"])
    train(cfg)
    final = cfg.run_dir / "final"
    main(["inspect", str(final), "--top-k", "4", "--batches", "2", *(["--symbolic"] if ffn == "bspline" else [])])
    summary = json.loads((final / "inspect" / "summary.json").read_text())
    assert len(summary["layers"]) == 4  # two blocks, two KAN layers (or rational activations) each
    for layer in summary["layers"].values():
        assert (final / "inspect" / layer["plot"]).stat().st_size > 10_000
    if ffn == "rational":  # no edges to rank: each activation draws its groups' functions (GroupRational.curves)
        assert all(layer["kind"] == "GroupRational" and layer["functions"] == 8 for layer in summary["layers"].values())
        with pytest.raises(ValueError, match="no KAN FFN with edge functions"):
            main(["prune", str(final), "--out", str(tmp_path / "p"), "--units", "0.5"])
        return
    top = next(iter(summary["layers"].values()))["top_edges"]
    assert [t["activity"] for t in top] == sorted((t["activity"] for t in top), reverse=True)
    for t in top:  # each plotted edge snapped, best first by the documented rule (R^2 digits less complexity)
        sym = t["symbolic"]
        best = _score(SymbolicFit(sym["best"], 0, 0, 0, 0, sym["r2"]), 1e-6)
        assert best >= _score(SymbolicFit(sym["runner_up"], 0, 0, 0, 0, sym["runner_up_r2"]), 1e-6)
        assert -1 <= sym["r2"] <= 1
    assert len(summary["units"]) == 2
    # threshold 1: only each layer's best unit stays
    main(["prune", str(final), "--out", str(tmp_path / "p"), "--units", "1.0", "--edges", "0.05"])
    report = json.loads((tmp_path / "p" / "prune_report.json").read_text())
    assert [e["hidden_after"] for e in report["prune"]["layers"]] == [1, 1]
    assert report["prune"]["params_removed"] > 0 and report["prune"]["params_zeroed"] > 0
    assert set(report["after"]) == {"val_ppl"} and report["after"]["val_ppl"] > 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    assert sum(p.numel() for p in loaded.parameters()) == report["prune"]["params_after"]


def test_multkan_nodes_multiply_pairs_of_subnodes():
    ffn = create_ffn("multkan", 6, 5, mult_fraction=0.4, grid_size=3)
    assert (ffn.n_sum, ffn.n_mult) == (3, 2) and ffn.fc1.out_features == 7 and ffn.fc2.in_features == 5
    x = torch.randn(4, 6)
    sub = ffn.fc1(x)
    nodes = ffn.nodes(x)
    torch.testing.assert_close(nodes[:, :3], sub[:, :3])
    torch.testing.assert_close(nodes[:, 3], sub[:, 3] * sub[:, 4])
    torch.testing.assert_close(nodes[:, 4], sub[:, 5] * sub[:, 6])
    with pytest.raises(ValueError, match="mult_fraction must be a number in"):
        create_ffn("multkan", 6, 5, mult_fraction=1.5)
    with pytest.raises(ValueError, match="Unknown basis 'spline'"):
        create_ffn("multkan", 6, 5, basis="spline")
