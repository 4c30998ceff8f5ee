"""Data order as a pure function of (seed, step): which examples (blocks of tokens, images) a rank trains on.

The examples form an endless sequence of epochs, each a seeded permutation of ``range(n)``. The permutation is a
Feistel network over the next power of four with cycle walking (a bijection computed per position): no table of n
indices is ever built, so memory does not grow with the corpus, and any position can be looked up directly — which
is what makes resuming exact and lets each rank compute only its own examples.
"""

from __future__ import annotations

import hashlib

import numpy as np

_ROUNDS = 4


def _round_keys(seed: int, epoch: int) -> list[np.uint64]:
    digest = hashlib.blake2b(f"kanformer-order:{seed}:{epoch}".encode(), digest_size=8 * _ROUNDS).digest()
    return [np.uint64(int.from_bytes(digest[8 * i: 8 * i + 8], "little")) for i in range(_ROUNDS)]


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of x ^ key (Steele et al. 2014): a well-mixed 64-bit hash."""
    x = x ^ key
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _feistel(x: np.ndarray, half: int, keys: list[np.uint64]) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    left, right = x >> np.uint64(half), x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right, key) & mask)
    return (left << np.uint64(half)) | right


def permute(index: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """``index`` (values in ``[0, n)``) mapped through epoch ``epoch``'s permutation of ``range(n)``."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)  # the domain 4**half >= n
    keys = _round_keys(seed, epoch)
    with np.errstate(over="ignore"):
        y = _feistel(np.asarray(index, dtype=np.uint64), half, keys)
        out_of_range = y >= np.uint64(n)
        while out_of_range.any():  # cycle walking: a permutation of the larger domain, restricted to [0, n)
            y[out_of_range] = _feistel(y[out_of_range], half, keys)
            out_of_range = y >= np.uint64(n)
    return y.astype(np.int64)


def example_indices(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The example at each global position of the endless sequence of epochs (position // n is the epoch)."""
    positions = np.asarray(positions, dtype=np.int64)
    if n < 1:
        raise ValueError(f"no examples to order (n={n})")
    epochs, within = np.divmod(positions, n)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs).tolist():
        sel = epochs == epoch
        out[sel] = permute(within[sel], n, seed, epoch)
    return out


def rank_positions(step: int, micro: int, *, rank: int, world: int, batch_size: int, grad_accum: int) -> np.ndarray:
    """Global positions of this rank's micro-batch: the global batch of (step, micro) is ``world * batch_size``
    consecutive positions, rank r taking the r-th run of ``batch_size`` of them."""
    start = ((step * grad_accum + micro) * world + rank) * batch_size
    return np.arange(start, start + batch_size, dtype=np.int64)
