"""Sample packing: a bin-packing plan over sample lengths, and packed rows built from it.

The plan is best-fit decreasing: samples are placed longest first, each into the bin whose free space
fits it most tightly. Bins are indexed by their free space (a sorted list of the distinct free sizes,
searched with bisect), so placing a sample costs O(log capacity), and 100k samples take a fraction of a
second. A packed row is its samples one after another; ``position_ids`` restart at 0 for each sample,
and the first label of each sample is -100 (nothing before it in the sample predicts it).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Sequence

import numpy as np


def plan_packing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of the samples in each bin; every sample appears exactly once and no bin exceeds ``capacity``."""
    sizes = np.asarray(lengths, dtype=np.int64)
    if sizes.size == 0:
        return []
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    if sizes.min() < 1 or sizes.max() > capacity:
        worst = int(sizes.max()) if sizes.max() > capacity else int(sizes.min())
        raise ValueError(f"sample lengths must be between 1 and the capacity {capacity}, got {worst}")
    order = np.argsort(-sizes, kind="stable").tolist()
    sizes_list = sizes.tolist()
    bins: list[list[int]] = []
    free_sizes: list[int] = []  # sorted distinct free space of the bins that still have some
    by_free: dict[int, list[int]] = {}  # free space -> bins with exactly that much
    for index in order:
        size = sizes_list[index]
        at = bisect_left(free_sizes, size)
        if at < len(free_sizes):
            free = free_sizes[at]
            holders = by_free[free]
            b = holders.pop()
            if not holders:
                del free_sizes[at]
                del by_free[free]
        else:
            free = capacity
            b = len(bins)
            bins.append([])
        bins[b].append(index)
        left = free - size
        if left > 0:
            holders = by_free.get(left)
            if holders is None:
                by_free[left] = [b]
                insort(free_sizes, left)
            else:
                holders.append(b)
    return bins


def packing_efficiency(lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int) -> float:
    """Real tokens over token slots (bins x capacity)."""
    if not bins:
        return 0.0
    total = int(np.asarray(lengths, dtype=np.int64).sum())
    return total / (len(bins) * capacity)


def pack_columns(
    offsets: np.ndarray, input_ids: np.ndarray, labels: np.ndarray, bins: Sequence[Sequence[int]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Packed rows from flat token arrays.

    ``offsets`` (n + 1) delimit the n samples in the flat ``input_ids`` / ``labels``. Returns, for
    ``input_ids``, ``labels`` and ``position_ids``, ``(row_offsets, values)`` of the packed rows.
    """
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64)
    starts = offsets[:-1][order]
    lens = (offsets[1:] - offsets[:-1])[order]
    sample_ends = np.cumsum(lens)
    sample_starts = sample_ends - lens
    total = int(sample_ends[-1]) if len(sample_ends) else 0
    within = np.arange(total, dtype=np.int64) - np.repeat(sample_starts, lens)
    gather = np.repeat(starts, lens) + within
    packed_ids = input_ids[gather]
    packed_labels = labels[gather].copy()
    packed_labels[sample_starts[lens > 0]] = -100
    samples_per_row = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    last_sample = np.cumsum(samples_per_row) - 1
    row_offsets = np.concatenate([[0], sample_ends[last_sample]]).astype(np.int64)
    return {
        "input_ids": (row_offsets, packed_ids),
        "labels": (row_offsets, packed_labels),
        "position_ids": (row_offsets, within.astype(input_ids.dtype, copy=False)),
    }


def pack_samples(samples: Sequence[dict], capacity: int) -> list[dict[str, list[int]]]:
    """Packed rows (``input_ids``, ``labels``, ``position_ids`` as lists) of supervised ``samples`` (dicts with
    ``input_ids`` and ``labels``), bins of at most ``capacity`` tokens: what the SFT data shape makes of them.
    For checks and benchmarks; the data pipeline packs whole columns with :func:`pack_columns`."""
    lengths = [len(s["input_ids"]) for s in samples]
    bins = plan_packing(lengths, capacity)
    packed = pack_columns(np.cumsum([0] + lengths), np.concatenate([s["input_ids"] for s in samples]),
                          np.concatenate([s["labels"] for s in samples]), bins)
    offsets = packed["input_ids"][0]
    return [{name: packed[name][1][a:b].tolist() for name in packed} for a, b in zip(offsets[:-1], offsets[1:])]
