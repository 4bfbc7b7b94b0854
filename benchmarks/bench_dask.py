"""What a memory bound costs when streaming a zstd conv site through dask.

Records 64 stimuli of a conv layer with 32 channels × 56 × 56 (100,352 units, zstd; one
stored chunk holds every unit of a batch, as conv sites get), then times the stimulus
Gram matrix behind rdm/cka/participation_ratio with the block budget set so that the
site is read in 1, 4, 16 and 41 blocks. A block that cuts a stored chunk decompresses
the whole chunk again, so the time grows with the number of blocks; the default budget
(a sixteenth of the machine's memory, 128 MiB to 1 GiB of float64) reads any site up to
that size in one block. Prints the times and their ratio to one block.

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

N = 64


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 32, 7, stride=2, padding=3), nn.ReLU())
        x = torch.randn(N, 3, 112, 112, generator=torch.Generator().manual_seed(1))
        path = ur.record(model, x, ["0"], Path(tmp) / "acts.h5", batch_size=8, progress=False,
                         compression="zstd")
        flat = as_population(ur.load_layer(path, "0", chunks={})).data
        units = flat.shape[1]
        print(f"site: {flat.shape[0]} stimuli x {units} units, dask chunks {flat.data.chunksize}; "
              f"default block budget here {_units._BLOCK_BYTES / 2**20:.0f} MiB")

        t = time.perf_counter()
        whole = np.asarray(flat.values, dtype=np.float64)
        print(f"load whole site:        {time.perf_counter() - t:7.2f} s")
        want = whole @ whole.T
        default, first = _units._BLOCK_BYTES, None
        try:
            for blocks in (1, 4, 16, 41):
                _units._BLOCK_BYTES = 8 * N * -(-units // blocks)
                t = time.perf_counter()
                got = stimulus_gram(flat, None)
                took = time.perf_counter() - t
                np.testing.assert_allclose(got, want, rtol=1e-10)
                first = first or took
                print(f"gram in {blocks:2d} block(s):     {took:7.2f} s  ({took / first:5.1f}x one block)")
        finally:
            _units._BLOCK_BYTES = default


if __name__ == "__main__":
    main()
