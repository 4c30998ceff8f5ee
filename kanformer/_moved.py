"""Module paths from before the package regroup, kept importable: ``import kanformer.compare`` gives the module
``kanformer.studies.compare`` itself (one module object, so patches and ``isinstance`` agree), with a
DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

MOVED = {
    "kanformer.warmstart": "kanformer.surgery.warmstart",
    "kanformer.kanify_checkpoint": "kanformer.surgery.pretrained",
    "kanformer.budget": "kanformer.layers.budget",
    "kanformer.allocator": "kanformer.train.allocator",
    "kanformer.provenance": "kanformer.train.provenance",
    "kanformer.grids": "kanformer.train.grids",
    "kanformer.checkpoint_eval": "kanformer.evaluation.validation",
    "kanformer.dataset_eval": "kanformer.evaluation.datasets",
    "kanformer.harness": "kanformer.evaluation.harness",
    "kanformer.telemetry": "kanformer.interpret.telemetry",
    **{f"kanformer.{name}": f"kanformer.studies.{name}" for name in ("compare", "sweep", "scaling", "plots", "toy")},
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self.own_specs: dict[str, Any] = {}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: Any) -> Any:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(MOVED[spec.name])
        self.own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        # already executed; importlib gave it the alias's spec, so give it back its own
        module.__spec__ = self.own_specs[module.__name__]


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
