"""Pretrain or finetune a KAN (or baseline) GPT-2 / ViT.

    python scripts/train.py --preset debug
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/train.py \
        --config configs/gpt2_shakespeare.yaml --resume auto train.max_steps=2000 ffn.name=chebyshev

Overrides are dotted keys: train.lr=3e-4, ffn.kwargs.grid_size=8, log.wandb=online (a leading -- is optional).
"""

import argparse

from kanformer.config import load_config
from kanformer.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment YAML (configs/*.yaml)")
    p.add_argument("--preset", help="named preset: debug, debug_vit")
    p.add_argument("--resume", help="'auto' (latest checkpoint of this run, if any) or a checkpoint directory")
    p.add_argument("--adapt", action="store_true",
                   help="resume even if world size, global batch, sequence length or data differ from the "
                        "checkpoint's (each difference and what it changes is logged); without it such a resume stops")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args, unknown = p.parse_known_args()
    overrides = args.overrides + [u for u in unknown if "=" in u]
    stray = [u for u in unknown if "=" not in u]
    if stray:
        p.error(f"unrecognised arguments {stray}; overrides look like train.lr=3e-4")
    cfg = load_config(args.config, preset=args.preset, overrides=overrides)
    train(cfg, resume=args.resume, adapt=args.adapt)


if __name__ == "__main__":
    main()
