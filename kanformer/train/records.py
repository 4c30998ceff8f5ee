"""What a run writes about itself beside its metrics: ``config.yaml``, ``versions.json`` (versions, device, FLOPs per
token, the kernel paths ``auto`` chose and the matmul library, as they are chosen) and the experiment trackers (wandb,
TensorBoard, MLflow). The Trainer's (train/trainer.py) part that does this."""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from ..config import save_config
from ..layers import autotune, gemm
from ..layers.compile_options import get_compile_options
from .optim import running_impl
from .provenance import versions


class RunRecords:
    """The run's own files and trackers (a mixin of the Trainer)."""

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        info = {**versions(), "world_size": self.world, "device": str(self.accelerator.device),
                "flops_per_token": self.flops_per_token, "params": sum(p.numel() for p in self.model.parameters()),
                "adamw": running_impl(self.optimizer),
                "compile_options": get_compile_options()}  # the fused helpers' compiler options (usually none)
        if self.is_text:
            info["data"] = self.lm.meta
        if self.kanify_report is not None:
            info["kanify"] = {k: v for k, v in vars(self.kanify_report).items() if k != "ffn_kwargs"}
        (self.run_dir / "versions.json").write_text(json.dumps(info, indent=2, default=str))

    def _record_kernel_choices(self) -> None:
        """New choices of ``auto`` (layers/autotune.py) go into versions.json, with the compile time so far, and the
        matmul library (layers/gemm.py)."""
        choices = autotune.decisions(self.accelerator.unwrap_model(self.model))
        library = gemm.chosen()  # the fp32 CPU products' library of every FFN, once the first FFN call chose it
        news = len(choices) != self.kernel_choices or (library and not self.library_recorded)
        if not news or not self.accelerator.is_main_process:
            return
        self.kernel_choices, self.library_recorded = len(choices), bool(library)
        path = self.run_dir / "versions.json"
        info = json.loads(path.read_text()) if path.is_file() else {}
        info.update(kernel_choices=choices, kernel_memory=self.cfg.train.kernel_memory, compile_s=self.compile_s)
        if library:
            info["matmul_library"] = library
        tmp = path.with_name(".versions.json.tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, path)

    def _init_trackers(self) -> None:
        """wandb (offline by default), TensorBoard (``<run>/<project>/``), MLflow: the same records as metrics.jsonl,
        grouped by ``log.group`` (a comparison's or sweep's name) in each."""
        log = self.cfg.log
        self.wandb_id = self.wandb_id or secrets.token_hex(4)  # kept in checkpoints: a resumed run continues it
        kwargs: dict[str, Any] = {
            "wandb": {"name": self.cfg.name, "group": log.group, "tags": log.tags, "dir": str(self.run_dir),
                      "id": self.wandb_id, "resume": "allow"},
            "mlflow": {"run_name": self.cfg.name, "run_id": self.mlflow_run_id,
                       "tags": {"group": log.group or "", "tags": ",".join(log.tags)}}}
        acc = self.accelerator
        acc.init_trackers(log.project, init_kwargs={k: v for k, v in kwargs.items() if k in self.trackers})
        if not acc.is_main_process:
            return
        nested = self.cfg.to_dict()
        for tracker in acc.trackers:  # wandb keeps the config's sections; the others take flat scalar values
            tracker.store_init_configuration(nested if tracker.name == "wandb" else _flat(nested))
            if tracker.name == "wandb":
                run = tracker.tracker
                run.define_metric("flops")
                run.define_metric("*", step_metric="flops")
            if tracker.name == "mlflow":
                self.mlflow_run_id = tracker.tracker.info.run_id


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys and scalar values (lists and None as text): what TensorBoard's and MLflow's parameters take."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, bool | int | float | str) else str(value)
    return out
