"""What ranking each unit's top stimuli costs: ``analysis.top_stimuli`` vs numpy's stable sort.

The hand-written alternative is ``np.argsort(-x, axis=0, kind="stable")[:k]`` over the
whole (stimulus, unit) array, the order ``top_stimuli`` promises (ties by stimulus order,
NaN last). Each shape is a random float32 array in memory, with a tenth of the responses
exactly 0 (a ReLU's ties); the results are checked equal before the times are printed.
Each contender runs ``--repeats`` times, alternating, and the best time counts. Also
timed: the same array on dask blocks of 200 stimuli, read in the default blocks.

    PYTHONPATH=. python benchmarks/bench_top_stimuli.py            # ~3 min on 2 cores
    PYTHONPATH=. python benchmarks/bench_top_stimuli.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr

from unitrec import analysis as A

SHAPES = [(200_000, 64), (20_000, 1_024), (2_000, 50_000), (200, 200_000), (20, 500_000)]


def _array(n: int, p: int) -> xr.DataArray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, p), dtype=np.float32)
    x[rng.random((n, p)) < 0.1] = 0.0
    return xr.DataArray(x, dims=("stimulus", "unit"), coords={"stimulus": [f"s{i}" for i in range(n)]})


def _best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller arrays, one repeat")
    args = parser.parse_args()
    shapes = [(max(n // 10, 20), p) for n, p in SHAPES] if args.quick else SHAPES
    repeats = 1 if args.quick else args.repeats
    print(f"k = {args.k}, best of {repeats}")
    print(f"{'stimuli × units':>18} {'top_stimuli':>12} {'numpy sort':>11} {'ratio':>7} {'on dask':>9}")
    for n, p in shapes:
        da = _array(n, p)
        ours, top = _best(lambda: A.top_stimuli(da, args.k), repeats)
        theirs, order = _best(lambda: np.argsort(-da.values, axis=0, kind="stable")[: args.k], repeats)
        labels = da["stimulus"].values
        assert (top["stimulus"].values == labels[np.asarray(order).T]).all(), "the rankings differ"
        lazy = da.chunk({"stimulus": 200})
        dask_time, lazy_top = _best(lambda: A.top_stimuli(lazy, args.k), repeats)
        assert (lazy_top["stimulus"].values == top["stimulus"].values).all()
        print(f"{n:>8,} × {p:<7,} {ours:>11.2f}s {theirs:>10.2f}s {theirs / ours:>6.1f}× {dask_time:>8.2f}s")


if __name__ == "__main__":
    main()
