"""The HDF5 file of a recording: layout, crash-safe writes, resume.

Layout (see DESIGN.md, "The file"): a root dimension scale ``stimulus`` (relative
paths), a ``done`` mask and stimulus coordinates; one group per site holding
``activation`` and its own scales and coordinates. Datasets are preallocated with
NaN, so an unwritten row can never pass for a ReLU zero.

Protocol: write into ``<out>.partial.h5``; per batch write every site, flush, then
mark the rows done and flush again; at the end set ``status=complete``, fsync and
rename to ``<out>``. A killed run leaves a partial file whose ``done`` rows are
trustworthy, and rerunning the same job redoes only the others.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from .errors import RecordingError
from .sites import Site

__all__ = ["FORMAT_VERSION", "AsyncWriter", "RecordingFile", "chunk_shape", "partial_path"]

FORMAT_VERSION = "1"
TODO, DONE, SKIPPED = 0, 1, 2  # values of the done mask
_CHUNK_BYTES = 4 << 20
_SYNC_BYTES = 64 << 20


def partial_path(out: Path) -> Path:
    """Where a recording lives until it is complete: ``<out>.partial.h5``."""
    return out.with_name(out.name + ".partial.h5")


def chunk_shape(shape: tuple[int, ...], batch_size: int, itemsize: int) -> tuple[int, ...]:
    """Chunks of about 1–4 MiB that never span more stimuli than one batch.

    The stimulus extent is the largest divisor of the batch size that fits, so that
    a batch writes whole chunks; a single stimulus larger than 4 MiB is split along
    its first (channel) axis.
    """
    per_row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    rows = max((d for d in range(1, batch_size + 1) if batch_size % d == 0 and d * per_row <= _CHUNK_BYTES),
               default=1)
    rows = min(rows, shape[0])
    inner = list(shape[1:])
    if per_row > _CHUNK_BYTES and inner:
        per_channel = per_row // inner[0]
        inner[0] = max(1, min(inner[0], _CHUNK_BYTES // max(per_channel, 1)))
    return (max(rows, 1), *inner)


def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=h5py.string_dtype())


def _column(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return _strings(values) if values.dtype == object or values.dtype.kind in "US" else values


class RecordingFile:
    """Owns one open partial recording file; created fresh or reopened to resume."""

    def __init__(self, h5: h5py.File, path: Path, final: Path, sites: list[Site]) -> None:
        self.h5, self.path, self.final, self.sites = h5, path, final, sites
        self._datasets = {s.key: h5[s.key]["activation"] for s in sites}
        self._done = h5["done"]
        self._unsynced = 0  # bytes written since the last fdatasync

    def __repr__(self) -> str:
        return f"<RecordingFile {self.path.name} ({'open' if self.h5 else 'closed'})>"

    # ---------------------------------------------------------------- create
    @classmethod
    def create(cls, final: Path, labels: list[str], coords: dict[str, np.ndarray], sites: list[Site],
               attrs: dict[str, Any], *, batch_size: int, dtype: str = "float32",
               compression: str | None = None) -> RecordingFile:
        path = partial_path(final)
        filters: dict[str, Any] = {}
        if compression == "zstd":
            try:
                import hdf5plugin
            except ImportError:
                raise RecordingError("compression 'zstd' needs hdf5plugin: pip install 'unitrec[zstd]'") from None
            filters = dict(hdf5plugin.Zstd(clevel=1))
        h5 = h5py.File(path, "w", track_order=True)
        try:
            n = len(labels)
            stim = h5.create_dataset("stimulus", data=_strings(labels))
            stim.make_scale("stimulus")
            done = h5.create_dataset("done", shape=(n,), dtype="u1", fillvalue=TODO)
            done.attrs["flag_values"] = np.array([TODO, DONE, SKIPPED], dtype="u1")
            done.attrs["flag_meanings"] = "todo recorded skipped_undecodable"
            done.dims[0].attach_scale(stim)
            for name, values in coords.items():
                ds = h5.create_dataset(name, data=_column(values))
                ds.dims[0].attach_scale(stim)
            if coords:
                done.attrs["coordinates"] = " ".join(coords)
            for key, value in attrs.items():
                h5.attrs[key] = value
            h5.attrs["status"] = "incomplete"
            for site in sites:
                cls._create_site(h5, site, n, batch_size, np.dtype(dtype), filters)
            h5.flush()
        except BaseException:
            h5.close()
            raise
        return cls(h5, path, final, sites)

    @staticmethod
    def _create_site(h5: h5py.File, site: Site, n: int, batch_size: int, dtype: np.dtype,
                     filters: dict[str, Any]) -> None:
        g = h5.create_group(site.key, track_order=True)
        coords = site.coords()
        dims = site.selection.dims
        for dim, size in zip(dims, site.shape):
            values = coords[dim][1] if dim in coords else np.arange(size)
            g.create_dataset(dim, data=values).make_scale(dim)
        shape = (n, *site.shape)
        act = g.create_dataset("activation", shape=shape, dtype=dtype, fillvalue=np.nan,
                               chunks=chunk_shape(shape, batch_size, dtype.itemsize), **filters)
        act.dims[0].attach_scale(h5["stimulus"])
        for i, dim in enumerate(dims):
            act.dims[i + 1].attach_scale(g[dim])
        extra = [k for k, (dim, _) in coords.items() if k not in dims]
        for name in extra:
            dim, values = coords[name]
            ds = g.create_dataset(name, data=_column(values))
            ds.dims[0].attach_scale(g[dim])
        if extra:
            act.attrs["coordinates"] = " ".join(extra)
        for key, value in site.attrs().items():
            act.attrs[key] = value

    # ---------------------------------------------------------------- resume
    @classmethod
    def reopen(cls, final: Path, sites: list[Site], run_key: dict[str, Any]) -> RecordingFile:
        """Reopen a partial file to resume, after checking it records the same run."""
        path = partial_path(final)
        try:
            h5 = h5py.File(path, "r+")
        except OSError as exc:
            raise RecordingError(
                f"cannot reopen the unfinished recording {path} ({exc}). If another program has it "
                "open (a notebook?), close it and rerun to resume; if the file is damaged, start "
                "over with --overwrite"
            ) from exc
        try:
            check_run_key(h5, run_key, path)
        except BaseException:
            h5.close()
            raise
        return cls(h5, path, final, sites)

    # ---------------------------------------------------------------- rows
    def todo(self) -> np.ndarray:
        """Rows not yet recorded (skipped rows count as done)."""
        return np.flatnonzero(self._done[...] == TODO)

    def write(self, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Write one batch: every site, flush, then the done mask, flush."""
        for start, stop, offset in _runs(rows):
            for key, data in values.items():
                self._datasets[key][start:stop] = data[offset : offset + stop - start]
        self.h5.flush()
        for start, stop, _ in _runs(rows):
            self._done[start:stop] = DONE
        self.h5.flush()
        # Push data to the disk while the model computes (this runs in the writer
        # thread), so the final fsync has little left and the page cache stays small.
        self._unsynced += sum(v.nbytes for v in values.values())
        if self._unsynced >= _SYNC_BYTES:
            os.fdatasync(self.h5.id.get_vfd_handle())
            self._unsynced = 0

    def mark_skipped(self, rows: list[int], reasons: list[str]) -> None:
        for row in rows:
            self._done[row] = SKIPPED
        previous = json.loads(self.h5.attrs.get("skipped", "[]"))
        previous.extend(reasons)
        self.h5.attrs["skipped"] = json.dumps(previous, ensure_ascii=False)
        self.h5.flush()

    def finish(self) -> Path:
        """Mark complete, fsync, and move the file to its final name."""
        self.h5.attrs["status"] = "complete"
        self.h5.flush()
        fd = self.h5.id.get_vfd_handle()
        os.fsync(fd)
        self.close()
        os.replace(self.path, self.final)
        dir_fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self.final

    def close(self) -> None:
        if self.h5:
            self.h5.close()


def _runs(rows: np.ndarray):
    """Contiguous runs of sorted rows: (start, stop, offset into the batch)."""
    rows = np.asarray(rows)
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for offset_start, part in zip(np.concatenate([[0], breaks]), np.split(rows, breaks)):
        yield int(part[0]), int(part[-1]) + 1, int(offset_start)


def check_run_key(h5: h5py.File, run_key: dict[str, Any], path: Path) -> None:
    """Refuse to continue a file made by a different run, saying what differs."""
    stored = json.loads(h5.attrs.get("run_key", "{}"))
    differ = [k for k in sorted(set(stored) | set(run_key)) if stored.get(k) != run_key.get(k)]
    if differ:
        raise RecordingError(
            f"{path} was recorded with a different {', '.join(differ)}; rerun with --overwrite "
            "(overwrite=True) to start over, or choose another output"
        )


class AsyncWriter:
    """Runs write jobs in order in a background thread, so disk time overlaps compute.

    The queue is bounded (memory stays flat when the disk is slower than the model).
    An error in the thread stops the run with that error at the next submit or at
    close; it never leaves the caller waiting on a full queue.
    """

    def __init__(self, maxsize: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="unitrec-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._failed:
                continue  # drain after a failure so the producer never blocks
            fn, args = job
            try:
                fn(*args)
            except BaseException as exc:  # reported to the main thread
                self._error, self._failed = exc, True

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RecordingError(f"writing the recording failed: {type(err).__name__}: {err}") from err

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)``; blocks while the queue is full, raises the writer's error."""
        self._raise()
        while True:
            try:
                self._queue.put((fn, args), timeout=0.5)
                return
            except queue.Full:
                self._raise()
                if not self._thread.is_alive():
                    raise RecordingError("the writer thread stopped unexpectedly") from None

    def close(self) -> None:
        """Wait for every submitted job to finish; raise the writer's error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()
