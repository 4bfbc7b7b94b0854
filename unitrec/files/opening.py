"""Opening a recording to read it: anything that is not a readable recording is one line.

A missing path, a directory, an empty or foreign file, a file locked by a run in
progress, a damaged header or chunk index, a missing compression plugin, a handle
this process still holds under the file's old name, a stitched file whose shards
are gone or were recorded again: each is a :class:`~unitrec.errors.RecordingError`
that says what to do, never a traceback from HDF5.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Union

import h5py
import numpy as np

from unitrec.errors import ConfigError, RecordingError, UnitrecError
from unitrec.files.layout import PARTIAL, ZSTD, load_plugins, no_zstd
from unitrec.files.stitch import check_sources

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["Chunks", "check_chunks", "check_file", "damage_is_one_line", "guarded", "open_h5"]

#: The other files unitrec writes, by their ``kind`` attribute: what they are and how to read them.
OTHER_KINDS = {
    "unitrec evolution": "an evolution (ur.evolve); read it with ur.load_evolution(path), or `unitrec info`",
    "unitrec visualizations": "feature visualisations (kind: visualize); open it with xarray.open_dataset(path)",
}

#: What ``chunks=`` accepts (as xarray's ``open_dataset``): None for lazy numpy-backed
#: arrays, or dask chunks: ``"auto"``, an int, or a mapping of dim name to chunk size
#: (``{}``: the file's own chunks).
Chunks = Union[int, Literal["auto"], Mapping[str, Union[int, Literal["auto"], tuple[int, ...], None]], None]


def _open_with_plugins(*args: Any, **kwargs: Any) -> Any:
    """The file as xarray opens it (``h5netcdf.File``), after registering the Zstd filter in *this*
    process: a dask.distributed worker process reading a block imports unitrec, never hdf5plugin."""
    import h5netcdf

    load_plugins()
    if not h5py.h5z.filter_avail(ZSTD):
        raise no_zstd(str(args[0]))
    return h5netcdf.File(*args, **kwargs)


def store_with_plugins(path: str, group: str) -> Any:
    """A group of a zstd recording as an xarray store whose file is opened by :func:`_open_with_plugins`."""
    from xarray.backends import CachingFileManager, H5NetCDFStore

    manager = CachingFileManager(_open_with_plugins, path, mode="r",
                                 kwargs={"invalid_netcdf": None, "decode_vlen_strings": True, "driver": None})
    return H5NetCDFStore(manager, group=group, mode="r")


def check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        partial = path + PARTIAL
        hint = f"; an unfinished recording is at {partial}" if os.path.exists(partial) else ""
        raise RecordingError(f"no recording at {path}{hint}")
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith(".h5"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise RecordingError(f"{path} is a directory{hint}; give the .h5 file of a recording")
    return path


@contextlib.contextmanager
def open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open a recording read-only; what is not a readable recording is a one-line RecordingError."""
    path = check_file(path)
    drop_stale_handles(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise RecordingError(_unreadable(path, exc)) from None
    with h5, damage_is_one_line(path):
        try:
            h5.get("done")
        except (KeyError, OSError, RuntimeError) as exc:  # opens, but an object header is damaged
            raise RecordingError(f"{path} is truncated or damaged ({' '.join(str(exc).split())[:120]}); "
                                 "copy it again or record it again") from None
        kind = h5.attrs.get("kind")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind in OTHER_KINDS:
            raise RecordingError(f"{path} is not a recording but {OTHER_KINDS[kind]}")
        if not isinstance(h5.get("done"), h5py.Dataset):
            fmt = h5.attrs.get("format")
            raise RecordingError(
                f"{path} is not a unitrec recording: an HDF5 file without unitrec's layout (no 'done' "
                f"mask, {'no format attribute' if fmt is None else f'format {fmt!r}'})"
            )
        check_sources(path, h5)  # a stitched file's shards: there, and the ones it was stitched from
        yield h5


#: What reading a damaged file raises from h5py, HDF5 and the netCDF layer (a flipped bit in an
#: object header, a heap, an attribute): said in one line instead of a traceback.
_DAMAGE = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError)


@contextlib.contextmanager
def damage_is_one_line(path: str) -> Iterator[None]:
    try:
        yield
    except (UnitrecError, BrokenPipeError):
        raise
    except _DAMAGE as exc:
        detail = " ".join(str(exc).split())[:160]
        raise RecordingError(f"{path} is damaged: reading it failed ({type(exc).__name__}: {detail}); copy it "
                             "again or record it again") from None


def check_activation(path: str, h5: h5py.File, ds: h5py.Dataset) -> None:
    """Refuse a site whose layout is garbled: there a flipped bit reads as other numbers, or as NaN
    (a lost chunk), without an error from HDF5, and the chunks' checksums cannot see it."""
    if is_zstd(ds) and not h5py.h5z.filter_avail(ZSTD):
        raise no_zstd(path)
    if ds.is_virtual:
        return  # its shards are checked when they are read
    what = None
    if ds.dtype not in (np.dtype("<f4"), np.dtype("<f2")) or not np.isnan(ds.fillvalue):
        what = f"its type is {ds.dtype} with fill value {ds.fillvalue}, not float32/float16 with NaN"
    elif ds.ndim < 2 or ds.shape[0] != h5["done"].shape[0]:
        what = f"its shape {ds.shape} does not have the file's {h5['done'].shape[0]} stimuli"
    elif ds.chunks is not None:  # every chunk where a chunk can be, and one wherever a row is recorded
        where: set[tuple[int, ...]] = set()
        ds.id.chunk_iter(lambda info: where.add(info.chunk_offset))
        stray = [o for o in where if any(i % c or i >= n for i, c, n in zip(o, ds.chunks, ds.shape))]
        across = int(np.prod([-(-n // c) for n, c in zip(ds.shape[1:], ds.chunks[1:])]))  # chunks per row block
        per_block = np.bincount([o[0] // ds.chunks[0] for o in where], minlength=-(-ds.shape[0] // ds.chunks[0]))
        recorded = np.unique(np.flatnonzero(h5["done"][...] == 1) // ds.chunks[0])
        lost = int((across - per_block[recorded]).sum()) if recorded.size else 0
        if stray:
            what = f"its chunk index puts a chunk at {stray[0]}, outside its shape {ds.shape}"
        elif lost:
            what = f"{lost} chunks of recorded rows are missing from its chunk index"
    if what:
        raise RecordingError(f"{path} is damaged: {ds.name.lstrip('/')}: {what}; copy it again or record it "
                             "again")


def _stale_handles(path: str, *, renamed_only: bool = False) -> list[tuple[h5py.h5f.FileID, str]]:
    """Files this process holds open that are `path` (the same inode) under an earlier name, or
    read-only while it is still being written (``.partial.h5``; unless `renamed_only`).

    HDF5 opens a file that is already open by sharing the open one, with its cached
    metadata: a recording opened while it was ``.partial.h5`` (a lazy array in a
    notebook) would make the finished file read as the old one ("incomplete", rows
    that are not there, addresses past the end).
    """
    try:
        here = os.stat(path)
    except OSError:
        return []
    stale = []
    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            held = os.fstat(fid.get_vfd_handle())
            name = fid.name.decode(errors="replace") if isinstance(fid.name, bytes) else str(fid.name)
        except (OSError, RuntimeError, ValueError, TypeError):
            continue  # not a plain file (in memory), or closed meanwhile
        if (held.st_dev, held.st_ino) != (here.st_dev, here.st_ino):
            continue
        renamed = os.path.abspath(name) != os.path.abspath(path)
        if renamed or (not renamed_only and name.endswith(PARTIAL) and fid.get_intent() == h5py.h5f.ACC_RDONLY):
            stale.append((fid, name))
    return stale


def drop_stale_handles(path: str) -> None:
    """Close what xarray keeps open of `path` under an old name (its lazy arrays reopen by name on
    their next read); refuse, in one line, when something else holds it (an h5py.File)."""
    stale = _stale_handles(path)
    if not stale:
        return
    import sys

    if "xarray.backends.file_manager" in sys.modules:
        from xarray.backends.file_manager import FILE_CACHE

        names = {name for _, name in stale}
        for key, file in list(FILE_CACHE.items()):
            h5 = getattr(file, "_h5file", file)  # h5netcdf.File wraps an h5py.File
            if getattr(h5, "filename", None) in names:
                FILE_CACHE.pop(key, None)
                with contextlib.suppress(Exception):
                    file.close()
        stale = _stale_handles(path, renamed_only=True)
    if stale:
        raise RecordingError(f"{path} is still open in this Python as {stale[0][1]} (an h5py.File or array taken "
                             "before the run finished), and HDF5 would read that old state; close it "
                             "(f.close(), ds.close(), or restart the kernel) and load again")


def _unreadable(path: str, exc: OSError) -> str:
    if isinstance(exc, BlockingIOError) or "unable to lock" in str(exc):
        return (f"{path} is locked: a recording is in progress on it (another process holds it open "
                "for writing). Wait for it to finish, or look at the rows written so far with "
                f"`HDF5_USE_FILE_LOCKING=FALSE unitrec info {path}` (in Python: set it before starting)")
    if os.path.getsize(path) == 0:
        return f"{path} is not a unitrec recording: the file is empty"
    if not h5py.is_hdf5(path):
        return f"{path} is not a unitrec recording: not an HDF5 file"
    detail = re.search(r"\((.*)\)", str(exc).splitlines()[0])
    return (f"{path} is truncated or damaged ({detail.group(1) if detail else exc}); "
            "copy it again or record it again")


def check_chunks(chunks: Any) -> None:
    """What ``chunks=`` takes, checked before the file is opened (a bad value is no damage)."""
    ok = chunks is None or chunks == "auto" or (isinstance(chunks, int) and not isinstance(chunks, bool)
                                                and chunks > 0) or isinstance(chunks, Mapping)
    if not ok:
        raise ConfigError(f"chunks must be None (lazy), 'auto', a positive int or a mapping of dimension to "
                          f"chunk size (e.g. {{'stimulus': 1000}}; {{}} for the file's own), got {chunks!r}")


def guarded(da: xr.DataArray, path: str, dataset: str, chunks: Chunks) -> xr.DataArray:
    """`da` reading through :class:`_CheckedSource`, lazily (or as dask with `chunks`)."""
    from xarray.core import indexing

    source = globals().get("_CheckedSource") or __getattr__("_CheckedSource")  # made on first use
    data = indexing.LazilyIndexedArray(source(os.path.abspath(path), dataset, da.shape, da.dtype))
    da = da.copy(data=data)  # type: ignore[arg-type]
    return da if chunks is None else da.chunk(chunks)  # type: ignore[arg-type]


def _checked_source_class() -> type:
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class _CheckedSource(BackendArray):
        """A stitched file's virtual dataset, read only after :func:`check_sources` passed.

        A lazy array kept in a notebook would otherwise read another job's rows
        once a shard is recorded again under it."""

        def __init__(self, path: str, dataset: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.path, self.dataset, self.shape, self.dtype = path, dataset, shape, np.dtype(dtype)

        def __getitem__(self, key: Any) -> np.ndarray:
            return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

        def _read(self, key: tuple) -> np.ndarray:
            load_plugins()
            with open_h5(self.path) as h5:  # checks the shards, then reads
                return np.asarray(h5[self.dataset][key])

    return _CheckedSource


def __getattr__(name: str) -> Any:  # the class needs xarray, imported on first use only
    if name == "_CheckedSource":
        cls = _checked_source_class()
        cls.__module__, cls.__qualname__ = __name__, "_CheckedSource"
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_zstd(ds: h5py.Dataset) -> bool:
    """Whether a dataset (or, virtual, its first source: the shards' compression is the recording's) is
    stored with the Zstd filter (id 32015)."""
    from unitrec.files.storage import storage_of

    return storage_of(ds).get("compression") == "zstd"

