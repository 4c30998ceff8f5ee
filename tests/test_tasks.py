"""Tasks: causal LM (GPT-2, Llama), masked LM (BERT) and image classification (ViT) through one trainer — each on its
debug preset end to end, the stock FFN at the stock width reproducing the stock model, compare and sweep on Llama,
and the mismatches a config can show."""

import json

import pytest
import torch
import transformers

from kanformer.config import load_config
from kanformer.evaluation.validation import evaluate_checkpoint
from kanformer.studies.compare import load_compare_config, plan_arms, run_compare
from kanformer.tasks import stock_ffn, task_for
from kanformer.train import train
from kanformer.train.model_factory import build_model


def _cfg(tmp_path, preset, name, **over):
    overrides = [f"out_dir={tmp_path}", f"name={name}", "log.wandb=disabled"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(preset=preset, overrides=overrides)


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


@pytest.mark.parametrize("preset,auto,quality", [
    ("debug_llama", transformers.AutoModelForCausalLM, {"val_nll", "val_ppl", "val_bpb"}),
    ("debug_bert", transformers.AutoModelForMaskedLM, {"val_loss", "val_ppl", "val_acc"}),
])
def test_each_text_task_trains_resumes_saves_loads_and_evaluates(tmp_path, preset, auto, quality):
    over = {"ffn.name": "chebyshev", "model.dropout": 0.1, "train.max_steps": 12, "train.log_every": 1,
            "train.save_every": 100, "train.eval_every": 6}
    straight = _cfg(tmp_path, preset, "straight", **over)
    train(straight)
    parts = _cfg(tmp_path, preset, "parts", **over)
    assert train(parts, stop_at=6)["step"] == 6
    train(parts, resume="auto")
    a, b = _losses(straight.run_dir), _losses(parts.run_dir)
    assert len(a) == 12 and a == b  # exact resume: dropout and (for BERT) the masks are functions of the step
    assert a[-1] < a[0]
    model = auto.from_pretrained(parts.run_dir / "final")
    assert model.config.model_type == f"kan_{parts.model.arch}" and model.config.kan["ffn"] == "chebyshev"
    metrics = evaluate_checkpoint(parts.run_dir / "final", parts, tokens=1024, throughput_steps=1)["metrics"]
    assert quality <= set(metrics) and metrics["val_ppl"] > 1


@pytest.mark.parametrize("preset", ["debug", "debug_llama", "debug_bert", "debug_vit"])
def test_the_stock_ffn_at_the_stock_width_reproduces_the_stock_model(tmp_path, preset):
    cfg = _cfg(tmp_path, preset, "stock")
    task, stock = task_for(cfg), stock_ffn(cfg)
    cfg = _cfg(tmp_path, preset, "stock", **{"ffn.name": stock.name})
    labels = [str(i) for i in range(10)]
    torch.manual_seed(cfg.train.seed)
    reference = task.new_model(cfg.model, vocab_size=385, eos_token_id=0, labels=labels)
    kan, report = build_model(cfg, vocab_size=385, eos_token_id=0, labels=labels)
    assert report.hidden == stock.hidden and kan.config.model_type == f"kan_{cfg.model.arch}"
    kan.eval(), reference.eval()
    if hasattr(task, "rate"):
        task.mask_id = 384
    batch = task.random_batch(cfg.model, 385, 4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(kan(**batch).loss, reference(**batch).loss, rtol=0, atol=1e-6)


def test_llama_options_gqa_and_tied_embeddings(tmp_path):
    cfg = _cfg(tmp_path, "debug_llama", "opts", **{"model.tie_embeddings": "true"})
    model, _ = build_model(cfg, vocab_size=385, eos_token_id=0)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features == 2 * (32 // 4) and attn.q_proj.out_features == 32  # 2 kv heads for 4 heads
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert stock_ffn(cfg).name == "swiglu" and stock_ffn(cfg).hidden == 88  # 8 * 32 / 3 -> a multiple of 8


def test_compare_and_sweep_on_llama(tmp_path):
    from kanformer.studies.sweep import load_sweep_config, run_sweep

    path = tmp_path / "cmp.yaml"
    path.write_text(f"""
name: llama
out_dir: {tmp_path}
base: {{preset: debug_llama, train: {{max_steps: 4, eval_every: 4, save_every: 4}}, log: {{wandb: disabled}}}}
arms: [{{name: cheb, ffn: {{name: chebyshev}}}}]
baselines: {{ffns: [swiglu, mlp], match: [params]}}
seeds: [0]
eval: {{tokens: 512, throughput_steps: 1, speed_rounds: 1, speed_steps: 1}}
""")
    cfg = load_compare_config(path)
    arms = {a.name: a for a in plan_arms(cfg)}
    stock = stock_ffn(load_config(preset="debug_llama"))
    assert arms["swiglu@params"].hidden == stock.hidden  # the stock SwiGLU is the parameter reference
    summary = run_compare(cfg, log=lambda *_: None)
    assert {r["arm"] for r in summary["arms"]} == {"cheb", "swiglu@params", "mlp@params"}
    assert all(r["val_ppl"]["mean"] > 1 for r in summary["arms"])
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""
name: llama_sweep
out_dir: {tmp_path}
base: {{preset: debug_llama, train: {{batch_size: 4}}, log: {{wandb: disabled}}}}
arms: [{{name: swiglu, ffn: {{name: swiglu}}}}]
sizes: [{{n_embd: 16, n_head: 2, n_kv_head: 1}}, {{n_embd: 24, n_head: 2, n_kv_head: 1}}, {{n_embd: 32}}]
tokens_per_param: 0.2
eval: {{tokens: 256, throughput_steps: 1}}
""")
    result = run_sweep(load_sweep_config(sweep), log=lambda *_: None)
    assert len(result["points"]) == 3 and all(p["loss"] > 0 for p in result["points"])


@pytest.mark.parametrize("overrides,msg", [
    (["preset=debug_llama", "model.n_kv_head=3"], r"model.n_head \(4\) must be divisible by model.n_kv_head \(3\)"),
    (["model.n_kv_head=1"], "model.n_kv_head is for arch llama, not 'gpt2'"),
    (["preset=debug_bert", "train.mask_rate=null"], "trains a masked LM: set train.mask_rate"),
    (["train.mask_rate=0.15"], r"train.mask_rate is for masked-LM architectures \(bert\)"),
    (["preset=debug_vit", "data.dataset=pydoc"], "classifies images; data.dataset='pydoc' is text"),
    (["data.dataset=digits"], "trains on text; data.dataset='digits' is an image dataset"),
    (["preset=debug_vit", "model.tie_embeddings=true"],
     "model.tie_embeddings is for arch gpt2 / llama / bert, not 'vit'"),
    (["model.arch=t5"], "model.arch must be one of gpt2, llama, bert, vit"),
])
def test_task_and_architecture_mismatches_are_named(overrides, msg):
    preset = next((o.split("=")[1] for o in overrides if o.startswith("preset=")), "debug")
    with pytest.raises(ValueError, match=msg):
        load_config(preset=preset, overrides=[o for o in overrides if not o.startswith("preset=")])
