"""Evaluate saved checkpoints on any dataset, with the checkpoint's own tokenizer (never a new one).

    kanformer eval runs/a/final runs/b/final --data files:notes.jsonl --data hf:wikitext:wikitext-2-raw-v1

Text sources (``pydoc``, ``shakespeare``, ``files:<glob>``, ``hf:<id>[:<config>]``) are scored document by document,
the way the field's harness scores rolling log-likelihood: each document is preceded by the tokenizer's BOS (or
end-of-text) token and scored in sliding windows of the model's context; bits per byte divides the summed NLL by the
UTF-8 bytes of the documents' text. A prepared token-shard directory (``kanformer prepare``) is scored as the
training run saw it, one stream of documents separated by end-of-text, after checking it was tokenized with the
checkpoint's tokenizer. Image datasets (``digits``, ``fashion_mnist``, ``hf:<id>``) give loss and top-1 accuracy,
normalised with the checkpoint's own image processor.

Reading stops at the token budget: a corpus is never held in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.device import to_device
from ..models import ARCHITECTURES
from ..tasks import CausalLM, MaskedLM, task_of

SPLITS = ("auto", "validation", "train", "all")
IMAGE_DATASETS = ("digits", "fashion_mnist")


class Checkpoint:
    """A saved model and what it reads its inputs with: its tokenizer (text) or image processor (images)."""

    def __init__(self, path: str | Path, device: torch.device | None = None) -> None:
        import transformers

        import kanformer  # noqa: F401  (registers the KAN model classes with the Auto classes)

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a saved model (no config.json)")
        self.config = transformers.AutoConfig.from_pretrained(self.path)
        arch = self.config.model_type.removeprefix("kan_")  # what the model does; other LMs: causal
        task = task_of(arch) if arch in ARCHITECTURES else CausalLM()
        self.kind = "image" if not task.text else "masked" if isinstance(task, MaskedLM) else "causal"
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = task.auto().from_pretrained(self.path).to(self.device).eval()
        self.tokenizer = self.processor = None
        if self.kind != "image":
            if not ((self.path / "tokenizer.json").is_file() or (self.path / "vocab.json").is_file()):
                raise ValueError(f"{self.path} holds no tokenizer (tokenizer.json): a checkpoint is evaluated with "
                                 f"the tokenizer it was trained with, never a new one. Save it beside the weights "
                                 f"(tokenizer.save_pretrained({str(self.path)!r}))")
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        elif (self.path / "preprocessor_config.json").is_file():
            self.processor = json.loads((self.path / "preprocessor_config.json").read_text())

    @property
    def context(self) -> int:
        c = self.config
        return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None) or 1024

    @property
    def prefix_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def is_image_dataset(spec: str, checkpoint: Checkpoint) -> bool:
    return spec in IMAGE_DATASETS or (spec.startswith("hf:") and checkpoint.kind == "image")


def check_pairing(spec: str, checkpoint: Checkpoint) -> None:
    images = is_image_dataset(spec, checkpoint)
    if checkpoint.kind == "image" and not images:
        raise ValueError(f"{checkpoint.path} is an image classifier ({checkpoint.config.model_type}); --data "
                         f"{spec!r} is text. Image datasets: {', '.join(IMAGE_DATASETS)}, hf:<id>")
    if checkpoint.kind == "causal" and images:
        raise ValueError(f"--data {spec!r} is an image dataset; {checkpoint.path} is a language model "
                         f"({checkpoint.config.model_type}). Text: pydoc, shakespeare, files:<glob>, hf:<id>, or a "
                         f"prepared token-shard directory")


# -- text ---------------------------------------------------------------------------------------------------------
def documents(spec: str, split: str = "auto", *, text_field: str = "text", val_fraction: float = 0.1,
              split_seed: int = 1234, max_chars: int | None = None) -> Iterator[str]:
    """The documents of ``split`` of a text source, one string each (a document longer than ``max_chars``
    characters is cut there: the token budget ends inside it anyway).

    ``auto``: the source's own validation split if it has one, else every document; ``validation`` / ``train``: the
    split a training run on this source holds out / trains on (same rule, same seed); ``all``: every document.
    """
    from ..data import TextSource, route

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    source = TextSource(spec, text_field=text_field)
    if split == "auto":
        split = "validation" if source.validation_split() is not None else "all"
    if split == "all":
        for doc in source.documents():
            yield _joined(doc.pieces(0, None), max_chars)
        return
    current: list[str] = []
    size = 0
    for piece in route(source, val_fraction=val_fraction, split_seed=split_seed):
        if piece.split != split:
            continue
        if max_chars is None or size < max_chars:
            current.append(piece.text)
            size += len(piece.text)
        if piece.last:
            yield _joined(current, max_chars)
            current, size = [], 0


def _joined(pieces: Any, max_chars: int | None) -> str:
    out, size = [], 0
    for text in pieces:
        out.append(text)
        size += len(text)
        if max_chars is not None and size >= max_chars:
            break
    text = "".join(out)
    return text if max_chars is None else text[:max_chars]


@torch.no_grad()
def score_documents(ckpt: Checkpoint, docs: Iterator[str], *, tokens: int, context: int | None = None,
                    stride: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Summed NLL of each document given the BOS / end-of-text token before it, until ``tokens`` tokens are scored
    (the last document cut there). Windows feed the model ``context`` tokens and score up to ``context`` of them,
    a new window every ``stride`` tokens; with ``stride == context`` they are lm-evaluation-harness's rolling
    windows exactly."""
    from .metrics import bits_per_byte, perplexity, sliding_windows

    context = min(context or ckpt.context, ckpt.context)
    stride = stride or max(1, context // 2)
    total = torch.zeros((), dtype=torch.float64, device=ckpt.device)
    n_tokens = n_bytes = n_docs = 0
    pending: list[tuple[torch.Tensor, int]] = []  # (window ids, tokens it scores at its end)

    def flush() -> None:
        nonlocal total
        by_len: dict[int, list[tuple[torch.Tensor, int]]] = {}
        for w in pending:
            by_len.setdefault(len(w[0]), []).append(w)
        for group in by_len.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i: i + batch_size]
                ids = torch.stack([w for w, _ in chunk])
                labels = ids[:, 1:].clone()  # masked on the host: a write per row on the device is a launch per row
                for row, (w, n_new) in enumerate(chunk):
                    labels[row, : len(w) - 1 - n_new] = -100
                ids, labels = to_device(ids, ckpt.device), to_device(labels, ckpt.device)
                logits = ckpt.model(input_ids=ids[:, :-1]).logits.float()  # a window's last token is only a target
                # summed on the device, read once at the end (on a GPU a read per batch drains the queue, and the
                # host could not tokenize the next documents while the device ran)
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                         ignore_index=-100, reduction="sum").double()
        pending.clear()

    for text in docs:
        every = ckpt.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not every:
            continue
        ids = every[: tokens - n_tokens]
        stream = torch.tensor([ckpt.prefix_id, *ids])
        for begin, end, n_new in sliding_windows(len(stream), context + 1, stride):
            pending.append((stream[begin:end], n_new))
        n_bytes += len((ckpt.tokenizer.decode(ids) if len(ids) < len(every) else text).encode("utf-8"))
        n_tokens += len(ids)
        n_docs += 1
        if len(pending) >= 64 * batch_size:
            flush()
        if n_tokens >= tokens:
            break
    flush()
    if n_tokens == 0:
        raise ValueError("the data holds no text to score")
    total = total.item()
    return {"nll": total / n_tokens, "ppl": perplexity(total, n_tokens), "bpb": bits_per_byte(total, n_bytes),
            "tokens": n_tokens, "bytes": n_bytes, "documents": n_docs, "context": context, "stride": stride}


@torch.no_grad()
def score_masked(ckpt: Checkpoint, docs: Iterator[str], *, tokens: int, context: int | None = None,
                 mask_rate: float = 0.15, batch_size: int = 8) -> dict[str, Any]:
    """A masked LM on documents as it trained: their tokens, end-of-text between documents, in blocks of ``context``
    tokens, ``mask_rate`` of them predicted (masks seeded by block: the same for every checkpoint); masked-token
    loss, perplexity and accuracy."""
    from .validation import masked_lm_scores

    if ckpt.tokenizer.mask_token is None:
        raise ValueError(f"{ckpt.path}'s tokenizer has no mask token: a masked LM is scored on masked tokens")
    context = min(context or ckpt.context, ckpt.context)
    task = MaskedLM(mask_rate)
    task.prepare_tokenizer(ckpt.tokenizer)
    stream: list[int] = []
    n_docs = 0
    for text in docs:
        stream += [*ckpt.tokenizer(text, add_special_tokens=False)["input_ids"], ckpt.tokenizer.eos_token_id]
        n_docs += 1
        if len(stream) >= tokens:
            break
    n_blocks = min(len(stream), tokens) // context
    if n_blocks == 0:
        raise ValueError(f"the data holds {len(stream)} tokens, fewer than one block of {context}")
    blocks = torch.tensor(stream[: n_blocks * context]).view(n_blocks, context)
    sums = masked_lm_scores(ckpt.model, task, blocks, batch_size=batch_size, device=ckpt.device)
    m = task.metrics(*sums)
    return {"loss": m["val_loss"], "ppl": m["val_ppl"], "acc": m["val_acc"], "tokens": n_blocks * context,
            "predicted": sums[1], "documents": n_docs, "context": context, "mask_rate": mask_rate}


def score_prepared(ckpt: Checkpoint, folder: Path, *, tokens: int, context: int | None = None,
                   stride: int | None = None) -> dict[str, Any]:
    """The validation split of prepared token shards, as one stream (the way its training run saw it)."""
    from transformers import AutoTokenizer

    from ..data import TokenSplit, read_manifest
    from .metrics import bits_per_byte, lm_nll, perplexity

    manifest = read_manifest(folder)
    theirs = AutoTokenizer.from_pretrained(folder / "tokenizer")
    if theirs.get_vocab() != ckpt.tokenizer.get_vocab():
        raise ValueError(f"{folder} was tokenized with another tokenizer ({manifest['tokenizer']['kind']}, "
                         f"{len(theirs)} tokens) than {ckpt.path} uses ({len(ckpt.tokenizer)} tokens): its token "
                         f"ids mean other text to this model. Prepare the source with the checkpoint's tokenizer "
                         f"(kanformer prepare <source> data.tokenizer={ckpt.path})")
    context = min(context or ckpt.context, ckpt.context)
    stride = stride or max(1, context // 2)
    split = TokenSplit(folder, manifest, "validation")
    split.verify(checksums=False)  # sizes (the manifest's checksums: kanformer prepare --verify)
    stream = torch.from_numpy(split.read(0, min(tokens + 1, len(split))).astype(np.int64))
    total, n = lm_nll(ckpt.model, stream, context=context, stride=stride)
    n_bytes = len(ckpt.tokenizer.decode(stream[1: n + 1]).encode("utf-8"))
    return {"nll": total / n, "ppl": perplexity(total, n), "bpb": bits_per_byte(total, n_bytes), "tokens": n,
            "bytes": n_bytes, "context": context, "stride": stride}


# -- images -------------------------------------------------------------------------------------------------------
def score_images(ckpt: Checkpoint, spec: str, *, label_field: str = "label", image_field: str = "image"
                 ) -> dict[str, Any]:
    from ..config import DataConfig
    from ..data import load_images
    from .metrics import classification_metrics

    size = ckpt.config.image_size
    data = load_images(DataConfig(dataset=spec, normalize=False, label_field=label_field, image_field=image_field),
                       size)
    if data.channels != ckpt.config.num_channels:
        raise ValueError(f"{spec!r} has {data.channels}-channel images; {ckpt.path} reads {ckpt.config.num_channels}")
    if len(data.labels) != ckpt.config.num_labels:
        raise ValueError(f"{spec!r} has {len(data.labels)} classes; {ckpt.path} predicts {ckpt.config.num_labels}")
    mean, std = 0.0, 1.0
    if ckpt.processor is not None:
        mean = torch.tensor(ckpt.processor.get("image_mean", [0.0]))[:, None, None]
        std = torch.tensor(ckpt.processor.get("image_std", [1.0]))[:, None, None]
    x = (data.val_x - mean) / std
    metrics = classification_metrics(ckpt.model, x, data.val_y)
    return {"loss": metrics["val_loss"], "acc": metrics["val_acc"], "examples": len(data.val_y)}


# -- many checkpoints x many datasets ----------------------------------------------------------------------------
def evaluate_data(checkpoints: list[str | Path], data: list[str], *, tokens: int = 65536, context: int | None = None,
                  stride: int | None = None, split: str = "auto", text_field: str = "text",
                  tasks: list[str] | None = None, include_path: str | None = None, limit: float | None = None,
                  mask_rate: float = 0.15, out: str | Path | None = None, log=print) -> dict[str, Any]:
    """Every checkpoint on every dataset (and lm-evaluation-harness task): each checkpoint's ``results.json`` gains
    the scores under ``datasets`` / ``tasks``; with ``out``, one comparison table (``eval_table.md`` / ``.json``)."""
    if not checkpoints:
        raise ValueError("name at least one checkpoint")
    if not data and not tasks:
        raise ValueError("name what to evaluate on: --data <source> and / or --tasks <names>")
    rows = []
    for path in checkpoints:
        ckpt = Checkpoint(path)
        for spec in data:
            check_pairing(spec, ckpt)  # every pairing checked before any scoring
        scores: dict[str, dict[str, Any]] = {}
        for spec in data:
            log(f"-- {ckpt.path} on {spec}")
            folder = Path(spec)
            if folder.is_dir() and (folder / "manifest.json").is_file():
                if ckpt.kind == "masked":
                    raise ValueError(f"{ckpt.path} is a masked LM: score it on the source itself (--data <source>), "
                                     f"not on prepared shards")
                scores[spec] = score_prepared(ckpt, folder, tokens=tokens, context=context, stride=stride)
            elif is_image_dataset(spec, ckpt):
                scores[spec] = score_images(ckpt, spec)
            elif ckpt.kind == "masked":
                docs = documents(spec, split, text_field=text_field, max_chars=16 * tokens)
                scores[spec] = {**score_masked(ckpt, docs, tokens=tokens, context=context, mask_rate=mask_rate),
                                "split": split}
            else:
                docs = documents(spec, split, text_field=text_field, max_chars=16 * tokens)
                scores[spec] = {**score_documents(ckpt, docs, tokens=tokens, context=context, stride=stride),
                                "split": split}
        task_scores = {}
        if tasks:
            from .harness import run_tasks

            log(f"-- {ckpt.path} on lm-evaluation-harness tasks {', '.join(tasks)}")
            task_scores = run_tasks(ckpt, tasks, include_path=include_path, limit=limit)
        merge_results(ckpt.path / "results.json", scores, task_scores)
        if hasattr(ckpt.model, "kan_adapter"):  # the model card shows the results
            from ..models.card import write_model_card

            write_model_card(ckpt.model, ckpt.path)
        rows.append({"checkpoint": str(ckpt.path), "datasets": scores, "tasks": task_scores})
    table = {"rows": rows, "data": data, "tasks": tasks or [], "tokens": tokens, "split": split}
    table["markdown"] = markdown(table)
    if out is not None:
        from ..train.metrics import dumps

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_table.md").write_text(table["markdown"] + "\n")
        (out / "eval_table.json").write_text(dumps({k: v for k, v in table.items() if k != "markdown"}, indent=2))
    return table


def merge_results(path: Path, scores: dict[str, Any], tasks: dict[str, Any]) -> None:
    """Add dataset and task scores to a results.json (created if missing), atomically."""
    from ..train.metrics import dumps

    result = json.loads(path.read_text()) if path.is_file() else {"checkpoint": str(path.parent)}
    result.setdefault("datasets", {}).update(scores)
    if tasks:
        result.setdefault("tasks", {}).update(tasks)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(result, indent=2, default=str))
    os.replace(tmp, path)


def _headline(scores: dict[str, Any]) -> str:
    if "bpb" in scores:
        return f"{scores['bpb']:.4f} ({scores['ppl']:.2f})"
    return f"{scores['acc']:.4f} ({scores['loss']:.3f})"


def markdown(table: dict[str, Any]) -> str:
    """One row per checkpoint: bits per byte (perplexity) per text dataset, accuracy (loss) per image dataset, and
    each harness task's main metrics."""
    task_cols = sorted({f"{t}: {m}" for r in table["rows"] for t, ms in r["tasks"].items() for m in ms})
    head = ["checkpoint", *[f"{d}: bits/byte (ppl) or acc (loss)" for d in table["data"]], *task_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [r["checkpoint"], *[_headline(r["datasets"][d]) for d in table["data"]]]
        for col in task_cols:
            task, metric = col.split(": ", 1)
            value = r["tasks"].get(task, {}).get(metric)
            cells.append("-" if value is None else f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
