"""Tokenizers: a byte-level BPE trained on the training split, bytes ("char"), or GPT-2's BPE (hub id or a local
directory). All come back as ``PreTrainedTokenizerFast`` with an end-of-text token, so they save into runs and
exported checkpoints with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
TOKENIZERS = ("bpe", "char", "gpt2", "<directory with tokenizer.json or vocab.json + merges.txt>")


def _byte_level(train_docs: list[str] | None, vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_docs or [""], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def build_tokenizer(kind: str, train_docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    if kind == "bpe":
        return _byte_level(train_docs, vocab_size)
    if kind == "char":  # the 256 byte symbols and end-of-text: no merges
        return _byte_level(None, 257)
    if kind == "gpt2" or Path(kind).is_dir():
        tok = AutoTokenizer.from_pretrained(kind)  # a directory needs tokenizer.json or vocab.json + merges.txt
        if len(tok) <= 256:
            raise ValueError(f"Tokenizer {kind!r} loaded with only {len(tok)} tokens: is its vocabulary missing?")
        if tok.eos_token is None:
            tok.eos_token = EOS
        return tok
    raise ValueError(f"Unknown tokenizer {kind!r}. Available: {', '.join(TOKENIZERS)}")
