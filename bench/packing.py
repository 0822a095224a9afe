"""Efficiency of gym's packing plan for several length distributions and ``sequence_len`` values.

    python bench/packing.py [--samples 20000] [--sequence-lens 512,1024,2048,4096] [--seed 0]

For each distribution the lengths are drawn (deterministically), samples longer than ``sequence_len`` are
dropped (gym's default ``excess_length_strategy: drop``) and the rest are handed to
``gym.data.packing.plan_packing``. The table gives the plan's efficiency (tokens / (rows x sequence_len)),
the best any plan could reach on that data (from Martello and Toth's lower bound on the rows: the total
length, and the samples longer than half a row, which can never share one) and the planning time. Every plan is checked:
each sample exactly once, no row over ``sequence_len``. Target: 99% or better wherever the data allows.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine, print_table  # noqa: E402

TARGET = 0.99


def _lognormal(median: float, sigma: float):
    return lambda rng: max(1, round(rng.lognormvariate(math.log(median), sigma)))


# name -> (description, draw(rng, sequence_len) -> length)
DISTRIBUTIONS = {
    "alpaca-like": ("log-normal, median 160, mean ~215 tokens", lambda rng, L: _lognormal(160, 0.75)(rng)),
    "chat-like": ("log-normal, median 450, mean ~590 tokens", lambda rng, L: _lognormal(450, 0.8)(rng)),
    "short": ("uniform 16..64 tokens", lambda rng, L: rng.randint(16, 64)),
    "uniform": ("uniform 1..sequence_len", lambda rng, L: rng.randint(1, L)),
    "long-tail": ("log-normal, median 800, sigma 1.0", lambda rng, L: _lognormal(800, 1.0)(rng)),
    "just-over-half": ("uniform 0.51..0.6 x sequence_len: no two fit a row", lambda rng, L: rng.randint(
        int(0.51 * L) + 1, int(0.6 * L))),
}


def best_possible(lengths: list[int], capacity: int) -> tuple[int, float]:
    """A lower bound on the rows any plan needs (Martello and Toth's L2), and the efficiency it allows.

    For each threshold k <= capacity / 2: samples longer than capacity - k share a row with nothing of
    length >= k; samples longer than half a row each need their own row; the samples of length in
    [k, capacity / 2] must fit in what those rows leave free, or open new rows.
    """
    total = sum(lengths)
    if not lengths:
        return 0, 1.0
    import bisect
    from itertools import accumulate

    ordered = sorted(lengths)
    prefix = [0, *accumulate(ordered)]

    def count_sum(low: int, high: int) -> tuple[int, int]:  # samples with low <= length <= high
        a, b = bisect.bisect_left(ordered, low), bisect.bisect_right(ordered, high)
        return b - a, prefix[b] - prefix[a]

    half = capacity // 2
    rows = math.ceil(total / capacity)
    for k in sorted({n for n in ordered if n <= half} | {0}):
        n1, _ = count_sum(capacity - k + 1, capacity)
        n2, s2 = count_sum(half + 1, capacity - k)
        _, s3 = count_sum(max(k, 1), half)
        spill = s3 - (n2 * capacity - s2)
        rows = max(rows, n1 + n2 + max(0, math.ceil(spill / capacity)))
    return rows, total / (rows * capacity)


def check_plan(bins: list[list[int]], lengths: list[int], capacity: int) -> None:
    seen = sorted(i for b in bins for i in b)
    if seen != list(range(len(lengths))):
        raise AssertionError("the plan does not hold every sample exactly once")
    worst = max((sum(lengths[i] for i in b) for b in bins), default=0)
    if worst > capacity:
        raise AssertionError(f"a packed row holds {worst} tokens, more than {capacity}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000, help="samples drawn per distribution (default 20000)")
    parser.add_argument("--sequence-lens", default="512,1024,2048,4096", help="comma-separated sequence_len values")
    parser.add_argument("--distributions", default=",".join(DISTRIBUTIONS), help="comma-separated names")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()

    from gym.plugins.sft.packing import packing_efficiency, plan_packing

    print_machine("Packing efficiency")
    print(f"{opts.samples:,} samples drawn per distribution (seed {opts.seed}); samples over sequence_len dropped")
    print()
    for name in opts.distributions.split(","):
        print(f"- {name}: {DISTRIBUTIONS[name][0]}")
    print()
    rows = []
    for name in opts.distributions.split(","):
        draw = DISTRIBUTIONS[name][1]
        for capacity in (int(v) for v in opts.sequence_lens.split(",")):
            rng = random.Random(f"{opts.seed}-{name}-{capacity}")
            drawn = [draw(rng, capacity) for _ in range(opts.samples)]
            lengths = [n for n in drawn if n <= capacity]
            start = time.perf_counter()
            bins = plan_packing(lengths, capacity)
            seconds = time.perf_counter() - start
            check_plan(bins, lengths, capacity)
            efficiency = packing_efficiency(lengths, bins, capacity)
            own = sum(lengths) / (len(bins) * capacity)
            if abs(efficiency - own) > 1e-9:
                raise AssertionError(f"packing_efficiency says {efficiency}, tokens / capacity says {own}")
            bound_rows, bound = best_possible(lengths, capacity)
            if efficiency >= TARGET:
                verdict = "yes"
            elif bound < TARGET and len(bins) <= bound_rows:
                verdict = f"optimal (data allows {bound:.1%})"
            elif bound < TARGET:
                verdict = f"data allows <= {bound:.1%}; plan {100 * (bound - efficiency):.2f} pt below"
            else:
                verdict = "MISSED"
            rows.append([
                name, capacity, len(lengths), len(drawn) - len(lengths), len(bins), bound_rows,
                f"{efficiency:.2%}", f"{bound:.2%}", seconds * 1000, verdict,
            ])
    print_table(
        ["distribution", "sequence_len", "samples", "dropped", "rows", "min rows", "efficiency",
         "best possible", "plan ms", "target (99%)"],
        rows,
    )


if __name__ == "__main__":
    main()
