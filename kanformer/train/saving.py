"""Checkpoints, resuming and the final export of a run. Checkpoints are accelerate's state plus the trainer's (step,
tokens, data position, each rank's stream position, counters), written atomically and verified (train/checkpoint.py);
a resume checks that the run has the checkpoint's shape (``RESUME_INVARIANTS``; ``--adapt`` continues anyway, saying
what that changes). The final model is written beside ``final/`` and renamed into place. An error while writing
names the cause and the free space and leaves the previous copy untouched. The Trainer's (train/trainer.py) part that
does this."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger

from . import checkpoint as ckpt
from .metrics import truncate_after
from .optim import running_impl

logger = get_logger(__name__)

# What must not change between a checkpoint and the run that resumes it (without --adapt), and what changes if it does.
RESUME_INVARIANTS = {
    "world_size": "each rank's random state (dropout, augmentation) cannot be carried over: the run no longer "
                  "reproduces an uninterrupted one",
    "global_batch": "the data order continues from the checkpoint's position with the new batch (no sequence seen "
                    "twice or skipped), but the steps and the schedule no longer match the run's first part",
    "seq_len": "sequences are cut anew: the data position is kept in sequences, not tokens",
    "data_key": "training continues on other data (or another tokenizer's tokens) from the same position",
}


class Saving:
    """Checkpoints, resuming and the final export (a mixin of the Trainer)."""

    def _resume_path(self, resume: str | None) -> Path | None:
        """The checkpoint to resume: the main process checks files against their digests (``auto``: the newest
        that verifies) and tells the other ranks."""
        from accelerate.utils import broadcast_object_list

        if resume is None:
            return None
        found: list[str | None] = [None]
        if self.accelerator.is_main_process:
            if resume == "auto":
                path = ckpt.latest_verified(self.ckpt_root, lambda m: logger.warning(m, main_process_only=True))
                if path is None and ckpt.latest_checkpoint(self.ckpt_root) is not None:
                    raise ValueError(f"no checkpoint under {self.ckpt_root} verifies (see the warnings above): "
                                     f"nothing safe to resume from; move the directory away to start afresh")
            else:
                path = Path(resume)
                problem = ckpt.verify(path)
                if problem is not None:
                    raise ValueError(f"--resume {resume}: {problem}")
            found = [None if path is None else str(path)]
        found = broadcast_object_list(found)
        return None if found[0] is None else Path(found[0])

    def _check_resume(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint from a run of another shape (or, with ``adapt``, say what continuing changes), and
        any state that would not be restored."""
        now = {"world_size": self.world, "global_batch": self.global_batch, "seq_len": self.seq_len,
               "data_key": self._data_key()}
        changed = {k: (state[k], v) for k, v in now.items() if state.get(k) is not None and state[k] != v}
        rng = path / f"random_states_{self.rank}.pkl"
        lost = [] if rng.is_file() else [f"rank {self.rank}'s random state ({rng.name} is missing): dropout and "
                                         f"augmentation draw other numbers than the uninterrupted run"]
        if not changed and not lost:
            return
        lines = [f"{k}: {old!r} in the checkpoint, {new!r} now ({RESUME_INVARIANTS[k]})"
                 for k, (old, new) in changed.items()] + lost
        if not self.adapt:
            raise ValueError(f"{path} is from a run of another shape:\n  " + "\n  ".join(lines) +
                             "\nResume with the same settings, or pass --adapt (Trainer(adapt=True)) to continue "
                             "anyway with the consequences listed")
        for line in lines:
            logger.warning(f"resuming {path} with --adapt: {line}", main_process_only=False)
        if "global_batch" in changed:  # the next sequence is the one after the checkpoint's last
            self.data_offset = state["data_position"] - self.step * self.global_batch

    def _maybe_resume(self, path: Path | None) -> Path | None:
        if path is None:
            if self.accelerator.is_main_process and self.run_dir.exists():
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return None
        state = ckpt.read_state(path)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.data_offset = state.get("data_offset", 0)
        self._check_resume(path, state)
        self.accelerator.load_state(str(path))
        saved = running_impl(self.optimizer)  # the saved parameter groups bring their implementation's flags
        if saved != self.adamw:
            logger.warning(f"{path} was saved by a run whose AdamW ran {saved!r}: the resumed run continues so, where "
                           f"train.adamw={self.cfg.train.adamw} runs {self.adamw!r} in a fresh run (the optimizer's "
                           f"state is kept as that implementation keeps it)", main_process_only=True)
        self.skipped_steps, self.wandb_id = state.get("skipped_steps", 0), state.get("wandb_id")
        self.mlflow_run_id = state.get("mlflow_run_id")
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)
        self.wall_s, self.data_s = state.get("wall_s", 0.0), state.get("data_s", 0.0)
        if self.stream is not None:
            saved = state.get("stream") or {}
            same_world = saved.get("world") == self.world
            if not same_world:
                logger.warning(f"{path} holds no stream position for {self.world} rank(s): each rank reads its share "
                               f"from the start up to step {self.step} (slow, same blocks)", main_process_only=True)
            self.stream.restore(self._stream_index(self.step), saved["positions"][self.rank] if same_world else None)
        if self.accelerator.is_main_process:  # metrics logged after that checkpoint are replayed, so drop them
            metrics = self.run_dir / "metrics.jsonl"
            truncate_after(metrics, self.step, warn=lambda m: logger.warning(m, main_process_only=True))
        self.accelerator.print(f"resumed from {path} at step {self.step}")
        return path

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        self._check_finite_weights("saving a checkpoint")
        tmp = ckpt.temp_dir(self.ckpt_root, self.step)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        with naming_write_errors(f"checkpoint {tmp}", tmp, self.ckpt_root):
            self._save_checkpoint(tmp)
        acc.wait_for_everyone()

    def _save_checkpoint(self, tmp: Path) -> None:
        acc = self.accelerator
        acc.save_state(str(tmp))
        stream = None
        if self.stream is not None:  # where every rank's next block begins in its share of the source
            from accelerate.utils import gather_object

            stream = {"world": self.world,
                      "positions": gather_object([list(self.stream.position(self._stream_index(self.step)))])}
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.finalize(self.ckpt_root, self.step, {
                "step": self.step, "tokens_seen": self.tokens_seen, "flops_seen": self.flops_seen,
                "skipped_steps": self.skipped_steps, "skipped_in_a_row": self.skipped_in_a_row,
                "wandb_id": self.wandb_id, "mlflow_run_id": self.mlflow_run_id, "wall_s": self.wall_s,
                "data_s": self.data_s,
                "world_size": self.world, "global_batch": self.global_batch, "seq_len": self.seq_len,
                "data_key": self._data_key(), "data_offset": self.data_offset,
                "data_position": self.step * self.global_batch + self.data_offset,  # sequences (or images) consumed
                "stream": stream,
            }, self.cfg.train.keep_last)

    def export(self) -> Path:
        """The final model, loadable with ``from_pretrained``, with its tokenizer or image processor: written to a
        temporary directory and renamed into place, so ``final/`` is never half-written."""
        final = self.run_dir / "final"
        out = self.run_dir / ".tmp_final"
        acc = self.accelerator
        self._check_finite_weights("exporting the final model")
        acc.wait_for_everyone()
        # every rank takes part in gathering a sharded (FSDP / DeepSpeed) state dict; torch.compile's wrapper adds
        # an `_orig_mod.` prefix that the saved model must not carry
        state = {k.replace("_orig_mod.", ""): v for k, v in acc.get_state_dict(self.model).items()}
        if acc.is_main_process:
            shutil.rmtree(out, ignore_errors=True)
            with naming_write_errors(f"the final model {final}", out, self.run_dir):
                self._write_final(out, state)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(out, final)
        acc.wait_for_everyone()
        return final

    def _write_final(self, out: Path, state: dict[str, torch.Tensor]) -> None:
        model = self.accelerator.unwrap_model(self.model)
        model = getattr(model, "_orig_mod", model)
        model.card_info = self._card_info()  # what the model card says beyond the model itself
        model.save_pretrained(out, state_dict=state)
        if self.is_text:
            self.tokenizer.save_pretrained(out)
        else:
            from transformers import ViTImageProcessor

            size, ch = self.cfg.model.image_size, self.images.channels
            ViTImageProcessor(size={"height": size, "width": size}, image_mean=[self.images.mean] * ch,
                              image_std=[self.images.std] * ch, do_rescale=True,
                              do_convert_rgb=ch == 3).save_pretrained(out)

    def _card_info(self) -> dict[str, Any]:
        from ..data.sources import data_license

        cfg, t = self.cfg, self.cfg.train
        training = {"dataset": cfg.data.dataset, **({"tokenizer": cfg.data.tokenizer} if self.is_text else {}),
                    "tokens": self.tokens_seen, "steps": self.step, "global batch": self.global_batch,
                    "sequence length": self.seq_len, "learning rate": t.lr, "seed": t.seed, "processes": self.world}
        info: dict[str, Any] = {"name": cfg.name, "path": str(self.run_dir / "final"), "training": training,
                                "flops_per_token": self.flops_per_token}
        known = data_license(cfg.data.dataset)
        if known is not None:
            info["license"], info["license_name"] = known
        return info


@contextlib.contextmanager
def naming_write_errors(what: str, tmp: Path, root: Path):
    """An error while writing ``what`` names it, the cause and the free space, and removes the partial copy: the
    previous checkpoint (or export) is untouched. (A full disk surfaces from torch as ``basic_ios::clear``.)"""
    try:
        yield
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            free = f"{shutil.disk_usage(root).free / 2**30:.2f} GiB free on that filesystem"
        except OSError:
            free = "free space unknown"
        raise OSError(f"could not write {what}: {type(e).__name__}: {e} ({free}). Nothing complete was replaced; "
                      f"free space (or fix the cause) and continue with --resume auto") from e
