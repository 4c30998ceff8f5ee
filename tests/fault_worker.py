"""Run by test_faults.py in a subprocess (alone, or as each rank under a multi-process launcher): trains the debug
preset with a fault injected, then writes per rank what happened.

    python tests/fault_worker.py <result_dir> <fault> [overrides...]

Faults: ``none``; ``nan:<rank>:<call>`` (a NaN out of one FFN layer in that rank's training forward number
<call>); ``kill:<phase>:<step>`` (SIGKILL of this process at a moment of the checkpoint of <step>, or of the
final export): phases ``empty`` (temporary directory created, nothing in it), ``written`` (every file written, no
trainer state), ``synced`` (trainer state written and fsynced, not renamed), ``renamed`` (renamed, old checkpoints
not pruned), ``export`` (the final model written to its temporary directory, not renamed).
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from kanformer.config import load_config
from kanformer.train import NonFiniteError, Trainer
from kanformer.train import checkpoint as ckpt

out_dir, fault, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
resume = "auto" if "--resume" in overrides else None
overrides = [o for o in overrides if o != "--resume"]
trainer = Trainer(load_config(preset="debug", overrides=overrides), resume=resume)


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


kind, *args = fault.split(":")
if kind == "nan":
    rank, at_call = int(args[0]), int(args[1])
    calls = {"n": 0}

    def nan_out(module, inputs, out):
        calls["n"] += 1
        return out * float("nan") if trainer.rank == rank and calls["n"] in (at_call, at_call + 1) else out

    trainer.accelerator.unwrap_model(trainer.model).transformer.h[1].mlp.ffn.fc1.register_forward_hook(nan_out)
elif kind == "kill":
    phase, step = args[0], int(args[1])
    real_save, real_finalize, real_fsync, real_final = (Trainer._save_checkpoint, ckpt.finalize, ckpt._fsync,
                                                        Trainer._write_final)

    def save(self, tmp):
        if self.step == step and phase == "empty":
            tmp.mkdir(parents=True)
            die()
        real_save(self, tmp)

    def finalize(root, s, state, keep_last):
        if s == step and phase == "written":
            die()
        return real_finalize(root, s, state, keep_last)

    def fsync(path):
        real_fsync(path)
        if trainer.step == step and ((phase == "synced" and path.name.startswith(".tmp_step")) or
                                     (phase == "renamed" and path.name == "checkpoints")):
            die()

    def write_final(self, out, state):
        real_final(self, out, state)
        if phase == "export":
            die()

    Trainer._save_checkpoint, ckpt.finalize, ckpt._fsync, Trainer._write_final = save, finalize, fsync, write_final

error = None
try:
    trainer.fit()
except NonFiniteError as e:
    error = str(e)
flat = torch.cat([p.detach().flatten().double() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()])
(out_dir / f"rank{trainer.rank}.json").write_text(json.dumps({
    "rank": trainer.rank, "step": trainer.step, "skipped": trainer.skipped_steps, "error": error,
    "finite": bool(torch.isfinite(flat).all()), "sum": flat.sum().item(), "head": flat[:64].tolist()}))
