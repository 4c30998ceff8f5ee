r"""Pretrain or finetune a KAN (or baseline) GPT-2 / Llama / BERT / ViT: the same as ``kanformer train``.

    python scripts/train.py --preset debug
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/train.py \
        --config configs/gpt2_shakespeare.yaml --resume auto train.max_steps=2000 ffn.name=chebyshev

Overrides are dotted keys: train.lr=3e-4, ffn.kwargs.grid_size=8, log.wandb=online (a leading -- is optional).
"""

import sys

from kanformer.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
