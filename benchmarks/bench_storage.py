"""How small, and how fast to write, is each storage? The demo job, one run, alternating.

The demo job of ``configs/demo.yaml`` (random-weight resnet18, its six sites, its
96 gratings at 64 px, written here with ``unitrec.stimuli.gratings`` into a temp
folder, batch size 32, CPU) recorded with each storage in turn, in alternating
order, `--repeats` times:

- float32 uncompressed (the default), float16 uncompressed,
- float32 + gzip (shuffle + deflate level 1), float16 + gzip,
- keepbits 10 (BitRound to 10 mantissa bits, + shuffle + gzip), keepbits 7,
- float32 + zstd (level 1), when hdf5plugin is importable.

Printed per storage: the file size, the median recording time (``ur.record``, model
set-up and hashing included) and its ratio to float32 uncompressed, and how long the
forward pass waited for the writer thread: the time spent blocked in
``AsyncWriter.submit`` (the queue of batches for the disk was full) plus the wait in
``AsyncWriter.close`` for the last batches. Near zero: the writer kept up.

Usage::

    python benchmarks/bench_storage.py              # ~1 min on 2 CPU cores
    python benchmarks/bench_storage.py --repeats 5 --copies 4   # 4× the stimuli

This is a benchmark, not a test: it asserts nothing and prints numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import unitrec as ur
from unitrec.anatomy.preprocess import build_transform
from unitrec.files import writer as writer_module
from unitrec.stimuli import gratings

REPO = Path(__file__).resolve().parents[1]


class _WaitClock:
    """Time the recording loop spends waiting for the writer thread (submit on a full queue, close)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._submit, self._close = writer_module.AsyncWriter.submit, writer_module.AsyncWriter.close

    def __enter__(self) -> _WaitClock:
        clock = self

        def submit(self, fn, *args):
            start = time.perf_counter()
            try:
                return clock._submit(self, fn, *args)
            finally:
                clock.seconds += time.perf_counter() - start

        def close(self):
            start = time.perf_counter()
            try:
                return clock._close(self)
            finally:
                clock.seconds += time.perf_counter() - start

        writer_module.AsyncWriter.submit, writer_module.AsyncWriter.close = submit, close  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        cls = writer_module.AsyncWriter
        cls.submit, cls.close = self._submit, self._close  # type: ignore[method-assign]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="recordings per storage (default 3)")
    p.add_argument("--copies", type=int, default=1, help="the gratings this many times (default 1: 96 images)")
    p.add_argument("--out-dir", default=None, help="folder on the disk to test (default: the system temp)")
    args = p.parse_args()
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    generate = {k: v for k, v in cfg["stimuli"]["generate"].items() if k != "kind"}
    storages: dict[str, dict[str, Any]] = {
        "float32": {},
        "float16": {"dtype": "float16"},
        "float32+gzip": {"compression": "gzip"},
        "float16+gzip": {"dtype": "float16", "compression": "gzip"},
        "keepbits 10 (+gzip)": {"keepbits": 10},
        "keepbits 7 (+gzip)": {"keepbits": 7},
    }
    if importlib.util.find_spec("hdf5plugin") is not None:
        storages["float32+zstd"] = {"compression": "zstd"}
    folder = Path(tempfile.mkdtemp(dir=args.out_dir, prefix="bench_storage_"))
    try:
        stim = folder / "stimuli"
        for i in range(args.copies):
            gratings(stim / f"copy{i}" if args.copies > 1 else stim, **generate)
        model = ur.load_model(cfg["model"]["name"], seed=cfg["model"]["seed"])
        transform = build_transform(cfg["preprocess"])
        record: dict[str, Any] = dict(batch_size=cfg["record"]["batch_size"], device=cfg["record"]["device"],
                                      progress=False)
        ur.record(model, stim, cfg["layers"], folder / "warm.h5", transform=transform, **record)  # imports, caches
        times: dict[str, list[float]] = {k: [] for k in storages}
        waits: dict[str, list[float]] = {k: [] for k in storages}
        sizes: dict[str, int] = {}
        names = list(storages)
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                out = folder / "out.h5"
                out.unlink(missing_ok=True)
                with _WaitClock() as clock:
                    start = time.perf_counter()
                    ur.record(model, stim, cfg["layers"], out, transform=transform, **record, **storages[name])
                    times[name].append(time.perf_counter() - start)
                waits[name].append(clock.seconds)
                sizes[name] = os.path.getsize(out)
        n = len(list(stim.rglob("*.png")))
        base_t, base_s = statistics.median(times["float32"]), sizes["float32"]
        print(f"demo job: {cfg['model']['name']} (random weights), {len(cfg['layers'])} sites, {n} gratings of "
              f"{generate['size']} px, batch {record['batch_size']}, {record['device']}, "
              f"{os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}; "
              f"median of {args.repeats} runs, alternating")
        print(f"{'storage':<22}{'size':>10}{'vs f32':>8}{'time s':>9}{'vs f32':>8}{'waited for writer s':>21}")
        for name in storages:
            t = statistics.median(times[name])
            print(f"{name:<22}{sizes[name] / 2**20:>8.1f}MB{sizes[name] / base_s:>8.2f}{t:>9.2f}{t / base_t:>8.2f}"
                  f"{statistics.median(waits[name]):>21.3f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
