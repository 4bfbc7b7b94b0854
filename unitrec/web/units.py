"""Each site's units for the atlas: their coordinates, statistics, ranked stimuli and tuning.

A site kept as a summary (``keep: summary`` or ``both``) is read from its summary:
the statistics and ranks over every stimulus, without reading a response. A site kept
in full only is read once (whole while it fits one analysis block, on dask blocks
beyond) and summarised with the analysis functions: ``analysis.top_stimuli`` (and on
the negated responses for the lowest), ``lifetime_sparseness``, ``tuning_curves``.
A site in full also gets tuning curves when the stimuli carry the ``by`` parameter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from unitrec import analysis as A
from unitrec.files.load import lazy_chunks, load_layer, load_summary

__all__ = ["SiteUnits", "site_units", "tuning_parameter"]

_RANK_BLOCK = 32 * 2**20  # bytes of float64 responses per block when ranking a site's stimuli
#: Stimulus coordinates taken as the tuning parameter when none is named, in this order.
_TUNING_DEFAULTS = ("orientation", "direction")


@dataclass
class SiteUnits:
    """What the atlas shows of one site's units, flat in C order over the unit dims."""

    columns: dict[str, np.ndarray]  # per unit: coordinates and statistics (name: values)
    top: np.ndarray  # (units, ranks) stimulus rows, best first; -1 where none
    top_response: np.ndarray  # (units, ranks) float64; NaN where none
    bottom: np.ndarray
    bottom_response: np.ndarray
    selectivity: str  # what the selectivity column is: "orientation", "peak z", ...
    tuning_by: str | None = None
    tuning_levels: list[Any] = field(default_factory=list)
    tuning: np.ndarray | None = None  # (units, levels) mean response
    tuning_sem: np.ndarray | None = None
    rf_maps: xr.DataArray | None = None  # (polarity, *unit dims, input_y, input_x) of a noise recording
    notes: list[str] = field(default_factory=list)


def tuning_parameter(coords: list[str], by: str | None) -> str | None:
    """The stimulus coordinate of the tuning curves: ``by``, else orientation or direction if present."""
    if by is not None:
        return by if by in coords else None
    return next((c for c in _TUNING_DEFAULTS if c in coords), None)


def site_units(path: str | os.PathLike, site: dict[str, Any], *, ranks: int, by: str | None,
               rows: np.ndarray, rf_map: str | None, whole: bool,
               stimulus_root: str | os.PathLike | None = None) -> SiteUnits:
    """Read one site (an entry of ``recording_info``'s ``sites``) for the atlas.

    ``rows`` are the stimulus rows recorded (the rest are NaN in a partial file);
    ``whole`` reads a full site into memory rather than on dask blocks; ``rf_map`` names
    the analysis function that maps the receptive fields of a site in full
    (``"sparse_noise_map"`` or ``"spike_triggered_average"``, which reads the images
    under ``stimulus_root``), or is None.
    """
    keep = site.get("keep", "full")
    full = None
    if keep in ("full", "both"):
        da = load_layer(path, site["name"], include_missing=True, chunks=None if whole else lazy_chunks())
        full = da.isel(stimulus=rows)
        full = full.load() if whole else full
    if keep in ("summary", "both"):
        units = _from_summary(load_summary(path, site["name"]), full, ranks=ranks, by=by)
    else:
        assert full is not None
        units = _from_full(full, rows, ranks=ranks, by=by)
    if full is not None and rf_map is not None:
        units.rf_maps = _rf_maps(full, units, rf_map, stimulus_root)
    return units


def unit_columns(template: xr.DataArray) -> dict[str, np.ndarray]:
    """The unit index and every coordinate over the unit dims, broadcast and flattened (C order)."""
    dims = tuple(str(d) for d in template.dims)
    sizes = {d: int(template.sizes[d]) for d in dims}
    n = int(np.prod(list(sizes.values()))) if dims else 1
    columns: dict[str, np.ndarray] = {"unit": np.arange(n)}
    for d in dims:  # the dims themselves first: channel, y, x (their labels, or positions)
        if d != "unit":
            values = template[d].values if d in template.coords else np.arange(sizes[d])
            columns[d] = _flat(xr.Variable((d,), values), dims, sizes)
    for name, coord in template.coords.items():
        name = str(name)
        if name in columns or name in dims or not coord.dims or not set(coord.dims) <= set(dims):
            continue
        columns[name] = _flat(coord.variable, dims, sizes)
    return columns


def _flat(variable: xr.Variable, dims: tuple[str, ...], sizes: dict[str, int]) -> np.ndarray:
    return np.asarray(variable.set_dims({d: sizes[d] for d in dims}).transpose(*dims).values).reshape(-1)


def _from_summary(s: xr.Dataset, full: xr.DataArray | None, *, ranks: int, by: str | None) -> SiteUnits:
    dims = [str(d) for d in s["mean"].dims]
    columns = unit_columns(s["mean"])
    flat = {name: _values(s[name], dims) for name in ("mean", "max", "std", "sparseness")}
    k = min(ranks, int(s.sizes["rank"]))
    top, top_r, bottom, bottom_r = (_ranked(s[name], dims, k) for name in
                                    ("top_index", "top_response", "bottom_index", "bottom_response"))
    units = SiteUnits(columns, top.astype(np.int64), top_r, bottom.astype(np.int64), bottom_r, "peak z")
    _statistics(units, flat["mean"], flat["max"], flat["std"], flat["sparseness"])
    if full is not None:
        _tuning(units, full, by, dims, negative=bool((s["min"].values < 0).any()))
    return units


def _from_full(da: xr.DataArray, rows: np.ndarray, *, ranks: int, by: str | None) -> SiteUnits:
    unit_dims = [str(d) for d in da.dims if d != "stimulus"]
    template = da.isel(stimulus=0, drop=True)
    columns = unit_columns(template)
    k = min(ranks, int(da.sizes["stimulus"]))
    names = np.asarray(da["stimulus"].values).astype(str)
    stats = [da.mean("stimulus", dtype=np.float64), da.max("stimulus"), da.min("stimulus"),
             da.std("stimulus", dtype=np.float64), A.lifetime_sparseness(da)]  # float64 sums, as the summaries make
    if any(getattr(v, "chunks", None) for v in stats):
        import dask

        stats = list(dask.compute(*stats))  # one read of the responses for all five
    mean, high, low, std, sparse = (_values(v, unit_dims) for v in stats)
    if k:
        # blocks of about 32 MiB read at a time: lighter than the analysis default (a sixteenth
        # of memory) and no slower (measured: 80,000 units × 800 stimuli on dask blocks, top and
        # bottom, 8.3 s and 0.05 GB so, 14.8 s and 0.5 GB by default)
        block = int(np.clip(_RANK_BLOCK // max(1, 8 * len(columns["unit"])), 4 * k, 4096))
        top = A.top_stimuli(da, k, chunk_size=block)
        bottom = A.top_stimuli(-da, k, chunk_size=block)
        top_rows = _rows_of(top["stimulus"], unit_dims, names, rows)
        bottom_rows = _rows_of(bottom["stimulus"], unit_dims, names, rows)
        top_r = _ranked(top["response"], unit_dims, k)
        bottom_r = -_ranked(bottom["response"], unit_dims, k)
    else:
        n = len(columns["unit"])
        top_rows = bottom_rows = np.full((n, 0), -1)
        top_r = bottom_r = np.full((n, 0), np.nan)
    units = SiteUnits(columns, top_rows, top_r, bottom_rows, bottom_r, "peak z")
    _statistics(units, mean, high, std, sparse)
    _tuning(units, da, by, unit_dims, negative=bool((low < 0).any()))
    return units


def _values(v: xr.DataArray, dims: list[str]) -> np.ndarray:
    return np.asarray(v.transpose(*dims).values, dtype=np.float64).reshape(-1)


def _ranked(v: xr.DataArray, dims: list[str], k: int) -> np.ndarray:
    """``(units, k)`` from a variable over ``rank`` and the unit dims."""
    v = v.isel(rank=slice(0, k)).transpose(*dims, "rank")
    values = np.asarray(v.values)
    return values.reshape(-1, k) if values.dtype.kind in "iu" else values.astype(np.float64).reshape(-1, k)


def _rows_of(labels: xr.DataArray, dims: list[str], names: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """File rows of ranked stimulus labels (``-1`` for an empty rank); ``names[i]`` is the label of ``rows[i]``."""
    text = np.asarray(labels.transpose(*dims, "rank").values).astype(str).reshape(-1, labels.sizes["rank"])
    order = np.argsort(names, kind="stable")
    at = np.clip(np.searchsorted(names[order], text), 0, len(names) - 1)
    local = order[at]
    found = (names[local] == text) & (text != "")
    return np.where(found, rows[local], -1)


def _statistics(units: SiteUnits, mean: np.ndarray, high: np.ndarray, std: np.ndarray,
                sparse: np.ndarray) -> None:
    units.columns["mean"], units.columns["max"], units.columns["sparseness"] = mean, high, sparse
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (high - mean) / std
    units.columns["selectivity"] = np.where(np.isfinite(z), z, np.nan)


def _tuning(units: SiteUnits, da: xr.DataArray, by: str | None, dims: list[str], *, negative: bool) -> None:
    """Tuning curves, and the selectivity index of the rectified responses as the selectivity
    column, where the stimuli allow; ``negative``: whether any response is below 0."""
    name = tuning_parameter([str(c) for c in da.coords if da[c].dims == ("stimulus",)], by)
    if name is None:
        return
    values = np.asarray(da[name].values)
    if values.dtype.kind not in "iuf" or len(np.unique(values[np.isfinite(values)])) < 2:
        units.notes.append(f"no tuning curves: {name!r} is not a numeric parameter with two or more values")
        return
    curves = A.tuning_curves(da, by=name)
    if any(getattr(curves[v], "chunks", None) for v in curves.data_vars):
        curves = curves.compute()
    units.tuning_by = name
    units.tuning_levels = [v.item() for v in np.asarray(curves[name].values)]
    units.tuning = np.asarray(curves["mean"].transpose(*dims, name).values, dtype=np.float64).reshape(
        -1, len(units.tuning_levels))
    units.tuning_sem = np.asarray(curves["sem"].transpose(*dims, name).values, dtype=np.float64).reshape(
        -1, len(units.tuning_levels))
    # the index of the rectified responses, as the sparseness is: in [0, 1] (a signed curve's is not)
    if negative:
        curves = A.tuning_curves(da.clip(min=0), by=name)
    units.columns["selectivity"] = _values(curves["selectivity"], dims)
    units.selectivity = name


def _rf_maps(da: xr.DataArray, units: SiteUnits, method: str,
             stimulus_root: str | os.PathLike | None) -> xr.DataArray | None:
    """``(polarity, *unit dims, input_y, input_x)`` maps, or None (with a note): the on and off
    maps of sparse noise (``analysis.sparse_noise_map``), or the one spike-triggered average
    (``analysis.spike_triggered_average``, ``normalize="count"``) of white noise."""
    from unitrec.errors import ConfigError, StimulusError

    try:
        if method == "sparse_noise_map":
            maps = A.sparse_noise_map(da)
        else:
            maps = A.spike_triggered_average(da, stimuli=stimulus_root).expand_dims(polarity=["STA"])
    except (ConfigError, StimulusError) as exc:
        units.notes.append(f"no receptive-field maps: {exc}")
        return None
    dims = [str(d) for d in da.dims if d != "stimulus"]
    return maps.transpose("polarity", *dims, "input_y", "input_x")
