"""The batch loop of ``record``: fixed blocks through the hooks, into host buffers, to the writer.

A DataLoader decodes and preprocesses whole blocks (in worker processes if asked);
each block runs through the model with the recorder's hooks, stopping after the
deepest site; the selected values are copied once into a ring of host buffers
(pinned on CUDA) that a background thread writes, flushes and marks done. Summaries
are accumulated on the device and saved with the rows they hold.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch

from unitrec.anatomy.sites import Site
from unitrec.errors import StimulusError, UnitrecWarning
from unitrec.files.writer import AsyncWriter, RecordingFile
from unitrec.recording.accumulate import Accumulator
from unitrec.recording.job import Job
from unitrec.recording.recorder import Recorder
from unitrec.stimuli.dataset import StimulusSet, collate

__all__ = ["first_good", "progress_bar", "stream"]

_QUEUE = 2  # batches waiting for the disk; the ring holds _QUEUE + 2 buffers
_SAVE_ALWAYS_BYTES = 16 << 20  # summaries up to this size are saved with every batch
_SAVE_SECONDS = 30.0  # larger ones every this many seconds
_FLOAT16_LIMIT = 65520.0  # |v| ≥ this rounds to ±inf in float16 (65504 is the largest finite)
_WARN_SKIPPED = 10  # undecodable images named one by one; the rest are counted


def stream(model, sites: list[Site], trace, stim: StimulusSet, rec_file: RecordingFile, todo: np.ndarray,
            transform, job: Job, batch_size: int) -> float:
    if len(todo) == 0:
        return 0.0
    device, cuda = job.device, job.device.type == "cuda"
    blocks = _blocks(todo, len(stim), batch_size)
    is_todo = np.zeros(len(stim), dtype=bool)
    is_todo[todo] = True
    loader = torch.utils.data.DataLoader(
        stim.dataset(transform, job.background), batch_sampler=blocks, num_workers=job.num_workers,
        collate_fn=collate, pin_memory=cuda, persistent_workers=False,
        prefetch_factor=4 if job.num_workers else None,
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if job.num_workers else None,
    )
    torch_dtype = torch.float16 if job.dtype == "float16" else torch.float32
    ring = [{s.key: torch.empty((batch_size, *s.shape), dtype=torch_dtype, pin_memory=cuda) for s in sites
             if s.stored} for _ in range(_QUEUE + 2)]
    accumulators = {s.key: Accumulator(rec_file.summary_states[s.key], s.top, device) for s in sites
                    if s.summarised}
    saving = _SummarySaving(accumulators)
    writer = AsyncWriter(maxsize=_QUEUE)
    bar = progress_bar(job.progress, len(stim), len(stim) - len(todo))
    recorder = Recorder.from_sites(model, sites, trace)
    n_skipped = 0
    start = time.perf_counter()
    batches = iter(loader)
    try:
        with recorder:
            for step, (block, (rows, x, failed, digests)) in enumerate(zip(blocks, batches)):
                failed = [it for it in failed if is_todo[it.index]]
                if failed:
                    _skip(writer, rec_file, failed, job.on_error, n_skipped)
                    n_skipped += len(failed)
                n_new = int(is_todo[block].sum())
                if x is None:
                    bar.update(n_new)
                    continue
                slots = [r - block[0] for r in rows]  # each good image keeps its place in the block
                buffers = {k: v[: len(rows)] for k, v in ring[step % len(ring)].items()}
                pick = None if slots == list(range(len(rows))) else torch.tensor(slots, device=device)
                overflow = {s.key: torch.zeros((), dtype=torch.int64, device=device) for s in sites if s.stored
                            } if torch_dtype == torch.float16 else None
                file_rows = torch.tensor(rows, dtype=torch.int64)

                def sink(site: Site, value: torch.Tensor, buffers=buffers, n=len(rows), pick=pick,
                         overflow=overflow, file_rows=file_rows) -> None:
                    value = value[:n] if pick is None else value.index_select(0, pick)
                    if site.summarised:  # from the model's own values, before any float16 rounding
                        accumulators[site.key].add(value, file_rows)
                    if not site.stored:
                        return
                    if overflow is not None:
                        overflow[site.key] += torch.count_nonzero(value.abs() >= _FLOAT16_LIMIT)
                    buffers[site.key].copy_(value, non_blocking=cuda)

                recorder.run(_whole_block(x, slots, batch_size).to(device, non_blocking=cuda),
                             stop_early=job.stop_early, sink=sink)
                if cuda:
                    torch.cuda.current_stream(device).synchronize()
                read = {k: int(v) for k, v in overflow.items()} if overflow is not None else {}
                counts = {k: n for k, n in read.items() if n}  # one device read per site, not two
                writer.submit(rec_file.write, np.asarray(rows), {k: v.numpy() for k, v in buffers.items()},
                              digests, counts, saving.due(block[-1] + 1, last=step == len(blocks) - 1))
                bar.update(n_new)
        if saving.unsaved:  # the last blocks were undecodable: save what the summaries hold
            writer.submit(rec_file.write, np.zeros(0, dtype=np.int64), {}, None, None, saving.due(None, last=True))
        writer.close()
    except BaseException:
        with contextlib.suppress(BaseException):
            writer.close()  # let batches already handed over reach the disk
        raise
    finally:
        bar.close()
        # after an error, torch would keep the workers until garbage collection and
        # then wait 5 s for each; stop them now
        getattr(batches, "_shutdown_workers", lambda: None)()
    if n_skipped > _WARN_SKIPPED:
        warnings.warn(f"{n_skipped} undecodable images skipped in all; `unitrec info {rec_file.final.name}` "
                      "lists them (they are in the file's 'skipped' attribute)", UnitrecWarning, stacklevel=3)
    return time.perf_counter() - start


class _SummarySaving:
    """When to save the summaries: after every batch while they are small, else every
    ``_SAVE_SECONDS`` and after the last batch (a crash loses the rows since the last save)."""

    def __init__(self, accumulators: dict[str, Accumulator]) -> None:
        self.accumulators = accumulators
        units = sum(a.snapshot()[1]["mean"].numel() * (6 + 4 * a.top) for a in accumulators.values())
        self.every = 0.0 if units * 8 <= _SAVE_ALWAYS_BYTES else _SAVE_SECONDS
        self.last = time.monotonic()
        self.through = 0
        self.unsaved = False

    def due(self, through: int | None, *, last: bool) -> tuple[int, dict[str, Any]] | None:
        """``(through, snapshots)`` to save with this batch, or None."""
        if not self.accumulators:
            return None
        self.through = through if through is not None else self.through
        if not last and time.monotonic() - self.last < self.every:
            self.unsaved = True
            return None
        self.last, self.unsaved = time.monotonic(), False
        return self.through, {k: a.snapshot() for k, a in self.accumulators.items()}


def _blocks(todo: np.ndarray, n: int, batch_size: int) -> list[list[int]]:
    """The fixed blocks of rows that hold at least one row still to do."""
    # bincount, not np.unique: the same sorted starts without importing numpy.ma (8 ms)
    starts = np.flatnonzero(np.bincount(np.asarray(todo, dtype=np.int64) // batch_size)) * batch_size
    return [list(range(int(s), min(int(s) + batch_size, n))) for s in starts]


def _whole_block(x: torch.Tensor, slots: list[int], batch_size: int) -> torch.Tensor:
    """The batch as the model always sees this block: `batch_size` images, each row in its slot.

    Slots of undecodable images and past the end of the stimulus list hold copies of
    the block's first good image (PyTorch picks its kernels by batch size, so the
    batch is always full size).
    """
    if len(slots) == batch_size:
        return x
    index = torch.zeros(batch_size, dtype=torch.long)
    index[slots] = torch.arange(len(slots))
    return x.index_select(0, index)


def _die_with_parent(parent: int, worker_id: int) -> None:
    """DataLoader worker set-up: die with the recording process (Linux).

    A worker orphaned by SIGKILL would otherwise keep the inherited lock and HDF5
    file handles for seconds, refusing an immediate rerun as "another process".
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(0)


def _skip(writer: AsyncWriter, rec_file: RecordingFile, failed, on_error: str, already: int) -> None:
    if on_error == "raise":
        raise StimulusError(failed[0].error)
    for item in failed[: max(0, _WARN_SKIPPED - already)]:
        warnings.warn(f"skipped: {item.error}", UnitrecWarning, stacklevel=4)
    # through the writer, so the mark lands in order with the batch's rows
    writer.submit(rec_file.mark_skipped, [it.index for it in failed], [it.error for it in failed])


def first_good(loading, on_error: str) -> torch.Tensor:
    errors = []
    for i in range(len(loading)):
        item = loading[i]
        if item.tensor is not None:
            return item.tensor
        if on_error == "raise":
            raise StimulusError(item.error)
        errors.append(item.error)
    if not errors:
        raise StimulusError("the stimulus set is empty")
    raise StimulusError(f"none of the {len(errors)} stimuli could be decoded; the first: {errors[0]}")


def progress_bar(enabled: bool, total: int, initial: int, *, desc: str = "recording", unit: str = "img"):
    """A tqdm bar on a terminal or in a notebook; elsewhere (a SLURM log) a line now and then."""
    import sys

    if enabled and not sys.stderr.isatty() and "ipykernel" not in sys.modules:
        return _LineProgress(total, initial, desc=desc, unit=unit)
    if not enabled:  # tqdm.auto warns in a notebook without ipywidgets, even for a disabled bar
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


class _LineProgress:
    """Progress for a log file: whole lines (no ``\\r`` redraws), at the start, at most once
    every ``interval`` seconds, and at the end."""

    def __init__(self, total: int, initial: int, interval: float = 60.0, *, desc: str = "recording",
                 unit: str = "img") -> None:
        import time

        self.desc, self.unit, self.postfix = desc, unit, ""
        self.total, self.done, self.first, self.interval = total, initial, initial, interval
        self.start = self.last = time.monotonic()
        self._line()

    def update(self, n: int = 1) -> None:
        import time

        self.done += n
        if time.monotonic() - self.last >= self.interval:
            self._line()

    def close(self) -> None:
        if self.done != self.shown:  # the last count, unless the last line said it
            self._line()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        """What the next line ends with (``best=4.2``), as tqdm's postfix."""
        self.postfix = ", " + ", ".join(f"{k}={v}" for k, v in values.items()) if values else ""

    def _line(self) -> None:
        import sys
        import time

        now = time.monotonic()
        self.last, self.shown = now, self.done
        rate = (self.done - self.first) / (now - self.start) if now > self.start else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = f", {(self.total - self.done) / rate / 60:.1f} min left" if rate > 0 and self.done < self.total else ""
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}{share}, {rate:.1f} {self.unit}/s{left}{self.postfix}",
              file=sys.stderr, flush=True)

