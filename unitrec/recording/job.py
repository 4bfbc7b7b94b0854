"""The job: how a recording is made, the settings that travel together through ``record``.

Built once at the edge (``record()``'s arguments or a config's ``record`` section),
checked here, and passed whole. Under ``torchrun`` each process's shard and device
come from its environment (:func:`launched_shard`).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Literal

import torch

from unitrec.errors import ConfigError
from unitrec.files.shards import check_shard
from unitrec.schema import MAX_BATCH_SIZE
from unitrec.stimuli.decode import check_background

__all__ = ["Job", "check_device", "launched_shard"]


@dataclass(frozen=True)
class Job:
    """How a recording is made: the settings that travel together through ``record``.

    Built once from ``record()``'s arguments (or a config's ``record`` section) and
    checked here, so every later function receives one validated object. `device`
    may be given as a str (``"cuda:1"``); it is stored as a :class:`torch.device`.
    `background` is an RGB colour (three integers in 0..255).
    """

    batch_size: int = 32
    device: torch.device = torch.device("cpu")
    num_workers: int = 0
    progress: bool = True
    dtype: Literal["float32", "float16"] = "float32"
    compression: Literal["gzip", "zstd"] | None = None
    keepbits: int | None = None  # BitRound float32 to this many mantissa bits (1-23); implies gzip
    stop_early: bool = True
    on_error: Literal["skip", "raise"] = "skip"
    background: tuple[int, ...] = (255, 255, 255)
    overwrite: bool = False
    shard: tuple[int, int] | None = None  # (index, count): record one contiguous part of the rows

    def __post_init__(self) -> None:
        if isinstance(self.keepbits, numbers.Integral) and not isinstance(self.keepbits, bool):
            object.__setattr__(self, "keepbits", int(self.keepbits))  # np.int64 from np.arange, say
        checks = [
            (isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
             and 0 < self.batch_size <= MAX_BATCH_SIZE, f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE} "
             f"(a batch is computed and held in memory whole), got {self.batch_size!r}"),
            (isinstance(self.num_workers, int) and not isinstance(self.num_workers, bool)
             and self.num_workers >= 0, f"num_workers must be an integer ≥ 0, got {self.num_workers!r}"),
            (self.dtype in ("float32", "float16"), f"dtype must be 'float32' or 'float16', got {self.dtype!r}"),
            (self.compression in (None, "gzip", "zstd"),
             f"compression must be None, 'gzip' or 'zstd', got {self.compression!r}"),
            (self.keepbits is None or (isinstance(self.keepbits, int) and not isinstance(self.keepbits, bool)
                                       and 1 <= self.keepbits <= 23),
             f"keepbits must be an integer from 1 to 23 (float32 mantissa bits kept), got {self.keepbits!r}"),
            (self.keepbits is None or self.dtype == "float32",
             f"keepbits rounds float32 values: it cannot be combined with dtype {self.dtype!r}; record float32 "
             "with keepbits (keepbits: 10 keeps float16's precision without its ±65504 overflow), or drop keepbits"),
            (self.on_error in ("skip", "raise"), f"on_error must be 'skip' or 'raise', got {self.on_error!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.keepbits is not None and self.compression is None:  # the zeroed bits are only saved compressed
            object.__setattr__(self, "compression", "gzip")
        object.__setattr__(self, "device", check_device(self.device))
        object.__setattr__(self, "background", check_background(self.background))  # here, not per image
        if self.shard is not None:
            object.__setattr__(self, "shard", check_shard(self.shard))


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a :class:`torch.device` this machine has, or a one-line ConfigError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:1', ...; got {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(dev)!r}: this machine has no usable CUDA GPU "
                          "(torch.cuda.is_available() is False); use device: cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(dev)!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def launched_shard(shard: tuple[int, int] | None, device: str | torch.device,
                   progress: bool) -> tuple[tuple[int, int] | None, str | torch.device, bool]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): this process's shard, device and progress bar.

    Rank ``RANK`` of ``WORLD_SIZE`` records that shard, on ``cuda:LOCAL_RANK`` when the
    device asked for is ``cuda`` without an index; only rank 0 shows progress.
    """
    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if env["WORLD_SIZE"] is None:
        return shard, device, progress
    try:
        world, rank, local = int(env["WORLD_SIZE"]), int(env["RANK"] or 0), int(env["LOCAL_RANK"] or 0)
    except ValueError:
        raise ConfigError(f"torchrun's environment is not understood: RANK={env['RANK']!r}, "
                          f"WORLD_SIZE={env['WORLD_SIZE']!r}, LOCAL_RANK={env['LOCAL_RANK']!r}") from None
    if world <= 1:
        return shard, device, progress
    if shard is not None:
        raise ConfigError(f"--shard (shard=) cannot be combined with torchrun, which already makes this process "
                          f"shard {rank}/{world} (RANK/WORLD_SIZE); drop --shard, or run without torchrun")
    if str(device) == "cuda":
        device = f"cuda:{local}"
    return (rank, world), device, bool(progress) and rank == 0
