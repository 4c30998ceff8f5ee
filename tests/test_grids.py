"""Grid management and telemetry: identical grids on every replica (plain and FSDP2), function-preserving updates
and extensions inside a model, scheduled grid work in the trainer with exact resume, telemetry records."""

import json

import pytest
import torch
import torch.multiprocessing as mp

from kanformer import create_ffn, kanify
from kanformer.config import KanConfig, load_config
from kanformer.interpret.telemetry import InputRecorder, kan_modules, layer_telemetry
from kanformer.train import train
from kanformer.train.grids import extend_grids, grid_layers, union_rows, update_grids
from tests.gloo import free_port, gloo_group
from tests.tiny_models import build


def _rank_data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(48 + 16 * rank, 6, generator=g) * (1 + rank)  # ranks see different data, unequal amounts


def _grid_worker(rank, world, port, out):
    from torch.distributed.fsdp import fully_shard

    with gloo_group(rank, world, port):
        results = {}
        for sharded in (False, True):
            torch.manual_seed(0)
            ffn = create_ffn("bspline", 6, 5, grid_size=4)
            if sharded:
                fully_shard(ffn.fc1)
                fully_shard(ffn)
            layer = ffn.fc1
            rows = union_rows({"fc1": _rank_data(rank)}, ["fc1"])
            update_grids(ffn, rows)
            coef = layer.coef.full_tensor() if sharded else layer.coef.detach()
            results[sharded] = {"grid": layer.basis.grid.clone(), "coef": coef.clone(), "rows": len(rows["fc1"])}
        torch.save(results, f"{out}/grid{rank}.pt")


@pytest.mark.slow
def test_two_process_grid_update_is_identical_and_equals_the_union(tmp_path):
    mp.spawn(_grid_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"grid{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    single = create_ffn("bspline", 6, 5, grid_size=4)
    union = torch.cat([_rank_data(0), _rank_data(1)])
    single.fc1.update_grid(union)
    for sharded in (False, True):
        assert r0[sharded]["rows"] == r1[sharded]["rows"] == len(union)
        torch.testing.assert_close(r0[sharded]["grid"], r1[sharded]["grid"], rtol=0, atol=0)
        torch.testing.assert_close(r0[sharded]["coef"], r1[sharded]["coef"], rtol=0, atol=0)
        torch.testing.assert_close(r0[sharded]["grid"], single.fc1.basis.grid, rtol=0, atol=0)
        torch.testing.assert_close(r0[sharded]["coef"], single.fc1.coef.detach(), rtol=1e-6, atol=1e-7)
    # the update really moved the grid to the (wider) data
    assert r0[False]["grid"][:, -1].max() > create_ffn("bspline", 6, 5, grid_size=4).fc1.basis.grid[:, -1].max()


def _kan_gpt2(seed=0):
    model = build("gpt2", seed=seed)
    kanify(model, "bspline", hidden=24, grid_size=5, grid_range=(-4.0, 4.0))
    return model.eval()


def _record(model, ids, rows=100_000):
    with torch.no_grad(), InputRecorder(grid_layers(model), max_rows=rows) as rec:
        model(input_ids=ids)
    return rec.rows()


def test_update_and_extension_inside_a_model_keep_its_outputs():
    model = _kan_gpt2()
    ids = torch.randint(0, 97, (4, 32))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    rows = _record(model, ids)
    assert set(rows) == set(grid_layers(model)) and len(grid_layers(model)) == 6
    assert set(update_grids(model, rows)) == set(rows)
    with torch.no_grad():
        after_update = model(input_ids=ids).logits
    assert ((after_update - ref).norm() / ref.norm()).item() < 2e-2
    extend_grids(model, 10, _record(model, ids))
    assert all(m.basis.grid_size == 10 for m in grid_layers(model).values())
    assert model.config.kan["ffn_kwargs"]["grid_size"] == 10
    with torch.no_grad():
        after_extend = model(input_ids=ids).logits
    assert ((after_extend - after_update).norm() / after_update.norm()).item() < 1e-3


def test_padding_is_masked_out_of_the_recorded_rows():
    model = _kan_gpt2()
    ids = torch.randint(0, 97, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad(), InputRecorder(grid_layers(model)) as rec:
        rec.mask(mask)
        model(input_ids=ids, attention_mask=mask)
    assert all(len(r) == 13 for r in rec.rows().values())


def test_telemetry_counts_inputs_outside_the_grid():
    ffn = create_ffn("bspline", 4, 3, grid_size=4)  # grid (-2, 2)
    x = torch.zeros(10, 4)
    x[:3, 0] = 9.0  # 3 of 40 inputs of fc1 outside
    with InputRecorder(kan_modules(ffn)) as rec:
        ffn(x)
    stats = layer_telemetry(kan_modules(ffn), rec.rows())
    assert stats["kan/fc1/frac_out"] == pytest.approx(3 / 40)
    assert stats["kan/fc1/in_max"] == 9.0 and stats["kan/fc1/coef_rms"] > 0
    assert "kan/frac_out_max" in stats


def _cfg(tmp_path, name, **over):
    base = {"ffn.name": "bspline", "train.max_steps": 12, "train.log_every": 1, "train.save_every": 100,
            "kan.telemetry_every": 3, "kan.grid_update_every": 4, "kan.grid_extend": "{6: 8}"}
    overrides = [f"out_dir={tmp_path}", f"name={name}", "log.wandb=disabled"]
    return load_config(preset="debug", overrides=overrides + [f"{k}={v}" for k, v in {**base, **over}.items()])


def _records(cfg, kind):
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_scheduled_grid_work_trains_on_and_resumes_exactly(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from kanformer.layers import autotune

    expected = []  # auto told the grids to come (their graphs compiled in the background beforehand)
    expect = autotune.expect_grids
    monkeypatch.setattr(autotune, "expect_grids", lambda model, ahead: expected.append((expect(model, ahead), ahead)))
    straight = _cfg(tmp_path, "straight")
    train(straight)
    assert expected == [(straight.model.n_layer, [(None, True), (8, True)])]
    grid = _records(straight, "grid")
    assert [(r["step"], r["event"]) for r in grid] == [(4, "update"), (6, "extend"), (8, "update")]
    assert grid[1]["grid_size"] == 8
    losses = [r["loss"] for r in _records(straight, "train")]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0] - 0.1, losses
    telemetry = _records(straight, "kan")
    assert [r["step"] for r in telemetry] == [3, 6, 9, 12]
    assert all(0 <= r["kan/frac_out_max"] <= 1 for r in telemetry)
    # the export holds the extended, data-fitted grids and loads as it was trained
    model = AutoModelForCausalLM.from_pretrained(straight.run_dir / "final")
    assert {m.basis.grid_size for m in grid_layers(model).values()} == {8}
    # interrupted after the extension, resumed: the same losses as the straight run
    parts = _cfg(tmp_path, "parts")
    train(parts, stop_at=7)
    train(parts, resume="auto")
    assert expected[-1] == (parts.model.n_layer, [(None, True)])  # updated and extended by step 7: its next update
    resumed = [r["loss"] for r in _records(parts, "train")]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(losses), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kan,step,ahead", [
    ({"grid_extend": {200: 10, 400: 20}}, 0, [(10, False), (20, False)]),
    ({"grid_extend": {200: 10, 400: 20}, "grid_update_every": 300}, 0, [(10, False), (10, True), (20, True)]),
    ({"grid_extend": {100: 10}, "grid_update_every": 100}, 0, [(10, False), (10, True)]),  # no update at 100
    ({"grid_extend": {200: 10}, "grid_update_every": 100}, 150, [(10, False), (10, True)]),  # a resumed run
    ({"grid_update_every": 100, "grid_update_until": 50}, 0, []),
    ({"grid_update_every": 1000, "grid_extend": {1000: 10}}, 0, []),  # nothing before the run's end
])
def test_the_grid_schedule_names_the_configurations_to_come(kan, step, ahead):
    assert KanConfig(**kan).grids_ahead(step, 1000) == ahead


def test_grid_schedule_without_a_grid_basis_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="need B-spline grids"):
        train(_cfg(tmp_path, "cheb", **{"ffn.name": "chebyshev", "kan.telemetry_every": 0}))


@pytest.mark.parametrize("over,msg", [({"kan.grid_extend": "{0: 8}"}, "kan.grid_extend maps steps >= 1"),
                                      ({"kan.grid_eps": 2}, "kan.grid_eps must be in"),
                                      ({"kan.telemetry_every": -1}, "kan.telemetry_every must be >= 0")])
def test_bad_kan_config_names_the_key(tmp_path, over, msg):
    with pytest.raises(ValueError, match=msg):
        _cfg(tmp_path, "bad", **over)
