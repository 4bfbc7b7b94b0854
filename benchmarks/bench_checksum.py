"""What does the Fletcher-32 checksum on each chunk of `activation` cost? One run, ratios printed.

Three measurements, each best of `--repeats`, with and without the checksum, in
alternating order in one process (``unitrec.files.writer._CHECKSUM`` off and on):

1. ``ur.record`` of a model that does no work (the stimuli are the site: 64×32×32
   float32 per image), so the time is the write path alone: HDF5 writes, flushes,
   the checksum, fsync. Without the checksum, whole chunks go to the file with
   ``H5Dwrite_chunk``; with it, through HDF5's filter pipeline.
2. ``ur.record`` of random-weight resnet18 at 128 px, sites ``layer1`` (64×32×32),
   ``layer3.1``, ``avgpool``, ``fc``: what the checksum adds to a real recording.
3. Reading the first site back whole (``load_layer(...).values``): verifying costs too.

Usage::

    python benchmarks/bench_checksum.py            # ~2 min on 2 CPU cores
    python benchmarks/bench_checksum.py --quick    # ~30 s

This is a benchmark, not a test: it asserts nothing and prints numbers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import unitrec as ur
from unitrec.files import writer


class _Nothing(torch.nn.Module):
    """The stimuli pass through unchanged: recording `out` measures the write path alone."""

    def __init__(self) -> None:
        super().__init__()
        self.out = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


def _timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds (every thread of this process: the writer thread's too)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None, help="write test: images of 256 KB (default 1024; quick 256)")
    p.add_argument("--model-images", type=int, default=None, help="resnet18 test: images (default 256; quick 64)")
    p.add_argument("--repeats", type=int, default=None, help="runs per setting (default 3; quick 2)")
    p.add_argument("--out-dir", default=None, help="folder on the disk to test (default: the system temp)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n = args.images or (256 if args.quick else 1024)
    n_model = args.model_images or (64 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 3)
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    folder = Path(tempfile.mkdtemp(dir=args.out_dir, prefix="bench_checksum_"))
    try:
        big = torch.randn(n, 64, 32, 32)
        images = torch.randn(n_model, 3, 128, 128)
        nothing, resnet = _Nothing().eval(), ur.load_model("resnet18", seed=0)
        times: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for r in range(repeats):
            for checksum in ((False, True) if r % 2 == 0 else (True, False)):
                writer._CHECKSUM = checksum
                tag = "on" if checksum else "off"
                out = folder / f"write_{tag}.h5"
                out.unlink(missing_ok=True)
                times.setdefault(("write", checksum), []).append(_timed(lambda: ur.record(
                    nothing, big, ["out"], out, batch_size=32, progress=False)))
                times.setdefault(("read", checksum), []).append(_timed(lambda: ur.load_layer(out, "out").values))
                out = folder / f"model_{tag}.h5"
                out.unlink(missing_ok=True)
                times.setdefault(("model", checksum), []).append(_timed(lambda: ur.record(
                    resnet, images, ["layer1", "layer3.1", "avgpool", "fc"], out, batch_size=32, progress=False)))
        writer._CHECKSUM = True
        gb = big.numel() * 4 / 1e9
        print(f"Fletcher-32 on every chunk of activation, best of {repeats} (torch threads: "
              f"{torch.get_num_threads()})")
        print("(wall: best of the runs; CPU: least CPU time of the runs, all threads; a busy machine moves "
              "wall time more than CPU time)")
        for what, label, size in (("write", f"ur.record, write path alone ({n} × 256 KB)", gb),
                                  ("read", "load_layer(...).values of it", gb),
                                  ("model", f"ur.record, resnet18 128 px, {n_model} images, 4 sites", None)):
            off, on = (min(t[0] for t in times[(what, c)]) for c in (False, True))
            off_cpu, on_cpu = (min(t[1] for t in times[(what, c)]) for c in (False, True))
            rate = f"; {size / off:.2f} vs {size / on:.2f} GB/s" if size else ""
            print(f"{label:<48} wall off {off:6.2f} s  on {on:6.2f} s  on/off {on / off:.3f}{rate}")
            print(f"{'':<48} CPU  off {off_cpu:6.2f} s  on {on_cpu:6.2f} s  on/off {on_cpu / off_cpu:.3f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
