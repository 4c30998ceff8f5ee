"""``kanify``: replace the feed-forward blocks of a Hugging Face model with registered FFNs, in place.

The model keeps every other weight; its class becomes the matching KAN class (``GPT2LMHeadModel`` ->
``KanGPT2LMHeadModel``) and its config records the KAN spec, so ``save_pretrained`` / ``from_pretrained`` rebuild
exactly these modules. Per-architecture knowledge lives in ``kanformer.models.<arch>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import create_ffn, get_ffn_class
from ..layers.budget import ffn_flops, ffn_params, match_hidden
from ..models import ADAPTERS, KAN_CLASSES, normalize_spec
from ..models.common import name_loss_type
from .warmstart import collect_ffn_inputs, default_kwargs_for_fit, fit_ffn, native_ffn

LayerSelector = None | Sequence[int] | Callable[[int, str], bool]


@dataclass
class KanifyReport:
    model_type: str
    ffn: str
    hidden: int
    ffn_kwargs: dict[str, Any]
    layers: list[int] = field(default_factory=list)  # indices of the blocks whose FFN was replaced
    replaced: list[str] = field(default_factory=list)  # qualified names of the modules replaced
    weights_copied: bool = False
    params_before: int = 0
    params_after: int = 0
    ffn_params_before: int = 0  # over the replaced blocks
    ffn_params_after: int = 0
    ffn_flops_before: int = 0  # forward FLOPs per token over the replaced blocks
    ffn_flops_after: int = 0
    fit: list[dict[str, Any]] = field(default_factory=list)  # per layer, when init="fit": method and relative errors

    def __str__(self) -> str:
        def row(label: str, before: int, after: int) -> str:
            return f"  {label:<22}{before:>16,} -> {after:>16,}  ({after / max(before, 1):.3f}x)"

        kw = "".join(f", {k}={v!r}" for k, v in self.ffn_kwargs.items())
        return "\n".join([
            f"kanify: {len(self.layers)} FFN block(s) of {self.model_type} -> {self.ffn}(hidden={self.hidden}{kw})"
            + (" [stock weights copied]" if self.weights_copied else ""),
            row("model params", self.params_before, self.params_after),
            row("FFN params", self.ffn_params_before, self.ffn_params_after),
            row("FFN FLOPs / token", self.ffn_flops_before, self.ffn_flops_after),
            *(f"  fit layer {f['layer']}: {f['method']}, relative error {f['rel_err_start']:.4f} -> "
              f"{f['rel_err_fit']:.4f} on {f['tokens']} tokens" for f in self.fit),
        ])


def _select(n_blocks: int, layers: LayerSelector, names: list[str]) -> list[int]:
    if layers is None:
        return list(range(n_blocks))
    if callable(layers):
        return [i for i in range(n_blocks) if layers(i, names[i])]
    if isinstance(layers, str | bytes) or not isinstance(layers, Sequence):
        raise ValueError(f"layers must be None, a list of block indices or a callable (index, name) -> bool, "
                         f"got {layers!r}")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_blocks]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {n_blocks} blocks (0..{n_blocks - 1})")
    return sorted(set(layers))


def kanify(model: nn.Module, ffn: str = "bspline", *, layers: LayerSelector = None, match: str | None = None,
           hidden: int | None = None, init: str = "random", calibration: Iterable[dict[str, Any]] | None = None,
           fit_steps: int = 200, fit_lr: float = 1e-3, fit_tokens: int = 8192, **ffn_kwargs: Any) -> KanifyReport:
    """Replace the FFN of the selected blocks of ``model`` with ``create_ffn(ffn, d_model, hidden, **ffn_kwargs)``.

    Args:
        layers: ``None`` (all blocks), block indices, or ``fn(index, qualified_name) -> bool``.
        match: ``"params"`` or ``"flops"``: solve the hidden width so each new FFN costs what the replaced MLP did.
        hidden: an explicit hidden width (not with ``match``). Neither: the stock MLP's width.
        init: ``"random"`` (each FFN's own initialisation) or ``"fit"``: fit each new FFN to the MLP it replaces on
            the inputs it sees when the model runs ``calibration`` (a re-iterable of model-input dicts), one block
            at a time, then ``fit_steps`` of Adam at ``fit_lr`` on up to ``fit_tokens`` rows (surgery.warmstart).
        **ffn_kwargs: options of the FFN (grid size, degree, ...). For the architecture's own FFN kind (``mlp`` for
            GPT-2 / ViT / BERT, ``swiglu`` for Llama) the stock activation and bias are the defaults, and at the stock
            width the stock weights are copied, so the swap changes nothing (the transparency check).

    A model that an earlier kanify (or a kanformer training run) already converted can be converted again, e.g. a
    trained ``mlp`` GPT-2 into a fitted B-spline one; its current FFNs are then the ones replaced (and fitted to).

    Returns a :class:`KanifyReport`; the model is modified in place and its class becomes the KAN class.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    is_kan = type(model) in {kan for kan, _ in KAN_CLASSES.values()}
    base_type = model_type.removeprefix("kan_") if is_kan else model_type
    if base_type not in ADAPTERS:
        raise ValueError(f"Unsupported model_type {model_type!r}. Supported: {', '.join(sorted(ADAPTERS))}")
    if not is_kan and type(model) not in KAN_CLASSES:
        supported = ", ".join(sorted(c.__name__ for c in KAN_CLASSES))
        raise ValueError(f"Unsupported model class {type(model).__name__}. Supported: {supported}")
    get_ffn_class(ffn)  # unknown names fail before anything changes
    if match is not None and hidden is not None:
        raise ValueError("give either match= or hidden=, not both")
    if match not in (None, "params", "flops"):
        raise ValueError(f"match must be None, 'params' or 'flops', got {match!r}")
    if init not in ("random", "fit"):
        raise ValueError(f"init must be 'random' or 'fit', got {init!r}")
    if init == "fit" and calibration is None:
        raise ValueError("init='fit' needs calibration= (batches of model inputs to collect FFN inputs from)")

    adapter = ADAPTERS[base_type]
    blocks = adapter.blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is blocks)
    names = [f"{prefix}.{i}" for i in range(len(blocks))]
    selected = _select(len(blocks), layers, names)
    if not selected:
        raise ValueError(f"layers={layers!r} selected none of the {len(blocks)} blocks ({names[0]}..{names[-1]})")
    existing = getattr(config, "kan", None) if is_kan else None
    if existing and not set(existing["layers"]) <= set(selected):
        raise ValueError(f"the model holds {existing['ffn']!r} FFNs in blocks {existing['layers']}; a KAN config holds "
                         f"one FFN kind, so select all of them (layers=None or a superset), got {selected}")

    d_model = adapter.d_model(config)
    native_name, native_hidden = adapter.native_ffn, adapter.native_hidden(config)
    native_kw = adapter.native_kwargs(config)
    if ffn == native_name:
        ffn_kwargs = {**native_kw, **ffn_kwargs}
    if init == "fit":
        ffn_kwargs = {**default_kwargs_for_fit(ffn, adapter, config), **ffn_kwargs}
    if match is not None:
        reference = (ffn_params if match == "params" else ffn_flops)(native_name, d_model, native_hidden, **native_kw)
        hidden = match_hidden(ffn, d_model, target=match, reference=reference, **ffn_kwargs)
    elif hidden is None:
        hidden = native_hidden
    current = {i: adapter.current_ffn(blocks[i]) for i in selected}  # FFNs an earlier kanify installed
    copy_weights = (ffn == native_name and hidden == native_hidden and ffn_kwargs == native_kw
                    and all(c is None for c in current.values()))
    fit = init == "fit" and not copy_weights

    report = KanifyReport(model_type=model_type, ffn=ffn, hidden=hidden, ffn_kwargs=dict(ffn_kwargs), layers=selected,
                          weights_copied=copy_weights, params_before=sum(p.numel() for p in model.parameters()))
    for c in current.values():
        report.ffn_params_before += c.num_params() if c else ffn_params(native_name, d_model, native_hidden,
                                                                        **native_kw)
        report.ffn_flops_before += c.flops_per_token() if c else ffn_flops(native_name, d_model, native_hidden,
                                                                          **native_kw)
    # Build (and so validate) every new FFN before the model is touched: a bad option leaves it as it was.
    news = {}
    for i in selected:
        ref = next(iter(blocks[i].parameters()))
        news[i] = create_ffn(ffn, d_model, hidden, **ffn_kwargs).to(device=ref.device, dtype=ref.dtype)
        if copy_weights:
            with torch.no_grad():
                news[i].load_state_dict(adapter.native_state(blocks[i]))
    for i, new in news.items():
        block = blocks[i]
        if fit:  # blocks before i are already replaced: block i is fitted on the inputs it will really see
            ref = next(iter(block.parameters()))
            x = collect_ffn_inputs(model, adapter.ffn_site(block), calibration, fit_tokens).to(ref.device)
            entry = fit_ffn(new.float(), native_ffn(adapter, block, config, current[i]).to(ref.device), x,
                            steps=fit_steps, lr=fit_lr, seed=i)
            report.fit.append({"layer": i, **entry})
            new.to(dtype=ref.dtype)
            del x  # one layer's activations at a time
        report.replaced += [f"{names[i]}.{n}" for n in adapter.install(block, new, config)]
        block.train(block.training)  # the new modules follow the block's train / eval mode
        report.ffn_params_after += new.num_params()
        report.ffn_flops_after += new.flops_per_token()
    report.params_after = sum(p.numel() for p in model.parameters())

    if not is_kan:
        kan_cls, kan_config_cls = KAN_CLASSES[type(model)]
        # In place, like peft: submodules keep referring to the same config object, which becomes the KAN config.
        config.__class__ = kan_config_cls
        _adopt_class(model, kan_cls)
    config.kan = normalize_spec({"ffn": ffn, "hidden": hidden, "ffn_kwargs": ffn_kwargs, "layers": selected})
    return report


def _adopt_class(model: nn.Module, kan_cls: type) -> None:
    """Make ``model`` an instance of ``kan_cls`` (a subclass of its class that adds no state). transformers keys
    one thing by class at construction: the outputs each model class can record (``output_hidden_states``), so the
    new class gets the entry its constructor would have made."""
    model.__class__ = kan_cls
    name_loss_type(model)
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # older transformers: no such registry
        return
    _CAN_RECORD_REGISTRY[model] = model._can_record_outputs
