"""Read recordings back as labelled xarray objects (lazily; dask with ``chunks=``).

The file opens with plain ``xarray.open_datatree(path, engine="h5netcdf")`` too;
these functions add what a plain open cannot: stimulus coordinates on every site,
the provenance attributes, dropping rows that were never recorded, and the
``(stimulus, unit)`` population view across sites.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence, Union

import h5py
import numpy as np

from .errors import ConfigError, LayerNotFoundError, RecordingError, UnitrecError, UnitrecWarning
from .stitch import check_sources, source_chunks

if TYPE_CHECKING:
    import xarray as xr  # imported where used: `unitrec info` reads the file with h5py alone

__all__ = ["load_layer", "load_population", "load_summary", "open_recording", "recording_info", "summaries_in"]

#: What ``chunks=`` accepts (as xarray's ``open_dataset``): None for lazy numpy-backed
#: arrays, or dask chunks: ``"auto"``, an int, or a mapping of dim name to chunk size
#: (``{}``: the file's own chunks).
Chunks = Union[int, Literal["auto"], Mapping[str, Union[int, Literal["auto"], tuple[int, ...], None]], None]

_PROVENANCE = ("model", "model_description", "weights", "weights_sha256", "preprocessing", "run_id",
               "unitrec_version", "status", "stimulus_set_sha256", "stimulus_root")
_LABELLED_MAX = 4_000_000  # ranked responses per side that load_summary labels one by one


def _plugins() -> None:
    try:  # registers the Zstd filter for files recorded with compression
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass


_ZSTD = 32015  # HDF5's id of the Zstd filter


def _no_zstd(path: str) -> RecordingError:
    return RecordingError(f"{path} is compressed with zstd and this Python cannot decompress it: install hdf5plugin "
                          "(pip install 'unitrec[zstd]') here and, on a dask cluster, on every worker")


def _open_with_plugins(*args: Any, **kwargs: Any) -> Any:
    """The file as xarray opens it (``h5netcdf.File``), after registering the Zstd filter in *this*
    process: a dask.distributed worker process reading a block imports unitrec, never hdf5plugin."""
    import h5netcdf

    _plugins()
    if not h5py.h5z.filter_avail(_ZSTD):
        raise _no_zstd(str(args[0]))
    return h5netcdf.File(*args, **kwargs)


def _store_with_plugins(path: str, group: str) -> Any:
    """A group of a zstd recording as an xarray store whose file is opened by :func:`_open_with_plugins`."""
    from xarray.backends import CachingFileManager, H5NetCDFStore

    manager = CachingFileManager(_open_with_plugins, path, mode="r",
                                 kwargs={"invalid_netcdf": None, "decode_vlen_strings": True, "driver": None})
    return H5NetCDFStore(manager, group=group, mode="r")


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        partial = path + ".partial.h5"
        hint = f"; an unfinished recording is at {partial}" if os.path.exists(partial) else ""
        raise RecordingError(f"no recording at {path}{hint}")
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith(".h5"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise RecordingError(f"{path} is a directory{hint}; give the .h5 file of a recording")
    return path


@contextlib.contextmanager
def _open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open a recording read-only; what is not a readable recording is a one-line RecordingError."""
    path = _check_file(path)
    _drop_stale_handles(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise RecordingError(_unreadable(path, exc)) from None
    with h5, _damage_is_one_line(path):
        try:
            h5.get("done")
        except (KeyError, OSError, RuntimeError) as exc:  # opens, but an object header is damaged
            raise RecordingError(f"{path} is truncated or damaged ({' '.join(str(exc).split())[:120]}); "
                                 "copy it again or record it again") from None
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
def _damage_is_one_line(path: str) -> Iterator[None]:
    try:
        yield
    except (UnitrecError, BrokenPipeError):
        raise
    except _DAMAGE as exc:
        detail = " ".join(str(exc).split())[:160]
        raise RecordingError(f"{path} is damaged: reading it failed ({type(exc).__name__}: {detail}); copy it "
                             "again or record it again") from None


def _check_activation(path: str, h5: h5py.File, ds: h5py.Dataset) -> None:
    """Refuse a site whose layout is garbled: there a flipped bit reads as other numbers, or as NaN
    (a lost chunk), without an error from HDF5, and the chunks' checksums cannot see it."""
    if ds.is_virtual:
        return  # its shards are checked when they are read
    if _zstd(ds) and not h5py.h5z.filter_avail(_ZSTD):
        raise _no_zstd(path)
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
        if renamed or (not renamed_only and name.endswith(".partial.h5") and fid.get_intent() == h5py.h5f.ACC_RDONLY):
            stale.append((fid, name))
    return stale


def _drop_stale_handles(path: str) -> None:
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


def open_recording(path: str | os.PathLike, *, chunks: Chunks = None) -> xr.DataTree:
    """Open a recording lazily as a DataTree: one child per site.

    Parameters
    ----------
    path
        The ``.h5`` file (a ``.partial.h5`` file of an unfinished run opens too).
    chunks
        None for lazy numpy-backed variables, or dask chunks (``"auto"``, a dict)
        for out-of-core analysis.

    Examples
    --------
    >>> tree = ur.open_recording("acts.h5")  # doctest: +SKIP
    >>> tree["layer1"]["activation"]  # doctest: +SKIP
    """
    _check_chunks(chunks)
    _plugins()
    with _open_h5(path) as h5:  # a clear error for anything that is not a readable recording
        virtual = h5.attrs.get("stitched") == "virtual"
        for group in h5.values():
            if isinstance(group, h5py.Group) and isinstance(group.get("activation"), h5py.Dataset):
                _check_activation(os.fspath(path), h5, group["activation"])
    import xarray as xr

    with _damage_is_one_line(os.fspath(path)):
        if not virtual:
            return xr.open_datatree(os.fspath(path), engine="h5netcdf", chunks=chunks)
        tree = xr.open_datatree(os.fspath(path), engine="h5netcdf")
    for name, node in tree.children.items():  # every read of a stitched site checks its shards first
        if "activation" in node.data_vars:
            ds = node.to_dataset()
            ds["activation"] = _guarded(ds["activation"], os.fspath(path), f"{name}/activation", chunks)
            tree[name].dataset = ds
    return tree


def _check_chunks(chunks: Any) -> None:
    """What ``chunks=`` takes, checked before the file is opened (a bad value is no damage)."""
    ok = chunks is None or chunks == "auto" or (isinstance(chunks, int) and not isinstance(chunks, bool)
                                                and chunks > 0) or isinstance(chunks, Mapping)
    if not ok:
        raise ConfigError(f"chunks must be None (lazy), 'auto', a positive int or a mapping of dimension to "
                          f"chunk size (e.g. {{'stimulus': 1000}}; {{}} for the file's own), got {chunks!r}")


def _guarded(da: xr.DataArray, path: str, dataset: str, chunks: Chunks) -> xr.DataArray:
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
            _plugins()
            with _open_h5(self.path) as h5:  # checks the shards, then reads
                return np.asarray(h5[self.dataset][key])

    return _CheckedSource


def __getattr__(name: str) -> Any:  # the class needs xarray, imported on first use only
    if name == "_CheckedSource":
        cls = _checked_source_class()
        cls.__module__, cls.__qualname__ = __name__, "_CheckedSource"
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sites_in(path: str | os.PathLike) -> list[str]:
    """Names of the sites stored in a recording, in recording order."""
    with _open_h5(path) as h5:
        return [k for k, v in h5.items() if isinstance(v, h5py.Group) and "activation" in v]


def summaries_in(path: str | os.PathLike) -> list[str]:
    """Names of the sites kept as summaries (``keep: summary`` or ``both``), in recording order."""
    with _open_h5(path) as h5:
        return _summary_names(h5)


def _summary_names(h5: h5py.File) -> list[str]:
    return [k for k, v in h5.items() if isinstance(v, h5py.Group) and v.attrs.get("keep") in ("summary", "both")]


def _stimulus_coords(h5: h5py.File) -> dict[str, tuple[str, np.ndarray]]:
    listed = h5["done"].attrs.get("coordinates", "")
    names = ["stimulus", "done"] + [n for n in (listed.decode() if isinstance(listed, bytes) else listed).split()
                                    if n]
    out = {}
    for name in names:
        values = h5[name][...]
        if values.dtype.kind in "OS":
            values = np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=str)
        out[name] = ("stimulus", values)
    return out


def _cf_attrs(ds: h5py.Dataset) -> dict[str, str]:
    """A dataset's CF description (``units``, ``long_name``), for its xarray coordinate."""
    return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in ds.attrs.items()
            if k in ("units", "long_name", "standard_name")}


def _root_attrs(h5: h5py.File) -> dict[str, Any]:
    attrs = {k: h5.attrs[k] for k in _PROVENANCE if k in h5.attrs}
    attrs["recording"] = os.path.abspath(h5.filename)
    return attrs


def load_layer(path: str | os.PathLike, layer: str, *, chunks: Chunks = None,
               include_missing: bool = False) -> xr.DataArray:
    """One site's responses as a labelled DataArray.

    Parameters
    ----------
    path
        A recording.
    layer
        A site name as recorded (``"layer3.5"``, ``"layer1.0.relu:2"``).
    chunks
        None: lazy (read on first use); ``"auto"`` or a dict: dask-backed.
    include_missing
        Keep rows that hold no response (skipped undecodable images, rows an
        unfinished run has not reached; they are NaN). Dropped by default.

    Returns
    -------
    xarray.DataArray
        Dims ``(stimulus, channel, y, x)`` for whole conv maps, ``(stimulus, channel)``
        for 2-D or pooled sites, ``(stimulus, unit)`` for selected units; stimulus
        coordinates (``label``, metadata columns, ``done``), unit coordinates
        (``source``, ``source_index``, ``rf_center_y``, ``rf_center_x``), and the site's and the
        recording's provenance in ``attrs``.
    """
    path = _check_file(path)
    _check_chunks(chunks)
    _plugins()
    with _open_h5(path) as h5:
        sites = [k for k, v in h5.items() if isinstance(v, h5py.Group) and "activation" in v]
        if layer not in sites and layer in _summary_names(h5):
            raise LayerNotFoundError(f"site {layer!r} of {path} was kept as a summary only (keep: summary): "
                                     f"read it with ur.load_summary({path!r}, {layer!r})")
        if layer not in sites:
            raise LayerNotFoundError(_no_site(layer, sites, path))
        _check_activation(path, h5, h5[layer]["activation"])
        coords = _stimulus_coords(h5)
        described = {name: _cf_attrs(h5[name]) for name in coords}
        attrs = _root_attrs(h5)
        if isinstance(chunks, dict) and not chunks:  # the file's own chunks; a virtual dataset has none
            chunks = source_chunks(h5[layer]["activation"]) or chunks
        virtual = h5.attrs.get("stitched") == "virtual"
        zstd = _zstd(h5[layer]["activation"])
    import xarray as xr

    with _damage_is_one_line(path):
        if zstd:  # opened on each dask worker with the Zstd filter registered
            ds = xr.open_dataset(_store_with_plugins(path, layer), chunks=None if virtual else chunks)
        else:
            ds = xr.open_dataset(path, group=layer, engine="h5netcdf", chunks=None if virtual else chunks)
        da = ds["activation"].drop_vars([c for c in ds["activation"].coords if c == "stimulus_id"])
    if virtual:  # every read checks first that the shards are still the ones stitched
        da = _guarded(da, path, f"{layer}/activation", chunks)
    with _damage_is_one_line(path):  # a damaged scale gives a coordinate of the wrong length
        da = _text_coords(da.assign_coords(coords))
    for name, cf in described.items():  # units and long_name, as a plain xarray open gives them
        da.coords[name].attrs.update(cf)
    da.attrs.update(attrs)
    da.name = layer
    if not include_missing:
        keep = np.asarray(coords["done"][1]) == 1
        if not keep.all():
            da = da.isel(stimulus=np.flatnonzero(keep))
    return da


def load_summary(path: str | os.PathLike, layer: str) -> xr.Dataset:
    """A site's summary (``keep: summary`` or ``both``) as a labelled Dataset.

    Parameters
    ----------
    path
        A recording (a ``.partial.h5`` file of a run in progress gives the summary
        of the rows saved so far).
    layer
        A site kept as a summary.

    Returns
    -------
    xarray.Dataset
        Over the site's unit dims (``channel, y, x``; ``channel``; or ``unit``) with
        their coordinates (``source``, ``rf_center_y``/``rf_center_x``, ...):
        ``count`` (stimuli summarised), ``mean``, ``std`` (ddof=0), ``min``, ``max``,
        ``sparseness`` (Vinje–Gallant lifetime sparseness of the rectified
        responses, as ``analysis.lifetime_sparseness``); over ``(rank, *unit dims)``:
        ``top_response`` (highest first), ``top_stimulus`` (labels), ``top_index``
        (rows of the file's ``stimulus``), and ``top_<coordinate>`` for every
        stimulus coordinate (``top_label``, ``top_orientation``, ...); the same for
        the lowest responses as ``bottom_*`` (lowest first). Ties rank the earlier
        stimulus first. Ranks past the number of stimuli are NaN / ``""`` / −1.
        The stimuli themselves are the ``stimulus`` dim, with their coordinates, so
        ``s.stimulus[s.top_index]`` looks any rank up. Above 4 million ranked
        responses per side (e.g. 250,000 units × 16 ranks) the per-rank labels and
        coordinates are left out, with a warning, to save memory; ``top_index``
        and :func:`unitrec.analysis.top_stimuli` on a selection still give them.
    """
    from . import summary as summaries

    path = _check_file(path)
    _plugins()
    with _open_h5(path) as h5:
        names = _summary_names(h5)
        if layer not in names:
            stored = [k for k, v in h5.items() if isinstance(v, h5py.Group) and "activation" in v]
            if layer in stored:
                raise LayerNotFoundError(f"site {layer!r} of {path} was stored in full, without a summary: load "
                                         "it with ur.load_layer (analysis.top_stimuli ranks it), or record it "
                                         "with keep: summary (or both)")
            raise LayerNotFoundError(f"no summary {layer!r} in {path}; summaries: {', '.join(names) or 'none'}")
        group = h5[layer]
        top = int(group.attrs["top"])
        unit_shape = tuple(int(v) for v in group["mean"].shape) if "mean" in group else None
        if summaries.STATE_GROUP in group:  # unfinished: the newest state every summary has whole
            groups = {k: h5[k] for k in names}
            _, states, _ = summaries.restore_slots(groups, {k: int(h5[k].attrs["top"]) for k in names})
            dims = _unit_dims(group)
            unit_shape = tuple(group[d].shape[0] for d in dims)
            data = states[layer].finals(top, unit_shape)
        else:
            dims = _unit_dims(group, group["mean"])
            data = {name: group[name][()] for name in summaries.FINALS}
        stimuli = _stimulus_coords(h5)
        unit_coords = {}
        for name, ds in group.items():
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or name == "rank":
                continue
            dim = name if h5py.h5ds.is_scale(ds.id) else _dims_of(ds)[0]
            if dim in dims and name not in summaries.FINALS and not name.startswith("rectified"):
                unit_coords[name] = (dim, _text_array(ds[...]))
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in group.attrs.items()
                 if k not in ("CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST")}
        attrs.update(_root_attrs(h5))
    import xarray as xr

    ranked = ("rank", *dims)
    variables: dict[str, Any] = {"count": ((), data["count"])}
    for name in ("mean", "std", "min", "max", "sparseness"):
        variables[name] = (dims, data[name])
    entries = int(np.prod(data["top_stimulus"].shape))
    labelled = entries <= _LABELLED_MAX
    if not labelled:
        warnings.warn(f"{layer}: {entries:,} ranked responses per side; their stimulus labels and coordinates "
                      "are left out of the Dataset to save memory. Look them up for the units you want: "
                      "A.top_stimuli(s.isel(channel=[3, 7]), k), or s.stimulus[s.top_index]", UnitrecWarning,
                      stacklevel=2)
    for side in ("top", "bottom"):
        index = np.asarray(data[f"{side}_stimulus"], dtype=np.int64)
        variables[f"{side}_response"] = (ranked, data[f"{side}_response"])
        variables[f"{side}_index"] = (ranked, index)
        for coord, (_, values) in stimuli.items():
            if coord == "done" or not labelled:
                continue
            name = f"{side}_stimulus" if coord == "stimulus" else f"{side}_{coord}"
            variables[name] = (ranked, pick_rows(np.asarray(values), index))
    table = {name: ("stimulus", _text_array(np.asarray(values))) for name, (_, values) in stimuli.items()}
    return xr.Dataset(variables, coords={"rank": np.arange(top), **unit_coords, **table}, attrs=attrs)


def _zstd(ds: h5py.Dataset) -> bool:
    """Whether a dataset (or, virtual, its first source) is stored with the Zstd filter (id 32015)."""
    if ds.is_virtual:
        return False  # the shards say; their compression is the recording's
    plist = ds.id.get_create_plist()
    return any(plist.get_filter(i)[0] == _ZSTD for i in range(plist.get_nfilters()))


def _summary_count(h5: h5py.File, group: h5py.Group) -> int:
    """How many stimuli a summary holds (finished, or saved so far in a partial file)."""
    from . import summary as summaries

    if "count" in group:
        return int(group["count"][()])
    names = _summary_names(h5)
    through, states, _ = summaries.restore_slots({k: h5[k] for k in names}, {k: int(h5[k].attrs["top"]) for k in names})
    return int(states[group.name.lstrip("/")].count)


def _dims_of(ds: h5py.Dataset) -> list[str]:
    return [ds.dims[i][0].name.rsplit("/", 1)[-1] if len(ds.dims[i]) else f"dim_{i}" for i in range(ds.ndim)]


def _unit_dims(group: h5py.Group, ds: h5py.Dataset | None = None) -> list[str]:
    """The site's unit dims: the mean's dims when finished, else the group's scales in order."""
    if ds is not None:
        return _dims_of(ds)
    return [name for name, v in group.items() if isinstance(v, h5py.Dataset) and h5py.h5ds.is_scale(v.id)
            and name != "rank"]


def _text_array(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "OS":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=str)
    return values


def pick_rows(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` where index ≥ 0, and where it is −1 (no stimulus) NaN for numbers, "" for text."""
    if values.dtype.kind == "O":
        values = values.astype(str)
    picked = values[np.clip(index, 0, None)] if values.size else np.zeros(index.shape, values.dtype)
    missing = index < 0
    if not missing.any():
        return picked
    if picked.dtype.kind in "US":
        return np.where(missing, "", picked)
    if picked.dtype.kind in "iub":
        picked = picked.astype(np.float64)
    return np.where(missing, np.nan, picked)


def _text_coords(da: xr.DataArray) -> xr.DataArray:
    """Text coordinates as fixed-width unicode, not Python objects: plotting and sorting need it."""
    fix = {name: (c.dims, np.asarray(c.values).astype(str)) for name, c in da.coords.items() if c.dtype == object}
    return da.assign_coords(fix) if fix else da


def _no_site(layer: str, sites: list[str], path: str) -> str:
    """Every recorded site when there are few; else the closest names and how to list all."""
    if len(sites) <= 20:
        return f"no site {layer!r} in {path}; recorded sites: {', '.join(sites) or 'none'}"
    close = difflib.get_close_matches(layer, sites, n=5, cutoff=0.5)
    closest = f"closest: {', '.join(close)}; " if close else ""
    return f"no site {layer!r} in {path}; {closest}{len(sites)} sites recorded (`unitrec info {path}` lists them)"


def load_population(path: str | os.PathLike, layers: Sequence[str] | None = None, *,
                    chunks: Chunks = None, include_missing: bool = False) -> xr.DataArray:
    """Sites side by side as one population: dims ``(stimulus, unit)``.

    Every unit carries ``layer``, ``channel``, ``y`` and ``x`` coordinates (``-1``
    where a site has no such axis, e.g. pooled or 2-D sites), ``source`` and
    ``source_index`` (``""`` and ``-1`` outside concatenations) and, where known, its
    receptive-field centre.

    Parameters
    ----------
    path
        A recording.
    layers
        Sites to include (default: all, in recording order).
    chunks
        Pass dask chunks for populations larger than memory.
    """
    names = [layers] if isinstance(layers, str) else list(layers) if layers is not None else sites_in(path)
    parts = []
    for name in names:
        da = load_layer(path, name, chunks=chunks, include_missing=include_missing)
        attrs = dict(da.attrs)
        dims = [d for d in da.dims if d != "stimulus"]
        if dims == ["unit"]:
            flat = da.drop_vars("unit")
        else:
            flat = da.stack(unit=dims).reset_index("unit")
        n = flat.sizes["unit"]
        for coord in ("channel", "y", "x", "source_index"):
            if coord not in flat.coords:
                flat = flat.assign_coords({coord: ("unit", np.full(n, -1))})
        for coord in ("rf_center_y", "rf_center_x"):
            if coord not in flat.coords:
                flat = flat.assign_coords({coord: ("unit", np.full(n, np.nan))})
        if "source" not in flat.coords:
            flat = flat.assign_coords(source=("unit", np.full(n, "")))
        flat = flat.assign_coords(layer=("unit", np.full(n, name)))
        extra = [c for c in flat.coords if "unit" in flat[c].dims and c not in
                 ("channel", "y", "x", "rf_center_y", "rf_center_x", "source", "source_index", "layer")]
        parts.append(flat.drop_vars(extra).transpose("stimulus", "unit"))
    if not parts:
        raise RecordingError(f"{path} holds no sites")
    import xarray as xr

    pop = xr.concat(parts, dim="unit", coords="different", compat="equals", join="exact",
                    combine_attrs="drop_conflicts")
    pop = pop.assign_coords(unit=np.arange(pop.sizes["unit"]))
    pop.attrs = {k: v for k, v in attrs.items() if k in _PROVENANCE or k == "recording"}
    pop.attrs["layers"] = list(names)
    pop.name = "population"
    return pop


_INFO_ATTRS = ("module_type", "selection", "rf_size", "rf_size_pooled")  # a site's, for `unitrec info`


def recording_info(path: str | os.PathLike) -> dict[str, Any]:
    """A summary of a recording for humans (``unitrec info``): provenance and sites."""
    path = _check_file(path)
    _plugins()
    with _open_h5(path) as h5:
        done = h5["done"][...]
        info: dict[str, Any] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
        info["file"] = os.path.abspath(path)
        info["file_size"] = os.path.getsize(path)
        info["n_stimuli"] = int(done.size)
        info["n_recorded"] = int((done == 1).sum())
        info["n_skipped"] = int((done == 2).sum())
        info["sites"] = []
        for key, group in h5.items():
            if not isinstance(group, h5py.Group):
                continue
            keep = group.attrs.get("keep", "full")
            if "activation" in group:
                act = group["activation"]
                dims = [act.dims[i][0].name.rsplit("/", 1)[-1] for i in range(act.ndim)]
                entry = {"name": key, "dims": dims, "shape": act.shape, "dtype": str(act.dtype),
                         **{k: act.attrs[k] for k in _INFO_ATTRS if k in act.attrs}}
                if _zstd(act):
                    entry["compression"] = "zstd"
            elif keep == "summary":
                dims = _unit_dims(group, group["mean"] if "mean" in group else None)
                entry = {"name": key, "dims": dims, "shape": tuple(group[d].shape[0] for d in dims),
                         "dtype": "float64", **{k: group.attrs[k] for k in _INFO_ATTRS
                                                if k in group.attrs}}
            else:
                continue
            entry["keep"] = str(keep)
            if keep != "full":
                entry["top"] = int(group.attrs["top"])
                entry["summary_of"] = _summary_count(h5, group)
            info["sites"].append(entry)
        info["skipped"] = json.loads(info.get("skipped", "[]"))
        if "shards" in info:  # stitched: where the data lives
            info["shards"] = json.loads(info["shards"])
            folder = os.path.dirname(os.path.abspath(path))
            info["shards_size"] = sum(os.path.getsize(os.path.join(folder, s["file"])) for s in info["shards"]
                                      if os.path.isfile(os.path.join(folder, s["file"])))
        if "shard" in info:  # one shard of a job
            info["shard"] = json.loads(info["shard"])
    return info
