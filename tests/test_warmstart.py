"""Warm start: fitted KAN FFNs reproduce the MLP they replace; fitted KAN-ification keeps a trained model's
predictions; fitting holds one layer's activations at a time."""

import json
import weakref

import pytest
import torch

from kanformer import create_ffn, kanify
from kanformer.config import load_config
from kanformer.surgery import warmstart
from kanformer.surgery.warmstart import fit_ffn, relative_error

# Relative error of a fitted FFN (hidden = the MLP's width) to a GELU MLP on N(0, 1) inputs. B-splines and the GR-KAN
# represent the MLP's additive form almost exactly; tanh-squashed polynomials, layer-normalised RBFs and periodic
# Fourier features approximate linear pre-activations only roughly.
TOLERANCE = {"bspline": 0.01, "wavelet": 0.1, "rbf": 0.25, "chebyshev": 0.25, "jacobi": 0.25, "fourier": 0.3,
             "rational": 0.01, "mlp": 1e-6}


@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_fitted_ffn_reproduces_a_gelu_mlp(name):
    torch.manual_seed(0)
    native = create_ffn("mlp", 16, 64, activation="gelu")
    x = torch.randn(4096, 16)
    kw = {"second_init": "gelu"} if name == "rational" else {"activation": "gelu"} if name == "mlp" else {}
    new = create_ffn(name, 16, 64, **kw)
    random_error = relative_error(new, x, native(x).detach())
    report = fit_ffn(new, native, x, steps=100)
    assert report["rel_err_fit"] < TOLERANCE[name], report
    assert report["rel_err_fit"] <= report["rel_err_start"] + 1e-9
    assert report["rel_err_fit"] < random_error / 4


@pytest.fixture(scope="module")
def trained_gpt2(tmp_path_factory):
    from kanformer.train import Trainer

    tmp = tmp_path_factory.mktemp("warm")
    cfg = load_config(preset="debug", overrides=[f"out_dir={tmp}", "name=base", "train.max_steps=40"])
    trainer = Trainer(cfg)
    trainer.fit()
    return cfg


def _kanified(cfg, init, **kw):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(cfg.run_dir / "final").eval()
    from kanformer.data import build_lm_data

    data = build_lm_data(cfg.data, cfg.model.block_size)
    calibration = [{"input_ids": data.train[i: i + 16]} for i in range(0, 128, 16)]
    held = data.val[:32]
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=held).logits, -1)
    report = kanify(model, "bspline", match="params", init=init, calibration=calibration, fit_steps=50, **kw)
    with torch.no_grad():
        out = torch.log_softmax(model.eval()(input_ids=held).logits, -1)
    kl = (ref.exp() * (ref - out)).sum(-1).mean().item()
    return kl, report


def test_fitted_kanify_keeps_a_trained_models_predictions(trained_gpt2):
    kl_fit, report = _kanified(trained_gpt2, "fit")
    kl_random, _ = _kanified(trained_gpt2, "random")
    assert [f["layer"] for f in report.fit] == [0, 1] and all(f["method"] == "least-squares" for f in report.fit)
    assert kl_fit < 0.05, kl_fit
    assert kl_fit < kl_random / 10, (kl_fit, kl_random)


def test_fitting_holds_one_layers_activations_at_a_time(trained_gpt2, monkeypatch):
    alive = []
    real = warmstart.collect_ffn_inputs

    def tracked(*args, **kwargs):
        assert all(ref() is None for ref in alive), "the previous layer's activations are still alive"
        x = real(*args, **kwargs)
        alive.append(weakref.ref(x))
        return x

    monkeypatch.setattr("kanformer.surgery.swap.collect_ffn_inputs", tracked)
    _kanified(trained_gpt2, "fit")
    assert len(alive) == 2


def test_fit_needs_calibration():
    from tiny_models import build

    with pytest.raises(ValueError, match="init='fit' needs calibration="):
        kanify(build("gpt2"), "bspline", init="fit")
    with pytest.raises(ValueError, match="init must be 'random' or 'fit'"):
        kanify(build("gpt2"), "bspline", init="pretrained")


def test_kanify_checkpoint_reports_quality_and_saves_a_loadable_model(trained_gpt2, tmp_path):
    import transformers

    from kanformer.cli import main

    out = tmp_path / "kan"
    main(["kanify", str(trained_gpt2.run_dir / "final"), "--ffn", "rational", "--out", str(out), "--fit-steps", "20"])
    result = json.loads((out / "kanify_report.json").read_text())
    before, after = result["before"]["val_ppl"], result["after"]["val_ppl"]
    assert abs(after / before - 1) < 0.05, (before, after)  # GR-KAN's mimetic start keeps the model
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.kan["ffn"] == "rational"
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token == "<|endoftext|>"
    assert (out / "run_config.yaml").exists()
