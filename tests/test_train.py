"""The trainer on the debug presets: learning, exact resume, atomic checkpoints, non-finite steps, export."""

import json
import os
import signal
import time

import pytest
import torch
import transformers
from accelerate.state import AcceleratorState

from kanformer.config import load_config
from kanformer.layers import gemm
from kanformer.train import NonFiniteError, Trainer, train
from kanformer.train import checkpoint as ckpt
from tests.device_reads import DeviceReads


def _cfg(tmp_path, preset="debug", name="run", **over):
    overrides = [f"out_dir={tmp_path}", f"name={name}", "log.wandb=disabled"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(preset=preset, overrides=overrides)


def _records(run_dir, kind="train"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.mark.parametrize("preset,ffn", [("debug", "mlp"), ("debug", "bspline"), ("debug_vit", "chebyshev")])
def test_loss_goes_down(tmp_path, preset, ffn):
    cfg = _cfg(tmp_path, preset, **{"ffn.name": ffn})
    result = train(cfg)
    assert result["finished"] and result["step"] == cfg.train.max_steps
    losses = [r["loss"] for r in _records(cfg.run_dir)]
    assert losses[-1] < losses[0] - 0.1, losses
    benchmarks = _records(cfg.run_dir, "eval")
    assert benchmarks[-1]["val_loss"] < benchmarks[0]["val_loss"] + 0.05
    assert (cfg.run_dir / "config.yaml").exists()
    info = json.loads((cfg.run_dir / "versions.json").read_text())
    assert info["git_sha"] and info["torch"] == torch.__version__ and info["kanify"]["ffn"] == ffn
    assert info["matmul_library"]["library"] in ("torch", "onednn")  # the FFNs' fp32 products (layers/gemm.py)
    assert info["adamw"] == "fused"  # train.adamw auto on CPU (kanformer/train/optim.py)
    assert info["compile_options"] == {}  # the fused helpers' compiler options (layers/compile_options.py): none set


def test_compiling_inside_a_step_is_reported_apart_from_the_training_throughput(tmp_path):
    """What compiles inside a training step (here a torch.compile'd function a hook calls in the first step, as a
    pinned ``fused`` path's helpers compile in their first call) is ``compile_s``, not training time in ``wall_s``
    and ``tokens_per_s``; ``recent_tokens_per_s`` (what the progress bar shows) counts the steps since the last
    record."""
    cfg = _cfg(tmp_path, **{"ffn.name": "mlp", "train.max_steps": 3, "train.log_every": 1, "train.eval_every": 1000})
    trainer = Trainer(cfg)
    fn, first_call = torch.compile(lambda t: t * 2 + 1), []

    def hook(module, args):
        if not first_call:
            t0 = time.perf_counter()
            fn(torch.randn(8))
            first_call.append(time.perf_counter() - t0)

    trainer.model.register_forward_pre_hook(hook)
    trainer.fit()
    first, second, third = _records(cfg.run_dir)
    assert first["compile_s"] >= 0.8 * first_call[0] > 0
    assert second["compile_s"] == first["compile_s"]  # nothing compiled in the second step
    assert first["wall_s"] > 0 and second["tokens_per_s"] > 0
    assert "tokens_per_s" not in first and "recent_tokens_per_s" not in first  # its one step compiled: no step of
    # training time alone to divide by
    assert second["recent_tokens_per_s"] == second["tokens_per_s"]  # the one step timed so far
    # the run's figure is the steps' tokens over their time; the recent ones each step's alone (equal tokens a step)
    assert third["tokens_per_s"] == pytest.approx(2 / (1 / second["recent_tokens_per_s"]
                                                       + 1 / third["recent_tokens_per_s"]), rel=1e-9)


def test_exact_resume(tmp_path):
    over = {"ffn.name": "bspline", "model.dropout": 0.1, "train.max_steps": 12, "train.log_every": 1,
            "train.save_every": 100}
    straight = _cfg(tmp_path, name="straight", **over)
    train(straight)
    part = _cfg(tmp_path, name="parts", **over)
    first = train(part, stop_at=6)
    assert first == {**first, "step": 6, "finished": False}
    train(part, resume="auto")
    a = [r["loss"] for r in _records(straight.run_dir)]
    b = [r["loss"] for r in _records(part.run_dir)]
    assert len(a) == len(b) == 12
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-6)


def test_a_resumed_checkpoint_keeps_the_adamw_it_was_saved_with(tmp_path, caplog):
    """A run saved under ``train.adamw=loop`` and resumed under ``auto`` (fused on CPU) continues on the loop, as its
    optimizer state was kept, says so, and its versions.json names the loop."""
    over = {"ffn.name": "mlp", "train.max_steps": 4, "train.log_every": 1, "train.eval_every": 100,
            "train.save_every": 100}
    assert train(_cfg(tmp_path, **over, **{"train.adamw": "loop"}), stop_at=2)["step"] == 2
    resumed = _cfg(tmp_path, **over)
    with caplog.at_level("WARNING"):
        assert train(resumed, resume="auto")["finished"]
    assert "was saved by a run whose AdamW ran 'loop'" in caplog.text
    assert "train.adamw=auto runs 'fused' in a fresh run" in caplog.text
    assert json.loads((resumed.run_dir / "versions.json").read_text())["adamw"] == "loop"


@pytest.mark.slow
def test_a_compiled_model_trains_resumes_and_exports_as_the_eager_one(tmp_path, monkeypatch):
    """``train.compile``: the compiled model takes the eager model's steps (a B-spline KAN, whose graphs read the
    trainer's check of the grid), a run compiled whole resumes compiled block by block, and the export loads with
    ``from_pretrained`` without the compiler wrapper's names. Compiled with ``aot_eager`` (the graphs traced as
    inductor gets them, run without compiling C++)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    over = {"ffn.name": "bspline", "train.kernel": "lean", "train.max_steps": 6, "train.log_every": 1,
            "train.eval_every": 100, "train.save_every": 100}
    eager = _cfg(tmp_path, name="eager", **over)
    train(eager)
    compiled = _cfg(tmp_path, name="compiled", **over)
    graphs = torch._dynamo.utils.counters["stats"]
    torch._dynamo.reset()
    gemm.set_library(gemm.setting())  # no matmul library chosen, as in a new process: the trainer chooses it first
    try:
        for mode, run in (("model", {"stop_at": 3}), ("regional", {"resume": "auto"})):
            graphs.clear()
            compiled.train.compile = mode
            train(compiled, **run)
            assert graphs["unique_graphs"] >= 1, mode  # compiled indeed
        # a comparison's speed turns time each checkpoint as its run trained: compiled, block by block here (their
        # generation is not what this checks: a compiled generation would compile its own graphs)
        from kanformer.studies import speed
        from kanformer.studies.speed import time_checkpoints

        monkeypatch.setattr(speed, "measure_generation", lambda *a, **k: {"generate_tokens_per_s": 1.0})
        timed_models, compile_for_training = [], speed.compile_for_training

        def compiled_as_trained(model, mode):
            timed_models.append(compile_for_training(model, mode))
            return timed_models[-1]

        monkeypatch.setattr(speed, "compile_for_training", compiled_as_trained)
        timed = time_checkpoints({"compiled": compiled.run_dir / "final", "eager": eager.run_dir / "final"}, compiled,
                                 torch.device("cpu"), rounds=1, steps=1, log=lambda *_: None)
        blocks = [b for m in timed_models for b in m.transformer.h]
        assert len(blocks) == 4 and all(b._compiled_call_impl is not None for b in blocks)  # 2 arms x 2 blocks
        assert timed["compile"] == "regional" and timed["kernel"] == "lean"
        assert timed["arms"]["eager"]["train_x_reference"]["median"] > 0 and timed["reference"] == "compiled"
    finally:
        torch._dynamo.reset()
    a, b = ([r["loss"] for r in _records(cfg.run_dir)] for cfg in (eager, compiled))
    assert len(a) == len(b) == 6
    # the graphs' products on the library the eager run's FFNs chose (traced before a choice, they took PyTorch's)
    libraries = [json.loads((cfg.run_dir / "versions.json").read_text())["matmul_library"]["library"]
                 for cfg in (eager, compiled)]
    assert libraries[0] == libraries[1], libraries
    # each part's first step compiled the model: its time is compile_s, and the throughput starts with the next
    speeds = [r.get("tokens_per_s") for r in _records(compiled.run_dir)]
    assert speeds[0] is None and speeds[3] is None and all(0 < s < 1e8 for s in speeds[1:3] + speeds[4:]), speeds
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-4)
    exported = transformers.AutoModelForCausalLM.from_pretrained(compiled.run_dir / "final")
    reference = transformers.AutoModelForCausalLM.from_pretrained(eager.run_dir / "final")
    for (name, got), (_, want) in zip(exported.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3, msg=name)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    over = {"train.max_steps": 6, "train.log_every": 1, "train.eval_every": 100, "train.save_every": 100}
    full = _cfg(tmp_path, name="full", **over, **{"train.batch_size": 8})
    accum = _cfg(tmp_path, name="accum", **over, **{"train.batch_size": 4, "train.grad_accum": 2})
    train(full)
    train(accum)
    a = torch.tensor([r["loss"] for r in _records(full.run_dir)])
    b = torch.tensor([r["loss"] for r in _records(accum.run_dir)])
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_half_written_checkpoint_never_replaces_the_last_good_one(tmp_path, monkeypatch):
    over = {"train.max_steps": 12, "train.save_every": 4, "train.log_every": 1}
    reference = _cfg(tmp_path, name="ref", **over)
    train(reference)
    cfg = _cfg(tmp_path, name="crash", **over)
    real_finalize = ckpt.finalize

    def crash_at_step_8(root, step, state, keep_last):
        if step == 8:  # the process dies after save_state wrote the files, before the checkpoint was complete
            raise KeyboardInterrupt("killed while saving")
        return real_finalize(root, step, state, keep_last)

    monkeypatch.setattr(ckpt, "finalize", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(ckpt, "finalize", real_finalize)
    root = cfg.run_dir / "checkpoints"
    assert [p.name for p in ckpt.checkpoint_dirs(root)] == ["step_00000004"]
    assert (root / ".tmp_step_00000008").exists()  # the debris is there, and ignored
    with pytest.raises(FileExistsError, match="--resume auto"):
        Trainer(cfg)
    train(cfg, resume="auto")
    assert [p.name for p in ckpt.checkpoint_dirs(root)] == ["step_00000008", "step_00000012"]  # keep_last 2
    assert not (root / ".tmp_step_00000008").exists()
    a = [r["loss"] for r in _records(reference.run_dir)]
    b = [r["loss"] for r in _records(cfg.run_dir)]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-6)


def test_sigterm_saves_and_stops_cleanly(tmp_path):
    cfg = _cfg(tmp_path, **{"train.max_steps": 20, "train.save_every": 100})
    trainer = Trainer(cfg)
    calls = {"n": 0}

    def send_sigterm(module, args, out):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.model.transformer.h[0].register_forward_hook(send_sigterm)
    result = trainer.fit()
    assert not result["finished"] and 5 <= result["step"] < 20
    assert ckpt.latest_checkpoint(cfg.run_dir / "checkpoints").name == f"step_{result['step']:08d}"
    assert train(cfg, resume="auto")["finished"]


def _inject_nan(trainer, at_call):
    """NaN out of one FFN layer in one training forward and in the diagnostic forward the trainer runs after it."""
    calls = {"n": 0}

    def hook(module, args, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] in (at_call, at_call + 1) else out

    trainer.model.transformer.h[1].mlp.ffn.fc1.register_forward_hook(hook)


@pytest.mark.parametrize("accum", [1, 2])
def test_a_training_step_reads_the_device_once(tmp_path, monkeypatch, accum):
    """The step's numbers (each micro-batch's loss and its finiteness, the gradient norm) are read once, after the
    last backward: on a GPU each read drains the queue. Counted as the difference between runs of 6 and 3 steps, so
    what a run does once (evaluation, checkpoint, export, and the host's reads of its data, read ahead in one go:
    READ_AHEAD) cancels out; before, a step made five such reads, and two more for each further micro-batch."""
    counts = []
    for steps in (3, 6):
        cfg = _cfg(tmp_path, name=f"s{steps}", **{"ffn.name": "chebyshev", "train.max_steps": steps,
                                                  "train.grad_accum": accum, "train.log_every": 1000,
                                                  "train.eval_every": 1000, "train.save_every": 1000})
        trainer = Trainer(cfg)
        probe = DeviceReads().watch(monkeypatch)
        with probe:
            assert trainer.fit()["finished"]
        counts.append(probe.reads)
    assert (counts[1] - counts[0]) / 3 == 1, counts


@pytest.mark.parametrize("preset", ["debug", "debug_vit"])
def test_an_evaluation_reads_the_device_once(tmp_path, monkeypatch, preset):
    """The trainer's evaluation sums each batch's scores on the device (Task.scores) and reads them once (with the
    ranks' reduction), however many batches it scores. Its batches come ready, as a first evaluation made them: the
    host's own reads of host data making them (a token index, a memory-mapped shard) wait for no device."""
    reads, metrics = [], []
    for batches in (2, 4):
        trainer = Trainer(_cfg(tmp_path, preset, name=f"e{batches}", **{"train.eval_batches": batches}))
        made, make = [], trainer._batch
        monkeypatch.setattr(trainer, "_batch", lambda *a, made=made, make=make, **k: made.append(make(*a, **k))
                            or made[-1])
        first = trainer.evaluate()
        ready = iter(made)
        monkeypatch.setattr(trainer, "_batch", lambda *a, ready=ready, **k: next(ready))
        with DeviceReads().watch(monkeypatch) as probe:
            metrics.append(trainer.evaluate())
        reads.append(probe.reads)
        assert metrics[-1] == first and len(made) == batches
    assert reads == [1, 1] and all(m["val_loss"] > 0 for m in metrics)
    assert ("val_acc" in metrics[0]) == (preset == "debug_vit")


def test_nonfinite_loss_is_skipped_and_named(tmp_path, caplog):
    cfg = _cfg(tmp_path, **{"ffn.name": "chebyshev", "train.max_steps": 8, "train.log_every": 1})
    trainer = Trainer(cfg)
    _inject_nan(trainer, at_call=3)
    with caplog.at_level("WARNING"):
        result = trainer.fit()
    assert result["finished"] and trainer.skipped_steps == 1
    assert "non-finite loss; first at transformer.h.1.mlp.ffn.fc1" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_stop_leaves_the_last_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, **{"train.max_steps": 10, "train.save_every": 2, "train.nonfinite": "stop"})
    trainer = Trainer(cfg)
    _inject_nan(trainer, at_call=5)
    with pytest.raises(NonFiniteError, match=r"step 4: non-finite loss; first at transformer\.h\.1\.mlp\.ffn\.fc1"):
        trainer.fit()
    root = cfg.run_dir / "checkpoints"
    assert [p.name for p in ckpt.checkpoint_dirs(root)] == ["step_00000002", "step_00000004"]
    assert ckpt.read_state(root / "step_00000004")["step"] == 4


def test_export_loads_with_from_pretrained_and_generates(tmp_path):
    cfg = _cfg(tmp_path, **{"ffn.name": "rational", "train.max_steps": 4})
    train(cfg)
    final = cfg.run_dir / "final"
    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    tok = transformers.AutoTokenizer.from_pretrained(final)
    assert type(model).__name__ == "KanGPT2LMHeadModel" and model.config.kan["ffn"] == "rational"
    ids = tok("The import statement", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5


def test_finetune_from_a_saved_checkpoint(tmp_path):
    base = _cfg(tmp_path, name="base", **{"ffn.name": "fourier", "train.max_steps": 4})
    train(base)
    final = base.run_dir / "final"
    cfg = _cfg(tmp_path, name="ft", **{"model.init_from": str(final), "data.tokenizer": str(final),
                                       "train.max_steps": 4})
    trainer = Trainer(cfg)
    assert trainer.kanify_report is None  # already a KAN model: trained as it is
    assert trainer.fit()["finished"]
    too_long = _cfg(tmp_path, name="ft2", **{"model.init_from": str(final), "model.block_size": 64})
    with pytest.raises(ValueError, match="model.block_size=64 exceeds the checkpoint's 32 positions"):
        Trainer(too_long)


def test_the_epoch_guard_stops_a_run_that_would_repeat_its_data(tmp_path):
    import re

    with pytest.raises(ValueError, match=r"train.max_steps=100000 x 8 sequences of 32 tokens = 25,600,000 tokens is "
                                         r"[\d.]+ passes over the [\d,]+-token training split of 'pydoc' "
                                         r"\(data.max_epochs=1\)\. .*lower train.max_steps to at most \d+") as err:
        Trainer(_cfg(tmp_path, **{"train.max_steps": 100_000}))
    most = int(re.search(r"at most (\d+)", str(err.value)).group(1))
    Trainer(_cfg(tmp_path, name="at_most", **{"train.max_steps": most}))  # the suggested budget is allowed
    with pytest.raises(ValueError, match="passes over"):
        Trainer(_cfg(tmp_path, name="one_more", **{"train.max_steps": most + 1}))
    Trainer(_cfg(tmp_path, name="allowed", **{"train.max_steps": 100_000, "data.max_epochs": "null"}))
    with pytest.raises(ValueError, match=r"32 images = 32,000 examples is [\d.]+ passes over the 1,617-image training "
                                         r"split of 'digits'"):
        Trainer(_cfg(tmp_path, "debug_vit", name="vit", **{"train.max_steps": 1000}))


def test_vit_export_holds_an_image_processor(tmp_path):
    cfg = _cfg(tmp_path, "debug_vit", **{"ffn.name": "rbf", "train.max_steps": 3})
    train(cfg)
    final = cfg.run_dir / "final"
    processor = transformers.AutoImageProcessor.from_pretrained(final)
    model = transformers.AutoModelForImageClassification.from_pretrained(final)
    image = (torch.rand(1, 8, 8) * 255).byte().numpy()  # one grey channel, channels first
    batch = processor(images=image, input_data_format="channels_first", return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 1, 8, 8)
    assert model(**batch).logits.shape == (1, 10)


@pytest.mark.slow
def test_wandb_offline_run_is_written_and_resumed_under_the_same_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test; the trainer sets it from log.wandb
    cfg = _cfg(tmp_path, **{"log.wandb": "offline", "train.max_steps": 6, "train.save_every": 3})
    train(cfg, stop_at=3)
    root = cfg.run_dir / "checkpoints"
    first_id = ckpt.read_state(root / "step_00000003")["wandb_id"]
    train(cfg, resume="auto")
    assert ckpt.read_state(root / "step_00000006")["wandb_id"] == first_id
    runs = list((cfg.run_dir / "wandb").glob(f"offline-run-*-{first_id}"))
    assert runs, "no offline wandb run written"


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_runs_scalars_across_a_resume(tmp_path):
    cfg = _cfg(tmp_path, **{"log.trackers": "[tensorboard]", "train.max_steps": 6, "train.log_every": 1,
                            "train.eval_every": 3, "train.save_every": 3})
    train(cfg, stop_at=3)
    train(cfg, resume="auto")
    scalars = {}
    for folder in {p.parent for p in (cfg.run_dir / "kanformer").rglob("events.out.tfevents.*")}:
        for tag, points in _scalars(folder).items():
            scalars.setdefault(tag, []).extend(points)
    records = _records(cfg.run_dir)
    assert sorted(s for s, _ in scalars["loss"]) == [r["step"] for r in records] == list(range(1, 7))
    by_step = dict(scalars["loss"])
    assert all(abs(by_step[r["step"]] - r["loss"]) < 1e-5 for r in records)
    assert sorted(s for s, _ in scalars["val_loss"]) == [3, 6]
    assert not (cfg.run_dir / "wandb").exists()  # log.wandb=disabled in these tests: only TensorBoard


def test_unknown_tracker_is_named():
    with pytest.raises(ValueError, match=r"log.trackers\[\] must be one of wandb, tensorboard, mlflow, got 'tb'"):
        load_config(preset="debug", overrides=["log.trackers=[tb]"])


def test_mlflow_run_is_continued_by_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store, no server
    cfg = _cfg(tmp_path, **{"log.trackers": "[mlflow]", "train.max_steps": 6, "train.log_every": 1,
                            "train.save_every": 3})
    train(cfg, stop_at=3)
    train(cfg, resume="auto")
    run_id = ckpt.read_state(cfg.run_dir / "checkpoints" / "step_00000006")["mlflow_run_id"]
    (losses,) = list((tmp_path / "mlruns").glob(f"*/{run_id}/metrics/loss"))  # one run holds both parts
    steps = [int(line.split()[2]) for line in losses.read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_mixed_precision_on_a_cpu_without_native_products_is_warned_of(tmp_path, monkeypatch, caplog):
    """bf16 on a CPU whose oneDNN has no bf16 products (AVX2 only): PyTorch's own ran ~100x slower than fp32 there.
    The run says so before it starts (stopped right after, at its run lock: nothing else of the run is needed)."""
    from kanformer.layers import gemm
    from kanformer.train import trainer as trainer_module

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(trainer_module, "RunLock", stop)
    saved = dict(AcceleratorState._shared_state)  # an earlier test's precision, which accelerate keeps per process
    try:
        for native in (False, True):
            AcceleratorState._reset_state()
            monkeypatch.setattr(gemm, "_NATIVE", dict.fromkeys(gemm._LOW, native))
            caplog.clear()
            with caplog.at_level("WARNING"), pytest.raises(Stop):
                Trainer(_cfg(tmp_path, **{"train.mixed_precision": "bf16"}))
            assert ("without native bf16 matrix products" in caplog.text) == (not native)
    finally:
        AcceleratorState._reset_state()
        AcceleratorState._shared_state.update(saved)


def test_mixed_precision_on_a_cpu_without_native_products_trains_with_every_product_widened(tmp_path, native):
    """There the run takes the whole model's products in fp32 (layers/widen.py; the demo's GPT-2: 532 -> 88 ms a
    step on an AVX2 CPU) in every training and evaluation forward, and leaves autocast's own kernels when it ends; its
    losses follow the run on PyTorch's own bf16 products within bf16's rounding."""
    from kanformer.layers import widen

    saved = dict(AcceleratorState._shared_state)
    losses = {}
    try:
        for is_native in (False, True):
            AcceleratorState._reset_state()
            native(is_native)
            cfg = _cfg(tmp_path, name=f"native_{is_native}", **{"train.mixed_precision": "bf16", "train.max_steps": 3,
                                                              "train.log_every": 1, "train.eval_every": 2})
            trainer = Trainer(cfg)
            seen = []
            head = next(m for n, m in trainer.model.named_modules() if n.endswith("lm_head"))  # inside autocast
            head.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(
                (module.training, widen.active(), torch.is_autocast_enabled("cpu"))))
            trainer.fit()
            assert {s[0] for s in seen} == {True, False}  # training and evaluation forwards
            assert all(s[2] for s in seen) and {s[1] for s in seen} == {not is_native}
            assert not widen.active()
            losses[is_native] = [r["loss"] for r in _records(cfg.run_dir)] + [r["val_loss"]
                                                                           for r in _records(cfg.run_dir, "eval")]
    finally:
        AcceleratorState._reset_state()
        AcceleratorState._shared_state.update(saved)
    torch.testing.assert_close(losses[False], losses[True], rtol=1e-2, atol=0)
