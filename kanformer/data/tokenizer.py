"""Tokenizers: a byte-level BPE trained on a bounded sample of the training split, bytes ("char"), or GPT-2's BPE (hub
id or a local directory). All come back as ``PreTrainedTokenizerFast`` with an end-of-text token, so they save into
prepared corpora, runs and exported checkpoints with ``save_pretrained``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
TOKENIZERS = ("bpe", "char", "gpt2", "<directory with tokenizer.json or vocab.json + merges.txt>")


def _byte_level(sample: Iterable[str] | None, vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample if sample is not None else [""], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def trains_on_text(kind: str) -> bool:
    """Whether tokenizer ``kind`` is learnt from the corpus (then it needs a sample of the training split)."""
    return kind == "bpe"


def build_tokenizer(kind: str, vocab_size: int, sample: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """``kind``: bpe (learnt from ``sample``, an iterable of training text the caller bounds), char, gpt2 or a
    directory."""
    if kind == "bpe":
        return _byte_level(sample, vocab_size)
    if kind == "char":  # the 256 byte symbols and end-of-text: no merges
        return _byte_level(None, 257)
    if kind == "gpt2" or Path(kind).is_dir():
        folder = Path(kind)
        if folder.is_dir() and not ((folder / "tokenizer.json").is_file() or
                                    ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
            held = sorted(p.name for p in folder.iterdir())[:10]
            raise ValueError(f"data.tokenizer={kind!r} is a directory without a tokenizer: it needs tokenizer.json, "
                             f"or vocab.json and merges.txt (what save_pretrained writes); it holds "
                             f"{held or 'nothing'}. Other values: {', '.join(TOKENIZERS)}")
        tok = AutoTokenizer.from_pretrained(kind)
        if len(tok) <= 256:
            raise ValueError(f"Tokenizer {kind!r} loaded with only {len(tok)} tokens: is its vocabulary missing?")
        if tok.eos_token is None:
            tok.eos_token = EOS
        return tok
    raise ValueError(f"Unknown tokenizer {kind!r}. Available: {', '.join(TOKENIZERS)}")


def tokenizer_fingerprint(kind: str) -> str:
    """What identifies tokenizer ``kind`` beyond its name: the files of a tokenizer directory."""
    import hashlib

    if not Path(kind).is_dir():
        return kind
    h = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        path = Path(kind) / name
        if path.is_file():
            h.update(name.encode() + path.read_bytes())
    return h.hexdigest()[:16]
