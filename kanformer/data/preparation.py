"""``kanformer prepare``: a text source -> token shards on disk (kanformer/data/shards.py), in bounded memory.

    kanformer prepare --config configs/gpt2_small_gpu.yaml            # the run config's data section
    kanformer prepare files:corpus/*.jsonl data.tokenizer=gpt2 --out data/corpus

The source is read one document at a time and split into train and validation by whole documents
(kanformer/data/sources.py). A byte-level BPE is learnt from the first ``data.tokenizer_sample_bytes`` of the
training split. Documents are tokenized in batches — in this process at first, then by ``data.num_proc`` worker
processes — and the ids appended to the current shard of their split; a shard closes after the batch that fills it
to ``data.shard_tokens``. At each close the progress (pieces of the source consumed, shards complete) is written
atomically, so a killed preparation continues from its last complete shard, and a prepared directory (one with a
manifest) is never touched again: preparing it once more is a no-op. Shard boundaries depend only on the source and
the options that shape the tokens, never on ``num_proc``, so the same corpus gives the same shards and checksums.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from .holdout import Piece, route
from .shards import DTYPES, FORMAT, MANIFEST, SPLITS, ShardWriter, read_manifest, split_summary, token_dtype, write_json
from .sources import TextSource, cache_root
from .tokenizer import build_tokenizer, tokenizer_fingerprint, trains_on_text

PROGRESS = "progress.json"
BATCH_BYTES = 1 << 20  # text per tokenizer batch
BATCH_PIECES = 2048
INLINE_BYTES = 8 << 20  # text tokenized in this process before the worker pool starts (small corpora never start it)


def request_of(cfg: DataConfig) -> dict[str, Any]:
    """Every option that shapes the tokens (and nothing that does not, such as num_proc or shard_tokens)."""
    request = {"dataset": cfg.dataset, "text_field": cfg.text_field, "val_fraction": cfg.val_fraction,
               "split_seed": cfg.split_seed, "token_dtype": cfg.token_dtype,
               "tokenizer": cfg.tokenizer if not Path(cfg.tokenizer).is_dir() else
               f"directory {tokenizer_fingerprint(cfg.tokenizer)}",
               "splits": ["validation"] if cfg.streaming else list(SPLITS)}
    if trains_on_text(cfg.tokenizer):
        request.update(vocab_size=cfg.vocab_size, tokenizer_sample_bytes=cfg.tokenizer_sample_bytes)
    if cfg.streaming:
        request["validation_tokens"] = cfg.stream_val_tokens
    return request


def default_dir(cfg: DataConfig, source: TextSource | None = None) -> Path:
    """``data.prepared_dir``, else a directory under the cache keyed by the request and the source's fingerprint."""
    if cfg.prepared_dir:
        return Path(cfg.prepared_dir)
    source = source or TextSource(cfg.dataset, text_field=cfg.text_field, cache_dir=cfg.cache_dir)
    key = hashlib.sha256(json.dumps([FORMAT, request_of(cfg), source.fingerprint()], sort_keys=True).encode())
    return cache_root(cfg.cache_dir) / "prepared" / key.hexdigest()[:16]


def _differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    keys = sorted(set(have) | set(want), key=lambda k: (k != "tokenizer", k))  # the tokenizer first: it matters most
    return [f"{k}: prepared with {have.get(k)!r}, the run asks for {want.get(k)!r}" for k in keys
            if have.get(k) != want.get(k)]


def check_request(folder: Path, manifest: dict[str, Any], cfg: DataConfig) -> None:
    diff = _differences(manifest["request"], request_of(cfg))
    if diff:
        raise ValueError(f"The prepared corpus in {folder} does not match the run's data section:\n  "
                         + "\n  ".join(diff) + "\nPrepare the run's data into another directory "
                         "(data.prepared_dir=<new dir>, or unset it to use the cache), or set the data section to "
                         "the corpus' values.")


@contextmanager
def _locked(folder: Path):
    """One preparer per directory at a time (several ranks or arms may ask for the same corpus)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(cfg: DataConfig, *, out: str | Path | None = None, progress: bool = True, log=print) -> Path:
    """Tokenize ``cfg``'s source into token shards (resuming a partial preparation); returns the directory. A no-op
    on a directory that already holds the prepared corpus; an error on one that holds another."""
    source = None
    if out is None and not cfg.prepared_dir:  # the cache's directory is keyed by the source's fingerprint
        source = TextSource(cfg.dataset, text_field=cfg.text_field, cache_dir=cfg.cache_dir)
    folder = Path(out) if out is not None else default_dir(cfg, source)
    if (folder / MANIFEST).is_file():  # prepared: the source is not needed (it may live on another machine)
        check_request(folder, read_manifest(folder), cfg)
        return folder
    source = TextSource(cfg.dataset, text_field=cfg.text_field, streaming=cfg.streaming or cfg.hf_streaming,
                        cache_dir=cfg.cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        if (folder / MANIFEST).is_file():  # another process finished it while this one waited
            check_request(folder, read_manifest(folder), cfg)
            return folder
        return _Preparation(cfg, source, folder, progress, log).run()


class _Preparation:
    def __init__(self, cfg: DataConfig, source: TextSource, folder: Path, progress: bool, log) -> None:
        self.cfg, self.source, self.folder, self.progress, self.log = cfg, source, folder, progress, log
        self.request = request_of(cfg)
        self.splits = ("validation",) if cfg.streaming else SPLITS

    # -- state on disk -----------------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        path = self.folder / PROGRESS
        fingerprint = self.source.fingerprint()
        if path.is_file():
            state = json.loads(path.read_text())
            diff = _differences(state["request"], self.request)
            if state["source_fingerprint"] != fingerprint:
                diff.append("the source's files changed since the preparation began")
            if diff:
                raise ValueError(f"{self.folder} holds a partial preparation of other data:\n  " + "\n  ".join(diff)
                                 + f"\nDelete {self.folder} or prepare into another directory.")
            self.log(f"prepare: resuming in {self.folder} after {sum(len(state[s]) for s in self.splits)} complete "
                     f"shard(s)")
        else:
            state = {"request": self.request, "source_fingerprint": fingerprint, "pieces": 0,
                     "train": [], "validation": [], "seconds": 0.0}
            shutil.rmtree(self.folder / "tokenizer", ignore_errors=True)
        keep = {r["file"] for s in SPLITS for r in state[s]}
        for path in self.folder.iterdir():  # temporary files and shards the progress does not list: a crash's
            temporary = path.name.startswith(".") and ".tmp" in path.name
            if temporary and path.is_dir():
                shutil.rmtree(path)
            elif temporary or (path.suffix == ".bin" and path.name not in keep):
                path.unlink()
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        write_json(self.folder / PROGRESS, state)

    # -- tokenizer ---------------------------------------------------------------------------------------------------
    def _pieces(self) -> Iterator[Piece]:
        return route(self.source, val_fraction=self.cfg.val_fraction, split_seed=self.cfg.split_seed)

    def _sample(self) -> Iterator[str]:
        """The first ``tokenizer_sample_bytes`` of the training split."""
        budget = self.cfg.tokenizer_sample_bytes
        for piece in self._pieces():
            if piece.split != "train":
                continue
            data = piece.text.encode("utf-8")
            yield data[:budget].decode("utf-8", errors="ignore")
            budget -= len(data)
            if budget <= 0:
                return

    def _tokenizer(self):
        from transformers import AutoTokenizer

        path = self.folder / "tokenizer"
        if not (path / "tokenizer.json").is_file():
            if next((p for p in self._pieces() if p.split == "train"), None) is None:
                raise ValueError(f"Dataset {self.cfg.dataset!r} holds no text (empty corpus)")
            t0 = time.perf_counter()
            if trains_on_text(self.cfg.tokenizer):
                self.log(f"prepare: learning a {self.cfg.vocab_size}-token {self.cfg.tokenizer} tokenizer from up to "
                         f"{self.cfg.tokenizer_sample_bytes:,} bytes of training text ...")
            tok = build_tokenizer(self.cfg.tokenizer, self.cfg.vocab_size,
                                  self._sample() if trains_on_text(self.cfg.tokenizer) else None)
            tmp = self.folder / ".tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save_pretrained(str(tmp))
            os.replace(tmp, path)
            if trains_on_text(self.cfg.tokenizer):
                self.log(f"prepare: tokenizer ({len(tok)} tokens) learnt in {time.perf_counter() - t0:.1f} s")
        return AutoTokenizer.from_pretrained(str(path))

    # -- the pass ------------------------------------------------------------------------------------------------------
    def _batches(self, skip: int) -> Iterator[tuple[int, list[Piece]]]:
        """(pieces consumed, the pieces to tokenize) in batches of about BATCH_BYTES; validation-only preparations
        consume training pieces without tokenizing them."""
        batch: list[Piece] = []
        consumed = size = 0
        for piece in islice(self._pieces(), skip, None):
            consumed += 1
            if piece.split in self.splits:
                batch.append(piece)
                size += len(piece.text)
            if size >= BATCH_BYTES or len(batch) >= BATCH_PIECES:
                yield consumed, batch
                batch, consumed, size = [], 0, 0
        if consumed:
            yield consumed, batch

    def run(self) -> Path:
        cfg, folder = self.cfg, self.folder
        state = self._load_state()
        tokenizer = self._tokenizer()
        dtype = token_dtype(len(tokenizer), cfg.token_dtype)
        eos = tokenizer.eos_token_id
        writers = {s: ShardWriter(folder, s, dtype, first_index=len(state[s])) for s in self.splits}
        done = {s: sum(r["tokens"] for r in state[s]) for s in self.splits}
        target = "validation" if cfg.streaming else "train"
        limit = cfg.stream_val_tokens if cfg.streaming else None
        encoder = _Encoder(str(folder / "tokenizer" / "tokenizer.json"), eos, dtype, cfg.num_proc or _cores())
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"prepare {cfg.dataset}", unit="tok", unit_scale=True, initial=sum(done.values()),
                   disable=not self.progress, dynamic_ncols=True)
        start, consumed = time.perf_counter(), 0

        def checkpoint() -> None:
            for s, w in writers.items():
                record = w.close_shard()
                if record is not None:
                    state[s].append(record)
            state["pieces"] += consumed
            state["seconds"] += time.perf_counter() - start
            self._save_state(state)

        try:
            for n, result in encoder.map(self._batches(state["pieces"])):
                for s, (ids, docs, nbytes) in result.items():
                    writers[s].append(ids, docs, nbytes)
                    done[s] += len(ids)
                    bar.update(len(ids))
                consumed += n
                if limit is not None and done[target] >= limit:
                    break
                if writers[target].tokens >= cfg.shard_tokens:
                    checkpoint()
                    start, consumed = time.perf_counter(), 0
                    bar.set_postfix(shards=len(state[target]))
            checkpoint()
        except BaseException as e:
            for w in writers.values():
                w.abort()
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                kept = sum(len(state[s]) for s in self.splits)
                raise OSError(e.errno, f"No space left on the device while writing token shards in {folder}: its "
                              f"{kept} complete shard(s) are kept. Free some space (or set data.prepared_dir on "
                              f"a larger disk) and run the same command again: it continues from them.") from e
            raise
        finally:
            encoder.close()
            bar.close()
        return self._finish(state, tokenizer, dtype)

    def _finish(self, state: dict[str, Any], tokenizer, dtype: str) -> Path:
        cfg = self.cfg
        summary = {s: split_summary(state[s]) for s in self.splits}
        if "train" in summary and summary["train"]["tokens"] == 0:
            raise ValueError(f"Dataset {cfg.dataset!r} holds no training text (every document was held out for "
                             f"validation): lower data.val_fraction ({cfg.val_fraction})")
        if summary["validation"]["tokens"] == 0:
            raise ValueError(f"Dataset {cfg.dataset!r} is too small to hold out a validation split "
                             f"(data.val_fraction={cfg.val_fraction}): add documents or raise data.val_fraction")
        tok_json = self.folder / "tokenizer" / "tokenizer.json"
        manifest = {
            "format": FORMAT, "request": state["request"],
            "source": {"dataset": cfg.dataset, "fingerprint": state["source_fingerprint"]},
            "tokenizer": {"kind": cfg.tokenizer, "vocab": len(tokenizer), "eos_id": tokenizer.eos_token_id,
                          "sha256": hashlib.sha256(tok_json.read_bytes()).hexdigest()},
            "dtype": dtype, "shard_tokens": cfg.shard_tokens, "splits": summary,
            "prepare_seconds": round(state["seconds"], 2),
        }
        write_json(self.folder / MANIFEST, manifest)
        (self.folder / PROGRESS).unlink(missing_ok=True)
        line = ", ".join(f"{s} {v['tokens']:,} tokens in {v['documents']:,} documents / {len(v['shards'])} shard(s)"
                         for s, v in summary.items())
        self.log(f"prepare: {cfg.dataset} -> {self.folder} ({dtype}): {line}")
        return self.folder


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# -- tokenizing, in this process or in a pool -------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_json: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism
    from tokenizers import Tokenizer

    _WORKER["tokenizer"] = Tokenizer.from_file(tokenizer_json)


def _encode(tokenizer, pieces: list[Piece], eos: int, dtype: str) -> dict[str, tuple[np.ndarray, int, int]]:
    """Per split: the pieces' ids (an end-of-text id after each document's last piece), documents, UTF-8 bytes."""
    encodings = tokenizer.encode_batch_fast([p.text for p in pieces], add_special_tokens=False) if pieces else []
    out: dict[str, tuple[np.ndarray, int, int]] = {}
    for split in SPLITS:
        mine = [(p, e) for p, e in zip(pieces, encodings, strict=True) if p.split == split]
        if not mine:
            continue
        parts = []
        for p, e in mine:
            parts.append(e.ids)
            if p.last:
                parts.append((eos,))
        ids = np.fromiter(chain.from_iterable(parts), dtype=DTYPES[dtype], count=sum(map(len, parts)))
        out[split] = (ids, sum(p.last for p, _ in mine), sum(len(p.text.encode("utf-8")) for p, _ in mine))
    return out


def _encode_in_worker(pieces: list[Piece], eos: int, dtype: str) -> dict[str, tuple[np.ndarray, int, int]]:
    return _encode(_WORKER["tokenizer"], pieces, eos, dtype)


class _Encoder:
    """Tokenizes batches in order: in this process for the first INLINE_BYTES, then in ``num_proc`` worker processes
    with at most two batches per worker in flight (memory stays bounded however fast the source reads).

    Workers are forked where the platform can (they share this process' pages instead of importing torch again, ~0.4
    GB each), spawned elsewhere; either way with tokenizers' own threads off, the pool being the parallelism."""

    def __init__(self, tokenizer_json: str, eos: int, dtype: str, num_proc: int) -> None:
        from tokenizers import Tokenizer

        self.path, self.eos, self.dtype, self.num_proc = tokenizer_json, eos, dtype, num_proc
        self.local = Tokenizer.from_file(tokenizer_json)
        self.pool = None

    def map(self, batches: Iterator[tuple[int, list[Piece]]]) -> Iterator[tuple[int, dict]]:
        inline = 0
        pending: deque = deque()
        for n, pieces in batches:
            if self.pool is None and (self.num_proc <= 1 or inline < INLINE_BYTES):
                inline += sum(len(p.text) for p in pieces)
                yield n, _encode(self.local, pieces, self.eos, self.dtype)
                continue
            if self.pool is None:
                import multiprocessing as mp

                self.parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
                os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set before forking: no warning, no threads inherited
                method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
                self.pool = mp.get_context(method).Pool(self.num_proc, initializer=_init_worker,
                                                        initargs=(self.path,))
            pending.append((n, self.pool.apply_async(_encode_in_worker, (pieces, self.eos, self.dtype))))
            while len(pending) >= 2 * self.num_proc:
                n0, result = pending.popleft()
                yield n0, result.get()
        while pending:
            n0, result = pending.popleft()
            yield n0, result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
            if self.parallelism is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = self.parallelism
