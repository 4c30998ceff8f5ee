"""The ``kanformer`` command, one thin function per subcommand: ``kanformer train [--config|--preset] [--resume auto]
key=value...`` (``accelerate launch -m kanformer train ...`` on many processes), ``kanformer sweep --config <yaml>``,
``kanformer prepare <source> --out <dir>``, ``kanformer eval <checkpoint>... [--data
<source>] [--tasks <names>]``,
``kanformer compare --config <yaml>``,
``kanformer kanify <checkpoint> --ffn <name> --out <dir>``, ``kanformer inspect <checkpoint>`` and
``kanformer prune <checkpoint> --out <dir> --units 0.05``."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="kanformer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="pretrain or finetune a KAN (or baseline) GPT-2 / Llama / BERT / ViT "
                                      "(accelerate launch -m kanformer train ... for many processes)")
    tr.add_argument("--config", help="experiment YAML (configs/*.yaml)")
    tr.add_argument("--preset", help="named preset: debug, debug_llama, debug_bert, debug_vit")
    tr.add_argument("--resume", help="'auto' (newest verified checkpoint of this run, if any) or a checkpoint "
                                     "directory")
    tr.add_argument("--adapt", action="store_true",
                    help="resume even if world size, global batch, sequence length or data differ from the "
                         "checkpoint's (each difference and what it changes is logged); without it such a resume stops")
    tr.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=3e-4 ffn.name=chebyshev")

    pp = sub.add_parser("prepare", help="tokenize a text source into token shards on disk (resumable; a no-op when "
                                        "done)")
    pp.add_argument("items", nargs="*", metavar="source | data.key=value",
                    help="the source (data.dataset: pydoc, shakespeare, files:<glob>, hf:<id>[:<config>]; default: "
                         "the config's) and data options, e.g. data.tokenizer=gpt2 data.vocab_size=32768")
    pp.add_argument("--config", help="a run config whose data section to prepare (what training will ask for), or "
                                      "a compare / sweep config (its base's)")
    pp.add_argument("--out", help="directory of the shards (default: data.prepared_dir, else under the cache)")
    pp.add_argument("--num-proc", type=int, help="tokenizer processes (default: every core)")
    pp.add_argument("--verify", action="store_true", help="check every shard's size and SHA-256 afterwards")

    ev = sub.add_parser("eval", help="evaluate saved checkpoints (on their run's data, any dataset, or "
                                     "lm-evaluation-harness tasks) -> results.json")
    ev.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                    help="directories written by save_pretrained (e.g. runs/<name>/final)")
    ev.add_argument("--data", action="append", default=[], metavar="SOURCE",
                    help="score on this dataset with each checkpoint's own tokenizer (repeatable): pydoc, "
                         "shakespeare, files:<glob>, hf:<id>[:<config>], a prepared token-shard directory, or an "
                         "image dataset (digits, fashion_mnist, hf:<id>) for ViT checkpoints")
    ev.add_argument("--tasks", type=lambda t: [x for x in t.split(",") if x],
                    help="lm-evaluation-harness tasks, comma-separated (pip install 'kanformer[lmeval]')")
    ev.add_argument("--include-path", help="a directory of local lm-evaluation-harness task YAMLs")
    ev.add_argument("--limit", type=float, help="harness: documents per task (or a fraction)")
    ev.add_argument("--split", default="auto", choices=["auto", "validation", "train", "all"],
                    help="--data text: auto = the source's own validation split if it has one, else every document")
    ev.add_argument("--text-field", default="text", help="--data: the field holding the text (json, parquet, hf)")
    ev.add_argument("--mask-rate", type=float, default=0.15, help="--data on a masked LM: share of tokens predicted")
    ev.add_argument("--table", help="directory for the comparison table of every checkpoint (eval_table.md/.json)")
    ev.add_argument("--config", help="the run's config.yaml (default: next to the checkpoint)")
    ev.add_argument("--tokens", type=int, default=65536, help="token budget for perplexity")
    ev.add_argument("--context", type=int, help="sliding-window context (default: the model's / run's block size)")
    ev.add_argument("--stride", type=int, help="sliding-window stride (default: context / 2)")
    ev.add_argument("--throughput-steps", type=int, default=5)
    ev.add_argument("--peak-tflops", type=float, help="accelerator peak for MFU (default: known GPUs)")
    ev.add_argument("--out", help="results file of a run's own evaluation (default: <checkpoint>/results.json)")

    sw = sub.add_parser("sweep", help="scaling sweeps: arms x sizes x seeds, fitted laws, plots")
    sw.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    sw.add_argument("--emit", metavar="FILE", help="write one accelerate launch command per run instead of running")
    sw.add_argument("--accelerate-config", help="accelerate config file for the emitted commands")
    sw.add_argument("--report", action="store_true", help="only fit, tabulate and plot the finished runs")
    sw.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seeds=[0,1] base.train.batch_size=32")

    cmp_ = sub.add_parser("compare", help="train and evaluate KAN arms against matched baselines")
    cmp_.add_argument("--config", required=True, help="configs/compare/*.yaml")
    cmp_.add_argument("--report-only", action="store_true", help="only rebuild the table and plots from finished runs")
    cmp_.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seeds=[0] base.train.max_steps=50")

    kz = sub.add_parser("kanify", help="KAN-ify a saved checkpoint (fitted start), report quality, save it")
    kz.add_argument("checkpoint")
    kz.add_argument("--out", required=True, help="directory for the KAN checkpoint and kanify_report.json")
    kz.add_argument("--ffn", default="bspline")
    kz.add_argument("--match", default="params", choices=["params", "flops", "none"])
    kz.add_argument("--hidden", type=int)
    kz.add_argument("--layers", type=lambda t: [int(i) for i in t.split(",")], help="e.g. 0,1,2 (default: all)")
    kz.add_argument("--init", default="fit", choices=["fit", "random"])
    kz.add_argument("--config", help="the run config naming the data (default: next to the checkpoint)")
    kz.add_argument("--text", default="pydoc", help="text for encoders without a run config (e.g. BERT)")
    kz.add_argument("--fit-steps", type=int, default=200)
    kz.add_argument("--fit-tokens", type=int, default=8192)
    kz.add_argument("--kw", nargs="*", default=[], help="FFN options as key=value, e.g. grid_size=8")

    ins = sub.add_parser("inspect", help="rank KAN edges and units by activity, plot edge functions, summary.json")
    ins.add_argument("checkpoint")
    ins.add_argument("--out", help="output directory (default: <checkpoint>/inspect)")
    ins.add_argument("--top-k", type=int, default=9, help="edge functions plotted per layer")
    ins.add_argument("--batches", type=int, default=4, help="calibration batches of real inputs")
    ins.add_argument("--config", help="the run config naming the data (default: next to the checkpoint)")
    ins.add_argument("--text", default="pydoc", help="text for encoders without a run config (e.g. BERT)")
    ins.add_argument("--symbolic", action="store_true", help="snap each plotted edge to an elementary function (R^2)")

    pr = sub.add_parser("prune", help="prune KAN units / edges by activity, report the quality change, save")
    pr.add_argument("checkpoint")
    pr.add_argument("--out", required=True)
    pr.add_argument("--units", type=float, help="remove hidden units scoring below this fraction of the layer's best")
    pr.add_argument("--edges", type=float, help="zero edges below this fraction of the layer's most active edge")
    pr.add_argument("--batches", type=int, default=8)
    pr.add_argument("--config")
    pr.add_argument("--text", default="pydoc")

    args, extra = p.parse_known_args(argv)  # prepare's items and train's overrides may come after options
    if args.command == "train":  # overrides may be written --train.lr=3e-4 too
        args.overrides += [e.removeprefix("--") for e in extra if "=" in e]
        extra = [e for e in extra if "=" not in e]
    if extra and args.command != "prepare":
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "prepare":
        prepare_command(args, args.items + extra, p)
        return
    if args.command == "train":
        train_command(args)
        return
    if args.command == "sweep":
        sweep_command(args)
        return
    if args.command == "inspect":
        from .interpret.report import inspect_checkpoint

        summary = inspect_checkpoint(args.checkpoint, args.out, config=args.config, text=args.text,
                                     batches=args.batches, top_k=args.top_k, symbolic=args.symbolic)
        for name, layer in summary["layers"].items():
            extra = (f"activity mean {layer['activity_mean']:.3g} max {layer['activity_max']:.3g}, "
                     f"{100 * layer['edges_below_1pct_of_max']:.1f}% of edges < 1% of max"
                     if layer["kind"] == "kan" else f"{layer['functions']} {layer['kind']} functions")
            print(f"{name}: {extra}  [{layer['plot']}]")
            for e in layer.get("top_edges", []):
                if "symbolic" in e:
                    sym = e["symbolic"]
                    print(f"    in {e['in']} -> out {e['out']}: {sym['best']} (R^2 {sym['r2']:.4f})")
        for name, units in summary["units"].items():
            share = 100 * units["units_below_5pct_of_max"]
            print(f"{name}: {units['hidden']} units, {share:.1f}% below 5% of the best")
        return
    if args.command == "prune":
        from .interpret.report import prune_checkpoint

        result = prune_checkpoint(args.checkpoint, args.out, unit_threshold=args.units, edge_threshold=args.edges,
                                  config=args.config, text=args.text, batches=args.batches)
        rep = result["prune"]
        print(json.dumps({"before": result["before"], "after": result["after"], "params_before": rep["params_before"],
                          "params_removed": rep["params_removed"], "params_zeroed": rep["params_zeroed"]}, indent=2))
        return
    if args.command == "kanify":
        from .config import read_yaml
        from .surgery.pretrained import kanify_checkpoint

        kw = {k: read_yaml(v) for k, v in (item.split("=", 1) for item in args.kw)}
        match = None if args.match == "none" or args.hidden else args.match
        result = kanify_checkpoint(args.checkpoint, args.out, args.ffn, match=match, hidden=args.hidden,
                                   layers=args.layers, init=args.init, config=args.config, text=args.text,
                                   fit_steps=args.fit_steps, fit_tokens=args.fit_tokens, **kw)
        print(json.dumps({k: result[k] for k in ("before", "after")}, indent=2))
        for f in result["kanify"]["fit"]:
            print(f"layer {f['layer']}: {f['method']}, relative error {f['rel_err_start']:.4f} -> "
                  f"{f['rel_err_fit']:.4f}")
        return
    if args.command == "eval":
        eval_command(args, p)
    else:
        from .studies.compare import load_compare_config, markdown_table, run_compare

        summary = run_compare(load_compare_config(args.config, args.overrides), report_only=args.report_only)
        print(markdown_table(summary))
        print("\n".join(f"plot: {p}" for p in summary.get("plots", [])))


def train_command(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, preset=args.preset, overrides=args.overrides)
    train(cfg, resume=args.resume, adapt=args.adapt)


def sweep_command(args: argparse.Namespace) -> None:
    from .studies.sweep import emit_commands, load_sweep_config, report, run_sweep

    cfg = load_sweep_config(args.config, args.overrides)
    if args.emit:
        lines = emit_commands(cfg, args.emit, accelerate_config=args.accelerate_config)
        print(f"wrote {len(lines)} commands to {args.emit} and {cfg.root / 'wandb_sweep.yaml'}")
        return
    summary = report(cfg) if args.report else run_sweep(cfg)
    print((cfg.root / "scaling.md").read_text())
    print("\n".join(f"plot: {p}" for p in summary.get("plots", [])))


def eval_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.data or args.tasks:  # any dataset / harness task, each checkpoint with its own tokenizer
        from .evaluation.datasets import evaluate_data

        table = evaluate_data(args.checkpoints, args.data, tokens=args.tokens, context=args.context,
                              stride=args.stride, split=args.split, text_field=args.text_field, tasks=args.tasks,
                              include_path=args.include_path, limit=args.limit, mask_rate=args.mask_rate,
                              out=args.table)
        print(table["markdown"])
        return
    if args.out and len(args.checkpoints) > 1:
        parser.error("--out names one results file: evaluate one checkpoint at a time, or use --table")
    from .config import load_config
    from .evaluation.validation import evaluate_checkpoint

    cfg = load_config(args.config) if args.config else None
    for checkpoint in args.checkpoints:  # on the data its run trained on (the run's config)
        result = evaluate_checkpoint(checkpoint, cfg, tokens=args.tokens, context=args.context, stride=args.stride,
                                     throughput_steps=args.throughput_steps, peak_tflops=args.peak_tflops,
                                     out=args.out)
        print(json.dumps({"checkpoint": checkpoint, **result["metrics"]}, indent=2))


def prepare_command(args: argparse.Namespace, items: list[str], parser: argparse.ArgumentParser) -> None:
    import dataclasses
    from pathlib import Path

    from .config import _merge, load_config, parse_override, read_yaml, run_config_from
    from .data import TokenSplit, prepare, read_manifest

    sources = [i for i in items if "=" not in i]
    if len(sources) > 1 or any(i.startswith("-") for i in sources):
        parser.error(f"prepare takes one source and data.key=value options, got {' '.join(sources)}")
    overrides = [i for i in items if "=" in i]
    raw = read_yaml(Path(args.config).read_text()) if args.config else None
    if isinstance(raw, dict) and "base" in raw:  # a compare or sweep config: every run shares its base's data
        extra: dict = {}
        for text in overrides:
            extra = _merge(extra, parse_override(text))
        data = run_config_from(raw["base"], **extra).data
    else:
        data = load_config(args.config, overrides=overrides).data
    changes = {"dataset": sources[0]} if sources else {}
    if args.num_proc is not None:
        changes["num_proc"] = args.num_proc
    data = dataclasses.replace(data, **changes)
    folder = prepare(data, out=args.out)
    manifest = read_manifest(folder)
    if args.verify:
        for split in manifest["splits"]:
            TokenSplit(folder, manifest, split).verify(checksums=True, progress=True)
        print(f"{folder}: every shard's size and checksum verified")
    print(f"{manifest['source']['dataset']} -> {folder} ({manifest['dtype']}, tokenizer {manifest['tokenizer']['kind']}"
          f", {manifest['tokenizer']['vocab']:,} tokens)")
    for split, s in manifest["splits"].items():
        print(f"  {split}: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['bytes']:,} bytes of text, "
              f"{len(s['shards'])} shard(s)")


if __name__ == "__main__":
    main()
