"""Non-finite losses, gradients and weights: the step that meets one is skipped (within ``train.max_skipped`` /
``train.max_consecutive_skipped``) or the run stops, naming the first module whose output was not finite; weights that
are not finite are never saved. Every rank takes part in each check and all agree, so a sharded model's collectives
stay matched. The Trainer's (train/trainer.py) part that does this: it reads the trainer's accelerator, model, config,
step, rank and world size, and keeps its counts of skipped steps."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)


class NonFiniteError(RuntimeError):
    pass


class NonFiniteChecks:
    """Finding and handling non-finite values (a mixin of the Trainer)."""

    def _first_nonfinite_module(self, batch: dict[str, torch.Tensor]) -> str:
        """Re-run the forward with hooks and name the first module (in execution order) with a non-finite output;
        a deterministic fault reproduces, which is what makes the name worth having."""
        found: list[str] = []
        model = self.accelerator.unwrap_model(self.model)

        def tensors(out: Any) -> list[torch.Tensor]:
            items = out.values() if isinstance(out, dict) else out if isinstance(out, tuple | list) else [out]
            return [t for t in items if torch.is_tensor(t) and t.is_floating_point()]

        def hook(name: str):
            def check(module: torch.nn.Module, args: Any, out: Any) -> None:
                if not found and any(not torch.isfinite(t).all() for t in tensors(out)):
                    found.append(name or "<model>")
            return check

        hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
        try:
            with torch.no_grad():
                model(**batch)
        finally:
            for h in hooks:
                h.remove()
        return found[0] if found else "<none: non-finite only in the loss>"

    def _nonfinite_ranks(self, value: torch.Tensor) -> list[int]:
        """The ranks whose ``value`` is not finite, agreed by every rank (so all skip, or stop, together)."""
        flags = torch.zeros(self.world, device=self.accelerator.device)
        flags[self.rank] = float(not torch.isfinite(value).all())
        if self.world > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        return [r for r, f in enumerate(flags.tolist()) if f > 0]

    def _nonfinite_loss(self, ranks: list[int], batch: dict[str, torch.Tensor]) -> None:
        """Every rank re-runs its forward to find the first module with a non-finite output (all of them, so a
        sharded model's collectives stay matched), and every rank learns what each found."""
        where = self._first_nonfinite_module(batch)
        if self.world > 1:
            from accelerate.utils import gather_object

            found = gather_object([where])
            where = "; ".join(f"rank {r}: {found[r]}" for r in ranks)
        self._nonfinite("loss", where, ranks)

    def _nonfinite(self, what: str, where: str, ranks: list[int]) -> None:
        """Skip the step (within train.max_*skipped) or stop, leaving the last good checkpoint untouched."""
        t = self.cfg.train
        on = f" on rank(s) {', '.join(map(str, ranks))}" if self.world > 1 else ""
        msg = f"step {self.step}: non-finite {what}{on}; first at {where}"
        if t.nonfinite == "stop":
            raise NonFiniteError(msg + " (train.nonfinite=stop; the last good checkpoint is untouched)")
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        logger.warning(msg + " -> step skipped (train.nonfinite=skip)", main_process_only=True)
        limit = next((f"{n} steps skipped {how} (train.{key}={n})" for n, how, key in (
            (self.skipped_in_a_row, "in a row", "max_consecutive_skipped"),
            (self.skipped_steps, "in all", "max_skipped")) if n >= getattr(t, key)), None)
        if limit is not None:
            raise NonFiniteError(f"{msg}: stopping, {limit}. Training is diverging (lower train.lr, raise "
                                 f"train.warmup_steps, or check the data); the last good checkpoint is untouched")

    def _check_finite_weights(self, doing: str) -> None:
        """Refuse to save weights that are not finite (every rank checks its own shards; all agree)."""
        model = self.accelerator.unwrap_model(self.model)
        bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p.detach()).all()), None)
        ranks = self._nonfinite_ranks(torch.tensor(float("nan") if bad else 0.0))
        if ranks:
            where = f"parameter {bad}" if bad else f"a parameter on rank(s) {ranks}"
            raise NonFiniteError(f"step {self.step}: {where} holds non-finite values; refused {doing} (the last "
                                 f"good checkpoint is untouched: resume from it with a lower train.lr)")
