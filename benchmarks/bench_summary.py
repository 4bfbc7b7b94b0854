"""What a summary costs: keep: summary of 100,000 stimuli vs a bare forward pass and vs full storage.

resnet18 (random weights), 64 px tensor stimuli made on demand (seeded noise, so
nothing in memory grows with N), batch 128, one process. Three runs, each in a fresh
subprocess so that its peak RSS is its own:

- bare:    the DataLoader and ``model(x)`` under ``torch.inference_mode()``, nothing kept;
- summary: ``ur.record`` with ``layer3`` (every unit, 256×4×4) and ``layer4`` pooled (max),
           both ``keep: summary``;
- full:    the same sites stored in full (``keep: full``), for comparison.

Prints seconds, images/s, peak RSS and file size per run and the ratios to bare.

    PYTHONPATH=. python benchmarks/bench_summary.py              # 100,000 stimuli: ~25 min on 2 cores
    PYTHONPATH=. python benchmarks/bench_summary.py --n 5000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import torch
import unitrec as ur

mode, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))


class Noise(torch.utils.data.Dataset):
    def __len__(self):
        return n

    def __getitem__(self, i):
        return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i))


model = ur.load_model("resnet18", seed=0)
batch = 128
t = time.perf_counter()
if mode == "bare":
    loader = torch.utils.data.DataLoader(Noise(), batch_size=batch)
    with torch.inference_mode():
        for x in loader:
            model(x)
    size = 0
else:
    keep = "summary" if mode == "summary" else "full"
    layers = [{"name": "layer3", "keep": keep}, {"name": "layer4", "pool": "max", "keep": keep}]
    path = ur.record(model, Noise(), layers, out, batch_size=batch, progress=False)
    size = path.stat().st_size
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "size": size}))
"""


def _run(mode: str, n: int, out: Path, threads: int) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    res = subprocess.run([sys.executable, "-c", _CHILD, mode, str(n), str(out), str(threads)], env=env,
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{mode} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mb(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="stimuli (default 100,000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for mode in ("bare", "summary", "full"):
            results[mode] = r = _run(mode, args.n, Path(tmp) / f"{mode}.h5", args.threads)
            print(f"{mode:<8} {r['seconds']:8.1f} s  {args.n / r['seconds']:7.1f} img/s  peak RSS {_mb(r['rss']):>11}"
                  f"  file {_mb(r['size']) if r['size'] else '-':>11}", flush=True)
    bare = results["bare"]["seconds"]
    print(f"summary ÷ bare: {results['summary']['seconds'] / bare:.3f}   full ÷ bare: "
          f"{results['full']['seconds'] / bare:.3f}   full file ÷ summary file: "
          f"{results['full']['size'] / results['summary']['size']:.0f}×")


if __name__ == "__main__":
    main()
