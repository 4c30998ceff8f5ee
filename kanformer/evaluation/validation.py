"""Evaluate a saved checkpoint against its run's validation data: quality, speed, memory, cost -> results.json."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import transformers

from ..config import RunConfig, load_config
from ..data.device import batch_to_device
from ..layers.budget import model_flops_per_token
from ..tasks import CausalLM, Task, task_for
from ..train.provenance import versions
from .metrics import (
    bits_per_byte,
    classification_metrics,
    lm_nll,
    measure_inference,
    measure_training,
    param_counts,
    peak_flops,
    perplexity,
)


@torch.no_grad()
def masked_lm_scores(model: Any, task: Task, blocks: torch.Tensor, *, batch_size: int,
                     device: torch.device) -> tuple[float, int, int]:
    """(summed NLL, predicted tokens, hits) of a masked LM over token ``blocks`` ``(n, context)``, the masks seeded by
    block index: the same for every checkpoint."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for start in range(0, len(blocks), batch_size):
        batch = batch_to_device(task.batch(blocks[start: start + batch_size], torch.Generator().manual_seed(start)),
                                device)
        sums += task.scores(model(**batch), batch)
    nll, count, hits = sums.tolist()  # read once
    return nll, int(count), int(hits)


def measure_generation(model: Any, seq: int, *, vocab_size: int, pad_token_id: int) -> dict[str, float]:
    """A causal LM's prefill and generation tokens/s as a comparison reports them: 4 prompts of half its context (at
    most 64 tokens), as many new tokens (at most 32)."""
    return measure_inference(model, vocab_size=vocab_size, batch_size=4, prompt_len=min(64, seq // 2),
                             new_tokens=min(32, seq // 2), pad_token_id=pad_token_id)


def find_run_config(checkpoint: Path) -> Path:
    for candidate in (checkpoint / "run_config.yaml", checkpoint.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No run config for {checkpoint} (looked for run_config.yaml in it and config.yaml next "
                            f"to it): pass the run's config explicitly")


def evaluate_checkpoint(checkpoint: str | Path, cfg: RunConfig | None = None, *, tokens: int = 65536,
                        context: int | None = None, stride: int | None = None, throughput_steps: int = 5,
                        peak_tflops: float | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Metrics of the model saved in ``checkpoint`` on the validation split its run config defines.

    Args:
        tokens: validation token budget for perplexity (the same for every arm of a comparison).
        context / stride: sliding-window evaluation (defaults: the run's block size, half of it).
    """
    from ..data import build_lm_data, load_images
    from ..train.metrics import dumps

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a saved model (no config.json)")
    cfg = cfg or load_config(find_run_config(checkpoint))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = task_for(cfg)
    model = task.auto().from_pretrained(checkpoint).to(device)
    metrics: dict[str, Any] = {}
    bsz = cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    seq = task.seq_len(cfg.model)
    if task.text:
        data = build_lm_data(cfg.data, cfg.model.block_size)
        tokenizer = task.prepare_tokenizer(data.tokenizer)
        own = (transformers.AutoTokenizer.from_pretrained(checkpoint)
               if (checkpoint / "tokenizer.json").is_file() else None)
        if (own.get_vocab() != tokenizer.get_vocab() if own is not None
                else len(tokenizer) > model.config.vocab_size):
            raise ValueError(f"{checkpoint} was trained with another tokenizer ({model.config.vocab_size} tokens) "
                             f"than this config's data is tokenized with (data.dataset={cfg.data.dataset!r}, "
                             f"data.tokenizer={cfg.data.tokenizer!r}, data.vocab_size={cfg.data.vocab_size}: "
                             f"{len(tokenizer)} tokens): evaluate with the config of the run that trained it "
                             f"(its run directory's config.yaml)")
        blocks = data.val
        if isinstance(task, CausalLM):
            context = context or cfg.model.block_size
            positions = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
            if context > positions:
                raise ValueError(f"context={context} exceeds the model's {positions} positions")
            stride = stride or max(1, context // 2)
            stream = blocks.tokens(0, tokens + 1)
            total, n = lm_nll(model, stream, context=context, stride=stride)
            n_bytes = len(tokenizer.decode(stream[1: n + 1]).encode("utf-8"))
            metrics.update(val_nll=total / n, val_ppl=perplexity(total, n), val_bpb=bits_per_byte(total, n_bytes),
                           val_tokens=n, val_bytes=n_bytes)
            metrics.update(measure_generation(model, seq, vocab_size=len(tokenizer),
                                              pad_token_id=tokenizer.eos_token_id))
        else:  # masked LM: masked-token loss, perplexity and accuracy on the first `tokens` validation tokens
            n_blocks = max(1, min(len(blocks), tokens // blocks.block_size))
            sums = masked_lm_scores(model, task, blocks[torch.arange(n_blocks)], batch_size=bsz, device=device)
            metrics.update(task.metrics(*sums), val_tokens=n_blocks * blocks.block_size, val_predicted=sums[1])

        def batch() -> dict[str, torch.Tensor]:
            x = blocks[torch.randint(0, len(blocks), (bsz,), generator=gen)]
            return batch_to_device(task.batch(x, gen), device)

    else:
        images = load_images(cfg.data, cfg.model.image_size)
        metrics.update(classification_metrics(model, images.val_x, images.val_y))

        def batch() -> dict[str, torch.Tensor]:
            i = torch.randint(0, len(images.val_y), (bsz,), generator=gen)
            return batch_to_device({"pixel_values": images.val_x[i], "labels": images.val_y[i]}, device)

    metrics.update(measure_training(model, batch, bsz * seq, steps=throughput_steps))
    metrics.update(param_counts(model))
    metrics["flops_per_token"] = model_flops_per_token(model, seq)
    peak = peak_flops(device, peak_tflops * 1e12 if peak_tflops else None)
    metrics["mfu"] = 3 * metrics["flops_per_token"] * metrics["train_tokens_per_s"] / peak if peak else None
    metrics["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"checkpoint": str(checkpoint), "metrics": metrics,
              "eval": {"tokens": tokens, "context": context, "stride": stride, "throughput_steps": throughput_steps},
              "config": cfg.to_dict(), "versions": versions()}
    out = Path(out) if out else checkpoint / "results.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(dumps(result, indent=2, default=str))
    os.replace(tmp, out)
    if hasattr(model, "kan_adapter") and out == checkpoint / "results.json":  # the model card shows the results
        from ..models.card import write_model_card

        write_model_card(model, checkpoint)
    return result
