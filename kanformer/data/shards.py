"""Token shards on disk and how they are read.

A prepared corpus is a directory::

    manifest.json                 source, tokenizer, dtype, splits: tokens, documents, bytes, shards (+ SHA-256)
    tokenizer/                    save_pretrained of the tokenizer the shards were made with
    train_000000.bin ...          flat little-endian uint16 (vocabularies up to 65,536) or uint32 token ids,
    validation_000000.bin ...     an end-of-text id after every document; no header (the manifest describes them)

A shard is written to a hidden temporary file, checksummed while written, and renamed into place only when complete;
the manifest is written last, so a directory with a manifest is a complete corpus.

Reading copies just the requested tokens out of the files with positional reads (``pread``) into arrays the reader
owns, so a process' resident memory does not grow with the corpus, nor with how much of it a run has read. (Mapping
the files with ``np.memmap`` does grow it: on Linux kernels that cache files in large folios, each block read at
random maps up to a 2 MB folio into the process, measured at ~1.5 MB of mapped-file resident memory per block, 1 GB
within seconds of training on a 500 M-token corpus. The pages belong to the shared page cache either way.)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST = "manifest.json"
FORMAT = "kanformer-token-shards/1"
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
TOKEN_DTYPES = ("auto", "uint16", "uint32")
SPLITS = ("train", "validation")


def token_dtype(vocab: int, requested: str = "auto") -> str:
    """The shard dtype for a vocabulary of ``vocab`` ids."""
    if requested not in TOKEN_DTYPES:
        raise ValueError(f"data.token_dtype must be one of {', '.join(TOKEN_DTYPES)}, got {requested!r}")
    if requested == "auto":
        return "uint16" if vocab <= 1 << 16 else "uint32"
    if requested == "uint16" and vocab > 1 << 16:
        raise ValueError(f"The tokenizer has {vocab:,} tokens, too many for uint16 shards (ids up to 65,535): set "
                         f"data.token_dtype=uint32 (or auto)")
    return requested


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Appends token ids to the current shard of one split; ``close_shard`` makes it complete (renamed into place)."""

    def __init__(self, folder: Path, split: str, dtype: str, first_index: int = 0) -> None:
        self.folder, self.split, self.dtype = folder, split, np.dtype(DTYPES[dtype])
        self.index = first_index
        self._file = None
        self._reset()

    def _reset(self) -> None:
        self.tokens, self.documents, self.bytes = 0, 0, 0
        self._hash = hashlib.sha256()

    @property
    def name(self) -> str:
        return f"{self.split}_{self.index:06d}.bin"

    @property
    def temp_path(self) -> Path:
        return self.folder / f".{self.name}.tmp"

    def append(self, ids: np.ndarray, documents: int, nbytes: int) -> None:
        if self._file is None:
            self._file = open(self.temp_path, "wb")
        data = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<")).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self.tokens += len(ids)
        self.documents += documents
        self.bytes += nbytes

    def close_shard(self) -> dict[str, Any] | None:
        """Flush, sync and rename the current shard into place; its record (None when it holds no token)."""
        if self._file is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.temp_path, self.folder / self.name)
        record = {"file": self.name, "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes,
                  "sha256": self._hash.hexdigest()}
        self.index += 1
        self._reset()
        return record

    def abort(self) -> None:
        """Drop the incomplete shard (a failed write: nothing half-written stays behind)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)
        self._reset()


def split_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tokens": sum(r["tokens"] for r in records), "documents": sum(r["documents"] for r in records),
            "bytes": sum(r["bytes"] for r in records), "shards": records}


# -- reading --------------------------------------------------------------------------------------------------------
def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a prepared corpus (no {MANIFEST}): prepare it with "
                                f"`kanformer prepare`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is format {manifest.get('format')!r}; this kanformer reads {FORMAT!r}: prepare the "
                         f"corpus again")
    return manifest


class TokenSplit:
    """One split of a prepared corpus: its shards read as one sequence of tokens."""

    OPEN_FILES = 64  # shard files kept open (least recently used closed first)

    def __init__(self, folder: str | Path, manifest: dict[str, Any], split: str) -> None:
        self.folder, self.split = Path(folder), split
        self.dtype = np.dtype(DTYPES[manifest["dtype"]]).newbyteorder("<")
        self.shards = manifest["splits"][split]["shards"]
        self.starts = np.cumsum([0] + [s["tokens"] for s in self.shards]).tolist()
        self._files: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return self.starts[-1]

    def verify(self, checksums: bool = True, progress: bool = False) -> None:
        """Every shard present with its size and (``checksums``) its SHA-256; errors name the file and the fix."""
        from tqdm.auto import tqdm

        fix = f"prepare the corpus again (delete {self.folder} or pick another data.prepared_dir)"
        total = sum(s["tokens"] for s in self.shards) * self.dtype.itemsize
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"verify {self.split}",
                   disable=not progress or total < 1 << 30, leave=False)  # a bar where the wait is noticeable
        for shard in self.shards:
            path = self.folder / shard["file"]
            if not path.is_file():
                raise FileNotFoundError(f"Shard {path} is missing: {fix}")
            size = path.stat().st_size
            if size != shard["tokens"] * self.dtype.itemsize:
                raise ValueError(f"Shard {path} is truncated or damaged: {size:,} bytes, the manifest says "
                                 f"{shard['tokens'] * self.dtype.itemsize:,}: {fix}")
            if checksums:
                h, buffer = hashlib.sha256(), memoryview(bytearray(1 << 20))  # one small buffer, reused
                with open(path, "rb") as f:
                    while n := f.readinto(buffer):
                        h.update(buffer[:n])
                        bar.update(n)
                if h.hexdigest() != shard["sha256"]:
                    raise ValueError(f"Shard {path} fails its checksum (sha256 {h.hexdigest()[:16]}..., the manifest "
                                     f"says {shard['sha256'][:16]}...): {fix}")
        bar.close()

    def _file(self, i: int):
        if i in self._files:
            self._files.move_to_end(i)
        else:
            if len(self._files) >= self.OPEN_FILES:
                self._files.popitem(last=False)[1].close()
            self._files[i] = open(self.folder / self.shards[i]["file"], "rb", buffering=0)
        return self._files[i]

    def _read_into(self, out: np.ndarray, i: int, start: int) -> None:
        """Fill ``out`` with shard i's tokens from offset ``start`` (in tokens)."""
        f, view = self._file(i), memoryview(out).cast("B")
        if hasattr(os, "preadv"):
            n = os.preadv(f.fileno(), [view], start * self.dtype.itemsize)
        else:  # no vectored positional reads on this platform
            f.seek(start * self.dtype.itemsize)
            n = f.readinto(view)
        if n != len(view):
            raise ValueError(f"Shard {self.folder / self.shards[i]['file']} is truncated or damaged: a read at token "
                             f"{start} returned {n} of {len(view)} bytes; prepare the corpus again")

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()

    def __del__(self) -> None:
        self.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the split (crossing shard boundaries as needed)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"tokens [{start}, {stop}) outside the {self.split} split's {len(self)}")
        out = np.empty(stop - start, dtype=self.dtype)
        at, i = 0, bisect.bisect_right(self.starts, start) - 1
        while start < stop:
            end = min(stop, self.starts[i + 1])
            self._read_into(out[at: at + end - start], i, start - self.starts[i])
            at, start, i = at + end - start, end, i + 1
        return out

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of ``length`` tokens beginning at ``starts``: (len(starts), length)."""
        if not len(starts):
            return np.empty((0, length), self.dtype)
        lo, hi = int(starts.min()), int(starts.max()) + length
        if lo < 0 or hi > len(self):
            raise IndexError(f"tokens [{lo}, {hi}) outside the {self.split} split's {len(self)}")
        bounds = np.asarray(self.starts)
        shard = np.searchsorted(bounds, starts, side="right") - 1
        within = (starts + length <= bounds[shard + 1]).tolist()
        if not hasattr(os, "pread"):  # no positional reads on this platform: seek and read, row by row
            return np.stack([self.read(start, start + length) for start in starts.tolist()])
        # the hot loop of training: one positional read per row, the rows joined once
        size = length * self.dtype.itemsize
        offsets = ((starts - bounds[shard]) * self.dtype.itemsize).tolist()
        fds: dict[int, int] = {}
        rows = []
        for r, (i, offset, ok) in enumerate(zip(shard.tolist(), offsets, within, strict=True)):
            if ok:
                fd = fds[i] if i in fds else fds.setdefault(i, self._file(i).fileno())
                rows.append(os.pread(fd, size, offset))
            else:  # the row crosses into the next shard
                rows.append(self.read(int(starts[r]), int(starts[r]) + length).tobytes())
        data = b"".join(rows)
        if len(data) != len(starts) * size:
            raise ValueError(f"A {self.split} shard in {self.folder} is truncated or damaged: a read came back "
                             f"short; prepare the corpus again")
        return np.frombuffer(data, dtype=self.dtype).reshape(len(starts), length)


class TokenBlocks:
    """A split as consecutive blocks of ``block_size`` tokens (the tail that fills no block is left out): indexable
    by an int, a slice or a tensor / list of block indices, each giving int64 token ids."""

    def __init__(self, split: TokenSplit, block_size: int) -> None:
        self.split, self.block_size = split, block_size

    def __len__(self) -> int:
        return len(self.split) // self.block_size

    def __getitem__(self, idx: Any) -> torch.Tensor:
        bs = self.block_size
        if isinstance(idx, int | np.integer):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"block {idx} of {len(self)}")
            idx %= len(self)
            return torch.from_numpy(self.split.read(idx * bs, (idx + 1) * bs).astype(np.int64))
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        idx = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64).reshape(-1)
        return torch.from_numpy(self.split.gather(idx * bs, bs).astype(np.int64))

    def tokens(self, start: int, stop: int) -> torch.Tensor:
        """Flat int64 tokens ``[start, stop)`` of the blocks (clipped to the tokens the blocks hold)."""
        stop = min(stop, len(self) * self.block_size)
        return torch.from_numpy(self.split.read(start, max(start, stop)).astype(np.int64))
