"""The data path at scale: preparation speed and memory, and what a training run pays for its data.

1. Generates a text corpus of ``--gigabytes`` (JSON lines in 100 MB parts: documents of random sentences of the
   standard library's documentation, with random made-up words mixed in so that the vocabulary keeps growing).
2. Prepares its first 100 MB and then all of it with ``kanformer prepare`` (a subprocess each), and the first
   100 MB with the former in-memory path (the whole corpus as Python strings, one tokenizer call, Python lists, an
   int64 tensor, ``datasets``), where it fits: wall time, tokens/s, tokens/s per core, and the peak resident memory of
   the whole process tree (the preparer and its workers, sampled every 0.1 s; each process' own peak besides).
3. Trains the debug GPT-2 for ``--steps`` steps (a subprocess each) on a prepared corpus of ``--train-tokens``
   tokens (written directly as shards of random ids) and on one of 1 M tokens: peak resident memory of each run, and
   the share of the step the trainer spent fetching batches (``data_frac`` in metrics.jsonl); besides, in this
   process, the time to read one batch of random blocks from the large corpus against the debug model's step.

    python -m benchmarks.bench_data                                 # 1 GB of text, 500 M training tokens
    python -m benchmarks.bench_data --gigabytes 0.2 --train-tokens 50e6 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from kanformer.layers.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
PART_BYTES = 100_000_000


# -- measuring a process tree ---------------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _kb(pid: int, key: str, file: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its wall time and the peak memory of its process tree: the sum of the processes' proportional set
    sizes (PSS: a page shared by k processes counts 1/k in each, so forked workers are not counted k times), sampled,
    split into anonymous memory and mapped files; and the largest single process' peak resident set (VmHWM)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak = {"tree_kb": 0, "process_kb": {}, "anon_kb": 0, "file_kb": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            tree, pids, todo = _children(), [], [proc.pid]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(tree.get(pid, []))
            total = sum(_kb(p, "Pss", "smaps_rollup") for p in pids)
            if total > peak["tree_kb"]:
                peak.update(tree_kb=total, anon_kb=sum(_kb(p, "Pss_Anon", "smaps_rollup") for p in pids),
                            file_kb=sum(_kb(p, "Pss_File", "smaps_rollup") + _kb(p, "Pss_Shmem", "smaps_rollup")
                                        for p in pids))
            for p in pids:
                peak["process_kb"][p] = max(peak["process_kb"].get(p, 0), _kb(p, "VmHWM"))
            time.sleep(0.1)

    start = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return {"seconds": time.perf_counter() - start, "peak_gb": peak["tree_kb"] / 2**20,
            "peak_anon_gb": peak["anon_kb"] / 2**20, "peak_file_gb": peak["file_kb"] / 2**20,
            "largest_process_gb": max(peak["process_kb"].values(), default=0) / 2**20,
            "processes": len(peak["process_kb"]), "output": out}


# -- the corpus -----------------------------------------------------------------------------------------------------
def generate_corpus(folder: Path, total_bytes: int, seed: int = 0) -> list[Path]:
    """JSON-lines parts of PART_BYTES: documents of 5-60 random sentences, ~1 in 8 words made up."""
    from pydoc_data.topics import topics

    folder.mkdir(parents=True, exist_ok=True)
    sentences = [s.strip() + "." for t in topics.values() for s in t.replace("\n", " ").split(". ") if len(s) > 20]
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "tra", "vel", "or", "quin", "sa", "dex", "ru", "bo", "ti", "an", "gre"]
    made_up = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(200_000)]
    parts, written, n = [], 0, 0
    while written < total_bytes:
        path = folder / f"part_{len(parts):03d}.jsonl"
        size = 0
        with open(path, "w") as f:
            while size < min(PART_BYTES, total_bytes - written):
                words = " ".join(rng.choice(sentences) for _ in range(rng.randint(5, 60))).split(" ")
                for i in range(0, len(words), 8):
                    words[rng.randrange(i, min(i + 8, len(words)))] = rng.choice(made_up)
                line = json.dumps({"text": " ".join(words), "id": n}) + "\n"
                f.write(line)
                size += len(line)
                n += 1
        parts.append(path)
        written += size
    return parts


# -- the former in-memory path, for comparison ------------------------------------------------------------------------
def old_path(pattern: str, vocab: int, block: int, out: str) -> None:
    """What preparation did before token shards: every document a Python string, a BPE trained on all of them, one
    tokenizer call, one Python list of ids, an int64 tensor, back to lists for ``datasets.save_to_disk``."""
    import glob

    import datasets
    import torch

    from kanformer.data.tokenizer import build_tokenizer

    docs: list[str] = []
    for path in sorted(glob.glob(pattern)):
        docs.extend(json.loads(line)["text"] for line in open(path))
    tok = build_tokenizer("bpe", vocab, docs)
    ids: list[int] = []
    for enc in tok(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tok.eos_token_id)
    n = len(ids) // block
    blocks = torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)
    datasets.Dataset.from_dict({"input_ids": blocks.tolist()}).save_to_disk(out)
    print(json.dumps({"tokens": len(ids)}))


# -- a large prepared corpus without tokenizing it ------------------------------------------------------------------
def synthetic_corpus(folder: Path, tokens: int, work: Path) -> Path:
    """The debug preset's prepared pydoc corpus with its training split replaced by ``tokens`` random ids."""
    from kanformer.config import load_config
    from kanformer.data import prepare, read_manifest
    from kanformer.data.shards import ShardWriter, split_summary, write_json

    data = load_config(preset="debug", overrides=[f"data.cache_dir={work / 'cache'}"]).data
    if (folder / "manifest.json").is_file() and read_manifest(folder)["splits"]["train"]["tokens"] == tokens:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    prepare(data, out=folder, progress=False, log=lambda *_: None)
    manifest = read_manifest(folder)
    for old in manifest["splits"]["train"]["shards"]:
        (folder / old["file"]).unlink()
    writer, records = ShardWriter(folder, "train", manifest["dtype"]), []
    rng = np.random.default_rng(0)
    vocab = manifest["tokenizer"]["vocab"]
    for start in range(0, tokens, 50_000_000):
        n = min(50_000_000, tokens - start)
        writer.append(rng.integers(0, vocab, size=n, dtype=np.uint16), 0, 0)
        if writer.tokens >= 100_000_000 or start + n == tokens:
            records.append(writer.close_shard())
    manifest["splits"]["train"] = split_summary(records)
    write_json(folder / "manifest.json", manifest)
    return folder


def train_run(folder: Path, steps: int, work: Path, name: str) -> dict[str, Any]:
    run = run_measured([sys.executable, "scripts/train.py", "--preset", "debug", f"name={name}",
                        f"out_dir={work / 'runs'}", f"data.cache_dir={work / 'cache'}", f"data.prepared_dir={folder}",
                        f"train.max_steps={steps}", "train.eval_every=1000000", "train.save_every=1000000",
                        "train.log_every=10", "log.wandb=disabled"], env={"HF_HUB_OFFLINE": "1"})
    records = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train" and "tokens_per_s" in r][1:]  # the first: the warm-up
    run["data_frac"] = float(np.mean([r["data_frac"] for r in train]))
    run["tokens_per_s"] = float(np.mean([r["tokens_per_s"] for r in train]))
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    return run


def fetch_vs_step(folder: Path, repeats: int = 640) -> dict[str, float]:
    """In this process, between debug training steps (caches as cold as in training): seconds per batch of random
    blocks read one batch at a time and, as the trainer reads them, READ_AHEAD batches at a time; and the step."""
    import torch

    from kanformer.config import load_config
    from kanformer.data import TokenBlocks, TokenSplit, example_indices, rank_positions, read_manifest
    from kanformer.train import build_model
    from kanformer.train.trainer import READ_AHEAD

    cfg = load_config(preset="debug")
    t, bs = cfg.train, cfg.model.block_size
    blocks = TokenBlocks(TokenSplit(folder, read_manifest(folder), "train"), bs)
    model, _ = build_model(cfg, vocab_size=read_manifest(folder)["tokenizer"]["vocab"], eos_token_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def read(first: int, count: int) -> list[torch.Tensor]:
        positions = rank_positions(first, 0, rank=0, world=1, batch_size=t.batch_size, grad_accum=1, count=count)
        return list(blocks[example_indices(positions, len(blocks), t.seed)].split(t.batch_size))

    times: dict[str, list[float]] = {"one": [], "ahead": [], "step": []}
    for mode, count in (("one", 1), ("ahead", READ_AHEAD)):  # one way, then the other: neither pollutes the other
        ahead: list[torch.Tensor] = []
        for s in range(repeats):
            start = time.perf_counter()
            if not ahead:
                ahead = read(s, count)
            x = ahead.pop(0)
            times[mode].append(time.perf_counter() - start)
            start = time.perf_counter()
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times["step"].append(time.perf_counter() - start)
    skip = READ_AHEAD  # warm-up
    return {"fetch_one_s": float(np.median(times["one"][skip:])), "fetch_s": float(np.mean(times["ahead"][skip:])),
            "step_s": float(np.median(times["step"])), "blocks": len(blocks), "read_ahead": READ_AHEAD}


# -- the benchmark ----------------------------------------------------------------------------------------------------
def machine_name() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores"


def prepare_run(pattern: str, out: Path, vocab: int, num_proc: int, work: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    run = run_measured([sys.executable, "-m", "kanformer.cli", "prepare", f"files:{pattern}", "--out", str(out),
                        f"data.vocab_size={vocab}", f"data.cache_dir={work / 'cache'}", f"data.num_proc={num_proc}"])
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    text = sum(s["bytes"] for s in manifest["splits"].values())
    pass_s = manifest["prepare_seconds"]
    run.update(tokens=tokens, text_gb=text / 1e9, pass_s=pass_s, tokens_per_s=tokens / run["seconds"],
               pass_tokens_per_s=tokens / pass_s, pass_tokens_per_s_per_core=tokens / pass_s / num_proc)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gigabytes", type=float, default=1.0, help="generated text (>= 0.1; the first 100 MB too)")
    p.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary of the preparations")
    p.add_argument("--num-proc", type=int, default=os.cpu_count(), help="tokenizer processes")
    p.add_argument("--train-tokens", type=float, default=500e6, help="tokens of the large training corpus")
    p.add_argument("--steps", type=int, default=300, help="training steps of each memory run")
    p.add_argument("--skip-old", action="store_true", help="do not run the former in-memory path")
    p.add_argument("--skip-prepare", action="store_true", help="only the training measurements")
    p.add_argument("--workdir", default="runs/bench_data", help="corpora and prepared shards (kept for reruns)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--old-path", nargs=4, metavar=("GLOB", "VOCAB", "BLOCK", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.old_path:
        old_path(args.old_path[0], int(args.old_path[1]), int(args.old_path[2]), args.old_path[3])
        return
    work = Path(args.workdir).resolve()
    text_dir = work / f"text_{args.gigabytes:g}GB"
    if not args.skip_prepare and not (text_dir / "done").exists():
        print(f"generating {args.gigabytes:g} GB of text in {text_dir} ...", flush=True)
        generate_corpus(text_dir, int(args.gigabytes * 1e9))
        (text_dir / "done").touch()
    result: dict[str, Any] = {"benchmark": "data", "machine": machine_name(), "num_proc": args.num_proc,
                              "vocab": args.vocab, "prepare": {}, "train": {}}
    labels = () if args.skip_prepare else (("100MB", str(text_dir / "part_000.jsonl")),
                                           ("all", str(text_dir / "part_*.jsonl")))
    for label, pattern in labels:
        print(f"prepare {label} ...", flush=True)
        run = prepare_run(pattern, work / f"prepared_{label}", args.vocab, args.num_proc, work)
        result["prepare"][label] = {k: v for k, v in run.items() if k != "output"}
    if not args.skip_old and not args.skip_prepare:
        print("former in-memory path on 100 MB ...", flush=True)
        out = work / "old_path"
        shutil.rmtree(out, ignore_errors=True)
        run = run_measured([sys.executable, "-m", "benchmarks.bench_data",
                            "--old-path", str(text_dir / "part_000.jsonl"),
                            str(args.vocab), "1024", str(out)])
        run["tokens"] = json.loads(run["output"].strip().splitlines()[-1])["tokens"]
        run["tokens_per_s"] = run["tokens"] / run["seconds"]
        result["prepare"]["old_100MB"] = {k: v for k, v in run.items() if k != "output"}
        shutil.rmtree(out, ignore_errors=True)
    large = synthetic_corpus(work / "train_large", int(args.train_tokens), work)
    small = synthetic_corpus(work / "train_1M", 1_000_000, work)
    for label, folder in (("1M", small), ("large", large)):
        print(f"train on the {label} corpus ...", flush=True)
        result["train"][label] = {k: v for k, v in train_run(folder, args.steps, work, f"bench_{label}").items()
                                  if k != "output"}
    result["train"]["large"]["corpus_tokens"] = int(args.train_tokens)
    result["fetch"] = fetch_vs_step(large)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def print_report(r: dict[str, Any]) -> None:
    print(f"\ndata benchmark [{r['machine']}], {r['num_proc']} tokenizer processes, BPE {r['vocab']}")
    print("\n| preparation | text GB | tokens | wall s | tok/s | pass tok/s per core | peak PSS GB (tree) | "
          "largest process GB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, p in r["prepare"].items():
        per_core = f"{p['pass_tokens_per_s_per_core']:,.0f}" if "pass_tokens_per_s_per_core" in p else "-"
        text = f"{p['text_gb']:.2f}" if "text_gb" in p else "0.10"
        print(f"| {label} | {text} | {p['tokens']:,} | {p['seconds']:.0f} | {p['tokens_per_s']:,.0f} | {per_core} | "
              f"{p['peak_gb']:.2f} | {p['largest_process_gb']:.2f} |")
    t = r["train"]
    print("\n| training corpus | peak PSS GB (tree) | anonymous GB | file-backed GB | data share of the step | tok/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, run in t.items():
        print(f"| {label} | {run['peak_gb']:.3f} | {run['peak_anon_gb']:.3f} | {run['peak_file_gb']:.3f} | "
              f"{100 * run['data_frac']:.2f}% | {run['tokens_per_s']:,.0f} |")
    ratio = t["large"]["peak_gb"] / t["1M"]["peak_gb"]
    f = r["fetch"]
    print(f"\nresident memory, {t['large'].get('corpus_tokens', 0):,}-token corpus / 1 M-token corpus: {ratio:.3f}")
    print(f"a debug batch of random blocks from {f['blocks']:,} blocks, read {f['read_ahead']} batches at a time: "
          f"{1e6 * f['fetch_s']:.0f} us, {100 * f['fetch_s'] / f['step_s']:.2f}% of the debug model's step "
          f"({1e3 * f['step_s']:.1f} ms); one batch at a time: {1e6 * f['fetch_one_s']:.0f} us")


if __name__ == "__main__":
    main()
