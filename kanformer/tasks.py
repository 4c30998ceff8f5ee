"""One object per task: what differs between causal LM (GPT-2, Llama), masked LM (BERT) and image classification
(ViT) lives here, and the trainer, ``kanformer eval``, ``compare`` and ``sweep`` talk to the task, never to ``arch``
strings.

A task builds the stock model from a run config (the FFN is swapped afterwards by ``kanify``), knows its sequence
length, turns data rows into model batches (masking for masked LM, seeded so a resumed run masks alike), turns model
outputs into summed NLL / counts / hits, and names the Auto class checkpoints load with. Stock FFN widths and
activations come from the architecture adapters (``kanformer.models``) of the stock model built here: one source
for every width (:func:`stock_ffn`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import transformers

IMAGE_DATASETS = ("digits", "fashion_mnist")
TEXT_BUILTINS = ("pydoc", "shakespeare")


class Task:
    name: ClassVar[str]
    text: ClassVar[bool] = True  # reads token blocks (else images)
    auto_class: ClassVar[str]
    quality: ClassVar[tuple[str, ...]]  # the validation metrics it reports

    def seq_len(self, m: Any) -> int:
        """Tokens per example (what FLOPs per token and tokens per step count)."""
        return m.block_size

    def new_model(self, m: Any, *, vocab_size: int | None = None, eos_token_id: int | None = None,
                  labels: list[str] | None = None, channels: int = 1) -> Any:
        """The stock model of the ``model`` section ``m``, built by its architecture's adapter."""
        return architecture(m.arch).adapter.stock_model(m, width=stock_width(m), vocab_size=vocab_size,
                                                        eos_token_id=eos_token_id, labels=labels or [],
                                                        channels=channels)

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        return tokenizer

    def batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Model inputs of rows ``x`` (token blocks)."""
        return {"input_ids": x, "labels": x}

    def scores(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(summed NLL, count, hits) of one evaluation batch (count: predicted tokens or examples), a float64 tensor
        on the model's device: summed there over the batches and read once (on a GPU each read drains the queue)."""
        raise NotImplementedError

    def random_batch(self, m: Any, vocab_size: int, batch_size: int, generator: torch.Generator
                     ) -> dict[str, torch.Tensor]:
        """A batch of random inputs of the right shapes (timing a step without data)."""
        return self.batch(torch.randint(0, vocab_size, (batch_size, self.seq_len(m)), generator=generator), generator)

    def metrics(self, nll: float, count: float, hits: float) -> dict[str, float]:
        mean = nll / count
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 700.0))}

    def auto(self) -> Any:
        return getattr(transformers, self.auto_class)


class CausalLM(Task):
    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    quality = ("val_loss", "val_ppl")

    def scores(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        count = batch["labels"][:, 1:].numel()
        loss = out.loss.double()
        return torch.stack([loss * count, loss.new_full((), count), loss.new_zeros(())])


class MaskedLM(Task):
    """BERT-style masked-token prediction: ``rate`` of the tokens are predicted; of those, 80% are replaced by the
    mask token, 10% by a random token, 10% kept (Devlin et al. 2019). Metrics: masked-token perplexity and
    accuracy."""

    name = "masked_lm"
    auto_class = "AutoModelForMaskedLM"
    quality = ("val_loss", "val_ppl", "val_acc")
    MASK = "<mask>"

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """The corpus's tokenizer plus a mask token (a new id after the others: the prepared shards stay valid)."""
        if tokenizer.mask_token is None:
            tokenizer.add_special_tokens({"mask_token": self.MASK})
        self.mask_id, self.vocab = tokenizer.mask_token_id, len(tokenizer)
        return tokenizer

    def batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        g = generator or torch.Generator().manual_seed(0)
        chosen = torch.rand(x.shape, generator=g) < self.rate
        chosen[:, 0] |= ~chosen.any(dim=1)  # at least one prediction per row
        roll = torch.rand(x.shape, generator=g)
        inputs = x.clone()
        inputs[chosen & (roll < 0.8)] = self.mask_id
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = torch.randint(0, self.mask_id, (int(swap.sum()),), generator=g)
        return {"input_ids": inputs, "labels": torch.where(chosen, x, torch.full_like(x, -100))}

    def random_batch(self, m: Any, vocab_size: int, batch_size: int, generator: torch.Generator
                     ) -> dict[str, torch.Tensor]:
        self.mask_id = vocab_size - 1  # the last id stands for the mask token
        return super().random_batch(m, vocab_size - 1, batch_size, generator)

    def scores(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        chosen = labels != -100
        count = chosen.sum().double()
        hits = ((out.logits.argmax(-1) == labels) & chosen).sum().double()  # no boolean indexing: it reads a size
        return torch.stack([out.loss.double() * count, count, hits])

    def metrics(self, nll: float, count: float, hits: float) -> dict[str, float]:
        return {**super().metrics(nll, count, hits), "val_acc": hits / count}


class ImageClassification(Task):
    name = "image_classification"
    text = False
    auto_class = "AutoModelForImageClassification"
    quality = ("val_loss", "val_acc")

    def seq_len(self, m: Any) -> int:
        return (m.image_size // m.patch_size) ** 2 + 1  # a token per patch, plus [CLS]

    def random_batch(self, m: Any, vocab_size: int, batch_size: int, generator: torch.Generator, channels: int = 1
                     ) -> dict[str, torch.Tensor]:
        """Random images of ``channels`` channels (a checkpoint's ``config.num_channels``; 1: the built-in data's)."""
        x = torch.randn(batch_size, channels, m.image_size, m.image_size, generator=generator)
        return {"pixel_values": x, "labels": torch.zeros(batch_size, dtype=torch.long)}

    def scores(self, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        count = len(batch["labels"])
        loss = out.loss.double()
        return torch.stack([loss * count, loss.new_full((), count), (out.logits.argmax(-1) == batch["labels"]).sum()
                            .double()])

    def metrics(self, nll: float, count: float, hits: float) -> dict[str, float]:
        return {"val_loss": nll / count, "val_acc": hits / count}


TASKS: dict[str, type[Task]] = {c.name: c for c in (CausalLM, MaskedLM, ImageClassification)}


def architecture(arch: str) -> Any:
    """The declared architecture ``arch`` (``kanformer.models.ARCHITECTURES``), or an error naming the allowed ones."""
    from .models import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown model.arch {arch!r}. Allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def task_of(arch: str, mask_rate: float | None = None) -> Task:
    """The task an architecture is trained for (masked LM with ``mask_rate``)."""
    cls = TASKS[architecture(arch).adapter.task]
    return cls(mask_rate) if cls is MaskedLM else cls()


def task_for(cfg: Any) -> Task:
    """The task of a run config (``cfg.model.arch``)."""
    return task_of(cfg.model.arch, cfg.train.mask_rate)


def stock_width(m: Any) -> int:
    """The stock FFN's hidden width of a fresh model: ``model.ffn_width``, else the architecture's convention (4 d;
    Llama's SwiGLU: 2/3 of 4 d, rounded up to a multiple of 8, the same parameters as a 4 d GELU MLP). Everything
    else reads the width back from the built model through its adapter (:func:`stock_ffn`)."""
    return m.ffn_width if m.ffn_width is not None else architecture(m.arch).adapter.default_width(m.n_embd)


@dataclass
class StockFFN:
    name: str  # the registered FFN equivalent to the stock MLP
    d_model: int
    hidden: int
    kwargs: dict[str, Any]

    def kwargs_for(self, ffn: str) -> dict[str, Any]:
        """Options of FFN ``ffn`` as a baseline of this model: the stock ones when it is the stock kind."""
        return dict(self.kwargs) if ffn == self.name else {}


def stock_ffn(cfg: Any) -> StockFFN:
    """What the stock model of run config ``cfg`` has as FFN, read from its architecture adapter (built on the meta
    device: no memory, no compute)."""
    from .models import ADAPTERS

    with torch.device("meta"):
        model = task_for(cfg).new_model(cfg.model, vocab_size=cfg.data.vocab_size + 1, eos_token_id=0,
                                        labels=["0", "1"], channels=1)
    adapter = ADAPTERS[model.config.model_type]
    c = model.config
    return StockFFN(adapter.native_ffn, adapter.d_model(c), adapter.native_hidden(c), adapter.native_kwargs(c))


def check_pairing(cfg: Any) -> None:
    """Task / data mismatches a config can show before anything loads (named, with what is allowed)."""
    task, data = task_for(cfg), cfg.data.dataset
    if task.text and data in IMAGE_DATASETS:
        raise ValueError(f"model.arch={cfg.model.arch!r} trains on text; data.dataset={data!r} is an image dataset. "
                         f"Text: {', '.join(TEXT_BUILTINS)}, files:<glob>, hf:<id>")
    if not task.text and (data in TEXT_BUILTINS or data.startswith("files:")):
        raise ValueError(f"model.arch={cfg.model.arch!r} classifies images; data.dataset={data!r} is text. Images: "
                         f"{', '.join(IMAGE_DATASETS)}, hf:<id>")
    if isinstance(task, MaskedLM) and task.rate is None:
        raise ValueError(f"model.arch={cfg.model.arch!r} trains a masked LM: set train.mask_rate (the share of "
                         "tokens predicted, e.g. 0.15)")
    if not isinstance(task, MaskedLM) and cfg.train.mask_rate is not None:
        raise ValueError(f"train.mask_rate is for masked-LM architectures ({', '.join(_masked_archs())}); "
                         f"model.arch={cfg.model.arch!r}")


def _masked_archs() -> list[str]:
    from .models import ARCHITECTURES

    return [name for name, a in ARCHITECTURES.items() if a.adapter.task == MaskedLM.name]
