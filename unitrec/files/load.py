"""Read recordings back as labelled xarray objects (lazily; dask with ``chunks=``).

The file opens with plain ``xarray.open_datatree(path, engine="h5netcdf")`` too;
these functions add what a plain open cannot: stimulus coordinates on every site,
the provenance attributes, dropping rows that were never recorded, and the
``(stimulus, unit)`` population view across sites.
"""

from __future__ import annotations

import difflib
import os
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import h5py
import numpy as np

from unitrec.errors import LayerNotFoundError, RecordingError, UnitrecWarning
from unitrec.files import summary as summaries
from unitrec.files.layout import load_plugins
from unitrec.files.opening import (Chunks, check_activation, check_chunks, check_file, damage_is_one_line, guarded,
                                   is_zstd, open_h5, store_with_plugins)
from unitrec.files.stitch import source_chunks

if TYPE_CHECKING:
    import xarray as xr  # imported where used: `unitrec info` reads the file with h5py alone

__all__ = ["load_layer", "load_population", "load_summary", "open_recording", "pick_rows", "sites_in",
           "summaries_in"]

_PROVENANCE = ("model", "model_description", "weights", "weights_sha256", "preprocessing", "ablation", "run_id",
               "unitrec_version", "status", "stimulus_set_sha256", "stimulus_root")
_LABELLED_MAX = 4_000_000  # ranked responses per side that load_summary labels one by one


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
    check_chunks(chunks)
    load_plugins()
    with open_h5(path) as h5:  # a clear error for anything that is not a readable recording
        virtual = h5.attrs.get("stitched") == "virtual"
        for group in h5.values():
            if isinstance(group, h5py.Group) and isinstance(group.get("activation"), h5py.Dataset):
                check_activation(os.fspath(path), h5, group["activation"])
    import xarray as xr

    with damage_is_one_line(os.fspath(path)):
        if not virtual:
            return xr.open_datatree(os.fspath(path), engine="h5netcdf", chunks=chunks)
        tree = xr.open_datatree(os.fspath(path), engine="h5netcdf")
    for name, node in tree.children.items():  # every read of a stitched site checks its shards first
        if "activation" in node.data_vars:
            ds = node.to_dataset()
            ds["activation"] = guarded(ds["activation"], os.fspath(path), f"{name}/activation", chunks)
            tree[name].dataset = ds
    return tree


def sites_in(path: str | os.PathLike) -> list[str]:
    """Names of the sites stored in a recording, in recording order."""
    with open_h5(path) as h5:
        return [k for k, v in h5.items() if isinstance(v, h5py.Group) and "activation" in v]


def summaries_in(path: str | os.PathLike) -> list[str]:
    """Names of the sites kept as summaries (``keep: summary`` or ``both``), in recording order."""
    with open_h5(path) as h5:
        return summary_names(h5)


def summary_names(h5: h5py.File) -> list[str]:
    return [k for k, v in h5.items() if isinstance(v, h5py.Group) and v.attrs.get("keep") in ("summary", "both")]


def stimulus_coords(h5: h5py.File) -> dict[str, tuple[str, np.ndarray]]:
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


def lazy_chunks() -> dict | None:
    """``chunks=`` for :func:`load_layer` that reads nothing whole: dask arrays on the file's own
    chunks (``{}``), or None (numpy, read on access) where dask is not installed."""
    try:
        import dask  # noqa: F401

        return {}
    except ImportError:
        return None


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
    path = check_file(path)
    check_chunks(chunks)
    load_plugins()
    with open_h5(path) as h5:
        sites = [k for k, v in h5.items() if isinstance(v, h5py.Group) and "activation" in v]
        if layer not in sites and layer in summary_names(h5):
            raise LayerNotFoundError(f"site {layer!r} of {path} was kept as a summary only (keep: summary): "
                                     f"read it with ur.load_summary({path!r}, {layer!r})")
        if layer not in sites:
            raise LayerNotFoundError(_no_site(layer, sites, path))
        check_activation(path, h5, h5[layer]["activation"])
        coords = stimulus_coords(h5)
        described = {name: _cf_attrs(h5[name]) for name in coords}
        attrs = _root_attrs(h5)
        if isinstance(chunks, dict) and not chunks:  # the file's own chunks; a virtual dataset has none
            chunks = source_chunks(h5[layer]["activation"]) or chunks
        virtual = h5.attrs.get("stitched") == "virtual"
        zstd = is_zstd(h5[layer]["activation"])
    import xarray as xr

    with damage_is_one_line(path):
        if zstd:  # opened on each dask worker with the Zstd filter registered
            ds = xr.open_dataset(store_with_plugins(path, layer), chunks=None if virtual else chunks)
        else:
            ds = xr.open_dataset(path, group=layer, engine="h5netcdf", chunks=None if virtual else chunks)
        da = ds["activation"].drop_vars([c for c in ds["activation"].coords if c == "stimulus_id"])
    if virtual:  # every read checks first that the shards are still the ones stitched
        da = guarded(da, path, f"{layer}/activation", chunks)
    with damage_is_one_line(path):  # a damaged scale gives a coordinate of the wrong length
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
    path = check_file(path)
    load_plugins()
    with open_h5(path) as h5:
        names = summary_names(h5)
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
            dims = unit_dims(group)
            unit_shape = tuple(group[d].shape[0] for d in dims)
            data = states[layer].finals(top, unit_shape)
        else:
            dims = unit_dims(group, group["mean"])
            data = {name: group[name][()] for name in summaries.FINALS}
        stimuli = stimulus_coords(h5)
        unit_coords = {}
        for name, ds in group.items():
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or name == "rank":
                continue
            dim = name if h5py.h5ds.is_scale(ds.id) else _dims_of(ds)[0]
            if dim in dims and name not in summaries.FINALS and not name.startswith("rectified"):
                unit_coords[name] = (dim, text_array(ds[...]))
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
    table = {name: ("stimulus", text_array(np.asarray(values))) for name, (_, values) in stimuli.items()}
    return xr.Dataset(variables, coords={"rank": np.arange(top), **unit_coords, **table}, attrs=attrs)


def _dims_of(ds: h5py.Dataset) -> list[str]:
    return [ds.dims[i][0].name.rsplit("/", 1)[-1] if len(ds.dims[i]) else f"dim_{i}" for i in range(ds.ndim)]


def unit_dims(group: h5py.Group, ds: h5py.Dataset | None = None) -> list[str]:
    """The site's unit dims: the mean's dims when finished, else the group's scales in order."""
    if ds is not None:
        return _dims_of(ds)
    return [name for name, v in group.items() if isinstance(v, h5py.Dataset) and h5py.h5ds.is_scale(v.id)
            and name != "rank"]


def text_array(values: np.ndarray) -> np.ndarray:
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


