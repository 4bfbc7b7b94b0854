"""Streaming a zstd conv1-like site through dask: unit blocks that cut chunks vs whole chunks.

Records 64 stimuli of a conv layer with 32 channels × 56 × 56 (100,352 units, zstd,
one stored chunk per stimulus holds all its units, as conv1 gets), then times the
stimulus Gram matrix behind rdm/cka over default-sized dask blocks of units cut
anywhere (what unitrec did) against blocks cut at chunk boundaries (what it does),
and against loading the site whole. Prints the times and their ratio.

    PYTHONPATH=. python benchmarks/bench_dask.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import unitrec as ur
from unitrec.analysis import _units
from unitrec.analysis._units import as_population, stimulus_gram

N, BLOCK = 64, 2500  # default blocks of 2500 units → 41 cut anywhere, as in the measured case


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 32, 7, stride=2, padding=3), nn.ReLU())
        x = torch.randn(N, 3, 112, 112, generator=torch.Generator().manual_seed(1))
        path = ur.record(model, x, ["0"], Path(tmp) / "acts.h5", batch_size=8, progress=False,
                         compression="zstd")
        flat = as_population(ur.load_layer(path, "0", chunks={})).data
        print(f"site: {flat.shape[0]} stimuli x {flat.shape[1]} units, dask chunks {flat.data.chunksize}")

        t = time.perf_counter()
        whole = np.asarray(flat.values, dtype=np.float64)
        load = time.perf_counter() - t

        _units._BLOCK_BYTES = 8 * N * BLOCK  # the default block size, scaled to this small site
        aligned = _units._spans
        _units._spans = lambda total, step, chunks: aligned(total, step, None)  # the old loop: cut anywhere
        try:
            t = time.perf_counter()
            before = stimulus_gram(flat, None)
            cut = time.perf_counter() - t
            blocks = -(-flat.shape[1] // BLOCK)
        finally:
            _units._spans = aligned
        t = time.perf_counter()
        after = stimulus_gram(flat, None)
        follow = time.perf_counter() - t
        np.testing.assert_allclose(after, before, rtol=1e-10)
        np.testing.assert_allclose(after, whole @ whole.T, rtol=1e-10)
        print(f"load whole site:                {load:7.2f} s")
        print(f"gram, {blocks} blocks cutting chunks: {cut:7.2f} s")
        print(f"gram, blocks of whole chunks:   {follow:7.2f} s")
        print(f"ratio cut / whole chunks:       {cut / follow:7.1f}x")


if __name__ == "__main__":
    main()
