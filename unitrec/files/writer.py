"""The writer: a recording file made, filled batch by batch and finished, in the background.

Protocol: the layout is made whole in ``<out>.creating.h5`` and only then renamed
``<out>.partial.h5``; per batch write every site and the files' hashes, flush, then
mark the rows done and flush again; at the end set ``status=complete``, fsync and
rename to ``<out>``. A killed run leaves either no partial file or one whose ``done``
rows are trustworthy, and rerunning the same job redoes only the others, after
checking that it is the same job (``resume.py``).
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

from unitrec.anatomy.sites import Site
from unitrec.errors import RecordingError
from unitrec.files import summary as summaries
from unitrec.files.disk import (datasync, disk_error, finisher, fsync_folder, no_space, open_existing, raw_rows,
                                release_reserved, reserve_space, written_whole)
from unitrec.files.layout import (COORDINATE_NAMES, DONE, SKIPPED, TODO, chunk_shape, column, creating_path, describe,
                                  digests_sha256, nc_char, partial_path, stimulus_copies, strings)
from unitrec.files.resume import check_run_key, check_stimulus_files
from unitrec.files.storage import KEEPBITS_ATTR, bitround, dataset_filters

__all__ = ["AsyncWriter", "RecordingFile"]


class RecordingFile:
    """Owns one open partial recording file; created fresh or reopened to resume."""

    def __init__(self, h5: h5py.File, path: Path, final: Path, sites: list[Site]) -> None:
        self.h5, self.path, self.final, self.sites = h5, path, final, sites
        self._datasets = {s.key: h5[s.key]["activation"] for s in sites if s.stored}
        # datasets whose chunks are whole rows, stored unfiltered: their rows go straight to the file
        self._direct = {k: ds.chunks[0] for k, ds in self._datasets.items() if raw_rows(ds)}
        # sites stored BitRounded (keepbits): rounded here, in the writer thread, as they are written
        self._keepbits = {k: int(ds.attrs[KEEPBITS_ATTR]) for k, ds in self._datasets.items()
                          if KEEPBITS_ATTR in ds.attrs}
        self._summarised = [s for s in sites if s.summarised]
        self._done = h5["done"]
        self._digests = h5["file_sha256"] if "file_sha256" in h5 else None
        self._unsynced = 0  # bytes written since the last fdatasync
        self._pending: list[np.ndarray] = []  # rows written whose summaries are not saved yet
        # the summaries saved in the file (all empty in a new one), and the slot to save into next
        self.summary_through, self.summary_states, self._slot = summaries.restore_slots(
            {s.key: h5[s.key] for s in self._summarised}, {s.key: s.top for s in self._summarised})

    def __repr__(self) -> str:
        return f"<RecordingFile {self.path.name} ({'open' if self.h5 else 'closed'})>"

    @property
    def batch_size(self) -> int | None:
        """The batch size the file was started with (rows are computed in its blocks)."""
        value = self.h5.attrs.get("batch_size")
        return int(value) if value is not None else None

    # ---------------------------------------------------------------- create
    @classmethod
    def create(cls, final: Path, labels: list[str], coords: dict[str, np.ndarray],
               files: tuple[np.ndarray, np.ndarray] | None, sites: list[Site], attrs: dict[str, Any], *,
               batch_size: int, dtype: str = "float32", compression: str | None = None,
               keepbits: int | None = None) -> RecordingFile:
        """Make the whole layout under a temporary name, then give it the partial file's name.

        `files` is each stimulus file's (size, mtime_ns), or None when the stimuli
        are not files. A crash or a full disk while creating leaves no partial file.
        `keepbits`: float32 values are BitRounded to that many mantissa bits as they are written.
        """
        filters = dataset_filters(compression, keepbits)
        tmp, path = creating_path(final), partial_path(final)
        try:
            with written_whole(tmp, path) as h5:
                cls._create_root(h5, labels, coords, files, attrs, batch_size)
                for site in sites:
                    cls._create_site(h5, site, len(labels), batch_size, np.dtype(dtype), filters, keepbits)
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, RecordingError):
                raise
            raise disk_error(exc, tmp) from None
        return cls(h5py.File(path, "r+"), path, final, sites)

    @staticmethod
    def _create_root(h5: h5py.File, labels: list[str], coords: dict[str, np.ndarray],
                     files: tuple[np.ndarray, np.ndarray] | None, attrs: dict[str, Any], batch_size: int) -> None:
        n = len(labels)
        stim = h5.create_dataset("stimulus", data=strings(labels))
        stim.make_scale("stimulus")
        done = h5.create_dataset("done", shape=(n,), dtype="u1", fillvalue=TODO)
        done.attrs["flag_values"] = np.array([TODO, DONE, SKIPPED], dtype="u1")
        done.attrs["flag_meanings"] = "todo recorded skipped_undecodable"
        done.dims[0].attach_scale(stim)
        describe(stim, "stimulus: path relative to the stimulus folder, or position")
        describe(done, "recording state of each stimulus")
        from unitrec.stimuli.generate import PARAMETER_UNITS

        for name, values in coords.items():
            ds = h5.create_dataset(name, data=column(values))
            ds.dims[0].attach_scale(stim)
            if name in PARAMETER_UNITS:
                describe(ds, PARAMETER_UNITS[name][1], PARAMETER_UNITS[name][0])
        if coords:
            done.attrs["coordinates"] = nc_char(" ".join(coords))
        if files is not None:
            size, mtime = files
            columns = {"file_size": (np.asarray(size, dtype=np.int64), "byte", "size of the image file"),
                       "file_mtime_ns": (np.asarray(mtime, dtype=np.int64), "nanoseconds since 1970-01-01",
                                         "modification time of the image file"),
                       # variable-length, as every text here: netCDF-C's ncdump crashes on fixed-length strings
                       "file_sha256": (strings([""] * n), None, "hex SHA-256 of the bytes recorded")}
            for name, (values, units, long_name) in columns.items():
                ds = h5.create_dataset(name, data=values)
                describe(ds, long_name, units)
                ds.dims[0].attach_scale(stim)
        for key, value in attrs.items():
            h5.attrs[key] = value
        h5.attrs["batch_size"] = batch_size
        h5.attrs["status"] = "incomplete"

    @staticmethod
    def _create_site(h5: h5py.File, site: Site, n: int, batch_size: int, dtype: np.dtype,
                     filters: dict[str, Any], keepbits: int | None = None) -> None:
        g = h5.create_group(site.key, track_order=True)
        coords = site.coords()
        dims = site.selection.dims
        for dim, size in zip(dims, site.shape):
            values = coords[dim][1] if dim in coords else np.arange(size)
            g.create_dataset(dim, data=values).make_scale(dim)
        extra = [k for k, (dim, _) in coords.items() if k not in dims]
        for name in extra:
            dim, values = coords[name]
            ds = g.create_dataset(name, data=column(values))
            ds.dims[0].attach_scale(g[dim])
            if name in COORDINATE_NAMES:
                describe(ds, *COORDINATE_NAMES[name])
        if site.summarised:  # the site's description on the group, where its summary will be
            g.attrs.update({**site.attrs(), "keep": site.spec.keep, "top": site.top})
            summaries.create_slots(g, int(np.prod(site.shape, dtype=np.int64)), site.top)
        if not site.stored:
            return
        shape = (n, *site.shape)
        act = g.create_dataset("activation", shape=shape, dtype=dtype, fillvalue=np.nan,
                               chunks=chunk_shape(shape, batch_size, dtype.itemsize), fletcher32=_CHECKSUM,
                               **filters)
        if keepbits is not None:  # netCDF's name: netCDF-C and netCDF4-python recognise the quantization
            act.attrs[KEEPBITS_ATTR] = np.int32(keepbits)
        act.dims[0].attach_scale(h5["stimulus"])
        for i, dim in enumerate(dims):
            act.dims[i + 1].attach_scale(g[dim])
        per_stimulus = stimulus_copies(h5, g)
        if extra or per_stimulus:
            act.attrs["coordinates"] = nc_char(" ".join(extra + per_stimulus))
        for key, value in site.attrs().items():
            act.attrs[key] = value
        describe(act, f"response of {site.module} ({site.call.type}, {site.capture}"
                       f"{', call %d' % site.index if site.index else ''}): {site.selection.description}", "1")

    # ---------------------------------------------------------------- resume
    @classmethod
    def reopen(cls, final: Path, sites: list[Site], run_key: dict[str, Any], stimuli: Any) -> RecordingFile:
        """Reopen a partial file to resume, after checking it records the same run.

        `stimuli` is the :class:`~unitrec.stimuli.dataset.StimulusSet` of this run:
        its image files must be those whose responses the file already holds.
        """
        path = partial_path(final)
        release_reserved(path)  # blocks a crashed run reserved past the end of the file
        h5 = open_existing(path, "r+", unfinished=True)
        try:
            if "done" not in h5:
                raise RecordingError(f"the unfinished recording {path} is damaged (no done mask); start over "
                                     "with --overwrite (overwrite=True)")
            check_run_key(h5, run_key, path, stimuli.labels, "the unfinished recording {path} was started by "
                          "another job; it differs in {what}. Rerun with --overwrite (overwrite=True) to start "
                          "over, or choose another output", coords=stimuli.coords)
            missing = [s.key for s in sites if s.key not in h5 or ("activation" not in h5[s.key] and s.stored)
                       or (summaries.STATE_GROUP not in h5[s.key] and s.summarised)]
            if missing:
                raise RecordingError(f"the unfinished recording {path} is damaged (no {missing[0]!r}); start "
                                     "over with --overwrite (overwrite=True)")
            check_stimulus_files(h5, stimuli, path, update=True)
            rec = cls(h5, path, final, sites)
            if rec.summary_through:  # killed after saving summaries, before marking their rows done
                done = rec._done[: rec.summary_through]
                rec._done[: rec.summary_through] = np.where(done == TODO, DONE, done)
                h5.flush()
        except BaseException:
            h5.close()
            raise
        return rec

    # ---------------------------------------------------------------- rows
    def todo(self) -> np.ndarray:
        """Rows not yet recorded (skipped rows count as done)."""
        return np.flatnonzero(self._done[...] == TODO)

    def write(self, rows: np.ndarray, values: dict[str, np.ndarray], digests: list[str | None] | None = None,
              overflow: dict[str, int] | None = None, summary: tuple[int, dict[str, Any]] | None = None) -> None:
        """Write one batch: every site and file hash, flush, then the done mask, flush.

        `digests` are the rows' files' SHA-256 (None for stimuli that are not files);
        `overflow` counts per site the values that float16 could not hold. In a file
        with summaries, rows are marked done only once a summary holding them is
        saved: `summary` is ``(through, {site: Accumulator.snapshot()})``, saved into
        the next slot after the values and before the done mask.
        """
        states = {k: summaries.State.from_snapshot(v) for k, v in summary[1].items()} if summary is not None else {}
        nbytes = sum(v.nbytes for v in values.values()) + sum(
            st.mean.nbytes * (6 + 2 * 2 * len(st.top_value)) for st in states.values())
        try:
            self._reserve(nbytes)
            for key, keepbits in self._keepbits.items():
                if key in values:  # in place: the ring buffer is the writer's until this write returns
                    bitround(values[key], keepbits)
            for start, stop, offset in _runs(rows):
                for key, data in values.items():
                    self._put(key, start, stop, data[offset : offset + stop - start])
                if self._digests is not None and digests is not None:
                    self._digests[start:stop] = strings(digests[offset : offset + stop - start])
            for key, count in (overflow or {}).items():
                attrs = self._datasets[key].attrs
                attrs["float16_overflow"] = int(attrs.get("float16_overflow", 0)) + count
            self.h5.flush()
            if self._summarised:
                self._pending.append(np.asarray(rows))
                if summary is None:
                    return
                for key, state in states.items():
                    summaries.save_slot(self.h5[key], self._slot, state, summary[0])
                self.h5.flush()
                self._slot, self.summary_through = 1 - self._slot, summary[0]
                rows, self._pending = np.concatenate(self._pending), []
            for start, stop, _ in _runs(rows):
                self._done[start:stop] = DONE
            self.h5.flush()
            # Push data to the disk while the model computes (this runs in the writer
            # thread), so the final fsync has little left and the page cache stays small.
            self._unsynced += nbytes
            if self._unsynced >= _SYNC_BYTES:
                datasync(self.h5.id.get_vfd_handle())
                self._unsynced = 0
        except (OSError, RuntimeError) as exc:
            raise disk_error(exc, self.path) from None

    def _put(self, key: str, start: int, stop: int, data: np.ndarray) -> None:
        """Rows ``start:stop`` of a site. Where they are whole chunks of an unfiltered
        dataset, each chunk's bytes are written as they are (``H5Dwrite_chunk``: no
        selection, no conversion, no chunk cache); otherwise through a normal write."""
        ds, rows = self._datasets[key], self._direct.get(key)
        if (rows and start % rows == 0 and (stop - start) % rows == 0 and data.dtype == ds.dtype
                and data.flags.c_contiguous):
            origin = (0,) * (ds.ndim - 1)
            for r in range(0, stop - start, rows):
                ds.id.write_direct_chunk((start + r, *origin), data[r : r + rows])
        else:
            ds[start:stop] = data

    def _reserve(self, nbytes: int) -> None:
        """Make sure the disk has room for the next write before HDF5 starts it.

        HDF5 cannot recover from a write that fails for lack of space (its file can
        then neither be flushed nor closed, and the process crashes at exit), so the
        blocks past the end of the file are reserved first (``fallocate`` with
        ``FALLOC_FL_KEEP_SIZE``) and a full disk is reported while the file is still
        whole. Where the file system cannot reserve, the free space is checked.
        """
        reserve_space(self.h5, nbytes)

    def mark_skipped(self, rows: list[int], reasons: list[str]) -> None:
        try:
            for row in rows:
                self._done[row] = SKIPPED
            previous = json.loads(self.h5.attrs.get("skipped", "[]"))
            previous.extend(reasons)
            self.h5.attrs["skipped"] = json.dumps(previous, ensure_ascii=False)
            self.h5.flush()
        except (OSError, RuntimeError) as exc:
            raise disk_error(exc, self.path) from None

    def float16_overflow(self) -> dict[str, int]:
        """Per site, how many stored values overflowed float16 (sites with none are left out)."""
        return {k: int(ds.attrs["float16_overflow"]) for k, ds in self._datasets.items()
                if int(ds.attrs.get("float16_overflow", 0))}

    def finish(self) -> Path:
        """Mark complete, fsync, and move the file to its final name."""
        import datetime as _dt

        try:
            self._finish_summaries()
            self.h5.attrs["status"] = "complete"
            self.h5.attrs["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
            self.h5.attrs["finished_by"] = finisher()
            if self._digests is not None:  # the stimulus set's content, for provenance
                self.h5.attrs["stimulus_content_sha256"] = digests_sha256(self._digests[...])
            self.h5.flush()
            os.fsync(self.h5.id.get_vfd_handle())
            self.close()
            release_reserved(self.path)
            os.replace(self.path, self.final)
            fsync_folder(self.final.parent)
        except (OSError, RuntimeError) as exc:
            raise disk_error(exc, self.path) from None
        return self.final

    def _finish_summaries(self) -> None:
        """Replace each summary's state slots by its finished datasets."""
        if self._pending:
            raise RecordingError(f"internal error: rows of {self.path} were written but their summaries "
                                 "were never saved")
        groups = {s.key: self.h5[s.key] for s in self._summarised}
        _, states, _ = summaries.restore_slots(groups, {s.key: s.top for s in self._summarised})
        for site in self._summarised:
            g = groups[site.key]
            dims = site.selection.dims
            extra = [k for k, (dim, _) in site.coords().items() if k not in dims]
            summaries.finish_site(g, states[site.key], site.top, site.shape, [g[d] for d in dims], " ".join(extra))

    def close(self, quiet: bool = False) -> None:
        """Close the file (safe twice). `quiet`: after a disk error, closing may fail too; ignore it."""
        if not self.h5:
            return
        try:
            self.h5.close()
        except (OSError, RuntimeError):
            if not quiet:
                raise
        if quiet:
            release_reserved(self.path)


def _runs(rows: np.ndarray):
    """Contiguous runs of sorted rows: (start, stop, offset into the batch)."""
    rows = np.asarray(rows)
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for offset_start, part in zip(np.concatenate([[0], breaks]), np.split(rows, breaks)):
        yield int(part[0]), int(part[-1]) + 1, int(offset_start)


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
            if isinstance(err, RecordingError):
                raise err
            if no_space(err):
                raise RecordingError("no space left on device writing the recording; free some space and "
                                     "rerun the same command to resume") from None
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


_SYNC_BYTES = 64 << 20


#: Fletcher-32 checksum on every chunk of `activation`: a flipped bit reads as an error, not a wrong value
#: (what it costs: README, "The file"; benchmarks/bench_checksum.py turns it off to compare)
_CHECKSUM = True
