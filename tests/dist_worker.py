"""Run by test_distributed.py under a multi-process launcher: trains the debug preset and writes, per rank, the world
size and a fingerprint of the final parameters."""

import json
import sys

import torch

from kanformer.config import load_config
from kanformer.train import Trainer

out_dir, overrides = sys.argv[1], sys.argv[2:]
trainer = Trainer(load_config(preset="debug", overrides=overrides))
trainer.fit()
flat = torch.cat([p.detach().flatten().double() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()])
with open(f"{out_dir}/rank{trainer.rank}.json", "w") as f:
    json.dump({"world": trainer.world, "rank": trainer.rank, "sum": flat.sum().item(), "head": flat[:64].tolist()}, f)
