"""KAN-ify a saved checkpoint with a fitted start, measure quality before and after, save the KAN checkpoint.

Quality is the run's validation perplexity for a causal LM (its run config names the data), accuracy for a ViT, and
for an encoder without a head (e.g. a pretrained BERT) the cosine similarity of mean-pooled sentence embeddings to
the original model's on held-out text.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from ..config import load_config
from ..evaluation.metrics import classification_metrics, lm_nll, perplexity
from ..evaluation.validation import find_run_config
from ..models import ADAPTERS
from ..tasks import task_of
from .swap import kanify


def _text_batches(tokenizer: Any, texts: list[str], batch_size: int = 32, max_length: int = 128) -> list[dict]:
    return [dict(tokenizer(texts[i: i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(texts), batch_size)]


@torch.no_grad()
def _embeddings(model: Any, batches: list[dict]) -> torch.Tensor:
    out = []
    for b in batches:
        h = model(**b).last_hidden_state
        mask = b["attention_mask"][..., None].to(h.dtype)
        out.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def _chunks(docs: list[str], size: int = 400, per_doc: int = 5) -> list[str]:
    return [d[i: i + size] for d in docs for i in range(0, min(len(d), size * per_doc), size) if d[i: i + size].strip()]


@dataclass
class Probe:
    """A saved model with the data to look at it: calibration batches (model inputs) and a quality measure."""

    model: Any
    model_type: str
    calibration: list[dict[str, torch.Tensor]]
    quality: Callable[[Any], dict[str, float]]
    run_config: Path | None  # the run config naming the data (None for an encoder measured on `text`)


def load_probe(checkpoint: str | Path, *, config: str | Path | None = None, text: str = "pydoc",
               calibration_batches: int = 8, eval_tokens: int = 32768) -> Probe:
    """Load ``checkpoint`` for analysis: perplexity on its run's validation data for a causal LM, accuracy for a
    ViT, and for an encoder without a run config the cosine similarity of sentence embeddings to its own."""
    from ..data import build_lm_data, load_images, sample_documents

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a saved model (no config.json)")
    hf_config = transformers.AutoConfig.from_pretrained(checkpoint)
    model_type = hf_config.model_type.removeprefix("kan_")
    if model_type not in ADAPTERS:
        raise ValueError(f"Unsupported model_type {hf_config.model_type!r}. Supported: {', '.join(sorted(ADAPTERS))}")
    task = ADAPTERS[model_type].task
    run_path = None
    if task != "masked_lm":  # trained by kanformer: its run config names the data, its task the Auto class
        run_path = Path(config or find_run_config(checkpoint))
        run_cfg = load_config(run_path)
        model = task_of(model_type).auto().from_pretrained(checkpoint).eval()
    if task == "causal_lm":
        data = build_lm_data(run_cfg.data, run_cfg.model.block_size)
        calibration = [{"input_ids": data.train[i * 16: (i + 1) * 16]} for i in range(calibration_batches)]
        stream = data.val.tokens(0, eval_tokens + 1)
        context = run_cfg.model.block_size

        def quality(m: Any) -> dict[str, float]:
            total, n = lm_nll(m, stream, context=context, stride=max(1, context // 2))
            return {"val_ppl": perplexity(total, n)}

    elif task == "image_classification":
        images = load_images(run_cfg.data, run_cfg.model.image_size)
        calibration = [{"pixel_values": images.train_x[i * 64: (i + 1) * 64]} for i in range(calibration_batches)]

        def quality(m: Any) -> dict[str, float]:
            return classification_metrics(m, images.val_x, images.val_y)

    else:  # masked LM: an encoder, scored by its sentence embeddings
        model = transformers.AutoModel.from_pretrained(checkpoint).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
        calibration = _text_batches(tokenizer, _chunks(sample_documents(text, "train"))[: 32 * calibration_batches])
        held = _text_batches(tokenizer, _chunks(sample_documents(text, "validation"))[:256])
        reference = _embeddings(model, held)

        def quality(m: Any) -> dict[str, float]:
            sim = (_embeddings(m, held) * reference).sum(-1)
            return {"embedding_cosine_mean": sim.mean().item(), "embedding_cosine_min": sim.min().item()}

    return Probe(model, model_type, calibration, quality, run_path)


def copy_side_files(checkpoint: Path, out: Path, run_config: Path | None) -> None:
    """Tokenizer or image processor files, and the run config, travel with a derived checkpoint."""
    for path in checkpoint.iterdir():
        if path.is_file() and path.suffix in (".json", ".txt", ".model") and path.name not in (
                "config.json", "generation_config.json", "results.json", "kanify_report.json", "prune_report.json") \
                and not path.name.startswith("model"):
            shutil.copyfile(path, out / path.name)
    if run_config is not None:  # the data quality was measured on: kanformer eval / finetuning find it here
        shutil.copyfile(run_config, out / "run_config.yaml")


def kanify_checkpoint(checkpoint: str | Path, out: str | Path, ffn: str, *, match: str | None = "params",
                      hidden: int | None = None, layers: list[int] | None = None, init: str = "fit",
                      config: str | Path | None = None, text: str = "pydoc", calibration_batches: int = 8,
                      fit_steps: int = 200, fit_tokens: int = 8192, eval_tokens: int = 32768,
                      **ffn_kwargs: Any) -> dict[str, Any]:
    """Load ``checkpoint``, measure it, KAN-ify it (fitted by default), measure again, save to ``out``."""
    checkpoint, out = Path(checkpoint), Path(out)
    probe = load_probe(checkpoint, config=config, text=text, calibration_batches=calibration_batches,
                       eval_tokens=eval_tokens)
    model, quality, calibration = probe.model, probe.quality, probe.calibration
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "ffn": ffn, "init": init}
    result["before"] = quality(model)
    report = kanify(model, ffn, layers=layers, match=match, hidden=hidden, init=init, calibration=calibration,
                    fit_steps=fit_steps, fit_tokens=fit_tokens, **ffn_kwargs)
    model.eval()
    result["after"] = quality(model)
    result["kanify"] = {k: v for k, v in vars(report).items()}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copy_side_files(checkpoint, out, probe.run_config)
    (out / "kanify_report.json").write_text(json.dumps(result, indent=2, default=str))
    return result
