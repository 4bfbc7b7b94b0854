"""Shared fixtures: small stimulus folders, seeded random models, a fast transform."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def make_images(root: Path, n: int = 10, size: int = 48, classes=("cats", "dogs"), seed: int = 0) -> Path:
    """Random-noise RGB PNGs in class subfolders: root/<class>/img_<i>.png."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:02d}.png")
    return root


class Interrupting(torch.utils.data.Dataset):
    """Preprocessed stimuli that raise KeyboardInterrupt at one index (a Ctrl-C)."""

    def __init__(self, n: int = 24, stop_at: int | None = None) -> None:
        self.x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        self.stop_at = stop_at

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.stop_at:
            raise KeyboardInterrupt
        return self.x[i]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_images(tmp_path / "stimuli")


@pytest.fixture(scope="session")
def transform64():
    from unitrec.anatomy.preprocess import build_transform

    return build_transform({"resize": 64, "crop": 64, "normalize": "imagenet"})


_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture(scope="session")
def zoo():
    """Seeded random zoo models, built once per test session."""
    import unitrec as ur

    def get(name: str) -> torch.nn.Module:
        if name not in _MODELS:
            _MODELS[name] = ur.load_model(name, seed=0)
        return _MODELS[name].eval()

    return get


def image_batch(folder: Path, transform) -> tuple[list[str], torch.Tensor]:
    """The stimuli of a folder as unitrec orders them, preprocessed: (labels, batch)."""
    from unitrec.stimuli import find_stimuli, load_rgb

    labels = find_stimuli(folder)
    return labels, torch.stack([transform(load_rgb(folder / lab)) for lab in labels])


def in_blocks(fn, x: torch.Tensor, batch_size: int):
    """`fn(x)` computed as a recording computes it: on blocks of `batch_size` rows, the
    last padded with copies of its first row, keeping the real rows (a tensor, or a dict
    of them).

    PyTorch picks its kernels by batch size, so a row computed in another batch can differ
    in the last bits (1.2e-5 on resnet50's `fc` on an AVX-512 machine with MKL): an oracle
    equals a recording bit for bit only when computed in the recording's own blocks.
    """
    parts = []
    for start in range(0, len(x), batch_size):
        block = x[start : start + batch_size]
        padded = torch.cat([block, block[:1].expand(batch_size - len(block), *block.shape[1:])])
        out = fn(padded)
        parts.append({k: v[: len(block)] for k, v in out.items()} if isinstance(out, dict) else out[: len(block)])
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def float32_sum_bound(abs_terms: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    """How far apart two float32 sums of the same `n` terms may be, in any order or grouping
    (another kernel, thread count or batch size): each lies within (n - 1)·u·Σ|term| of the
    exact sum (Higham, Accuracy and Stability, eq. 4.4; u = eps / 2), so the two within
    (n - 1)·eps·Σ|term|. `abs_terms`: Σ|term| per output, e.g. the layer applied to |x| with |W|."""
    abs_terms = abs_terms.numpy() if isinstance(abs_terms, torch.Tensor) else np.asarray(abs_terms)
    return (n - 1) * float(np.finfo(np.float32).eps) * abs_terms.astype(np.float64)


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """Values read from a file as a tensor in torch's own (aligned) memory, as the model had them."""
    return torch.tensor(values)


def batches_done(partial: Path) -> int:
    """How many batches a partial file that another process is writing marks done, or 0 while
    it cannot be read: a read between the writer's flushes may find the file torn
    ("truncated file", a dataset not yet there), which is the writer's business, not a failure."""
    import h5py

    try:
        with h5py.File(partial, "r", locking=False) as h5:
            return int((h5["done"][...] == 1).sum())
    except (OSError, KeyError, ValueError, RuntimeError):
        return 0


_RUN_CONFIG = """
import sys, unitrec as ur
ur.run_config(sys.argv[1], progress=False)
"""


def killed_runs(config: Path, out: Path, *, seed: int, attempts: int = 4) -> Iterator[int]:
    """Run `config` in a child process and SIGKILL it at a random moment, again and again.

    Yields the number of kills so far after each kill that left `out` unfinished;
    stops after `attempts` kills or once a run got to the end before its kill.
    """
    from unitrec.files.layout import partial_path

    partial = partial_path(out)
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for kills in range(1, attempts + 1):
        proc = subprocess.Popen([sys.executable, "-c", _RUN_CONFIG, str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not partial.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.8))  # anywhere: mid-batch, mid-write, mid-flush
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            return
        yield kills


def config_and_reference(folder: Path, cfg: dict) -> tuple[Path, Path, Path]:
    """`cfg` written as ``exp.yaml`` (output ``out/acts.h5``), and recorded once, uninterrupted, as the reference.

    Returns the config, its output path, and the reference recording.
    """
    import unitrec as ur
    import yaml

    config = folder / "exp.yaml"
    config.write_text(yaml.safe_dump({**cfg, "output": "out/acts.h5"}))
    (folder / "ref.yaml").write_text(yaml.safe_dump({**cfg, "output": "ref/acts.h5"}))
    return config, folder / "out" / "acts.h5", ur.run_config(folder / "ref.yaml", progress=False)
