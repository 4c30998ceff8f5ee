"""Training blocks read straight from the source (``data.streaming: true``), for corpora too large to prepare first.

Each rank reads the source in its fixed order and takes the training documents whose ordinal (among training
documents) is its rank modulo the world size; it tokenizes them in a background thread and packs them into blocks of
``block_size`` tokens (an end-of-text id after each document), one pass after another. Rank r's k-th block is the
k-th block of its share, so the step determines what a rank trains on: the global batch of (step, micro) is blocks
``(step * grad_accum + micro) * batch_size + [0, batch_size)`` of every rank's share.

Where a block begins — (pass, piece of the rank's share, token offset in that piece) — is saved with each checkpoint,
so a resumed run reads on from there without tokenizing what came before (without it, the rank tokenizes its share
from the start and discards blocks up to the step, which is slow but gives the same blocks). The validation split is
prepared to shards (the first ``data.stream_val_tokens`` held-out tokens), like any prepared corpus.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from .holdout import route
from .sources import TextSource

Position = tuple[int, int, int]  # (pass, piece of the rank's share, token offset in the piece)
ENCODE_BATCH_CHARS = 1 << 18


class StreamBlocks:
    def __init__(self, cfg: DataConfig, tokenizer_json: str | Path, eos_id: int, block_size: int, *, rank: int = 0,
                 world: int = 1, prefetch: int = 256) -> None:
        self.cfg, self.tokenizer_json, self.eos, self.block_size = cfg, str(tokenizer_json), eos_id, block_size
        self.rank, self.world, self.prefetch = rank, world, prefetch
        self.anchor: tuple[int, Position] = (0, (0, 0, 0))  # a block index whose start is known
        self._cache: dict[int, tuple[np.ndarray, Position]] = {}
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def __len__(self) -> int:
        raise TypeError("a streamed corpus has no length known in advance")

    def shard(self, rank: int, world: int) -> StreamBlocks:
        """This stream for ``rank`` of ``world`` (before any block was read)."""
        self.close()
        self.rank, self.world = rank, world
        self.anchor, self._cache = (0, (0, 0, 0)), {}
        return self

    # -- the producer ---------------------------------------------------------------------------------------------
    def _share(self, start_piece: int) -> Iterator[tuple[int, str, bool]]:
        """(piece number, text, last piece of its document) of this rank's training documents, one pass."""
        source = TextSource(self.cfg.dataset, text_field=self.cfg.text_field, streaming=True,
                            cache_dir=self.cfg.cache_dir)
        ordinal, number = 0, 0
        for piece in route(source, val_fraction=self.cfg.val_fraction, split_seed=self.cfg.split_seed):
            if piece.split != "train":
                continue
            if ordinal % self.world == self.rank:
                if number >= start_piece:
                    yield number, piece.text, piece.last
                number += 1
            ordinal += piece.last

    def _piece_tokens(self, start_piece: int) -> Iterator[tuple[int, np.ndarray]]:
        """(piece number, token ids with an end-of-text after a document's last piece), tokenized in batches."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(self.tokenizer_json)
        batch: list[tuple[int, str, bool]] = []

        def flush() -> Iterator[tuple[int, np.ndarray]]:
            encodings = tokenizer.encode_batch_fast([t for _, t, _ in batch], add_special_tokens=False)
            for (number, _, last), e in zip(batch, encodings, strict=True):
                yield number, np.asarray(e.ids + [self.eos] if last else e.ids, dtype=np.int64)
            batch.clear()

        size = 0
        for item in self._share(start_piece):
            batch.append(item)
            size += len(item[1])
            if size >= ENCODE_BATCH_CHARS:
                yield from flush()
                size = 0
        if batch:
            yield from flush()

    def _blocks_from(self, index: int, position: Position) -> Iterator[tuple[int, np.ndarray, Position]]:
        bs = self.block_size
        block, filled, begins = np.empty(bs, dtype=np.int64), 0, position
        pass_, piece, offset = position
        while True:
            empty = True
            for number, ids in self._piece_tokens(piece):
                empty = False
                ids = ids[offset:] if number == piece else ids
                at = offset if number == piece else 0
                while len(ids):
                    if filled == 0:
                        begins = (pass_, number, at)
                    take = min(bs - filled, len(ids))
                    block[filled: filled + take] = ids[:take]
                    filled, ids, at = filled + take, ids[take:], at + take
                    if filled == bs:
                        yield index, block, begins
                        index, block, filled = index + 1, np.empty(bs, dtype=np.int64), 0
            if empty and piece == 0:
                raise ValueError(f"Rank {self.rank} of {self.world} got no training document from "
                                 f"{self.cfg.dataset!r}: the stream holds fewer training documents than ranks")
            pass_, piece, offset = pass_ + 1, 0, 0

    def _offer(self, item: object) -> bool:
        """Queue ``item`` unless the stream is being closed (then False: the producer stops)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, index: int, position: Position) -> None:
        try:
            for item in self._blocks_from(index, position):
                if not self._offer(item):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._offer(e)

    def _start(self) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=self.anchor, daemon=True, name="kanformer-stream")
        self._thread.start()
        self._next = self.anchor[0]

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    # -- the consumer ---------------------------------------------------------------------------------------------
    def _fetch(self, k: int) -> tuple[np.ndarray, Position]:
        if k not in self._cache:
            if self._thread is None or k < self._next:  # not started, or k already went by: read again
                if k < self.anchor[0]:
                    self.anchor = (0, (0, 0, 0))
                self._start()
            while k not in self._cache:
                item = self._queue.get()
                if isinstance(item, BaseException):
                    self._thread = None
                    raise item
                index, block, begins = item
                self._next = index + 1
                if index >= k:
                    self._cache[index] = (block, begins)
        return self._cache[k]

    def read(self, start: int, count: int) -> tuple[torch.Tensor, np.ndarray]:
        """Blocks ``[start, start + count)`` of this rank's share, (count, block_size) int64, and the pass over the
        share (0, 1, ...) in which each begins."""
        rows = [self._fetch(k) for k in range(start, start + count)]
        for k in [k for k in self._cache if k < start]:
            del self._cache[k]
        return torch.from_numpy(np.stack([block for block, _ in rows])), np.array([b[0] for _, b in rows])

    def blocks(self, start: int, count: int) -> torch.Tensor:
        """Blocks ``[start, start + count)`` of this rank's share: (count, block_size) int64."""
        return self.read(start, count)[0]

    def position(self, index: int) -> Position:
        """Where block ``index`` of this rank's share begins (saved with checkpoints)."""
        return self._fetch(index)[1]

    def restore(self, index: int, position: Position | None) -> None:
        """Continue at block ``index``, which begins at ``position`` (None: unknown: read from the start)."""
        self.close()
        self._cache = {}
        self.anchor = (index, tuple(position)) if position is not None else (0, (0, 0, 0))

    def __getitem__(self, idx: slice) -> torch.Tensor:
        """The first blocks of the share, ``[a:b]`` (calibration batches)."""
        if not isinstance(idx, slice) or idx.step not in (None, 1) or idx.stop is None:
            raise TypeError("a streamed corpus is read in order: index it with a slice [a:b]")
        start = idx.start or 0
        return self.blocks(start, max(0, idx.stop - start))
