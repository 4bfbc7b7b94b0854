"""What does one ``ur.record`` call cost over a bare forward pass? One run, ratios printed.

The jobs of issue 14, each timed against a bare forward pass over the same
stimuli with the same batch size, in the same process, alternating (bare, record,
bare, record, ...), ``--repeats`` times: the ratio of the best times, and the
median ratio of each recording to the bare pass run just before it (steadier on a
machine whose speed drifts):

1. resnet50, 224 px tensor images, batch 16, ``layer1`` + ``layer4`` stored whole,
   64 and 256 images; the same with ``layer4`` only (64 images).
2. resnet18, 192 PNGs of 224 px through unitrec's loader, ``layer1`` + ``layer4.1``
   + ``fc``; ``layer1`` alone (stops after it) next to layer1's share of compute (a
   forward truncated by hand after it ÷ the full forward).
3. The fixed set-up of ``ur.record`` (call → first batch handed to the model): the
   first call in each of ``--setup-runs`` fresh processes (with and without the import
   of unitrec's recording modules, and with the trace forced to run the model for real,
   as before the hollow pass), and a second call on the same model.
4. What a user writes by hand for job 1 at 64 images: forward hooks that copy
   numpy arrays into memory and save them with h5py at the end.

Every recording writes a new file to ``--out-dir`` (the last run's file is deleted
before the clock starts) and fsyncs (ur.record always does). The
bare pass is ``torch.inference_mode`` over slices of the same tensor (job 1) or a
DataLoader over the same PNGs with the same transform (job 2).

Usage::

    python benchmarks/bench_overhead.py              # about 10 minutes on 2 CPU cores
    python benchmarks/bench_overhead.py --quick      # one small job, a smoke run
    python benchmarks/bench_overhead.py --device cuda --repeats 3

This is a benchmark, not a test: it asserts nothing and prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


_CPU: list[float] = []  # the CPU seconds (all threads) of each _timed call, in order


def _timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of fn(); its CPU seconds (this process, every thread) go to _CPU.

    CPU time does not count what a shared or virtual machine takes away (steal), so
    its ratios hold where wall-clock ratios drift; it misses time spent waiting on
    the disk, which the wall-clock ratios include."""
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    _CPU.append(time.process_time() - cpu)
    return time.perf_counter() - start


def _fresh(path: Path) -> Path:
    """`path`, removed first (untimed): a recording writes a new file, as a user's does;
    deleting the last run's file (0.06 s per 100 MB here) is not part of recording."""
    path.unlink(missing_ok=True)
    return path


def _bare_tensor(model, x, batch_size: int, device) -> Callable[[], None]:
    import torch

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def _pngs(folder: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i:06d}.png", compress_level=1)
    return folder


def _loader(folder: Path, batch_size: int, until: str | None = None):
    import torch
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    paths = sorted(folder.glob("*.png"))

    class Folder(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            with Image.open(paths[i]) as im:
                return tf(im.convert("RGB"))

    return torch.utils.data.DataLoader(Folder(), batch_size=batch_size), tf


def _truncated_resnet(model, stop: str):
    """Forward of a torchvision ResNet by hand, up to and including `stop`."""
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]

    def forward(x):
        for name in names:
            x = getattr(model, name)(x)
            if name == stop:
                return x
        return x
    return forward


class _SetupClock:
    """Times ``ur.record`` from its call to the first batch given to the model."""

    def __init__(self) -> None:
        from unitrec.recording import recorder

        self.recorder, self.original = recorder, recorder.Recorder.run
        self.start = 0.0
        self.first: float | None = None
        clock = self

        def run(rec, *args, **kwargs):
            if clock.first is None:
                clock.first = time.perf_counter() - clock.start
            return clock.original(rec, *args, **kwargs)
        recorder.Recorder.run = run

    def record(self, *args, **kwargs) -> tuple[float, float]:
        import unitrec as ur

        self.first = None
        self.start = time.perf_counter()
        ur.record(*args, **kwargs)
        total = time.perf_counter() - self.start
        return (self.first if self.first is not None else total), total


def _hook_loop(model, x, sites: list[str], batch_size: int, out: Path) -> None:
    """What a user writes: hooks copy numpy arrays, h5py at the end, fsync."""
    import h5py
    import numpy as np
    import torch

    kept: dict[str, list[np.ndarray]] = {s: [] for s in sites}
    modules = dict(model.named_modules())
    handles = [modules[s].register_forward_hook(
        lambda m, a, y, s=s: kept[s].append(y.detach().cpu().numpy().copy())) for s in sites]
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    with h5py.File(out, "w") as f:
        for s in sites:
            f.create_dataset(s, data=np.concatenate(kept[s]))
        f.flush()
        os.fsync(f.id.get_vfd_handle())


# ------------------------------------------------------------------------------ jobs
def job_setup(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: the first and second ``ur.record`` of resnet50's layer1 + layer4.

    ``--setup-variant``: ``fresh`` (unitrec's recording modules are imported by the first
    call, as in a new notebook), ``imported`` (imported before it), ``real-trace``
    (imported, and the trace forced to run the model for real, as before the hollow pass)."""
    import torch

    import unitrec as ur

    if args.setup_variant != "fresh":
        import unitrec.recording.record  # noqa: F401
    if args.setup_variant == "real-trace":
        from unitrec.anatomy import trace as T

        real = T._trace
        T._trace = lambda model, example, hollow=False: real(model, example)  # type: ignore[assignment]
    device = torch.device(args.device)
    model = ur.load_model("resnet50", seed=0).to(device)
    x = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(x.to(device))  # warm the kernels, as any notebook has
    clock = _SetupClock()
    out = Path(args.out_dir)
    first = clock.record(model, x, ["layer1", "layer4"], _fresh(out / "setup1.h5"), batch_size=args.batch_size,
                         device=device, progress=False)
    repeats = args.repeats if args.setup_variant == "fresh" else 0
    second = [clock.record(model, x, ["layer1", "layer4"], _fresh(out / f"setup{i}.h5"),
                           batch_size=args.batch_size, device=device, progress=False)[0]
              for i in range(2, 2 + repeats)]
    return {"setup_first_s": first[0], "setup_again_s": min(second) if second else None}


def job_tensor(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import unitrec as ur

    device = torch.device(args.device)
    model = ur.load_model("resnet50", seed=0).to(device)
    n_max = 64 if args.quick else 256
    x = torch.randn(n_max, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = Path(args.out_dir)
    results: dict[str, Any] = {}
    jobs = [("r50 64 layer1+layer4", 64, ["layer1", "layer4"]),
            ("r50 64 layer4", 64, ["layer4"])]
    if not args.quick:
        jobs.append(("r50 256 layer1+layer4", 256, ["layer1", "layer4"]))
    _bare_tensor(model, x[:16], 16, device)()  # warm-up
    for name, n, sites in jobs:
        bare, rec, hooks, cpu_ratios = [], [], [], []
        for r in range(args.repeats):
            bare.append(_timed(_bare_tensor(model, x[:n], args.batch_size, device)))
            path = _fresh(out / "t.h5")
            rec.append(_timed(lambda: ur.record(model, x[:n], sites, path, batch_size=args.batch_size,
                                                device=device, progress=False)))
            cpu_ratios.append(_CPU[-1] / _CPU[-2])
            if name == "r50 64 layer1+layer4" and device.type == "cpu":
                hooks.append(_timed(lambda: _hook_loop(model, x[:n], sites, args.batch_size, out / "h.h5")))
        paired = statistics.median(r / b for r, b in zip(rec, bare))  # each record beside its own bare pass
        results[name] = {"bare_s": min(bare), "record_s": min(rec), "ratio": min(rec) / min(bare),
                         "paired_ratio": paired, "cpu_ratio": statistics.median(cpu_ratios)}
        if hooks:
            results[name] |= {"hooks_s": min(hooks), "hooks_ratio": statistics.median(
                h / b for h, b in zip(hooks, bare))}
        print(f"  {name}: bare {min(bare):.2f} s, record {min(rec):.2f} s, ratio {min(rec) / min(bare):.3f} "
              f"(best of each), {paired:.3f} (median of paired runs), CPU time {results[name]['cpu_ratio']:.3f}"
              + (f"; hook loop {min(hooks):.2f} s ({results[name]['hooks_ratio']:.3f} paired)" if hooks else ""),
              flush=True)
    return results


def job_png(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import unitrec as ur

    device = torch.device(args.device)
    model = ur.load_model("resnet18", seed=0).to(device)
    n = 64 if args.quick else 192
    folder = _pngs(Path(args.out_dir) / "pngs", n, 224)
    loader, tf = _loader(folder, args.batch_size)
    trunc = _truncated_resnet(model, "layer1")

    def bare(forward) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for x in loader:
                    forward(x.to(device))
        return run

    out = Path(args.out_dir)
    times: dict[str, list[float]] = {k: [] for k in ("bare", "truncated", "record", "record_layer1")}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(args.repeats):
        times["bare"].append(_timed(bare(model)))
        path = _fresh(out / "p.h5")
        times["record"].append(_timed(lambda: ur.record(
            model, folder, ["layer1", "layer4.1", "fc"], path, transform=tf, batch_size=args.batch_size,
            device=device, progress=False)))
        times["truncated"].append(_timed(bare(trunc)))
        path1 = _fresh(out / "p1.h5")
        times["record_layer1"].append(_timed(lambda: ur.record(
            model, folder, ["layer1"], path1, transform=tf, batch_size=args.batch_size, device=device,
            progress=False)))
        for key, seconds in zip(("bare", "record", "truncated", "record_layer1"), _CPU[-4:]):  # as run
            cpu[key].append(seconds)
    best = {k: min(v) for k, v in times.items()}

    def paired(key: str) -> float:
        return statistics.median(a / b for a, b in zip(times[key], times["bare"]))

    def cpu_ratio(key: str) -> float:
        return statistics.median(a / b for a, b in zip(cpu[key], cpu["bare"]))

    res = {"bare_s": best["bare"], "record_s": best["record"], "ratio": best["record"] / best["bare"],
           "paired_ratio": paired("record"), "layer1_share": paired("truncated"),
           "record_layer1_ratio": paired("record_layer1"), "cpu_ratio": cpu_ratio("record"),
           "cpu_layer1_share": cpu_ratio("truncated"), "cpu_record_layer1_ratio": cpu_ratio("record_layer1")}
    print(f"  r18 {n} PNGs layer1+layer4.1+fc: bare {best['bare']:.2f} s, record {best['record']:.2f} s, "
          f"ratio {res['ratio']:.3f} (best of each), {res['paired_ratio']:.3f} (median of paired runs), "
          f"CPU time {res['cpu_ratio']:.3f}", flush=True)
    print(f"  r18 {n} PNGs layer1 only: ratio {res['record_layer1_ratio']:.3f} "
          f"(layer1's share of compute {res['layer1_share']:.3f}; both medians of paired runs); CPU time "
          f"{res['cpu_record_layer1_ratio']:.3f} (share {res['cpu_layer1_share']:.3f})", flush=True)
    return res


JOBS = {"setup": job_setup, "tensor": job_tensor, "png": job_png}
_SETUP_VARIANTS = {"fresh": "imports included (a new notebook)",
                   "imported": "unitrec's modules already imported",
                   "real-trace": "imported, trace run for real (as before the hollow pass)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=None, help="where the recordings go (default: a temp folder)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--setup-runs", type=int, default=3,
                   help="fresh processes per set-up variant (the first call happens once per process)")
    p.add_argument("--job", choices=list(JOBS), default=None, help=argparse.SUPPRESS)  # one job, in a child
    p.add_argument("--setup-variant", choices=list(_SETUP_VARIANTS), default="fresh", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:  # a child process: one job, results as JSON on the last line
        print(json.dumps(JOBS[args.job](args)))
        return
    import torch

    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        print(f"machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device {args.device}, load {os.getloadavg()[0]:.2f}", flush=True)
        results: dict[str, Any] = {}

        def child(name: str, *extra: str) -> dict[str, Any]:
            cmd = [sys.executable, __file__, "--job", name, "--repeats", str(args.repeats), "--batch-size",
                   str(args.batch_size), "--device", args.device, "--out-dir", tmp, *extra]
            proc = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
            lines = proc.stdout.rstrip().splitlines()
            if proc.returncode != 0 or not lines:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                raise SystemExit(f"job {name} failed")
            for line in lines[:-1]:
                print(line)
            return json.loads(lines[-1])

        # the set-up: each variant in fresh processes, interleaved, since a first call happens once per process
        print("setup:", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in _SETUP_VARIANTS}
        for _ in range(1 if args.quick else args.setup_runs):
            for variant in _SETUP_VARIANTS:
                runs[variant].append(child("setup", "--setup-variant", variant))
        setup = results["setup"] = {}
        for variant, what in _SETUP_VARIANTS.items():
            first = sorted(r["setup_first_s"] for r in runs[variant])
            setup[variant] = {"first_s": first, "median_first_s": statistics.median(first)}
            print(f"  first call, {what}: {', '.join(f'{t:.3f}' for t in first)} s "
                  f"(median {statistics.median(first):.3f} s)", flush=True)
        again = sorted(r["setup_again_s"] for r in runs["fresh"])
        setup["again_s"] = again
        print(f"  a second call on the same model: {', '.join(f'{t:.3f}' for t in again)} s", flush=True)
        for name in ("tensor", "png"):  # each job in a fresh process
            print(f"{name}:", flush=True)
            results[name] = child(name)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
