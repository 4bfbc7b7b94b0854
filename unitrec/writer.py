"""The HDF5 file of a recording: layout, crash-safe writes, resume.

Layout (see docs/design.md, "The file"): a root dimension scale ``stimulus``
(relative paths), a ``done`` mask, stimulus coordinates and, for image files, each
file's size, modification time and content hash; one group per site holding
``activation`` and its own scales and coordinates. Datasets are preallocated with
NaN, so an unwritten row can never pass for a ReLU zero.

Protocol: the layout is made whole in ``<out>.creating.h5`` and only then renamed
``<out>.partial.h5``; per batch write every site and the files' hashes, flush, then
mark the rows done and flush again; at the end set ``status=complete``, fsync and
rename to ``<out>``. A killed run leaves either no partial file or one whose ``done``
rows are trustworthy, and rerunning the same job redoes only the others, after
checking that it is the same job (run key) and that no recorded image has changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import math
import os
import queue
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from . import summary as summaries
from .accumulate import to_state
from .errors import RecordingError
from .sites import Site
from .text import human_size, shorten
from .stimuli.dataset import file_sha256

__all__ = ["FORMAT_VERSION", "AsyncWriter", "RecordingFile", "check_finished", "chunk_shape", "creating_path",
           "human_size", "partial_path", "reserved_names"]

FORMAT_VERSION = "3"  # 3: the run key holds model kwargs, anatomy and stimulus coordinates
TODO, DONE, SKIPPED = 0, 1, 2  # values of the done mask
_CHUNK_BYTES = 4 << 20
_SYNC_BYTES = 64 << 20
_MARGIN = 1 << 20  # room reserved beyond a batch's data for HDF5's own metadata
#: Fletcher-32 checksum on every chunk of `activation`: a flipped bit reads as an error, not a wrong value
#: (what it costs: README, "The file"; benchmarks/bench_checksum.py turns it off to compare)
_CHECKSUM = True


def reserve_margin(n_rows: int, n_sites: int) -> int:
    """Bytes beyond the data a recording needs free: the layout, coordinates, one batch's margin."""
    return 2 * _MARGIN + n_rows * (200 + 8 * n_sites)


_FILE_COLUMNS = ("file_size", "file_mtime_ns", "file_sha256")  # per-stimulus identity of image files


def partial_path(out: Path) -> Path:
    """Where a recording lives until it is complete: ``<out>.partial.h5``."""
    return out.with_name(out.name + ".partial.h5")


def creating_path(out: Path) -> Path:
    """Where the layout of a new recording is made before it becomes the partial file."""
    return out.with_name(out.name + ".creating.h5")


def reserved_names() -> tuple[str, ...]:
    """Names at the root of every recording that a site cannot be stored under."""
    return ("stimulus", "done", *_FILE_COLUMNS)


def _no_space(exc: BaseException) -> bool:
    """ENOSPC from Python (OSError) or from HDF5 (a RuntimeError whose text carries errno 28)."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "errno = 28" in str(exc) \
        or "No space left on device" in str(exc)


def _disk_error(exc: BaseException, path: Path) -> RecordingError:
    if _no_space(exc):
        return RecordingError(f"no space left on device writing {path}; free some space and rerun the "
                              "same command to resume")
    return RecordingError(f"writing {path} failed: {type(exc).__name__}: {' '.join(str(exc).split())}")


def chunk_shape(shape: tuple[int, ...], batch_size: int, itemsize: int) -> tuple[int, ...]:
    """Chunks of about 1–4 MiB that never span more stimuli than one batch.

    The stimulus extent is the largest divisor of the batch size that fits, so that
    a batch writes whole chunks; a single stimulus larger than 4 MiB is split along
    its first (channel) axis.
    """
    per_row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    small = [d for d in range(1, math.isqrt(batch_size) + 1) if batch_size % d == 0]
    rows = max((d for d in small + [batch_size // d for d in small] if d * per_row <= _CHUNK_BYTES), default=1)
    rows = min(rows, shape[0])
    inner = list(shape[1:])
    if per_row > _CHUNK_BYTES and inner:
        per_channel = per_row // inner[0]
        inner[0] = max(1, min(inner[0], _CHUNK_BYTES // max(per_channel, 1)))
    return (max(rows, 1), *inner)


_COORDINATE_NAMES = {  # CF long_name and units of the unit coordinates a site may carry
    "rf_center_y": ("receptive field centre: row in input pixels", "1"),
    "rf_center_x": ("receptive field centre: column in input pixels", "1"),
    "source": ("module whose output these channels are, in a concatenation",),
    "source_index": ("sources numbered in channel order",),
}


#: The stimulus labels as a site group's copy names them (a group cannot hold the root's `stimulus` scale).
STIMULUS_ID = "stimulus_id"


def _stimulus_copies(h5: h5py.File, group: h5py.Group) -> list[str]:
    """Copy the stimulus labels and coordinates into a site group, on the root's `stimulus` dim.

    netCDF readers open a group without its parents' variables (and xarray's
    DataTree passes only indexed coordinates down), so a site opened alone would
    otherwise have no labels. Returns the names, for the `coordinates` attribute.
    """
    names = [n for n in _text(h5["done"].attrs.get("coordinates", "")).split() if n]
    copies = {STIMULUS_ID: h5["stimulus"], **{n: h5[n] for n in names}}
    for name, src in copies.items():
        ds = group.create_dataset(name, data=src[...], dtype=src.dtype)
        for key in ("long_name", "units"):
            if key in src.attrs:
                ds.attrs[key] = src.attrs[key]
        ds.dims[0].attach_scale(h5["stimulus"])
    return list(copies)


def _char(text: str) -> np.bytes_:
    """A fixed-length string attribute (netCDF NC_CHAR, as CF wants for ``coordinates``)."""
    return np.bytes_(text.encode())


def _describe(ds: h5py.Dataset, long_name: str, units: str | None = None) -> None:
    """CF ``long_name`` and ``units`` (``"1"``: a number without unit)."""
    ds.attrs["long_name"] = long_name
    if units is not None:
        ds.attrs["units"] = units


def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=h5py.string_dtype())


def _column(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return _strings(values) if values.dtype == object or values.dtype.kind in "US" else values


class RecordingFile:
    """Owns one open partial recording file; created fresh or reopened to resume."""

    def __init__(self, h5: h5py.File, path: Path, final: Path, sites: list[Site]) -> None:
        self.h5, self.path, self.final, self.sites = h5, path, final, sites
        self._datasets = {s.key: h5[s.key]["activation"] for s in sites if s.stored}
        # datasets whose chunks are whole rows, stored unfiltered: their rows go straight to the file
        self._direct = {k: ds.chunks[0] for k, ds in self._datasets.items() if _raw_rows(ds)}
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
               batch_size: int, dtype: str = "float32", compression: str | None = None) -> RecordingFile:
        """Make the whole layout under a temporary name, then give it the partial file's name.

        `files` is each stimulus file's (size, mtime_ns), or None when the stimuli
        are not files. A crash or a full disk while creating leaves no partial file.
        """
        filters: dict[str, Any] = {}
        if compression == "zstd":
            try:
                import hdf5plugin
            except ImportError:
                raise RecordingError("compression 'zstd' needs hdf5plugin: pip install 'unitrec[zstd]'") from None
            filters = dict(hdf5plugin.Zstd(clevel=1))
        tmp, path = creating_path(final), partial_path(final)
        try:
            with written_whole(tmp, path) as h5:
                cls._create_root(h5, labels, coords, files, attrs, batch_size)
                for site in sites:
                    cls._create_site(h5, site, len(labels), batch_size, np.dtype(dtype), filters)
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, RecordingError):
                raise
            raise _disk_error(exc, tmp) from None
        return cls(h5py.File(path, "r+"), path, final, sites)

    @staticmethod
    def _create_root(h5: h5py.File, labels: list[str], coords: dict[str, np.ndarray],
                     files: tuple[np.ndarray, np.ndarray] | None, attrs: dict[str, Any], batch_size: int) -> None:
        n = len(labels)
        stim = h5.create_dataset("stimulus", data=_strings(labels))
        stim.make_scale("stimulus")
        done = h5.create_dataset("done", shape=(n,), dtype="u1", fillvalue=TODO)
        done.attrs["flag_values"] = np.array([TODO, DONE, SKIPPED], dtype="u1")
        done.attrs["flag_meanings"] = "todo recorded skipped_undecodable"
        done.dims[0].attach_scale(stim)
        _describe(stim, "stimulus: path relative to the stimulus folder, or position")
        _describe(done, "recording state of each stimulus")
        from .stimuli.generate import PARAMETER_UNITS

        for name, values in coords.items():
            ds = h5.create_dataset(name, data=_column(values))
            ds.dims[0].attach_scale(stim)
            if name in PARAMETER_UNITS:
                _describe(ds, PARAMETER_UNITS[name][1], PARAMETER_UNITS[name][0])
        if coords:
            done.attrs["coordinates"] = _char(" ".join(coords))
        if files is not None:
            size, mtime = files
            columns = {"file_size": (np.asarray(size, dtype=np.int64), "byte", "size of the image file"),
                       "file_mtime_ns": (np.asarray(mtime, dtype=np.int64), "nanoseconds since 1970-01-01",
                                         "modification time of the image file"),
                       "file_sha256": (np.zeros(n, dtype="S64"), None, "hex SHA-256 of the bytes recorded")}
            for name, (values, units, long_name) in columns.items():
                ds = h5.create_dataset(name, data=values)
                _describe(ds, long_name, units)
                ds.dims[0].attach_scale(stim)
        for key, value in attrs.items():
            h5.attrs[key] = value
        h5.attrs["batch_size"] = batch_size
        h5.attrs["status"] = "incomplete"

    @staticmethod
    def _create_site(h5: h5py.File, site: Site, n: int, batch_size: int, dtype: np.dtype,
                     filters: dict[str, Any]) -> None:
        g = h5.create_group(site.key, track_order=True)
        coords = site.coords()
        dims = site.selection.dims
        for dim, size in zip(dims, site.shape):
            values = coords[dim][1] if dim in coords else np.arange(size)
            g.create_dataset(dim, data=values).make_scale(dim)
        extra = [k for k, (dim, _) in coords.items() if k not in dims]
        for name in extra:
            dim, values = coords[name]
            ds = g.create_dataset(name, data=_column(values))
            ds.dims[0].attach_scale(g[dim])
            if name in _COORDINATE_NAMES:
                _describe(ds, *_COORDINATE_NAMES[name])
        if site.summarised:  # the site's description on the group, where its summary will be
            g.attrs.update({**site.attrs(), "keep": site.spec.keep, "top": site.top})
            summaries.create_slots(g, int(np.prod(site.shape, dtype=np.int64)), site.top)
        if not site.stored:
            return
        shape = (n, *site.shape)
        act = g.create_dataset("activation", shape=shape, dtype=dtype, fillvalue=np.nan,
                               chunks=chunk_shape(shape, batch_size, dtype.itemsize), fletcher32=_CHECKSUM,
                               **filters)
        act.dims[0].attach_scale(h5["stimulus"])
        for i, dim in enumerate(dims):
            act.dims[i + 1].attach_scale(g[dim])
        per_stimulus = _stimulus_copies(h5, g)
        if extra or per_stimulus:
            act.attrs["coordinates"] = _char(" ".join(extra + per_stimulus))
        for key, value in site.attrs().items():
            act.attrs[key] = value
        _describe(act, f"response of {site.module} ({site.call.type}, {site.capture}"
                       f"{', call %d' % site.index if site.index else ''}): {site.selection.description}", "1")

    # ---------------------------------------------------------------- resume
    @classmethod
    def reopen(cls, final: Path, sites: list[Site], run_key: dict[str, Any], stimuli: Any) -> RecordingFile:
        """Reopen a partial file to resume, after checking it records the same run.

        `stimuli` is the :class:`~unitrec.stimuli.dataset.StimulusSet` of this run:
        its image files must be those whose responses the file already holds.
        """
        path = partial_path(final)
        _release_reserved(path)  # blocks a crashed run reserved past the end of the file
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
        states = {k: to_state(v) for k, v in summary[1].items()} if summary is not None else {}
        nbytes = sum(v.nbytes for v in values.values()) + sum(
            st.mean.nbytes * (6 + 2 * 2 * len(st.top_value)) for st in states.values())
        try:
            self._reserve(nbytes)
            for start, stop, offset in _runs(rows):
                for key, data in values.items():
                    self._put(key, start, stop, data[offset : offset + stop - start])
                if self._digests is not None and digests is not None:
                    self._digests[start:stop] = np.array(digests[offset : offset + stop - start], dtype="S64")
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
                _datasync(self.h5.id.get_vfd_handle())
                self._unsynced = 0
        except (OSError, RuntimeError) as exc:
            raise _disk_error(exc, self.path) from None

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
            raise _disk_error(exc, self.path) from None

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
                self.h5.attrs["stimulus_content_sha256"] = hashlib.sha256(self._digests[...].tobytes()).hexdigest()
            self.h5.flush()
            os.fsync(self.h5.id.get_vfd_handle())
            self.close()
            _release_reserved(self.path)
            os.replace(self.path, self.final)
            _fsync_folder(self.final.parent)
        except (OSError, RuntimeError) as exc:
            raise _disk_error(exc, self.path) from None
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
            _release_reserved(self.path)


def refuse_foreign(path: Path, hint: str = "choose another output path") -> None:
    """Never delete or overwrite a file that is not an HDF5 file (an image, notes ...)."""
    if path.is_file() and path.stat().st_size > 0 and not h5py.is_hdf5(path):
        raise RecordingError(f"{path} exists and is not an HDF5 file; unitrec will not overwrite it: {hint}")


def finisher() -> str:
    """Who finishes a file (``host:pid``), so that a run can tell its own work from another's."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def reserve_space(h5: h5py.File, nbytes: int) -> None:
    """Reserve room past the end of an open file for `nbytes` more (and HDF5's metadata), or raise
    ``OSError(ENOSPC)`` while the file is still whole (see ``RecordingFile._reserve``)."""
    need = nbytes + nbytes // 16 + _MARGIN
    if not _fallocate(h5.id.get_vfd_handle(), h5.id.get_filesize(), need):
        if shutil.disk_usage(Path(h5.filename).parent).free < need:
            raise OSError(errno.ENOSPC, "No space left on device")


def _raw_rows(ds: h5py.Dataset) -> bool:
    """Chunked by whole rows (``(k, *shape[1:])``) with no filter: a chunk's bytes are its rows'."""
    return (ds.chunks is not None and ds.ndim >= 1 and tuple(ds.chunks[1:]) == tuple(ds.shape[1:])
            and ds.id.get_create_plist().get_nfilters() == 0)


def _fallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve disk blocks without changing the file's size; False where unsupported.

    Raises ``OSError(ENOSPC)`` when the disk cannot hold `length` more bytes.
    """
    fallocate = _libc_fallocate()
    if fallocate is None:
        return False
    if fallocate(fd, 1, offset, length) == 0:  # 1 = FALLOC_FL_KEEP_SIZE
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSPC:
        raise OSError(errno.ENOSPC, "No space left on device")
    return False  # EOPNOTSUPP (NFS, some cluster file systems), EINTR ...


@functools.lru_cache(maxsize=1)
def _libc_fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


@contextlib.contextmanager
def written_whole(tmp: Path, dest: Path) -> Iterator[h5py.File]:
    """A new HDF5 file written under `tmp`, named `dest` only once it is whole and on disk.

    A crash leaves at most `tmp` (removed here when the error is a Python one), never
    a half-written `dest`.
    """
    try:
        # a link (or anything) at the temporary name is removed, never written through;
        # "w-" creates exclusively (O_EXCL), so a link made meanwhile is refused, not followed
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        with h5py.File(tmp, "w-", track_order=True) as h5:
            yield h5
            h5.flush()
            os.fsync(h5.id.get_vfd_handle())
        os.replace(tmp, dest)
        _fsync_folder(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _release_reserved(path: Path) -> None:
    """Free disk blocks reserved past the end of a file (see ``RecordingFile._reserve``)."""
    try:
        size = path.stat().st_size
        os.truncate(path, size + 1)
        os.truncate(path, size)
    except OSError:
        pass  # nothing to release, or a read-only file: the checks that follow will say


def _datasync(fd: int) -> None:
    """Push a file's data to the disk: ``fdatasync`` where there is one (Linux), ``F_FULLFSYNC``
    on macOS (its ``fsync`` stops at the drive's cache), else ``fsync`` (Windows: ``_commit``)."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
        return
    if sys.platform == "darwin":
        import fcntl

        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except (OSError, AttributeError):
            pass  # a file system without it (network, FAT): fsync below
    os.fsync(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable. Windows cannot open a folder (nor needs to: its
    renames are journaled), so there is nothing to do where ``os.open`` refuses one."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return  # Windows: os.open of a directory gives EACCES
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise  # some file systems cannot fsync a directory; a real I/O error is reported
    finally:
        os.close(dir_fd)


def _runs(rows: np.ndarray):
    """Contiguous runs of sorted rows: (start, stop, offset into the batch)."""
    rows = np.asarray(rows)
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for offset_start, part in zip(np.concatenate([[0], breaks]), np.split(rows, breaks)):
        yield int(part[0]), int(part[-1]) + 1, int(offset_start)


def open_existing(path: Path, mode: str = "r", *, unfinished: bool = False) -> h5py.File:
    """Open a recording that should exist, turning HDF5's errors into one clear line."""
    what = "unfinished recording" if unfinished else "recording"
    try:
        return h5py.File(path, mode)
    except BlockingIOError:
        raise RecordingError(f"the {what} {path} is open in another program (a notebook, a viewer?) or "
                             "another run is writing it; close it and rerun") from None
    except (OSError, RuntimeError) as exc:
        raise RecordingError(f"the {what} {path} cannot be opened, it is damaged ({' '.join(str(exc).split())}); "
                             "start over with --overwrite (overwrite=True)") from None


def check_run_key(h5: h5py.File, run_key: dict[str, Any], path: Path, labels: list[str] | None = None,
                  message: str = "{path} was recorded by another job; it differs in {what}",
                  coords: dict[str, np.ndarray] | None = None) -> None:
    """Refuse to continue (or to accept) a file made by a different job, saying what differs."""
    if h5.attrs.get("format_version") != FORMAT_VERSION:
        raise RecordingError(f"{path} was written by another version of unitrec (file format "
                             f"{h5.attrs.get('format_version', '?')}, this one writes {FORMAT_VERSION}); "
                             "rerun with --overwrite (overwrite=True) to record it again")
    stored = json.loads(h5.attrs.get("run_key", "{}"))
    differ = [k for k in sorted(set(stored) | set(run_key)) if stored.get(k) != run_key.get(k)]
    if not differ:
        return
    parts = []
    for k in differ:
        stored_labels = [_text(v) for v in h5["stimulus"][...]] if k == "stimuli" and "stimulus" in h5 else None
        if stored_labels is not None and labels is not None and stored_labels != labels:
            parts.append("stimuli (" + _stimulus_diff(stored_labels, labels) + ")")
        elif k == "sites":
            parts.append("sites (" + _site_diff(stored.get(k), run_key.get(k)) + ")")
        elif k == "anatomy":
            from .anatomy import explain, recent, unpack

            parts.append("the model's anatomy (" + explain(unpack(h5.attrs.get("anatomy")), recent(run_key.get(k)))
                         + ")")
        elif k == "coordinates" and coords is not None:
            parts.append("the stimulus coordinates, metadata.csv (" + coordinate_diff(h5, coords) + ")")
        else:
            was, now = _where_they_differ(_text(stored.get(k, "none")), _text(run_key.get(k, "none")))
            parts.append(f"{k} (file: {was}; now: {now})")
    raise RecordingError(message.format(path=path, what="; ".join(parts)))


def check_finished(final: Path, run_key: dict[str, Any], stimuli: Any) -> int | None:
    """Check a finished file against this job: the same job passes (nothing to do), another is refused.

    Returns the batch size the file was recorded with.
    """
    with open_existing(final) as h5:
        if h5.attrs.get("status") != "complete" or "done" not in h5:
            raise RecordingError(f"{final} exists but is not a finished unitrec recording; use --overwrite "
                                 "(overwrite=True) to replace it, or another output path")
        check_run_key(h5, run_key, final, stimuli.labels,
                      "{path} already holds a finished recording of another job; it differs in {what}. Use "
                      "--overwrite (overwrite=True) to replace it, or another output path", coords=stimuli.coords)
        if h5.attrs.get("stitched") == "virtual":  # this job's stitch, but are its shards still this job's?
            from .stitch import changed_sources, missing_sources

            lost = [f"{name} (missing)" for name in missing_sources(h5)] + changed_sources(h5)
            if lost:
                raise RecordingError(
                    f"{final} is this job's stitch, but reads shard files that are missing or were recorded again "
                    f"since: {', '.join(lost[:2])}{' …' if len(lost) > 2 else ''}; record those shards again "
                    "(--shard I/N; with --overwrite where another job's file is there), or --overwrite")
        check_stimulus_files(h5, stimuli, final, update=False)
        value = h5.attrs.get("batch_size")
        return int(value) if value is not None else None


def check_stimulus_files(h5: h5py.File, stimuli: Any, path: Path, *, update: bool) -> None:
    """Refuse if an image file whose responses the file holds has changed since.

    A file whose size and modification time are unchanged is taken as unchanged;
    otherwise its content hash is compared with the one recorded with it (a copy
    with new timestamps passes). With `update`, the new size and time are stored.
    """
    stats = stimuli.file_stats()
    if stats is None or "file_size" not in h5:
        return
    size, mtime = stats
    old_size, old_mtime = h5["file_size"][...], h5["file_mtime_ns"][...]
    moved = np.flatnonzero((size != old_size) | (mtime != old_mtime))
    if not moved.size:
        return
    done = h5["done"][...]
    changed = []
    for row in moved[done[moved] == DONE]:
        recorded = _text(h5["file_sha256"][row])
        if size[row] != old_size[row] or file_sha256(stimuli.root / stimuli.labels[row]) != recorded:
            changed.append(stimuli.labels[row])
    if changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise RecordingError(
            f"{len(changed)} stimulus file(s) changed after their responses were recorded in {path}: "
            f"{', '.join(changed[:5])}{more}. Restore them, or rerun with --overwrite (overwrite=True) to "
            "record everything again")
    if update:
        h5["file_size"][moved] = size[moved]
        h5["file_mtime_ns"][moved] = mtime[moved]
        h5.flush()


def coordinate_diff(h5: h5py.File, coords: dict[str, np.ndarray]) -> str:
    """Which stimulus coordinates (metadata.csv columns) differ between a file and this run."""
    stored = _root_coordinates(h5)
    parts = []
    for name in sorted(set(stored) | set(coords)):
        if name not in coords:
            parts.append(f"column {name!r} only in the file")
        elif name not in stored or name not in h5:
            parts.append(f"column {name!r} only now")
        else:
            was, now = h5[name][...], np.asarray(coords[name])
            if _kind(was) != _kind(now):
                parts.append(f"column {name!r} is {_kind(was)} in the file, {_kind(now)} now")
                continue
            if was.dtype.kind in "OS" or now.dtype.kind in "OUS":
                was = np.array([_text(v) for v in was.tolist()], dtype=object)
                now = np.array([str(v) for v in now.tolist()], dtype=object)
            if was.shape != now.shape:
                parts.append(f"column {name!r} has {len(was)} rows in the file, {len(now)} now")
            else:
                differ = np.flatnonzero(~((was == now) | ((was != was) & (now != now))))
                if differ.size:
                    row = int(differ[0])
                    parts.append(f"column {name!r}: {differ.size} values differ, e.g. row {row}: "
                                 f"{_short(str(was[row]), 20)} in the file, {_short(str(now[row]), 20)} now")
    return "; ".join(parts) or "the same columns, in another form"


def _root_coordinates(h5: h5py.File) -> list[str]:
    coordinates = h5["done"].attrs.get("coordinates", b"") if "done" in h5 else b""
    return _text(coordinates).split()


def _kind(values: np.ndarray) -> str:
    return "text" if values.dtype.kind in "OUS" else "numbers"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short(value: Any, width: int = 60) -> str:
    return shorten(_text(value) if value is not None else "none", width)


def _where_they_differ(a: str, b: str, width: int = 48) -> tuple[str, str]:
    """Both strings around their first difference, short enough for a one-line message."""
    if len(a) <= width and len(b) <= width:
        return a, b
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, i - 12)
    cut = lambda s: ("…" if start else "") + s[start : start + width] + ("…" if len(s) > start + width else "")
    return cut(a), cut(b)


def _site_diff(stored_json: str | None, now_json: str | None) -> str:
    """The layer entries only the file has and only this run has, each written compactly."""
    def entries(text: str | None) -> list[str]:
        try:
            items = json.loads(text or "[]")
        except ValueError:
            return [_short(text)]
        return [json.dumps(e, sort_keys=True, separators=(",", ":")) if isinstance(e, dict) and len(e) > 1
                else (e.get("name", "?") if isinstance(e, dict) else str(e)) for e in items]

    was, now = entries(stored_json), entries(now_json)
    only_file, only_now = [e for e in was if e not in now], [e for e in now if e not in was]
    if not only_file and not only_now:
        return f"file: {_short(', '.join(was))}; now: the same entries in another order"
    return f"file: {_short(', '.join(only_file) or '-', 120)}; now: {_short(', '.join(only_now) or '-', 120)}"


def _stimulus_diff(stored: list[str], now: list[str]) -> str:
    gone, new = sorted(set(stored) - set(now)), sorted(set(now) - set(stored))
    parts = []
    if new:
        parts.append(f"{len(new)} new, e.g. {new[0]}")
    if gone:
        parts.append(f"{len(gone)} gone, e.g. {gone[0]}")
    return ", ".join(parts) or f"{len(stored)} in the file, {len(now)} now, in another order or content"


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
            if _no_space(err):
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
