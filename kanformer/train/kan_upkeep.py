"""KAN upkeep during training: layer telemetry every ``kan.telemetry_every`` steps, grid updates and extensions on the
inputs of the batch the next step trains on (the grids' rows pooled across ranks: train/grids.py), and the checks that
a run's KAN settings suit its model and its distributed setup. The Trainer's (train/trainer.py) part that does this."""

from __future__ import annotations

import time

import torch

from ..interpret.telemetry import InputRecorder, kan_modules, layer_telemetry, unwrap
from .grids import extend_grids, grid_layers, union_rows, update_grids


class KanUpkeep:
    """Telemetry and grid management of a run's KAN layers (a mixin of the Trainer)."""

    def _check_kan_config(self) -> None:
        k = self.cfg.kan
        if k.telemetry_every and not kan_modules(self.model):
            raise ValueError(f"kan.telemetry_every is set, but ffn.name={self.cfg.ffn.name!r} has no KAN layers")
        if not k.manages_grids:
            return
        if not grid_layers(self.model):
            raise ValueError(f"kan.grid_update_every / kan.grid_extend need B-spline grids (ffn.name=bspline, or "
                             f"multkan with basis=bspline); ffn.name={self.cfg.ffn.name!r} has none")
        kind = str(self.accelerator.distributed_type)
        fsdp2 = getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2 if "FSDP" in kind else False
        if "DEEPSPEED" in kind or ("FSDP" in kind and not fsdp2):
            raise ValueError(f"grid management runs single-process, under DDP and under FSDP2 (updates only); "
                             f"this run uses {kind}")
        if fsdp2 and k.grid_extend:
            raise ValueError("kan.grid_extend changes coefficient shapes, which FSDP2 shards cannot; "
                             "extend under DDP, or only update grids (kan.grid_update_every)")

    def _kan_maintenance(self) -> None:
        """After step ``self.step``: telemetry, grid update or extension, on the batch the next step trains on."""
        k, s = self.cfg.kan, self.step
        telemetry = bool(k.telemetry_every) and s % k.telemetry_every == 0
        extend = k.grid_extend.get(s)
        update = k.updates_at(s, self.cfg.train.max_steps)
        if not (telemetry or extend or update):
            return
        model = unwrap(self.model)
        modules = kan_modules(model) if telemetry else grid_layers(model)
        rows_wanted = max(k.telemetry_rows if telemetry else 1, k.grid_rows if (extend or update) else 1)
        batch = self._train_batch(s, 0)
        was_training = model.training
        model.eval()  # no dropout: the recorded inputs are the function the grid must fit
        with torch.no_grad(), InputRecorder(modules, max_rows=rows_wanted, seed=self.cfg.train.seed + s) as rec:
            rec.mask(batch.get("attention_mask"))
            model(**{key: v for key, v in batch.items() if key != "labels"})
        model.train(was_training)
        rows = rec.rows()
        if telemetry:
            start = time.perf_counter()
            stats = layer_telemetry(modules, {n: r[: k.telemetry_rows] for n, r in rows.items()})
            self._log({"type": "kan", "step": s, "flops": self.flops_seen,
                       "telemetry_s": time.perf_counter() - start, **stats})
        if extend or update:
            names = sorted(grid_layers(model))
            pooled = union_rows({n: r for n, r in rows.items() if n in names}, names)
            if extend:
                extend_grids(model, extend, pooled)
                old = getattr(self.optimizer, "optimizer", self.optimizer)
                step = self.accelerator.step
                self.accelerator.free_memory()  # forget the old wrappers; the reshaped model is prepared anew
                self.accelerator.step = step
                self._prepare(model, old)
            else:
                update_grids(model, pooled, grid_eps=k.grid_eps)
            self._log({"type": "grid", "step": s, "event": "extend" if extend else "update",
                       "grid_size": extend or next(iter(grid_layers(model).values())).basis.grid_size,
                       "layers": len(names)})
