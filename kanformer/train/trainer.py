"""The training loop: one CPU to many GPUs or machines through accelerate.

Data order is a pure function of (seed, step): the global batch of step s, micro-step m is positions
``[(s * accum + m) * B * W, ...)`` of an endless sequence of seeded per-epoch permutations (kanformer/data/order.py),
and rank r takes its B of them, reading only those blocks from the token shards on disk. So every arm of a
comparison sees the same data in the same order, and a resumed run continues exactly where it stopped (no data-loader
state to save). A streamed corpus (``data.streaming``) is read in order instead, each rank its own share of the
documents (kanformer/data/stream.py); where each rank's stream stands is saved with the checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data.device import batch_to_device
from ..data.order import example_indices, rank_positions
from ..layers import autotune, gemm
from ..layers.budget import model_flops_per_token
from ..layers.dispatch import set_kernel
from ..layers.widen import widened_autocast
from ..tasks import task_for
from . import checkpoint as ckpt
from .allocator import configure as configure_malloc
from .grids import extend_grids
from .kan_upkeep import KanUpkeep
from .metrics import append_metrics
from .model_factory import build_model, compile_for_training
from .nonfinite import NonFiniteChecks
from .optim import build_optimizer, lr_at, running_impl
from .records import RunRecords
from .runlock import RunLock
from .saving import Saving

logger = get_logger(__name__)
READ_AHEAD = 64  # training micro-batches read from the data at a time ...
READ_AHEAD_TOKENS = 1 << 22  # ... at most this many tokens (32 MB of int64 ids)


class Trainer(Saving, RunRecords, NonFiniteChecks, KanUpkeep):
    """One run: its data, model, optimizer and loop (here); its checkpoints, resume and export (train/saving.py), its
    run files and trackers (train/records.py), its handling of non-finite values (train/nonfinite.py) and its KAN
    telemetry and grids (train/kan_upkeep.py)."""

    def __init__(self, cfg: RunConfig, *, resume: str | None = None, adapt: bool = False) -> None:
        """``resume``: None (a new run), ``"auto"`` (the newest verified checkpoint of this run, if any) or a
        checkpoint directory. ``adapt``: resume even where world size, global batch, sequence length or data differ
        from the checkpoint's, saying what that changes (without it such a resume is refused)."""
        self.cfg, self.adapt = cfg, adapt
        if resume not in (None, "auto") and not (Path(resume) / ckpt.STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume {resume!r}: not 'auto' and not a checkpoint directory holding "
                                    f"{ckpt.STATE_FILE}")
        self.run_dir = cfg.run_dir
        self.ckpt_root = self.run_dir / "checkpoints"
        self.trackers = cfg.log.active_trackers()  # what accelerate logs to besides metrics.jsonl
        if "wandb" in self.trackers:
            os.environ["WANDB_MODE"] = cfg.log.wandb
        t = cfg.train
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # plain Accelerator() on a GPU-less host ignores torchrun's ranks
            mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum,
            log_with=self.trackers or None, project_dir=str(self.run_dir))
        if self.accelerator.device.type == "cpu" and (slow := gemm.low_precision_warning(t.mixed_precision)):
            logger.warning(slow, main_process_only=True)
        self.lock = RunLock(self.run_dir)
        if self.accelerator.is_main_process:  # one writer per run directory, for as long as the run trains
            self.lock.acquire()
            if self.lock.stale:
                logger.warning(f"{self.lock.path}: {self.lock.stale}; taken over", main_process_only=True)
        try:
            self._setup(resume)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, resume: str | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        if resume is None and ckpt.latest_checkpoint(self.ckpt_root) is not None:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints: pass --resume auto to continue it, "
                                  f"or choose another name / out_dir")
        set_seed(t.seed)
        configure_malloc(t.cpu_malloc)
        self.task = task_for(cfg)  # what differs between causal LM, masked LM and image classification
        self.is_text = self.task.text
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self._load_data()
        if self.stream is not None:
            self.stream.shard(self.rank, self.world)
        self._check_epochs()
        self.model, self.kanify_report = build_model(
            cfg, vocab_size=len(self.tokenizer) if self.is_text else None,
            eos_token_id=self.tokenizer.eos_token_id if self.is_text else None,
            labels=None if self.is_text else self.images.labels,
            channels=1 if self.is_text else self.images.channels)
        if t.kernel is not None:  # this model's path, not the process's: other models keep theirs
            set_kernel(self.model, t.kernel)
        autotune.set_kernel_memory(t.kernel_memory)
        if t.grad_checkpointing:
            self.model.gradient_checkpointing_enable()
        self._check_kan_config()
        resume_path = self._resume_path(resume)
        resumed_at = 0 if resume_path is None else ckpt.read_state(resume_path)["step"]
        for _, size in cfg.kan.extensions_until(resumed_at):  # grids extended before that checkpoint: their shapes
            extend_grids(self.model, size)
        # auto: the graphs of the grids to come (fitted, extended) compiled beside training, before they come
        autotune.expect_grids(self.model, cfg.kan.grids_ahead(resumed_at, t.max_steps))
        self.seq_len = self.task.seq_len(cfg.model)
        self.flops_per_token = model_flops_per_token(self.model, self.seq_len)
        self._prepare(self.model)
        self.step, self.tokens_seen, self.skipped_steps, self.skipped_in_a_row = 0, 0, 0, 0
        self.data_offset = 0  # position of step s's first sequence: s * global batch + data_offset (see --adapt)
        self._signals = 0
        self.wall_s = 0.0  # seconds spent in training steps (evaluation and checkpoints excluded), across resumes
        self.compile_s = 0.0  # seconds of this process spent compiling and choosing kernel paths (not in wall_s)
        self.kernel_choices = 0
        self.library_recorded = False
        self.data_s = 0.0  # seconds of it spent fetching training batches
        self.wandb_id: str | None = None
        self.mlflow_run_id: str | None = None  # kept in checkpoints too: a resumed run logs into the same MLflow run
        self._stop_requested = False
        self._ahead: dict[tuple[int, int], dict[str, torch.Tensor]] = {}  # training micro-batches read ahead
        self.stream_passes = 1  # passes over this rank's share of a streamed corpus that training has reached
        self._passes: dict[tuple[int, int], int] = {}  # ... and that each micro-batch read ahead reaches
        self.resumed_from = self._maybe_resume(resume_path)
        if self.accelerator.is_main_process:
            self._write_run_files()
        if self.trackers:
            self._init_trackers()

    # -- data -----------------------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        from ..data import StreamBlocks, build_lm_data, load_images

        acc = self.accelerator
        self.stream: StreamBlocks | None = None
        with acc.main_process_first():  # the main process prepares the shards, the others then read them
            if self.is_text:
                # one process per machine checks the shards' checksums; the others their sizes
                self.lm = build_lm_data(self.cfg.data, self.cfg.model.block_size, verify=acc.is_local_main_process,
                                        progress=acc.is_local_main_process)
                self.tokenizer = self.task.prepare_tokenizer(self.lm.tokenizer)
                if isinstance(self.lm.train, StreamBlocks):
                    self.stream, self.n_train = self.lm.train, None
                else:
                    self.n_train = len(self.lm.train)
            else:
                self.images = load_images(self.cfg.data, self.cfg.model.image_size)
                self.n_train = len(self.images.train_y)

    def _check_epochs(self) -> None:
        """Stop before training when the token budget would pass over the training data more than
        ``data.max_epochs`` times: a fit to repeated data measures memorisation, not language modelling."""
        limit, t = self.cfg.data.max_epochs, self.cfg.train
        if limit is None or self.n_train is None:
            return
        per_step = t.batch_size * t.grad_accum * self.world
        epochs = t.max_steps * per_step / self.n_train
        if epochs <= limit:
            return
        if self.is_text:
            unit, bs = "tokens", self.cfg.model.block_size
            budget = (f"train.max_steps={t.max_steps} x {per_step} sequences of {bs} tokens "
                      f"= {t.max_steps * per_step * bs:,} tokens")
            size = f"the {self.n_train * bs:,}-token training split of {self.cfg.data.dataset!r}"
        else:
            unit = "examples"
            budget = f"train.max_steps={t.max_steps} x {per_step} images = {t.max_steps * per_step:,} {unit}"
            size = f"the {self.n_train:,}-image training split of {self.cfg.data.dataset!r}"
        raise ValueError(f"{budget} is {epochs:.2f} passes over {size} (data.max_epochs={limit:g}). Train on a "
                         f"larger corpus, lower train.max_steps to at most {int(limit * self.n_train // per_step)}, "
                         f"or allow the repetition explicitly with data.max_epochs={math.ceil(epochs)} (null: no "
                         f"limit, e.g. for finetuning)")

    def batch_indices(self, step: int, micro: int) -> torch.Tensor:
        """Training-set indices of this rank's micro-batch: a pure function of (seed, step, micro, rank)."""
        t = self.cfg.train
        positions = rank_positions(step, micro, rank=self.rank, world=self.world, batch_size=t.batch_size,
                                   grad_accum=t.grad_accum)
        return torch.from_numpy(example_indices(positions + self.data_offset, self.n_train, t.seed))

    def _stream_index(self, step: int, micro: int = 0) -> int:
        """The first block of (step, micro) in this rank's share of a streamed corpus."""
        return (step * self.cfg.train.grad_accum + micro) * self.cfg.train.batch_size

    def _read_ahead(self, step: int, micro: int) -> None:
        """Read the micro-batch (step, micro) and up to READ_AHEAD - 1 after it in one go, on the CPU: a read has a
        fixed cost (Python calls, index arithmetic) that one micro-batch of a small model would feel."""
        t = self.cfg.train
        first = step * t.grad_accum + micro
        ahead = max(1, min(READ_AHEAD, READ_AHEAD_TOKENS // (t.batch_size * self.seq_len)))
        last = max(first + 1, min(first + ahead, t.max_steps * t.grad_accum))  # telemetry may look past the end
        keys = [divmod(g, t.grad_accum) for g in range(first, last)]
        if self.stream is not None:
            rows, passes = self.stream.read(self._stream_index(step, micro), len(keys) * t.batch_size)
            self._passes = {key: int(p.max()) + 1 for key, p in zip(keys, np.split(passes, len(keys)), strict=True)}
        elif self.is_text:
            positions = rank_positions(step, micro, rank=self.rank, world=self.world, batch_size=t.batch_size,
                                       grad_accum=t.grad_accum, count=len(keys))
            rows = self.lm.train[example_indices(positions + self.data_offset, self.n_train, t.seed)]
        else:  # images live in memory: nothing to gain, and augmentation is per step
            cpu = torch.device("cpu")
            self._ahead = {(s, m): self._batch(self.batch_indices(s, m), True, s, cpu) for s, m in keys}
            return
        self._ahead = {key: self.task.batch(x, self._generator(*key)) for key, x in zip(keys, rows.split(t.batch_size),
                                                                                      strict=True)}

    def _generator(self, step: int, micro: int) -> torch.Generator:
        """The random numbers of one rank's micro-batch (masking): a pure function of (seed, step, micro, rank)."""
        return torch.Generator().manual_seed(((self.cfg.train.seed * 1_000_003 + step) * 1009 + micro) * 1013
                                             + self.rank)

    def _train_batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        """This rank's training micro-batch of (step, micro) on the device: a pure function of the step, read
        READ_AHEAD micro-batches at a time; the time it takes counts as data time."""
        start = time.perf_counter()
        if (step, micro) not in self._ahead:
            self._read_ahead(step, micro)
        if self.stream is not None:
            self.stream_passes = max(self.stream_passes, self._passes[(step, micro)])
        batch = batch_to_device(self._ahead[(step, micro)], self.accelerator.device)  # to a GPU without waiting
        self.data_s += time.perf_counter() - start
        return batch

    def _batch(self, idx: torch.Tensor, train: bool, step: int = 0,
               device: torch.device | None = None) -> dict[str, torch.Tensor]:
        device = device or self.accelerator.device
        if self.is_text:  # evaluation: the same masks for every arm and every evaluation
            x = (self.lm.train if train else self.lm.val)[idx]
            g = torch.Generator().manual_seed(int(idx[0]) if len(idx) else 0)
            return batch_to_device(self.task.batch(x, g), device)
        x = (self.images.train_x if train else self.images.val_x)[idx]
        if train and self.cfg.data.augment:
            from ..data import augment

            x = augment(x, torch.Generator().manual_seed(self.cfg.train.seed * 7919 + step * 131 + self.rank))
        y = (self.images.train_y if train else self.images.val_y)[idx]
        return batch_to_device({"pixel_values": x, "labels": y}, device)

    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len  # ViT: a token per patch, plus [CLS]

    @property
    def global_batch(self) -> int:
        t = self.cfg.train
        return t.batch_size * t.grad_accum * self.world

    def _data_key(self) -> str:
        """What identifies the training data: the prepared corpus (source, split, tokenizer) or the image set."""
        if self.is_text:
            what: Any = self.lm.meta["data_key"]
        else:
            d = self.cfg.data
            what = [d.dataset, self.cfg.model.image_size, d.normalize, self.n_train, len(self.images.val_y),
                    list(map(str, self.images.labels))]
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    # -- optimizer, wrappers, logging ------------------------------------------------------------------------------
    def _prepare(self, model: torch.nn.Module, old_optimizer: torch.optim.Optimizer | None = None) -> None:
        """Optimizer, accelerate wrappers and compilation for ``model``; moment estimates of parameters that
        ``old_optimizer`` already tracked carry over (parameters replaced by a grid extension start fresh)."""
        t = self.cfg.train
        deepspeed = "DEEPSPEED" in str(self.accelerator.distributed_type)
        self.optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay, betas=t.betas,
                                         decay_kan_coefficients=t.decay_kan_coefficients, impl=t.adamw,
                                         deepspeed=deepspeed)
        self.adamw = running_impl(self.optimizer)  # what train.adamw runs here (a resumed checkpoint may differ)
        if old_optimizer is not None:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p in old_optimizer.state:
                        self.optimizer.state[p] = old_optimizer.state[p]
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.model = compile_for_training(self.model, t.compile, self.accelerator.unwrap_model(self.model))

    @property
    def flops_seen(self) -> int:
        return 3 * self.flops_per_token * self.tokens_seen  # training = forward + backward (2x forward)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            append_metrics(self.run_dir / "metrics.jsonl", record)
        if self.trackers:
            self.accelerator.log({k: v for k, v in record.items() if k not in ("type",)}, step=self.step)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _widened(self) -> contextlib.AbstractContextManager[bool]:
        """Mixed precision on a CPU without native products for it: the model's products in fp32 (layers/widen.py)."""
        acc = self.accelerator
        return widened_autocast(self.cfg.train.mixed_precision if acc.device.type == "cpu" else None)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-weighted mean NLL over a fixed slice of the validation set (accuracy too for images)."""
        model, acc = self.model, self.accelerator
        model.eval()
        n_val = len(self.lm.val) if self.is_text else len(self.images.val_y)
        n = min(n_val, self.cfg.train.eval_batches * self.cfg.train.batch_size * self.world)
        mine = torch.arange(self.rank, n, self.world)
        sums = torch.zeros(3, device=acc.device, dtype=torch.float64)  # nll sum, count, hits
        with self._widened():
            for chunk in mine.split(self.cfg.train.batch_size):
                batch = self._batch(chunk, train=False)
                sums += self.task.scores(model(**batch), batch).to(sums.device)
        sums = acc.reduce(sums, reduction="sum")
        model.train()
        return self.task.metrics(*sums.tolist())

    # -- the loop -------------------------------------------------------------------------------------------------
    def _stream_spent(self) -> bool:
        limit = self.cfg.data.max_epochs
        return self.stream is not None and limit is not None and self.stream_passes > limit

    def _stop_flags(self, stop_at: int | None) -> tuple[bool, bool]:
        """(stop after this step, the streamed corpus spent), agreed by every rank; one process reads no device."""
        stop, spent = self._stop_requested or self.step == stop_at, self._stream_spent()
        if self.world == 1:
            return stop, spent
        flags = torch.tensor([float(stop), float(spent)], device=self.accelerator.device)
        stop, spent = (self.accelerator.reduce(flags, reduction="sum") > 0).tolist()
        return stop, spent

    def _forward_backward(self) -> tuple[bool, float, float]:
        """This step's micro-batches, forward and backward, then the gradient norm (clipped where ``train.grad_clip``
        is set): (ok, the mean loss, the gradient norm), ok False where the step must be skipped (it was reported).

        The host reads the step's numbers (the losses, whether each was finite on every rank, the norm) once, after
        the last backward: on a GPU every read waits for the device's queue to drain, and read per micro-batch (a
        loss's finiteness before its backward, its value after it), the host could not queue the next kernels while
        the device ran. So a non-finite loss is found after its backward ran, on every rank (a sharded model's
        collectives stay matched), and the step is skipped as before: no optimizer step, the first such micro-batch's
        forward run again to name the module."""
        t, acc = self.cfg.train, self.accelerator
        losses, batches = [], []
        for micro in range(t.grad_accum):
            batch = self._train_batch(self.step, micro)
            with acc.accumulate(self.model):
                loss = self.model(**batch).loss
                acc.backward(loss)
            losses.append(loss.detach().float().reshape(()))
            batches.append(batch)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = (acc.clip_grad_norm_(params, t.grad_clip) if t.grad_clip > 0
                else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        loss_t = torch.stack(losses)
        bad = torch.zeros(self.world, t.grad_accum, device=loss_t.device)  # rank x micro-batch: a non-finite loss
        bad[self.rank] = (~torch.isfinite(loss_t)).float()
        if self.world > 1:
            bad = acc.reduce(bad, reduction="sum")
        numbers = [loss_t.sum().reshape(1), bad.flatten()]
        if torch.is_tensor(norm):  # a sharded model's norm may come as a DTensor: its full value
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            numbers.append(norm.detach().float().reshape(1).to(loss_t.device))
        read = torch.cat(numbers).tolist()  # the step's one read
        loss_sum, flags = read[0], read[1: 1 + bad.numel()]
        # DeepSpeed clips inside its own step and may give no norm (None): unknown, not non-finite
        grad_norm = read[-1] if torch.is_tensor(norm) else float("nan" if norm is None else norm)
        first = next((m for m in range(t.grad_accum) if any(flags[r * t.grad_accum + m] for r in range(self.world))),
                     None)
        if first is not None:
            self._nonfinite_loss([r for r in range(self.world) if flags[r * t.grad_accum + first]], batches[first])
            return False, float("nan"), float("nan")
        if not math.isfinite(grad_norm) and norm is not None:
            name = next((n for n, p in acc.unwrap_model(self.model).named_parameters()
                         if p.grad is not None and not torch.isfinite(p.grad).all()), "<another rank>")
            self._nonfinite("gradient", name, list(range(self.world)))
            return False, float("nan"), grad_norm
        return True, loss_sum / t.grad_accum, grad_norm

    def _on_signal(self, signum: int, frame: Any) -> None:
        """First SIGINT / SIGTERM: checkpoint after this step, then stop. Second: stop now, saving nothing (once
        the native operation under way returns). Third: the default action, which ends the process at once."""
        self._signals += 1
        if self._signals == 1:
            self._stop_requested = True
            self.accelerator.print(f"signal {signum}: saving a checkpoint after this step, then stopping (signal "
                                   f"again to stop without saving)")
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        raise KeyboardInterrupt(f"signal {signum} again: stopped without saving (the last checkpoint is untouched)")

    def fit(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``train.max_steps`` (or stop early at ``stop_at`` / on SIGINT or SIGTERM, after a checkpoint)."""
        t, acc = self.cfg.train, self.accelerator
        if acc.is_main_process:
            self.lock.acquire()  # released when the last fit returned: held again for this one
        self._signals = 0
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.model.train()
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not acc.is_local_main_process, desc=self.cfg.name,
                   dynamic_ncols=True)
        last = {"loss": float("nan")}
        wall0, data0 = self.wall_s, self.data_s
        # the throughput counts this process's steps that compiled nothing: their tokens over their time (a step
        # that compiled only in part has no measurable training time of its own; a compiled model's first is all
        # compiling)
        timed_tokens, timed_s = 0, 0.0
        # and since the last record: the speed now (the first steps under auto run lean beside its background compile,
        # which the whole run's figure averages in for hundreds of steps)
        recent_tokens, recent_s = 0, 0.0
        compiled_model = t.compile != "none"  # the first step of this process compiles the model
        widened = contextlib.ExitStack()
        try:
            widened.enter_context(self._widened())
            while self.step < t.max_steps:
                step_start, overhead0 = time.perf_counter(), autotune.overhead_seconds()
                lr = lr_at(self.step, lr=t.lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps,
                           min_lr_ratio=t.min_lr_ratio)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                # accelerate's accumulation counter follows the step, so its gradient sync and its optimizer step stay
                # in phase whatever a step before did
                acc.step = self.step * t.grad_accum
                ok, loss_value, grad_norm = self._forward_backward()
                if ok:
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped_in_a_row = 0
                else:  # the optimizer's zero_grad is a no-op outside a sync step: clear the gradients directly
                    self.model.zero_grad(set_to_none=True)
                self.step += 1
                self.tokens_seen += self.tokens_per_step()
                self._kan_maintenance()  # telemetry and grid work count as training time
                step_s = time.perf_counter() - step_start
                # choosing kernel paths and compiling (a pinned fused path's first calls too) are not training: kept
                # apart from the step throughput
                compile_s = step_s if compiled_model else min(step_s, autotune.overhead_seconds() - overhead0)
                compiled_model = False
                self.compile_s += compile_s
                self.wall_s += step_s - compile_s
                if compile_s <= 0.0:
                    timed_tokens, timed_s = timed_tokens + self.tokens_per_step(), timed_s + step_s
                    recent_tokens, recent_s = recent_tokens + self.tokens_per_step(), recent_s + step_s
                if t.log_every and (self.step % t.log_every == 0 or self.step == t.max_steps):
                    mean_loss = loss_value if self.world == 1 else acc.reduce(
                        torch.tensor(loss_value, device=acc.device), reduction="mean").item()
                    last = {"type": "train", "step": self.step, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                            "tokens": self.tokens_seen, "flops": self.flops_seen, "wall_s": self.wall_s}
                    if timed_s > 0:  # none before this process's first step that compiled nothing
                        last.update(tokens_per_s=timed_tokens / timed_s,
                                    data_frac=(self.data_s - data0) / max(self.wall_s - wall0, 1e-9))
                    if recent_s > 0:
                        last["recent_tokens_per_s"] = recent_tokens / recent_s
                    recent_tokens, recent_s = 0, 0.0
                    last.update(compile_s=self.compile_s, skipped_steps=self.skipped_steps)
                    self._log(last)
                    self._record_kernel_choices()
                    tok_s = last.get("recent_tokens_per_s", last.get("tokens_per_s"))
                    bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s="-" if tok_s is None else f"{tok_s:.0f}")
                if self.step % t.eval_every == 0 or self.step == t.max_steps:
                    self._log({"type": "eval", "step": self.step, "tokens": self.tokens_seen, "flops": self.flops_seen,
                               "wall_s": self.wall_s, **self.evaluate()})
                bar.update(1)
                stop, spent = self._stop_flags(stop_at)
                if spent:
                    raise ValueError(
                        f"step {self.step}: the streamed corpus {self.cfg.data.dataset!r} ran out: a rank began pass "
                        f"{self.stream_passes} over its share of the documents (data.max_epochs="
                        f"{self.cfg.data.max_epochs:g}). Lower train.max_steps, stream a larger corpus, or allow "
                        f"more passes (data.max_epochs); the last checkpoint is untouched")
                if self.step % t.save_every == 0 or self.step == t.max_steps or stop:
                    self.save_checkpoint()
                if stop:
                    acc.print(f"stopped at step {self.step}; continue with --resume auto")
                    break
            finished = self.step >= t.max_steps
            if finished:
                self.export()
        finally:
            widened.close()
            bar.close()
            if self.stream is not None:
                self.stream.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.lock.release()
        if self.trackers:
            acc.end_training()
        return {"step": self.step, "finished": finished, **last}
