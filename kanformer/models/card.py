"""The model card (README.md) that ``save_pretrained`` writes beside every KAN checkpoint: Hugging Face metadata
(YAML front matter), the KAN spec, parameters and FFN FLOPs per token against the stock model, the training data and
token count, evaluation results when the directory holds them, and how to load it with and without kanformer.

Facts only the trainer knows (data, tokens, license) arrive as ``model.card_info`` and are kept in
``kanformer_card.json``, so the card can be written again when evaluation results arrive. Like its siblings this
file travels inside checkpoints: it imports nothing from kanformer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .kan_layers import FFN, get_ffn_class

CARD_INFO = "kanformer_card.json"


def _yaml_list(key: str, items: list[str]) -> list[str]:
    return [f"{key}:", *(f"- {json.dumps(i)}" for i in items)] if items else []


def costs(model: Any) -> dict[str, Any]:
    """Parameters and FFN forward FLOPs per token of ``model`` and of the same model with its stock MLPs."""
    adapter, config = model.kan_adapter, model.config
    d = adapter.d_model(config)
    stock_cls = get_ffn_class(adapter.native_ffn)
    stock_kw = adapter.native_kwargs(config)
    stock_params = stock_cls.count_params(d, adapter.native_hidden(config), **stock_kw)
    stock_flops = sum(stock_cls.count_flops(d, adapter.native_hidden(config), **stock_kw).values())
    ffns = [m for m in model.modules() if isinstance(m, FFN)]
    total = sum(p.numel() for p in model.parameters())
    kan_params, kan_flops = sum(f.num_params() for f in ffns), sum(f.flops_per_token() for f in ffns)
    return {"params": total, "stock_params": total - kan_params + stock_params * len(ffns),
            "ffn_params": kan_params, "stock_ffn_params": stock_params * len(ffns),
            "ffn_flops_per_token": kan_flops, "stock_ffn_flops_per_token": stock_flops * len(ffns),
            "replaced_blocks": len(ffns), "stock_ffn": adapter.native_ffn}


def render(model: Any, directory: Path, info: dict[str, Any], results: dict[str, Any]) -> str:
    config = model.config
    arch = config.model_type.removeprefix("kan_")
    spec = config.kan or {}
    c = costs(model)
    training = info.get("training", {})
    data = str(training.get("dataset", ""))
    front = ["---", "library_name: transformers", f"pipeline_tag: {model.kan_adapter.pipeline}",
             *_yaml_list("tags", ["kanformer", "kan", "kolmogorov-arnold-network", arch,
                                  *([f"ffn-{spec['ffn']}"] if spec else [])])]
    if info.get("license"):
        front.append(f"license: {json.dumps(info['license'])}")
        if info.get("license_name"):
            front.append(f"license_name: {json.dumps(info['license_name'])}")
    if data.startswith("hf:"):
        front += _yaml_list("datasets", [data[3:].split(":")[0].split("@")[0]])
    front.append("---")
    name = info.get("name") or directory.resolve().parent.name
    kw = ", ".join(f"{k}={v!r}" for k, v in spec.get("ffn_kwargs", {}).items()) or "defaults"
    lines = [*front, "", f"# {name}: {arch} with {spec.get('ffn', 'stock')} feed-forward blocks", "",
             f"A {arch} whose MLP blocks are replaced by `{spec.get('ffn')}` feed-forward blocks (kanformer): "
             f"learnable univariate functions on edges, sums on nodes." if spec else f"A stock {arch}.", "",
             "## KAN spec", "",
             f"- FFN: `{spec.get('ffn')}` ({kw}), hidden width {spec.get('hidden')}, blocks {spec.get('layers')}",
             f"- stock FFN it replaces: `{c['stock_ffn']}`, hidden width {model.kan_adapter.native_hidden(config)}", "",
             "| | this model | stock model |", "|---|---:|---:|",
             f"| parameters | {c['params']:,} | {c['stock_params']:,} |",
             f"| FFN parameters ({c['replaced_blocks']} blocks) | {c['ffn_params']:,} | {c['stock_ffn_params']:,} |",
             f"| FFN forward FLOPs per token | {c['ffn_flops_per_token']:,} | {c['stock_ffn_flops_per_token']:,} |"]
    if info.get("flops_per_token"):
        stock = info["flops_per_token"] - c["ffn_flops_per_token"] + c["stock_ffn_flops_per_token"]
        lines.append(f"| model forward FLOPs per token | {info['flops_per_token']:,} | {stock:,} |")
    if training:
        lines += ["", "## Training", ""]
        lines += [f"- {k.replace('_', ' ')}: {v:,}" if isinstance(v, int) else f"- {k.replace('_', ' ')}: {v}"
                  for k, v in training.items()]
        if info.get("license_name") or info.get("license"):
            lines.append(f"- data license: {info.get('license_name') or info.get('license')}")
    metrics = results.get("metrics", {})
    shown = {k: metrics[k] for k in ("val_ppl", "val_bpb", "val_loss", "val_acc", "train_tokens_per_s")
             if isinstance(metrics.get(k), int | float)}
    if shown or results.get("datasets") or results.get("tasks"):
        lines += ["", "## Evaluation", "", "| data / task | metric | value |", "|---|---|---:|"]
        lines += [f"| the run's validation split | {k} | {v:.4g} |" for k, v in shown.items()]
        for spec_name, s in results.get("datasets", {}).items():
            lines += [f"| {spec_name} | {k} | {s[k]:.4g} |" for k in ("bpb", "ppl", "acc", "loss")
                      if isinstance(s.get(k), int | float)]
        for task, ms in results.get("tasks", {}).items():
            lines += [f"| {task} (lm-evaluation-harness) | {k} | {v:.4g} |" for k, v in ms.items()]
    auto = model.kan_architecture.auto_class_of(type(model))
    where = str(info.get("path") or directory)
    lines += ["", "## Loading", "", "```python", "import kanformer  # registers the KAN model classes",
              f"from transformers import {auto}", f"model = {auto}.from_pretrained({where!r})", "",
              "# without kanformer installed: the modeling code travels with the weights",
              f"model = {auto}.from_pretrained({where!r}, trust_remote_code=True)", "```", ""]
    return "\n".join(lines)


def write_model_card(model: Any, directory: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
    """Write (or rewrite) ``directory/README.md`` for ``model``; ``info`` is merged into the kept card facts."""
    directory = Path(directory)
    kept = directory / CARD_INFO
    facts = json.loads(kept.read_text()) if kept.is_file() else {}
    if info:
        facts.update(info)
        _write(kept, json.dumps(facts, indent=2, default=str))
    results_file = directory / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    path = directory / "README.md"
    _write(path, render(model, directory, facts, results))
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
