"""Evaluation metrics: quality (perplexity, bits per byte, accuracy), speed (training and inference tokens/s, the
FFN share of a step), memory, and cost (parameters, FLOPs per token, MFU).

Conventions, stated once:
* Perplexity is ``exp(token-weighted mean NLL)`` in nats, never ``2 ** loss``; every predicted token counts once.
* Sliding-window evaluation: windows of ``context`` tokens advance by ``stride``; each token (but the stream's first,
  which nothing predicts) is scored exactly once, by the first window that reaches it, so every scored token after
  the first window has >= ``context - stride`` tokens of context (Hugging Face's "perplexity of fixed-length
  models" recipe, with windows overlapping by at least one token so none is skipped).
* Bits per byte = total NLL / (ln 2 * UTF-8 bytes of the scored text): comparable across tokenizers.
* Timings exclude warm-up and synchronise CUDA; training throughput is forward + backward + optimizer step. They are
  taken once no background compile of ``auto`` runs (:func:`settle`): the paths a long run trains and generates on,
  with both cores of a 2-core machine (the seconds waited are reported beside the figures).
"""

from __future__ import annotations

import copy
import math
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.device import to_device
from ..layers import FFN, autotune
from ..layers.saved import saved_bytes
from ..train.optim import adamw as build_adamw

# Dense bf16 peak of one accelerator (FLOP/s), for MFU. Substring of torch.cuda.get_device_name -> peak.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
                   "4090": 165e12, "3090": 71e12}


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones, CUDA synchronised."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
    return sorted(samples)[len(samples) // 2]


# -- quality ----------------------------------------------------------------------------------------------------
def nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL and the number of scored tokens; ``labels`` of -100 are not scored.
    ``logits`` (B, T, V) predict ``labels`` shifted by one, as in causal LMs."""
    total, count = _nll_sums(logits, labels).tolist()
    return total, int(count)


def _nll_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``nll_sum`` as a float64 tensor (NLL, count) on the logits' device, nothing read: a loop over batches sums
    these there and reads once (on a GPU each read drains the queue, and the host could not prepare the next batch
    while the device ran)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")
    return torch.stack([loss.double(), (labels != -100).sum().double()])


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, n_new)`` windows over a stream of ``n_tokens``: the window ``[begin, end)`` (at most ``context``
    tokens) scores its last ``n_new`` tokens. Every token but the first is scored exactly once, with at least
    ``context - stride`` tokens of context once past the first window (a window scores at most ``context - 1``
    tokens: its first token is only context)."""
    if context < 2 or not 0 < stride <= context:
        raise ValueError(f"need context >= 2 and stride in [1, context], got context={context}, stride={stride}")
    step = min(stride, context - 1)
    windows, target = [], 1  # next token to score
    while target < n_tokens:
        end = min(n_tokens, context if target == 1 else target + step)
        begin = max(0, end - context)
        windows.append((begin, end, end - target))
        target = end
    return windows


@torch.no_grad()
def lm_nll(model: nn.Module, tokens: torch.Tensor, *, context: int, stride: int | None = None,
           batch_size: int = 8) -> tuple[float, int]:
    """Token-weighted NLL of a 1-D token stream under sliding windows; returns (sum of NLL, tokens scored)."""
    stride = stride or context
    device = next(model.parameters()).device
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    windows = sliding_windows(len(tokens), context, stride)
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:  # equal-length windows batch together
        by_len.setdefault(w[1] - w[0], []).append(w)
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i: i + batch_size]
            ids = torch.stack([tokens[b:e] for b, e, _ in chunk])
            labels = ids.clone()  # masked on the host: a write per row on the device is a launch per row
            for row, (b, e, n_new) in enumerate(chunk):
                labels[row, : (e - b) - n_new] = -100
            ids, labels = to_device(ids, device), to_device(labels, device)
            sums += _nll_sums(model(input_ids=ids).logits, labels)
    total, count = sums.tolist()  # read once
    return total, int(count)


def perplexity(total_nll: float, n_tokens: int) -> float:
    return math.exp(total_nll / n_tokens)


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    return total_nll / (math.log(2) * n_bytes)


@torch.no_grad()
def classification_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
                           ) -> dict[str, float]:
    device = next(model.parameters()).device
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed there, read once
    for i in range(0, len(y), batch_size):
        logits = model(pixel_values=to_device(x[i: i + batch_size], device)).logits.float()
        target = to_device(y[i: i + batch_size], device)
        sums += torch.stack([F.cross_entropy(logits, target, reduction="sum").double(),
                             (logits.argmax(-1) == target).sum().double()])
    total, correct = sums.tolist()
    return {"val_loss": total / len(y), "val_acc": correct / len(y)}


# -- cost -------------------------------------------------------------------------------------------------------
def param_counts(model: nn.Module) -> dict[str, int]:
    """Total, non-embedding (token and position embeddings excluded, Kaplan et al. 2020; a tied LM head counts once,
    as the embedding) and FFN parameters."""
    seen: set[int] = set()
    total = embed = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if isinstance(module, nn.Embedding) or name == "position_embeddings":
                embed += p.numel()
    ffn = sum(m.num_params() for m in model.modules() if isinstance(m, FFN))
    return {"params": total, "non_embedding_params": total - embed, "ffn_params": ffn}


# -- speed and memory -------------------------------------------------------------------------------------------
class _FFNTimer:
    """Wall time spent inside FFN modules, forward and backward, via module hooks (CUDA synchronised)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device, self.fwd, self.bwd, self.handles = device, 0.0, 0.0, []
        self._t: dict[int, float] = {}
        for m in model.modules():
            if isinstance(m, FFN):
                self.handles += [m.register_forward_pre_hook(self._start("f")),
                                 m.register_forward_hook(self._stop("f")),
                                 m.register_full_backward_pre_hook(self._start("b")),
                                 m.register_full_backward_hook(self._stop("b"))]

    def _start(self, kind: str) -> Callable:
        def hook(module, *args):
            _sync(self.device)
            self._t[id(module), kind] = time.perf_counter()
        return hook

    def _stop(self, kind: str) -> Callable:
        def hook(module, *args):
            _sync(self.device)
            dt = time.perf_counter() - self._t.pop((id(module), kind))
            if kind == "f":
                self.fwd += dt
            else:
                self.bwd += dt
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# How long a measurement waits for background compiles before it times what runs meanwhile (and says so)
SETTLE_TIMEOUT_S = 900.0


def settle(step: Callable[[], Any], what: str, timeout_s: float = SETTLE_TIMEOUT_S, *, first_call: bool = True
           ) -> float:
    """Run ``step`` (first once, with ``first_call``: where no call warmed up yet) until no background compile of
    ``auto`` runs (layers/autotune.py: a KAN FFN's fused helpers, and
    its graphs of few tokens, compile in a process of their own, started by the first calls that want them), then
    once more, in which ``auto`` loads what they made and takes its paths. The seconds waited (0 where nothing
    compiled). A figure timed meanwhile measures the interim paths with one core of a 2-core machine taken by the
    compile: a fresh machine's ``make demo`` table read the B-spline GPT-2's training at 0.27x the MLP's and its
    generation at 0.10x, each arm's evaluation timed while the compile its own first calls had started ran beside it
    (2026-12-05, the development CPU; ~0.9x and ~0.6x once settled)."""
    began = time.monotonic()
    if first_call:
        step()
    if not autotune.busy():
        return 0.0
    print(f"kanformer: timing {what} once the background compile of the KAN paths is done (at most "
          f"{timeout_s:.0f} s) ...", file=sys.stderr, flush=True)
    while autotune.busy():
        if time.monotonic() - began > timeout_s:
            print(f"kanformer: the background compile still runs after {timeout_s:.0f} s: {what} timed meanwhile",
                  file=sys.stderr, flush=True)
            return time.monotonic() - began
        time.sleep(1.0)
        step()
    step()
    waited = time.monotonic() - began
    print(f"kanformer: compiled; timing {what} ({waited:.0f} s waited)", file=sys.stderr, flush=True)
    return waited


def measure_training(model: nn.Module, make_batch: Callable[[], dict[str, torch.Tensor]], tokens_per_batch: int, *,
                     steps: int = 5, warmup: int = 2, lr: float = 1e-4, adamw: str = "auto",
                     details: bool = True) -> dict[str, Any]:
    """Training throughput of a copy of ``model`` (AdamW step included: implementation ``adamw``, as training's
    ``train.adamw``), and with ``details`` the FFN share of the step, and memory; timed after :func:`settle`
    (``train_settle_s``: the seconds it waited for background compiles)."""
    device = next(model.parameters()).device
    model = copy.deepcopy(model).train()
    opt = build_adamw(model.parameters(), impl=adamw, lr=lr)

    def step() -> None:
        loss = model(**make_batch()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    settled_s = settle(step, "training", first_call=warmup == 0)
    reset_peak_memory(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - t0
    out = {"train_tokens_per_s": steps * tokens_per_batch / elapsed, "train_step_s": elapsed / steps,
           "train_settle_s": settled_s}
    if not details:
        return out
    memory = memory_stats(device)
    memory["activation_bytes"] = saved_activation_bytes(model, **make_batch())
    timer = _FFNTimer(model, device)
    try:  # a separate pass: the hooks' synchronisation must not slow the timed steps
        t1 = time.perf_counter()
        step()
        hooked = time.perf_counter() - t1
    finally:
        timer.remove()
    out.update(ffn_fwd_fraction=timer.fwd / hooked, ffn_bwd_fraction=timer.bwd / hooked, **memory)
    return out


@torch.no_grad()
def measure_inference(model: nn.Module, *, vocab_size: int, batch_size: int, prompt_len: int, new_tokens: int,
                      warmup: int = 1, repeats: int = 3, pad_token_id: int = 0) -> dict[str, float]:
    """Prefill tokens/s (one forward over the prompts) and generation tokens/s (greedy, KV cache), timed after
    :func:`settle` (``generate_settle_s``: the seconds it waited for background compiles) on a prefill and a generation
    of two tokens: a generation's first calls of few tokens start the compile of their own graphs."""
    device = next(model.parameters()).device
    model.eval()
    ids = torch.randint(0, vocab_size, (batch_size, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)

    def timed(fn: Callable[[], Any]) -> float:
        return median_time(fn, device, warmup=warmup, repeats=repeats)

    def generate(n: int) -> Any:
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=pad_token_id)

    settled_s = settle(lambda: (model(input_ids=ids), generate(2)), "generation")
    prefill = timed(lambda: model(input_ids=ids))
    gen = timed(lambda: generate(new_tokens))
    return {"prefill_tokens_per_s": batch_size * prompt_len / prefill,
            "generate_tokens_per_s": batch_size * new_tokens / max(gen - prefill, 1e-9),
            "generate_settle_s": settled_s}


_RSS_AT_RESET: list[int] = []
_CUDA_AT_RESET: list[int] = []


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith(field + ":")).split()[1])
    except (OSError, StopIteration):
        return None


def saved_activation_bytes(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """Bytes of the distinct storages autograd keeps for backward during ``module(*args, **kwargs)``, parameters
    excluded: the activation memory of a training step, measured the same way on every device."""
    params = frozenset(p.untyped_storage().data_ptr() for p in module.parameters())
    return saved_bytes(lambda: module(*args, **kwargs), exclude=params)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA's allocator statistics, or on Linux the process's resident high-water
    mark (writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        _CUDA_AT_RESET[:] = [torch.cuda.memory_allocated(device)]
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux or not permitted: the peak then covers the whole process
    _RSS_AT_RESET[:] = [_proc_status_kib("VmRSS") or 0]


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory since ``reset_peak_memory``: CUDA allocated / reserved and the allocated peak's growth over what
    was allocated at the reset; on CPU the process's resident peak and its growth over the resident size at the reset.
    The growth is what the measured work added (a step's activations, gradients and temporaries), apart from whatever
    else the process holds (other models, optimizer states)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        base = _CUDA_AT_RESET[0] if _CUDA_AT_RESET else peak
        return {"peak_allocated_bytes": peak, "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
                "peak_allocated_growth_bytes": max(0, peak - base)}
    hwm = _proc_status_kib("VmHWM")
    if hwm is None:
        return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    base = _RSS_AT_RESET[0] if _RSS_AT_RESET else hwm
    return {"peak_rss_bytes": hwm * 1024, "peak_rss_growth_bytes": max(0, hwm - base) * 1024}
