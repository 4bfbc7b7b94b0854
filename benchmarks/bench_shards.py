"""What does sharding cost? One run, ratios printed.

1. Throughput: the same job (random-weight resnet18 on PNGs) recorded by one process
   with N torch threads, and by N shard processes with one thread each, side by side
   (``unitrec run CONFIG --shard i/N``; the last one stitches). Goal: ≥ 0.95.
2. ``ur.merge``: stitching shards of a small and a large recording, as virtual
   datasets (no data copied: the time should not grow with the size) and with
   ``copy=True``, against ``cp`` of the shard files.

    python benchmarks/bench_shards.py                 # ~6 min on 2 CPU cores, 20 GB of disk
    python benchmarks/bench_shards.py --big-gb 2      # a smaller "large" recording
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def throughput(tmp: Path, images: int, size: int, shards: int) -> dict[str, float]:
    import yaml

    _images(tmp / "stim", images, size)
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": str(tmp / "stim")},
           "preprocess": {"resize": None, "crop": None, "normalize": "imagenet"},
           "layers": ["layer1", "layer3", "fc"], "record": {"batch_size": 32, "progress": False}}
    times = {}
    for name, runs in (("one", [None]), ("sharded", [f"{i}/{shards}" for i in range(shards)])):
        cfg["output"] = str(tmp / name / "acts.h5")
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        threads = shards if name == "one" else 1
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "unitrec", "run", str(tmp / f"{name}.yaml")]
                                  + (["--shard", s] if s else []), env=env, stdout=subprocess.DEVNULL)
                 for s in runs]
        if any(p.wait() for p in procs):
            raise SystemExit(f"{name}: a recording failed")
        times[name] = time.perf_counter() - start
    import unitrec as ur

    for site in ("layer1", "layer3", "fc"):
        same = np.array_equal(ur.load_layer(tmp / "one" / "acts.h5", site).values,
                              ur.load_layer(tmp / "sharded" / "acts.h5", site).values)
        if not same:
            raise SystemExit(f"{site}: the stitched recording differs from one process")
    return times


class _Rows(torch.utils.data.Dataset):
    """A Dataset of random (64, 32, 32) rows, made on the fly (no 10 GB tensor in memory)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.from_numpy(np.random.default_rng(i).standard_normal((64, 32, 32), dtype=np.float32))


def merging(tmp: Path, gigabytes: float, shards: int) -> dict[str, float]:
    import unitrec as ur

    rows = int(gigabytes * 1e9 / (64 * 32 * 32 * 4)) // 64 * 64
    out = tmp / f"{gigabytes:g}GB" / "acts.h5"
    model = torch.nn.Sequential(torch.nn.Identity())
    start = time.perf_counter()
    for i in range(shards):
        ur.record(model, _Rows(rows), ["0"], out, shard=(i, shards), batch_size=64, progress=False)
    recorded = time.perf_counter() - start
    result = {"rows": rows, "record_s": recorded}
    start = time.perf_counter()
    ur.merge(out)
    result["merge_virtual_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ur.merge(out, copy=True)
    os.sync()
    result["merge_copy_s"] = time.perf_counter() - start
    nbytes = sum(f.stat().st_size for f in out.with_name(out.name + ".shards").glob("*.h5"))
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(out.with_name(out.name + ".shards")), str(tmp / "cp_copy")], check=True)
    os.sync()
    result["cp_s"] = time.perf_counter() - start
    result["bytes"] = nbytes
    shutil.rmtree(out.parent)
    shutil.rmtree(tmp / "cp_copy")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512, help="PNGs for the throughput test (default 512)")
    p.add_argument("--size", type=int, default=96, help="their side in pixels (default 96)")
    p.add_argument("--shards", type=int, default=2, help="shards, and threads of the one process (default 2)")
    p.add_argument("--small-gb", type=float, default=0.1, help="the small recording to merge (default 0.1)")
    p.add_argument("--big-gb", type=float, default=10, help="the large recording to merge (default 10)")
    p.add_argument("--out-dir", default=None, help="folder on the disk to test (default: the system temp)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.out_dir, prefix="unitrec-shards-") as tmp_name:
        tmp = Path(tmp_name)
        load = os.getloadavg()[0]
        t = throughput(tmp / "throughput", args.images, args.size, args.shards)
        print(f"\nthroughput: 1 process × {args.shards} threads {t['one']:.1f} s; {args.shards} shards × 1 thread "
              f"in parallel {t['sharded']:.1f} s (including the stitch) → sharded ÷ one-process throughput "
              f"{t['one'] / t['sharded']:.2f} (goal ≥ 0.95); stitched file equal to one process")
        for gb in (args.small_gb, args.big_gb):
            m = merging(tmp, gb, args.shards)
            size = m["bytes"] / 1e9
            print(f"merge of {size:.2f} GB ({m['rows']} rows, {args.shards} shards): virtual {m['merge_virtual_s']:.3f} s; "
                  f"--copy {m['merge_copy_s']:.1f} s ({size / m['merge_copy_s']:.2f} GB/s) vs cp of the shards "
                  f"{m['cp_s']:.1f} s ({size / m['cp_s']:.2f} GB/s): --copy ÷ cp time {m['merge_copy_s'] / m['cp_s']:.2f}")
        print(f"1-min load average: {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
