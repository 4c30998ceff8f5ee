"""Scaling sweeps: arms x sizes x seeds, fitted scaling laws, plots.

    python scripts/sweep.py --config configs/sweeps/cpu_ladder.yaml               # run in-process, then report
    python scripts/sweep.py --config configs/sweeps/gpu_ladder.yaml --emit commands.sh \
        --accelerate-config configs/accelerate/multi_gpu_ddp_bf16.yaml world_size=8   # one launch line per run
    python scripts/sweep.py --config configs/sweeps/gpu_ladder.yaml --report      # fit what has finished
"""

import argparse

from kanformer.sweep import emit_commands, load_sweep_config, report, run_sweep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/sweeps/*.yaml")
    p.add_argument("--emit", metavar="FILE", help="write one accelerate launch command per run instead of running")
    p.add_argument("--accelerate-config", help="accelerate config file for the emitted commands")
    p.add_argument("--report", action="store_true", help="only fit, tabulate and plot the finished runs")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seeds=[0,1] base.train.batch_size=32")
    args = p.parse_args()
    cfg = load_sweep_config(args.config, args.overrides)
    if args.emit:
        lines = emit_commands(cfg, args.emit, accelerate_config=args.accelerate_config)
        print(f"wrote {len(lines)} commands to {args.emit} and {cfg.root / 'wandb_sweep.yaml'}")
        return
    summary = report(cfg) if args.report else run_sweep(cfg)
    print((cfg.root / "scaling.md").read_text())
    print("\n".join(f"plot: {p}" for p in summary.get("plots", [])))


if __name__ == "__main__":
    main()
