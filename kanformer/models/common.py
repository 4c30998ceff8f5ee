"""What every KAN model class shares: the KAN spec in the config, per-architecture adapters that know where the
FFN lives, building the FFNs in ``__init__`` (so ``from_pretrained`` restores them), loud loading, and portable
checkpoints.

This file and its siblings travel inside every saved checkpoint (``save_pretrained`` copies them), so they import
only torch, transformers and each other (relative imports), never ``kanformer`` itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .card import write_model_card
from .kan_layers import FFN, Basis, KANModule, create_ffn, refresh_checks

SPEC_KEYS = ("ffn", "hidden", "ffn_kwargs", "layers")

# Hugging Face activation names -> the `activation` of kanformer's `mlp` FFN.
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}


def mlp_activation(hf_name: Any) -> str:
    if hf_name not in HF_ACTIVATIONS:
        raise ValueError(f"Activation {hf_name!r} has no 'mlp' FFN equivalent. Supported: "
                         f"{', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[hf_name]


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively: the spec must equal its own JSON round trip."""
    return json.loads(json.dumps(value))


def normalize_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a KAN spec ``{"ffn", "hidden", "ffn_kwargs", "layers"}`` and make it JSON-stable."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) - set(SPEC_KEYS) or not {"ffn", "hidden", "layers"} <= set(spec):
        raise ValueError(f"KAN spec must be a dict with keys {', '.join(SPEC_KEYS)} (ffn_kwargs optional), "
                         f"got {spec!r}")
    layers = spec["layers"]
    if not isinstance(layers, list | tuple) or not all(isinstance(i, int) and i >= 0 for i in layers):
        raise ValueError(f"KAN spec 'layers' must be a list of block indices >= 0, got {layers!r}")
    hidden = spec["hidden"]
    if isinstance(hidden, list | tuple):  # one width per listed block (e.g. after pruning units)
        if len(hidden) != len(layers) or len(set(layers)) != len(layers):
            raise ValueError(f"KAN spec 'hidden' as a list needs one width per layer {list(layers)}, got {hidden!r}")
        pairs = sorted(zip(layers, hidden, strict=True))
        layers, hidden = [i for i, _ in pairs], [h for _, h in pairs]
    return _jsonable({"ffn": spec["ffn"], "hidden": hidden, "ffn_kwargs": dict(spec.get("ffn_kwargs") or {}),
                      "layers": sorted(set(layers))})


def spec_hidden(spec: dict[str, Any], layer: int) -> int:
    """The hidden width the spec gives block ``layer``."""
    hidden = spec["hidden"]
    return hidden[spec["layers"].index(layer)] if isinstance(hidden, list) else hidden


class KanConfigMixin:
    """Adds ``kan`` (the spec) to a transformers config. ``kan=None`` is the unmodified architecture."""

    def _set_kan(self, kan: dict[str, Any] | None) -> None:
        self.kan = normalize_spec(kan)


class ResidualDropoutFFN(nn.Module):
    """An FFN followed by the dropout its host block applied inside the replaced MLP (GPT-2)."""

    def __init__(self, ffn: FFN, dropout: float) -> None:
        super().__init__()
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.ffn(x))


class Adapter:
    """What kanformer knows of one architecture: where it keeps its FFNs and how to swap them, its task, and how a
    run config builds the stock model. One subclass per model family (one file in ``models/``)."""

    model_type: ClassVar[str]  # the stock model_type, and ``model.arch`` in run configs
    native_ffn: ClassVar[str]  # the registered FFN equivalent to the stock MLP ("mlp" or "swiglu")
    task: ClassVar[str]  # what it is trained for: causal_lm | masked_lm | image_classification (kanformer.tasks)
    pipeline: ClassVar[str]  # the Hugging Face pipeline tag of its model cards
    run_options: ClassVar[tuple[str, ...]] = ()  # optional ``model.*`` keys of a run config it takes

    def default_width(self, d_model: int) -> int:
        """The stock FFN's hidden width for width ``d_model`` (run configs without ``model.ffn_width``)."""
        return 4 * d_model

    def stock_model(self, m: Any, *, width: int, vocab_size: int | None, eos_token_id: int | None,
                    labels: list[str], channels: int) -> nn.Module:
        """A fresh stock model (the task's head) for the ``model`` section ``m`` of a run config."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def d_model(self, config: Any) -> int:
        return config.hidden_size

    def native_hidden(self, config: Any) -> int:
        return config.intermediate_size

    def native_kwargs(self, config: Any) -> dict[str, Any]:
        """Options of ``native_ffn`` that reproduce the stock MLP exactly."""
        raise NotImplementedError

    def native_state(self, block: nn.Module) -> dict[str, torch.Tensor]:
        """The stock MLP's weights in the layout of ``native_ffn``'s state dict."""
        raise NotImplementedError

    def install(self, block: nn.Module, ffn: FFN, config: Any) -> list[str]:
        """Put ``ffn`` in the block, deleting the stock MLP; return the replaced modules' names within the block."""
        raise NotImplementedError

    def ffn_site(self, block: nn.Module) -> nn.Module:
        """The module whose input is the FFN's input, before and after replacement (for collecting activations)."""
        return block.mlp

    def current_ffn(self, block: nn.Module) -> FFN | None:
        """The registered FFN a block holds (after an earlier kanify), or None for the stock MLP."""
        return next((m for m in self.ffn_site(block).modules() if isinstance(m, FFN)), None)

    def replaced_count(self, model: nn.Module) -> int:
        return sum(isinstance(m, FFN) for m in model.modules())


class Architecture:
    """One architecture, declared once at the end of its file: its adapter, its KAN config class, and its KAN model
    classes by the Auto class that loads each, with the stock class each one extends. The KAN classes get their
    ``config_class``, ``kan_adapter`` and ``kan_architecture`` from here, and checkpoints their ``auto_map``."""

    def __init__(self, adapter: Adapter, config: type, models: dict[str, tuple[type, type]]) -> None:
        self.adapter, self.config, self.models = adapter, config, models
        stem = config.__module__.rsplit(".", 1)[-1]  # the file name, in the package and in a checkpoint's copy
        self.auto_map = {"AutoConfig": f"{stem}.{config.__name__}",
                         **{auto: f"{stem}.{kan.__name__}" for auto, (_, kan) in models.items()}}
        for _, kan in models.values():
            kan.config_class, kan.kan_adapter, kan.kan_architecture = config, adapter, self

    @property
    def name(self) -> str:
        return self.adapter.model_type

    def auto_class_of(self, kan_cls: type) -> str:
        """The Auto class that loads ``kan_cls`` (AutoModel for the bare model)."""
        return next((auto for auto, (_, kan) in self.models.items() if issubclass(kan_cls, kan)), "AutoModel")


def apply_kan_spec(model: nn.Module, adapter: Adapter, spec: dict[str, Any] | None) -> list[str]:
    """Build the spec's FFN in every listed block of ``model``. Returns the qualified names replaced."""
    if spec is None:
        return []
    blocks = adapter.blocks(model)
    bad = [i for i in spec["layers"] if i >= len(blocks)]
    if bad:
        raise ValueError(f"KAN spec lists layers {bad}, but the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    prefix = _module_name(model, blocks)
    replaced = []
    for i in spec["layers"]:
        ffn = create_ffn(spec["ffn"], adapter.d_model(model.config), spec_hidden(spec, i), **spec["ffn_kwargs"])
        replaced += [f"{prefix}.{i}.{name}" for name in adapter.install(blocks[i], ffn, model.config)]
    return replaced


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AssertionError("block list not found in model")


class KanModelMixin:
    """Mixed into every KAN model class, before the transformers class it extends."""

    kan_adapter: ClassVar[Adapter]  # set by the architecture's ``Architecture``
    kan_architecture: ClassVar[Architecture]

    def _build_kan(self) -> None:
        """Call at the end of ``__init__``: builds the FFNs the config asks for, then transformers' post_init."""
        apply_kan_spec(self, self.kan_adapter, self.config.kan)
        self.post_init()
        name_loss_type(self)

    def _init_weights(self, module: nn.Module) -> None:
        # KAN modules use their own initialisation (reset_parameters), never the host model's rules (normal(0.02),
        # GPT-2's scaled `c_proj.weight`); tensors already loaded from a checkpoint are left alone. Blocks inside a
        # nested base model (e.g. `transformer` of an LM head) are visited by that model's own `_init_weights`,
        # which matches no KAN module type and so keeps the initialisation they got when built.
        if isinstance(module, KANModule | Basis):
            own = list(module.parameters(recurse=False))
            if own and not all(getattr(p, "_is_hf_initialized", False) for p in own):
                module.reset_parameters()
            return
        super()._init_weights(module)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """transformers' save_pretrained (safetensors), plus the modeling code, so that
        ``from_pretrained(dir, trust_remote_code=True)`` works where kanformer is not installed."""
        if kwargs.get("safe_serialization") is False:
            raise ValueError("kanformer checkpoints are safetensors only; drop safe_serialization=False")
        self.config.auto_map = dict(self.kan_architecture.auto_map)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_portable_code(save_directory)
            write_model_card(self, save_directory, getattr(self, "card_info", None))

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' from_pretrained, but a checkpoint whose tensors do not fit the KAN config is an error,
        never a silently re-initialised layer."""
        want_info = kwargs.pop("output_loading_info", False)
        # Mismatches are collected here (to name them in the error) unless the caller asked to re-initialise them.
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        problems = []
        for key in ("missing_keys", "unexpected_keys"):
            names = sorted(info.get(key) or [])
            if names:
                problems.append(f"{key.replace('_', ' ')}: {', '.join(names)}")
        if not allow_mismatch:
            for name, ckpt_shape, model_shape in sorted(info.get("mismatched_keys") or []):
                problems.append(f"tensor {name}: checkpoint shape {tuple(ckpt_shape)}, "
                                f"config builds shape {tuple(model_shape)}")
        if problems:
            raise ValueError(f"Checkpoint does not fit its KAN config ({cls.__name__}):\n  " + "\n  ".join(problems))
        refresh_checks(model)  # the loader sets tensors without the bases' own methods (a compiled graph reads these)
        return (model, info) if want_info else model


def name_loss_type(model: nn.Module) -> None:
    """transformers derives ``loss_type`` from the class name, which a causal-LM head named ``...LMHeadModel``
    does not give; the fallback then logs a warning inside ``forward``, a graph break under ``torch.compile``.
    A model with an ``lm_head`` names its (causal LM) loss explicitly."""
    if getattr(model, "loss_type", "") is None and hasattr(model, "lm_head") and not hasattr(model, "cls"):
        model.loss_type = "ForCausalLM"


# -- portable checkpoints ------------------------------------------------------------------------------------------
def portable_sources() -> dict[str, Path]:
    """Every module a checkpoint carries, flat (``name -> source file``), derived from the package: each module of
    ``kanformer/layers`` and of ``kanformer/models``, with ``kan_layers.py`` standing for ``layers/__init__.py``. A
    new basis or architecture file travels without a list to update. Running from a checkpoint's copy, the files
    beside this one."""
    here = Path(__file__).resolve().parent
    if (here / "registry.py").exists():  # running from a checkpoint's copy: already flat
        return {p.stem: p for p in sorted(here.glob("*.py")) if p.stem != "__init__"}
    layers = here.parent / "layers"
    found = {p.stem: p for p in sorted(layers.glob("*.py")) if p.stem != "__init__"}
    found["kan_layers"] = layers / "__init__.py"  # in the package, kan_layers.py only re-exports kanformer.layers
    found.update({p.stem: p for p in sorted(here.glob("*.py")) if p.stem not in ("__init__", "kan_layers")})
    return found


def write_portable_code(save_directory: str | os.PathLike) -> None:
    """Copy the self-contained modeling code (layers + model classes, flat, relative imports only) next to the
    weights. Each file is written under a temporary name, then renamed, so an interrupted save leaves no half file."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, source in portable_sources().items():
        tmp = out / f".{name}.py.tmp"
        tmp.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        os.replace(tmp, out / f"{name}.py")
