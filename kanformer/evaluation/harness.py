"""EleutherAI's lm-evaluation-harness on a saved checkpoint, through its Python API (``pip install
'kanformer[lmeval]'``): its standard tasks (hellaswag, lambada_openai, arc_easy, piqa, wikitext, ...) where their
data can be reached, and local task YAMLs (``include_path``)."""

from __future__ import annotations

import difflib
from typing import Any


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError(f"--tasks runs EleutherAI's lm-evaluation-harness, which is not installed ({e}): "
                          f"pip install 'kanformer[lmeval]' (or lm-eval>=0.4.5)") from None
    return lm_eval, HFLM, TaskManager


def run_tasks(ckpt: Any, tasks: list[str], *, include_path: str | None = None, limit: float | None = None,
              batch_size: int = 8) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` for ``ckpt`` (a :class:`kanformer.evaluation.datasets.Checkpoint` of a causal LM);
    metric names drop the harness's filter suffix (``bits_per_byte,none`` -> ``bits_per_byte``)."""
    lm_eval, HFLM, TaskManager = _lm_eval()
    if ckpt.kind != "causal":
        raise ValueError(f"lm-evaluation-harness tasks score language models; {ckpt.path} is "
                         f"{ckpt.config.model_type}")
    manager = _manager(TaskManager, tasks, include_path)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hints = {t: difflib.get_close_matches(t, known, n=5) for t in unknown}
        raise ValueError("unknown lm-evaluation-harness task(s): " + "; ".join(
            f"{t!r} (close: {', '.join(h) or 'none'})" for t, h in hints.items()) +
            f". The harness knows {len(known)} tasks (lm-eval ls tasks); local task YAMLs: --include-path <dir>")
    lm = HFLM(pretrained=ckpt.model, tokenizer=ckpt.tokenizer, batch_size=batch_size,
              max_length=ckpt.context, device=str(ckpt.device))
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                  log_samples=False, bootstrap_iters=0, verbosity="WARNING")
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                         if "," in k and "stderr" not in k and isinstance(v, int | float)}
    return results


def _manager(TaskManager: Any, tasks: list[str], include_path: str | None) -> Any:
    """The harness's task index: the local task YAMLs alone where every task asked for is a plain task among them
    (the harness's own index, thousands of YAMLs, took ~15 s to build on a 2-core CPU, every call), else the whole."""
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):  # groups and tags may name the harness's own tasks
            return local
    return TaskManager(include_path=include_path)
