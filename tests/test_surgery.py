"""kanify: what it replaces, what it keeps, and how it fails."""

from types import SimpleNamespace

import pytest
import torch
from tiny_models import NATIVE_FFN, build, inputs, output
from torch import nn
from transformers import GPT2Config, GPT2ForSequenceClassification
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

import kanformer
from kanformer import FFN, KanGPT2LMHeadModel, kanify

ARCHS = ["gpt2", "vit", "bert", "llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_native_ffn_with_stock_weights_is_transparent(arch):
    """Swapping the MLP for the registered equivalent (weights copied) changes no logit: the surgery touches
    nothing else."""
    model, batch = build(arch), inputs(arch)
    before = output(model, batch)
    report = kanify(model, NATIVE_FFN[arch])
    assert report.weights_copied and report.layers == [0, 1, 2]
    assert report.params_after == report.params_before
    torch.testing.assert_close(output(model, batch), before)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", [True, False])
def test_kanify_returns_the_kan_class_and_keeps_other_weights(arch, head):
    model = build(arch, head=head)
    stock = {k: v.clone() for k, v in model.state_dict().items()}
    report = kanify(model, "chebyshev", match="params")
    assert type(model).__name__.startswith("Kan") and model.config.model_type == f"kan_{arch}"
    assert model.config.kan == {"ffn": "chebyshev", "hidden": report.hidden, "ffn_kwargs": {}, "layers": [0, 1, 2]}
    after = model.state_dict()
    in_replaced = lambda k: any(k.startswith(r + ".") for r in report.replaced)
    kept = [k for k in stock if not in_replaced(k)]
    assert kept and all(torch.equal(stock[k], after[k]) for k in kept)
    assert all(in_replaced(k) for k in set(stock) - set(after))  # only replaced MLPs' tensors vanished
    ffns = [m for m in model.modules() if isinstance(m, FFN)]
    assert len(ffns) == 3 and all(f.name == "chebyshev" for f in ffns)
    assert torch.isfinite(output(model, inputs(arch))).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("match", ["params", "flops"])
def test_match_solves_the_width_against_the_replaced_mlp(arch, match):
    report = kanify(build(arch), "bspline", match=match, grid_size=4)
    before = report.ffn_params_before if match == "params" else report.ffn_flops_before
    after = report.ffn_params_after if match == "params" else report.ffn_flops_after
    one_unit = 3 * (kanformer.ffn_params if match == "params" else kanformer.ffn_flops)("bspline", 32, 1, grid_size=4)
    assert abs(after - before) <= one_unit


def test_layers_list_replaces_exactly_those_blocks():
    model = build("gpt2")
    report = kanify(model, "rbf", layers=[0, 2], hidden=24)
    assert report.layers == [0, 2]
    assert report.replaced == ["transformer.h.0.mlp", "transformer.h.2.mlp"]
    h = model.transformer.h
    assert isinstance(h[0].mlp.ffn, FFN) and isinstance(h[2].mlp.ffn, FFN) and isinstance(h[1].mlp, GPT2MLP)
    assert model.config.kan["layers"] == [0, 2]


def test_layers_callable_gets_index_and_name():
    model = build("bert")
    seen = []
    report = kanify(model, "fourier", layers=lambda i, name: seen.append(name) or i % 2 == 1)
    assert seen == [f"bert.encoder.layer.{i}" for i in range(3)]
    assert report.replaced == ["bert.encoder.layer.1.intermediate", "bert.encoder.layer.1.output.dense"]
    assert isinstance(model.bert.encoder.layer[1].output.dense, nn.Identity)


def test_bert_output_keeps_residual_and_layernorm():
    model = build("bert", head=False)
    kanify(model, "mlp", hidden=16, layers=[0])
    block = model.encoder.layer[0]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = block.output.LayerNorm(block.intermediate(x) + x)
        torch.testing.assert_close(block.feed_forward_chunk(x), expected)


def test_replaced_modules_are_deleted():
    model = build("llama")
    kanify(model, "jacobi", hidden=8)
    names = [n for n, _ in model.named_modules()]
    assert not any("gate_proj" in n or "up_proj" in n or "down_proj" in n for n in names)


def test_selection_and_type_errors():
    with pytest.raises(ValueError, match=r"layers \[3\] out of range: the model has 3 blocks \(0\.\.2\)"):
        kanify(build("gpt2"), "bspline", layers=[0, 3])
    with pytest.raises(ValueError, match="selected none of the 3 blocks"):
        kanify(build("gpt2"), "bspline", layers=lambda i, name: False)
    with pytest.raises(ValueError, match="selected none of the 3 blocks"):
        kanify(build("gpt2"), "bspline", layers=[])
    with pytest.raises(ValueError, match="Unsupported model_type 't5'. Supported: bert, gpt2, llama, vit"):
        kanify(SimpleNamespace(config=SimpleNamespace(model_type="t5")), "bspline")
    clf = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="Unsupported model class GPT2ForSequenceClassification. Supported: "):
        kanify(clf, "bspline")
    with pytest.raises(ValueError, match="Unknown FFN 'splines'"):
        kanify(build("gpt2"), "splines")
    with pytest.raises(ValueError, match="give either match= or hidden=, not both"):
        kanify(build("gpt2"), "bspline", match="params", hidden=8)
    model = build("gpt2")
    kanify(model, "bspline", hidden=8, layers=[0, 1])
    with pytest.raises(ValueError, match=r"holds 'bspline' FFNs in blocks \[0, 1\]; a KAN config holds one FFN kind"):
        kanify(model, "chebyshev", layers=[1, 2])


def test_failed_kanify_changes_nothing():
    model = build("gpt2")
    with pytest.raises(ValueError):
        kanify(model, "bspline", hidden=8, grid_size=0)
    assert type(model).__name__ == "GPT2LMHeadModel" and isinstance(model.transformer.h[0].mlp, GPT2MLP)


def test_report_prints_a_summary():
    text = str(kanify(build("gpt2"), "rational", match="params"))
    assert "3 FFN block(s) of gpt2 -> rational(hidden=" in text and "FFN params" in text


def test_fresh_kan_model_keeps_kan_init_and_tied_embeddings():
    """transformers' init (GPT-2's name rule for c_proj.weight, normal(0.02) for Linear) leaves KAN coefficients
    at their own initialisation; lm_head stays tied to the embeddings."""
    config = kanformer.KanGPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=50, n_positions=32,
                                     kan={"ffn": "bspline", "hidden": 48, "layers": [0, 1]})
    model = KanGPT2LMHeadModel(config)
    fc1 = model.transformer.h[0].mlp.ffn.fc1
    expected = 1.0 / (64 * fc1.basis.n_basis) ** 0.5
    assert abs(fc1.coef.std().item() / expected - 1) < 0.1
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_vit_4x_layout_keeps_the_residual_inside_output():
    """transformers 4.x ViT: encoder.layer[i].intermediate (dense + act) and output (dense, dropout, + residual)."""
    from kanformer.models.vit import ViTAdapter

    class Intermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(8, 16)

        def forward(self, x):
            return torch.nn.functional.gelu(self.dense(x))

    class Output(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense, self.dropout = nn.Linear(16, 8), nn.Dropout(0.0)

        def forward(self, hidden, input_tensor):
            return self.dropout(self.dense(hidden)) + input_tensor

    block = nn.Module()
    block.intermediate, block.output = Intermediate(), Output()
    x = torch.randn(3, 8)
    expected = block.output(block.intermediate(x), x)
    adapter = ViTAdapter()
    ffn = kanformer.create_ffn("mlp", 8, 16, activation="gelu")
    ffn.load_state_dict(adapter.native_state(block))
    assert adapter.install(block, ffn, None) == ["intermediate", "output.dense"]
    torch.testing.assert_close(block.output(block.intermediate(x), x), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_and_attentions_still_recorded_after_kanify(arch):
    model, batch = build(arch, head=False), inputs(arch)
    kanify(model, "chebyshev", hidden=8)
    out = model(**batch, output_hidden_states=True)
    assert out.hidden_states is not None and len(out.hidden_states) == 4


@pytest.mark.parametrize("basis", ["bspline", "wavelet", "rational"])
def test_base_model_init_uses_kan_rules(basis):
    """In a base model class the blocks are initialised through the mixin's _init_weights: KAN modules get their
    own reset_parameters, not transformers' normal(0.02)."""
    config = kanformer.KanBertConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                                     vocab_size=50, kan={"ffn": basis, "hidden": 32, "layers": [0]})
    model = kanformer.KanBertModel(config)
    ffn = model.encoder.layer[0].intermediate
    if basis == "rational":
        x = torch.linspace(-3, 3, 101)[:, None].expand(-1, 64)
        torch.testing.assert_close(ffn.act1(x), x)  # identity init survived
    else:
        fc1 = ffn.fc1
        assert abs(fc1.coef.std().item() * (64 * fc1.basis.n_basis) ** 0.5 - 1) < 0.1


def test_a_kan_model_can_be_converted_again():
    model, batch = build("gpt2"), inputs("gpt2")
    kanify(model, "mlp", hidden=48)
    report = kanify(model, "rbf", hidden=12, layers=[0, 1, 2])
    assert type(model).__name__ == "KanGPT2LMHeadModel" and model.config.kan["ffn"] == "rbf"
    assert report.ffn_params_before == 3 * kanformer.ffn_params("mlp", 32, 48, activation="gelu_tanh")
    assert all(m.name == "rbf" for m in model.modules() if isinstance(m, FFN))
    assert torch.isfinite(output(model, batch)).all()
