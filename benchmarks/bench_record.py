"""How much does recording with unitrec cost? One run, ratios printed.

Every contender runs the same job (same stimulus PNGs, same transform, same batch
size and DataLoader workers) in a fresh subprocess of this script, so that each one
gets a clean peak RSS. Contenders run round-robin, `--repeats` times (order rotated
each round, so a slow spell of a neighbour process does not land on one contender),
and the best time is used for the ratios (other processes only ever add time).

Measurements
------------
1. ``ur.record`` of a few full sites (one large and early) to HDF5 ÷ a bare
   forward pass under ``torch.inference_mode`` over the same DataLoader.
2. ``ur.record`` of the early site alone (stopping after it) ÷ the bare forward,
   next to that site's share of compute: a forward truncated by hand after the
   site ÷ the full forward.
3. ``ur.record`` ÷ what users write instead, on the same sites: a hook loop that
   keeps numpy arrays in memory and saves them with h5py at the end;
   ``create_feature_extractor`` with h5py writes per batch; torchlens' ``extract_dataset``
   if installed.
   Every contender that writes a file fsyncs it, as ``ur.record`` does.
4. Write throughput of unitrec's ``RecordingFile`` (and of the whole ``record``
   path on a model that does no work) vs ``numpy.ndarray.tofile`` of the same bytes
   to the same disk, with fsync, in GB/s.

Usage::

    python benchmarks/bench_record.py                 # ~3-5 min on 2 CPU cores
    python benchmarks/bench_record.py --quick         # ~1 min smoke run
    python benchmarks/bench_record.py --model resnet50 --images 4096 --size 224 \\
        --workers 4 --out-dir /scratch --json bench.json

This is a benchmark, not a test: it asserts nothing and prints numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_SITES = ["layer1", "layer3.1", "avgpool", "fc"]

# name -> (what it is, kind); kind "job" runs the model over the stimuli, "write"
# writes `--write-mb` of synthetic activations
CONTENDERS: dict[str, tuple[str, str]] = {
    "loader": ("DataLoader only (decode + transform), no model", "job"),
    "bare": ("bare forward, inference_mode", "job"),
    "truncated": ("forward truncated by hand after the early site", "job"),
    "unitrec": ("ur.record, all sites -> HDF5", "job"),
    "unitrec-early": ("ur.record, early site only (stop_early)", "job"),
    "hooks-memory": ("hand hook loop, arrays in memory, h5py at end", "job"),
    "feature-extractor": ("create_feature_extractor + h5py per batch", "job"),
    "torchlens": ("torchlens extract_dataset (in memory) + h5py", "job"),
    "write-recordingfile": ("unitrec RecordingFile.write + finish", "write"),
    "write-record-identity": ("ur.record of an identity model (tensor stimuli)", "write"),
    "write-tofile": ("ndarray.tofile + fsync", "write"),
}


# ----------------------------------------------------------------------------- stimuli
def make_stimuli(folder: Path, n: int, size: int, seed: int = 0) -> int:
    """Random-noise RGB PNGs, ``000000.png`` ...; returns the bytes written."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        path = folder / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, compress_level=1)
        total += path.stat().st_size
    return total


def _transform():
    from torchvision import transforms as T

    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class _Folder:
    """What a user writes: PIL decode + transform, one tensor per image."""

    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB"))


def _loader(args: argparse.Namespace):
    import torch

    paths = sorted(Path(args.stimuli).glob("*.png"))
    # the DataLoader settings ur.record uses (prefetch 4 when workers are on)
    return torch.utils.data.DataLoader(
        _Folder(paths, _transform()), batch_size=args.batch_size, num_workers=args.workers,
        prefetch_factor=4 if args.workers else None, shuffle=False,
    ), len(paths)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- contenders
# Each returns (seconds, images or bytes, extra dict). Model building is not timed.
def _model(args: argparse.Namespace):
    import unitrec as ur

    return ur.load_model(args.model, seed=0)


def run_loader(args):
    start = time.perf_counter()
    loader, n = _loader(args)
    for _ in loader:
        pass
    return time.perf_counter() - start, n, {}


def run_bare(args):
    import torch

    model = _model(args)
    start = time.perf_counter()
    loader, n = _loader(args)
    with torch.inference_mode():
        for x in loader:
            model(x)
    return time.perf_counter() - start, n, {}


class _Stop(BaseException):
    pass


def run_truncated(args):
    import torch

    model = _model(args)
    early = args.sites[0]
    stem = ["conv1", "bn1", "relu", "maxpool", "layer1"]
    by_hand = early == "layer1" and all(hasattr(model, m) for m in stem)
    handle = None
    if not by_hand:  # any other model: stop with an exception from the site's hook
        def stop(module, args_, output):
            raise _Stop
        handle = dict(model.named_modules())[early].register_forward_hook(stop)
    start = time.perf_counter()
    loader, n = _loader(args)
    try:
        with torch.inference_mode():
            for x in loader:
                if by_hand:
                    for m in stem:
                        x = getattr(model, m)(x)
                else:
                    try:
                        model(x)
                    except _Stop:
                        pass
    finally:
        if handle is not None:
            handle.remove()
    return time.perf_counter() - start, n, {"how": "by hand" if by_hand else "hook raising"}


def _record(args, sites: list[str]):
    import unitrec as ur

    model = _model(args)
    start = time.perf_counter()
    ur.record(model, args.stimuli, sites, args.out, transform=_transform(), batch_size=args.batch_size,
              num_workers=args.workers, progress=False, overwrite=True)
    seconds = time.perf_counter() - start
    return seconds, len(list(Path(args.stimuli).glob("*.png"))), {"file_mb": Path(args.out).stat().st_size / 1e6}


def run_unitrec(args):
    return _record(args, args.sites)


def run_unitrec_early(args):
    return _record(args, args.sites[:1])


def _h5_datasets(h5, sites: list[str], n: int, shapes: dict[str, tuple[int, ...]]):
    return {s: h5.create_dataset(s, shape=(n, *shapes[s]), dtype="f4") for s in sites}


def run_hooks_memory(args):
    import h5py
    import numpy as np
    import torch

    model = _model(args)
    modules = dict(model.named_modules())
    start = time.perf_counter()
    loader, n = _loader(args)
    kept: dict[str, list[np.ndarray]] = {s: [] for s in args.sites}
    handles = []
    try:
        for s in args.sites:
            def hook(module, inputs, output, s=s):
                kept[s].append(output.detach().cpu().numpy())
            handles.append(modules[s].register_forward_hook(hook))
        with torch.inference_mode():
            for x in loader:
                model(x)
    finally:
        for h in handles:
            h.remove()
    with h5py.File(args.out, "w") as h5:
        for s in args.sites:
            h5.create_dataset(s, data=np.concatenate(kept[s]))
    _fsync(Path(args.out))
    return time.perf_counter() - start, n, {}


def run_feature_extractor(args):
    import h5py
    import torch
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _model(args)
    start = time.perf_counter()
    fx = create_feature_extractor(model, return_nodes={s: s for s in args.sites})
    loader, n = _loader(args)
    with h5py.File(args.out, "w") as h5, torch.inference_mode():
        datasets = None
        row = 0
        for x in loader:
            out = fx(x)
            if datasets is None:
                datasets = _h5_datasets(h5, args.sites, n, {s: tuple(v.shape[1:]) for s, v in out.items()})
            for s, v in out.items():
                datasets[s][row : row + len(x)] = v.numpy()
            row += len(x)
    _fsync(Path(args.out))
    return time.perf_counter() - start, n, {}


def run_torchlens(args):
    """torchlens' own dataset extractor (in memory), then h5py, as a user would."""
    import h5py
    import torchlens as tl  # the parent checked that it imports

    model = _model(args)
    start = time.perf_counter()
    loader, n = _loader(args)
    # torchlens 2.x finds container modules by address but a leaf Linear by its op
    # label: the first linear op of a resnet is its `fc`
    wanted = ["linear_1_1" if s == "fc" else s for s in args.sites]
    out = tl.extract_dataset(model, loader.dataset, wanted, batch_size=args.batch_size, progress=False)
    with h5py.File(args.out, "w") as h5:
        for site, values in zip(args.sites, out.values()):  # results come back in request order
            h5.create_dataset(site, data=values.detach().cpu().numpy())
    _fsync(Path(args.out))
    return time.perf_counter() - start, n, {}


def _write_shape(args) -> tuple[int, tuple[int, ...]]:
    """Rows of a layer1-like site (64 x size/4 x size/4 float32) making up --write-mb."""
    side = max(1, args.size // 4)
    shape = (64, side, side)
    per_row = 4 * 64 * side * side
    rows = max(args.batch_size, int(args.write_mb * 1e6 // per_row) // args.batch_size * args.batch_size)
    return rows, shape


def run_write_recordingfile(args):
    import numpy as np
    import torch
    from torch import nn

    from unitrec.anatomy.sites import resolve_sites
    from unitrec.files.writer import RecordingFile

    rows, shape = _write_shape(args)
    model = nn.Sequential(nn.Identity())
    sites, _ = resolve_sites(model, ["0"], torch.zeros((1, *shape)))
    batch = np.random.default_rng(0).standard_normal((args.batch_size, *shape), dtype=np.float32)
    labels = [f"{i:06d}" for i in range(rows)]
    start = time.perf_counter()
    rec = RecordingFile.create(Path(args.out), labels, {}, None, sites, {}, batch_size=args.batch_size)
    try:
        for r in range(0, rows, args.batch_size):
            rec.write(np.arange(r, r + args.batch_size), {sites[0].key: batch})
        rec.finish()
    finally:
        rec.close()
    return time.perf_counter() - start, rows * batch[0].nbytes, {}


def run_write_record_identity(args):
    import torch
    from torch import nn

    import unitrec as ur

    rows, shape = _write_shape(args)
    gen = torch.Generator().manual_seed(0)
    stimuli = torch.randn((rows, *shape), generator=gen)
    model = nn.Sequential(nn.Identity())
    start = time.perf_counter()
    ur.record(model, stimuli, ["0"], args.out, batch_size=args.batch_size, progress=False, overwrite=True)
    return time.perf_counter() - start, stimuli[0].numel() * 4 * rows, {}


def run_write_tofile(args):
    import numpy as np

    rows, shape = _write_shape(args)
    batch = np.random.default_rng(0).standard_normal((args.batch_size, *shape), dtype=np.float32)
    start = time.perf_counter()
    with open(args.out, "wb") as fh:
        for _ in range(0, rows, args.batch_size):
            batch.tofile(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - start, rows * batch[0].nbytes, {}


RUNNERS = {
    "loader": run_loader,
    "bare": run_bare,
    "truncated": run_truncated,
    "unitrec": run_unitrec,
    "unitrec-early": run_unitrec_early,
    "hooks-memory": run_hooks_memory,
    "feature-extractor": run_feature_extractor,
    "torchlens": run_torchlens,
    "write-recordingfile": run_write_recordingfile,
    "write-record-identity": run_write_record_identity,
    "write-tofile": run_write_tofile,
}


def child(args: argparse.Namespace) -> None:
    """Run one contender once and print its result as the last line of stdout."""
    import torch
    import torchvision  # noqa: F401  # imported before the clock for everyone (ur.record would pay ~1-2 s)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(RUNNERS[args.contender], args)
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime")
        print(f"--- cProfile of {args.contender} (main thread only), by own time ---", file=sys.stderr)
        stats.print_stats(25)
    else:
        result = RUNNERS[args.contender](args)
    seconds, amount, extra = result
    print(json.dumps({"seconds": seconds, "amount": amount, "peak_rss_mb": _peak_rss_mb(), **extra}))


def _peak_rss_mb() -> float:
    """Peak RSS of this process since it started this program.

    Linux keeps ``ru_maxrss`` across ``exec``, so a child would inherit the peak of
    the (forked copy of the) parent; ``VmHWM`` belongs to the new program only.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


# ----------------------------------------------------------------------------- parent
def _machine(out_dir: Path) -> dict[str, Any]:
    import h5py
    import numpy as np
    import torch
    import torchvision

    import unitrec as ur

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    free = shutil.disk_usage(out_dir).free
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "unitrec": ur.__version__,
        "out_dir": str(out_dir),
        "disk_free_gb": round(free / 1e9, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _spawn(args: argparse.Namespace, name: str, out: Path, profile: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--contender", name, "--stimuli", str(args.stimuli),
           "--out", str(out), "--model", args.model, "--size", str(args.size),
           "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--sites", ",".join(args.sites), "--write-mb", str(args.write_mb), "--threads", str(args.threads)]
    if profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"contender {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    if profile:
        print(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


_COMPARED = ("unitrec", "hooks-memory", "feature-extractor", "torchlens")


def _check_same(out_dir: Path, sites: list[str], ran: list[str]) -> dict[str, float]:
    """Largest |difference| of the small sites between unitrec's file and the others'."""
    import h5py
    import numpy as np

    ref_path = out_dir / "unitrec.h5"
    diffs: dict[str, float] = {}
    if not ref_path.exists():
        return diffs
    with h5py.File(ref_path, "r") as ref:
        for other in _COMPARED[1:]:
            path = out_dir / f"{other}.h5"
            if other not in ran or not path.exists():
                continue
            with h5py.File(path, "r") as h5:
                worst = 0.0
                for s in sites[1:]:  # skip the large early site: quick check only
                    a = ref[s]["activation"][...]
                    b = h5[s][...].reshape(a.shape)
                    worst = max(worst, float(np.max(np.abs(a - b))))
                diffs[other] = worst
    return diffs


def _fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}"


def parent(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    out_dir = Path(tempfile.mkdtemp(prefix="unitrec-bench-", dir=args.out_dir))
    try:
        return _parent(args, out_dir, t0)
    finally:
        if args.keep:
            print(f"kept {out_dir}")
        else:
            shutil.rmtree(out_dir, ignore_errors=True)


def _parent(args: argparse.Namespace, out_dir: Path, t0: float) -> dict[str, Any]:
    machine = _machine(out_dir)
    print("== machine ==")
    print(f"CPUs: {machine['cpu_count']} ({machine['cpus_usable']} usable), torch threads: "
          f"{args.threads or machine['torch_threads']}, cpu: {machine['cpu']}")
    print(f"python {machine['python']}, torch {machine['torch']}, torchvision {machine['torchvision']}, "
          f"numpy {machine['numpy']}, h5py {machine['h5py']} (HDF5 {machine['hdf5']}), "
          f"unitrec {machine['unitrec']}")
    print(f"out dir: {out_dir}, disk free: {machine['disk_free_gb']} GB, load average: {machine['load_average']}")

    try:
        import torchlens  # noqa: F401
        has_torchlens, torchlens_note = True, ""
    except ImportError:
        has_torchlens, torchlens_note = False, "not installed, skipped"

    args.stimuli = out_dir / "stimuli"
    start = time.perf_counter()
    png_bytes = make_stimuli(args.stimuli, args.images, args.size)
    rows, wshape = _write_shape(args)
    print(f"\n== job ==\n{args.model}, {args.images} random-noise PNGs of {args.size}x{args.size} "
          f"({png_bytes / 1e6:.0f} MB, made in {time.perf_counter() - start:.1f} s), batch {args.batch_size}, "
          f"workers {args.workers}, sites {', '.join(args.sites)} (early: {args.sites[0]}), "
          f"{args.repeats} repeat(s), best used")
    print(f"write test: {rows} rows of float32 {wshape} = {rows * 4 * math.prod(wshape) / 1e6:.0f} MB")

    names = [n for n in CONTENDERS if n != "torchlens" or has_torchlens]
    if not has_torchlens:
        print("torchlens not installed — skipped")
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    diffs: dict[str, float] = {}
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            if name not in results:  # dropped after a failure
                continue
            out = out_dir / f"{name}.h5"
            try:
                r = _spawn(args, name, out)
            except RuntimeError as exc:
                if name != "torchlens":
                    raise
                print(f"torchlens failed — skipped ({str(exc).splitlines()[-1]})")
                out.unlink(missing_ok=True)
                del results[name]
                torchlens_note = "failed, skipped"
                continue
            r["load_average_1min"] = _load()
            results[name].append(r)
            print(f"  round {rep + 1}/{args.repeats} {name:<22} {r['seconds']:7.2f} s  "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB  load {r['load_average_1min']:.1f}", flush=True)
            if rep > 0 or name not in _COMPARED:  # the first round's files are compared below
                out.unlink(missing_ok=True)
        if rep == 0:
            diffs = _check_same(out_dir, args.sites, list(results))
            for name in _COMPARED:
                (out_dir / f"{name}.h5").unlink(missing_ok=True)

    summary = _report(args, machine, results, diffs, torchlens_note)
    if args.profile:
        print("\n== profile of ur.record (one extra run, cProfile, main thread) ==")
        _spawn(args, "unitrec", out_dir / "profile.h5", profile=True)
    elapsed = time.perf_counter() - t0
    print(f"\ntotal benchmark time: {elapsed:.0f} s")
    summary["total_seconds"] = round(elapsed, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"numbers saved to {args.json}")
    return summary


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _report(args, machine, results, diffs, torchlens_note: str) -> dict[str, Any]:
    # ratios use the best of the repeats: on a shared machine other processes only
    # ever add time, so the fastest run is the closest to the contender's own cost
    median = {n: statistics.median(r["seconds"] for r in rs) for n, rs in results.items()}
    t = best = {n: min(r["seconds"] for r in rs) for n, rs in results.items()}
    rss = {n: max(r["peak_rss_mb"] for r in rs) for n, rs in results.items()}
    amount = {n: rs[0]["amount"] for n, rs in results.items()}
    bare = t["bare"]

    print("\n== results (best of repeats; median for spread) ==")
    print(f"{'contender':<22} {'what':<48} {'best s':>8} {'median s':>9} {'rate':>12} {'peak RSS':>9} "
          f"{'÷ bare':>7}")
    for n in results:
        what, kind = CONTENDERS[n]
        if kind == "job":
            rate = f"{amount[n] / t[n]:.1f} img/s"
            ratio = f"{t[n] / bare:.2f}"
        else:
            rate = f"{amount[n] / t[n] / 1e9:.2f} GB/s"
            ratio = ""
        print(f"{n:<22} {what:<48} {best[n]:8.2f} {median[n]:9.2f} {rate:>12} {rss[n]:7.0f}MB {ratio:>7}")
    busy = max(r["load_average_1min"] for rs in results.values() for r in rs)
    if busy > machine["cpus_usable"] + 0.5:
        print(f"WARNING: 1-min load average reached {busy:.1f} on {machine['cpus_usable']} CPUs: other "
              "processes shared the CPU, so times are noisy (try --threads 1 or a quiet machine)")
    if diffs:
        print("max |diff| vs unitrec on " + ", ".join(args.sites[1:]) + ": "
              + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))

    def ratio(a, b):
        return t[a] / t[b] if a in t and b in t else None

    share = ratio("truncated", "bare")
    load = t["loader"]
    compute_share = (t["truncated"] - load) / (bare - load) if bare > load else None
    record_compute = (t["unitrec"] - load) / (bare - load) if bare > load else None
    gbps = {n: amount[n] / t[n] / 1e9 for n in results if CONTENDERS[n][1] == "write"}
    ratios = {
        "record_over_bare": ratio("unitrec", "bare"),
        "record_early_over_bare": ratio("unitrec-early", "bare"),
        "early_site_share": share,
        "early_site_compute_share": compute_share,
        "loader_share": load / bare,
        "record_over_bare_without_loading": record_compute,
        "record_over_hooks_memory": ratio("unitrec", "hooks-memory"),
        "record_over_feature_extractor": ratio("unitrec", "feature-extractor"),
        "record_over_torchlens": ratio("unitrec", "torchlens"),
        "recordingfile_over_tofile_throughput": gbps["write-recordingfile"] / gbps["write-tofile"],
        "record_identity_over_tofile_throughput": gbps["write-record-identity"] / gbps["write-tofile"],
    }
    early = args.sites[0]
    threads = args.threads or machine["torch_threads"]
    machine_line = (f"{machine['cpus_usable']} CPUs ({machine['cpu']}), {threads} torch threads, "
                    f"torch {machine['torch']}, h5py {machine['h5py']}; {args.model} at {args.size} px, "
                    f"{args.images} PNGs, batch {args.batch_size}, workers {args.workers}; "
                    f"best of {args.repeats}; 1-min load up to {busy:.1f}")
    lines = [
        f"Machine: {machine_line}",
        "",
        "| measurement | result | goal |",
        "|---|---|---|",
        f"| `record` {', '.join(args.sites)} → HDF5 ÷ bare forward | {_fmt_ratio(ratios['record_over_bare'])} "
        f"({_fmt_ratio(record_compute)} without loading) | ≤ 1.10 |",
        f"| `record` {early} only (stop early) ÷ bare forward | {_fmt_ratio(ratios['record_early_over_bare'])} "
        f"| ≈ {early}'s share |",
        f"| {early}'s share of the forward (truncated ÷ full) | {_fmt_ratio(share)} "
        f"({_fmt_ratio(compute_share)} without loading) | |",
        f"| loading's share (DataLoader alone ÷ bare forward) | {_fmt_ratio(load / bare)} | |",
        f"| `record` ÷ hook loop in memory + h5py at end | {_fmt_ratio(ratios['record_over_hooks_memory'])} "
        f"| ≤ 1 |",
        f"| `record` ÷ `create_feature_extractor` + h5py per batch "
        f"| {_fmt_ratio(ratios['record_over_feature_extractor'])} | ≤ 1 |",
        "| `record` ÷ torchlens | "
        + (torchlens_note or _fmt_ratio(ratios["record_over_torchlens"]))
        + " | |",
        f"| peak RSS: bare / `record` / hook loop / feature extractor | {rss['bare']:.0f} / {rss['unitrec']:.0f} / "
        f"{rss['hooks-memory']:.0f} / {rss['feature-extractor']:.0f} MB | |",
        f"| throughput: bare / `record` | {amount['bare'] / t['bare']:.0f} / "
        f"{amount['unitrec'] / t['unitrec']:.0f} img/s | |",
        f"| write GB/s: `RecordingFile` / `record` (identity model) / `tofile` "
        f"| {gbps['write-recordingfile']:.2f} / {gbps['write-record-identity']:.2f} / {gbps['write-tofile']:.2f} "
        f"| ≈ tofile |",
    ]
    print("\n== summary (paste into benchmarks/README.md) ==")
    print("\n".join(lines))
    return {
        "machine": machine,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("contender", "out", "stimuli", "profile")},
        "best_seconds": best,
        "median_seconds": median,
        "peak_rss_mb": rss,
        "amount": amount,
        "write_gb_per_s": gbps,
        "ratios": ratios,
        "max_abs_diff_vs_unitrec": diffs,
        "summary_markdown": "\n".join(lines),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18", help="torchvision model name, random weights (default resnet18)")
    p.add_argument("--images", type=int, default=None, help="number of stimuli (default 1280; quick: 256)")
    p.add_argument("--size", type=int, default=128, help="stimulus side in pixels, no resize (default 128)")
    p.add_argument("--batch-size", type=int, default=32, help="the same for everyone (default 32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, the same for everyone (default 0)")
    p.add_argument("--sites", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated module names (the hand-written contenders hook modules), "
                        "the early site first "
                        f"(default for resnets: {','.join(RESNET_SITES)})")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in every contender (0: torch's default); 1 is steadier on a busy machine")
    p.add_argument("--repeats", type=int, default=None, help="runs per contender (default 3; quick: 1)")
    p.add_argument("--write-mb", type=float, default=None, help="MB of the write test (default 512; quick: 128)")
    p.add_argument("--out-dir", default=None, help="folder on the disk to test (default: the system temp)")
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    p.add_argument("--json", default=None, help="also save the numbers to this file")
    p.add_argument("--profile", action="store_true", help="afterwards, cProfile one ur.record run")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (stimuli)")
    # internal: run one contender in this process
    p.add_argument("--contender", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--stimuli", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.images is None:
        args.images = 256 if args.quick else 1280
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.write_mb is None:
        args.write_mb = 128 if args.quick else 512
    if args.sites is None:
        if not args.model.startswith(("resnet", "resnext", "wide_resnet")):
            p.error(f"--sites is needed for {args.model} (module names, early site first)")
        args.sites = list(RESNET_SITES)
    if args.images < args.batch_size or args.repeats < 1:
        p.error("need --images >= --batch-size and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.contender:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
