"""Data order as a pure function of (seed, step): which examples (blocks of tokens, images) a rank trains on.

The examples form an endless sequence of epochs, each a seeded permutation of ``range(n)``. The permutation is
computed per position, never stored: rounds of an odd multiply-add and a xor-shift, each a bijection of the integers
modulo the next power of two, keyed by a hash of (seed, epoch), with cycle walking back into ``[0, n)`` (the power of
two is < 2n, so under two rounds of walking on average). No table of n indices is built, so memory does not grow
with the corpus, and any position can be looked up directly, which is what makes resuming exact and lets each rank
compute only its own examples. A micro-batch's indices take microseconds (Python integers for small batches, numpy
for large ones: the same arithmetic, tested equal).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

_ROUNDS = 4
_SMALL = 256  # batches up to this size are mapped with Python integers (numpy's per-call cost dominates there)


@functools.lru_cache(maxsize=256)
def _keys(seed: int, epoch: int, bits: int) -> tuple[tuple[tuple[int, int], ...], int, int]:
    """((odd multiplier, addend) per round, mask, shift) of epoch ``epoch``'s permutation of ``2**bits`` integers."""
    digest = hashlib.blake2b(f"kanformer-order:{seed}:{epoch}".encode(), digest_size=16 * _ROUNDS).digest()
    mask = (1 << bits) - 1
    rounds = tuple((int.from_bytes(digest[16 * r: 16 * r + 8], "little") & mask | 1,
                    int.from_bytes(digest[16 * r + 8: 16 * r + 16], "little") & mask) for r in range(_ROUNDS))
    return rounds, mask, max(1, (bits + 1) // 2)


def _permute_int(i: int, n: int, keys: tuple) -> int:
    rounds, mask, shift = keys
    while True:
        for mult, add in rounds:
            i = (i * mult + add) & mask
            i ^= i >> shift
        if i < n:
            return i


def _permute_array(i: np.ndarray, n: int, keys: tuple) -> np.ndarray:
    rounds, mask, shift = keys
    y = i.astype(np.uint64)
    todo = np.ones(len(y), dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():  # cycle walking: apply the permutation again to those outside [0, n)
            x = y[todo]
            for mult, add in rounds:  # (x * mult + add) mod 2**64, then mod 2**bits: the same as with Python ints
                x = (x * np.uint64(mult) + np.uint64(add)) & np.uint64(mask)
                x ^= x >> np.uint64(shift)
            y[todo] = x
            todo[todo] = x >= np.uint64(n)
    return y.astype(np.int64)


def permute(index: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """``index`` (values in ``[0, n)``) mapped through epoch ``epoch``'s permutation of ``range(n)``."""
    keys = _keys(seed, epoch, max(1, (n - 1).bit_length()))
    index = np.asarray(index, dtype=np.int64)
    if len(index) <= _SMALL:
        return np.array([_permute_int(int(i), n, keys) for i in index], dtype=np.int64)
    return _permute_array(index, n, keys)


def example_indices(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The example at each global position of the endless sequence of epochs (position // n is the epoch)."""
    if n < 1:
        raise ValueError(f"no examples to order (n={n})")
    positions = np.asarray(positions, dtype=np.int64)
    bits = max(1, (n - 1).bit_length())
    if len(positions) <= _SMALL:
        out = []
        for p in positions.tolist():
            epoch, i = divmod(p, n)
            out.append(_permute_int(i, n, _keys(seed, epoch, bits)))
        return np.array(out, dtype=np.int64)
    epochs, within = np.divmod(positions, n)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs).tolist():
        sel = epochs == epoch
        out[sel] = permute(within[sel], n, seed, epoch)
    return out


def rank_positions(step: int, micro: int, *, rank: int, world: int, batch_size: int, grad_accum: int,
                   count: int = 1) -> np.ndarray:
    """Global positions of this rank's micro-batch: the global batch of (step, micro) is ``world * batch_size``
    consecutive positions, rank r taking the r-th run of ``batch_size`` of them. ``count``: this micro-batch and the
    ``count - 1`` after it (in training order), concatenated."""
    micro_batches = np.arange(step * grad_accum + micro, step * grad_accum + micro + count, dtype=np.int64)
    starts = (micro_batches * world + rank) * batch_size
    return (starts[:, None] + np.arange(batch_size)).ravel()
