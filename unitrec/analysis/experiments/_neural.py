"""The neural responses an encoding model predicts: read from a CSV, a NetCDF file or a
DataArray as one row per trial, and joined by label onto the recorded stimuli.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, as_population, nan_rows, stimulus_labels
from unitrec.errors import ConfigError, UnitrecWarning

NEUROID = "neuroid"
#: Key columns a CSV of responses is joined on when ``on`` is not one of its columns.
_KEY_COLUMNS = ("stimulus", "path", "stimulus_id")
_NETCDF = (".nc", ".nc4", ".cdf", ".netcdf", ".h5", ".hdf5")


@dataclass(frozen=True)
class Neural:
    """Responses as one row per trial, before alignment."""

    keys: np.ndarray  # (rows,) str: the label each row is joined on
    values: np.ndarray  # (rows, neuroid) float64
    neuroid: dict[str, np.ndarray]  # coordinates on the neuroid dim, "neuroid" first
    key_source: str  # where the keys came from, for messages


def stimulus_coords(flat: xr.DataArray) -> list[str]:
    """The stimulus labels' name first, then the other stimulus coordinates, sorted."""
    names = sorted(str(name) for name, c in flat.coords.items() if c.dims == (STIMULUS,) and name != STIMULUS)
    return [STIMULUS, *names]


def _recording_keys(name: str, flat: xr.DataArray, on: str | None) -> np.ndarray:
    if on is None or on == STIMULUS:
        keys = stimulus_labels(flat)
    elif on in flat.coords and flat[on].dims == (STIMULUS,):
        values = np.asarray(flat[on].values)
        keys = number_text(values) if values.dtype.kind in "iuf" else values.astype(str)
    else:
        raise ConfigError(
            f"on={on!r} is not a stimulus coordinate of layer {name!r}; available: "
            f"{', '.join(stimulus_coords(flat)) or '(none)'}"
        )
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        repeated = [f"{str(key)!r} ×{c}" for key, c in zip(unique[counts > 1], counts[counts > 1])][:5]
        raise ConfigError(
            f"on={on or STIMULUS!r} does not identify the stimuli of layer {name!r}: "
            f"{int((counts > 1).sum())} values repeat ({', '.join(repeated)}); join on a coordinate "
            "with one value per stimulus"
        )
    return keys


def number_text(values: np.ndarray) -> np.ndarray:
    """Numbers as one text each (``7``, ``7.0`` and ``"007"`` all read ``7``), to join on;
    a value that is not a number stays as it is written."""
    out = []
    for v in np.asarray(values).tolist():
        try:
            x = float(v)
        except (TypeError, ValueError):
            out.append(str(v))
            continue
        out.append(str(int(x)) if np.isfinite(x) and x == int(x) else repr(x))
    return np.array(out, dtype=str)


def read_neural(neural: Any, on: str | None, trial_dim: str) -> Neural:
    if isinstance(neural, (str, Path)):
        path = Path(neural)
        if not path.is_file():
            raise ConfigError(f"neural responses file {str(path)!r} does not exist")
        if path.suffix.lower() in (".csv", ".tsv"):
            return _read_csv(path, on, trial_dim)
        if path.suffix.lower() not in _NETCDF:
            raise ConfigError(f"neural responses must be a .csv or a NetCDF file (.nc), got {str(path)!r}")
        with xr.open_dataset(path) as ds:
            names = list(ds.data_vars)
            if len(names) != 1:
                raise ConfigError(f"{str(path)!r} must hold one data variable (the responses), found {names}")
            neural = ds[names[0]].load()
    if not isinstance(neural, xr.DataArray):
        raise ConfigError(f"neural must be a DataArray or a CSV/NetCDF path, got {type(neural).__name__}")
    return _from_dataarray(neural, on, trial_dim)


def _from_dataarray(da: xr.DataArray, on: str | None, trial_dim: str) -> Neural:
    stim = STIMULUS if STIMULUS in da.dims else "presentation" if "presentation" in da.dims else None
    if stim is None:
        raise ConfigError(
            f"neural responses need a {STIMULUS!r} dim (or Brain-Score's 'presentation'), got dims {da.dims}"
        )
    rest = [d for d in da.dims if d not in (stim, trial_dim)]
    if len(rest) > 1:  # e.g. Brain-Score's single time_bin
        da = da.squeeze([d for d in rest if da.sizes[d] == 1], drop=True)
        rest = [d for d in da.dims if d not in (stim, trial_dim)]
    if len(rest) > 1:
        raise ConfigError(
            f"neural responses must be (stimulus, neuroid) or (stimulus, {trial_dim}, neuroid), got dims "
            f"{da.dims}; pass trial_dim= if the trials have another name"
        )
    if not rest:
        scalar = NEUROID in da.coords  # a neuroid picked with isel keeps its label
        da = da.expand_dims(NEUROID, axis=-1)
        da = da if scalar else da.assign_coords({NEUROID: [str(da.name if da.name is not None else 0)]})
        rest = [NEUROID]
    unit = rest[0]
    for dim in (stim, unit):
        if dim in da.indexes and len(da.indexes[dim].names) > 1:  # a Brain-Score MultiIndex
            da = da.reset_index(dim)
    if on is not None and on in da.coords and da[on].dims == (stim,):
        key_name = on
    elif stim == "presentation" and "stimulus_id" in da.coords:
        key_name = "stimulus_id"
    elif stim in da.coords:
        key_name = stim
    else:
        raise ConfigError(
            f"the neural responses have no stimulus labels on {stim!r}; alignment is by label, so give "
            f"them a {stim!r} coordinate (or {on!r})"
        )
    keys = np.asarray(da[key_name].values).astype(str)
    has_trials = trial_dim in da.dims
    order = (stim, trial_dim, unit) if has_trials else (stim, unit)
    values = np.asarray(da.transpose(*order).values, dtype=np.float64)
    if has_trials:
        keys = np.repeat(keys, values.shape[1])
    values = values.reshape(-1, values.shape[-1])
    neuroid = {NEUROID: np.asarray(da[unit].values) if unit in da.coords else np.arange(values.shape[1])}
    for name, coord in da.coords.items():
        if coord.dims == (unit,) and name != unit:
            neuroid[str(name)] = np.asarray(coord.values)
    return Neural(keys, values, neuroid, f"neural {key_name!r}")


def _read_csv(path: Path, on: str | None, trial_dim: str) -> Neural:
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    columns = list(pd.read_csv(path, nrows=0, sep=sep).columns)
    candidates = ((on,) if on else ()) + _KEY_COLUMNS
    key = next((c for c in candidates if c in columns), None)
    if key is None:
        raise ConfigError(
            f"{str(path)!r} has no key column ({', '.join(repr(c) for c in candidates)}); its columns: "
            f"{columns[:10]}; name the stimulus column with on="
        )
    table = pd.read_csv(path, sep=sep, dtype={key: str})
    neuroids = [c for c in table.columns if c not in (key, trial_dim)]
    text = [c for c in neuroids if not pd.api.types.is_numeric_dtype(table[c])]
    if text or not neuroids:
        raise ConfigError(
            f"{str(path)!r}: every column but the key {key!r} (and {trial_dim!r}) must be a numeric "
            f"neuroid; not numeric: {text[:10]}"
        )
    values = table[neuroids].to_numpy(dtype=np.float64)
    return Neural(table[key].to_numpy().astype(str), values, {NEUROID: np.array(neuroids, dtype=str)},
                  f"CSV column {key!r}")


def match_stimuli(layers: list[tuple[str, xr.DataArray]], data: Neural, on: str | None,
                  folds: int) -> tuple[list[np.ndarray], np.ndarray, list[str], str]:
    """Rows of each layer for the stimuli used (in the first layer's order), their labels, notes."""
    keys = [_recording_keys(name, flat, on) for name, flat in layers]
    data_keys = set(data.keys[np.isfinite(data.values).any(axis=1)])
    common = set(keys[0]).intersection(data_keys, *keys[1:])
    bad: set[str] = set()
    notes = []
    for (name, flat), layer_keys in zip(layers, keys):
        nan = nan_rows(as_population(flat)) & np.isin(layer_keys, list(common))
        if nan.any():
            bad |= set(layer_keys[nan])
            notes.append(f"{int(nan.sum())} stimuli with NaN in layer {name!r} dropped (skipped when recording)")
    used = [k for k in keys[0] if k in common and k not in bad]
    side = f"recording {on or STIMULUS!r} = {data.key_source}"
    alignment = (f"joined on {side} (as strings): {keys[0].size} recorded stimuli, {len(data_keys)} with "
                 f"responses, {len(common)} in both, {len(used)} used")
    if len(used) < 2 * folds:
        only_rec = [str(k) for k in keys[0] if k not in data_keys][:3]
        only_neu = [str(k) for k in sorted(data_keys - set(keys[0]))[:3]]
        raise ConfigError(
            f"{alignment}; {folds}-fold cross-validation needs at least {2 * folds}. Recording keys "
            f"e.g. {[str(k) for k in keys[0][:3]]} (not in the responses: {only_rec}); neural keys e.g. "
            f"{[str(k) for k in sorted(data_keys)[:3]]} (not recorded: {only_neu}). Join on another coordinate with on= "
            f"(recording coordinates: {', '.join(stimulus_coords(layers[0][1]))})"
        )
    if data_keys - common:
        notes.append(f"{len(data_keys - common)} stimuli with responses were not recorded (in every layer): "
                     f"e.g. {', '.join(str(k) for k in sorted(data_keys - common)[:2])}")
    unanswered = set(keys[0]) - data_keys
    if unanswered:
        notes.append(f"{len(unanswered)} recorded stimuli have no responses: "
                     f"e.g. {', '.join(str(k) for k in sorted(unanswered)[:2])}")
    for note in notes:
        warnings.warn(f"encoding_model: {note}", UnitrecWarning, stacklevel=3)
    labels = np.array(used, dtype=str)
    rows = []
    for layer_keys in keys:
        position = {k: i for i, k in enumerate(layer_keys)}
        rows.append(np.array([position[k] for k in used], dtype=np.int64))
    return rows, labels, notes, alignment


def stack_trials(data: Neural, labels: np.ndarray) -> np.ndarray:
    """``(stimulus, trial, neuroid)`` for the stimuli used, NaN-padded where trials are fewer."""
    position = {k: i for i, k in enumerate(labels)}
    keep = np.isin(data.keys, labels) & np.isfinite(data.values).any(axis=1)
    which = np.array([position[k] for k in data.keys[keep]], dtype=np.int64)
    counts = np.bincount(which, minlength=labels.size)
    order = np.argsort(which, kind="stable")
    slot = np.empty_like(which)
    slot[order] = np.arange(which.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.full((labels.size, int(counts.max()), data.values.shape[1]), np.nan)
    out[which, slot] = data.values[keep]
    return out


def mean_over_trials(trials: np.ndarray, labels: np.ndarray, data: Neural) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(trials)
    count = finite.sum(axis=1)
    missing = np.argwhere(count == 0)
    if missing.size:
        s, u = missing[0]
        raise ConfigError(
            f"{len(missing)} (stimulus, neuroid) pairs have no finite response, e.g. neuroid "
            f"{str(data.neuroid[NEUROID][u])!r} for {str(labels[s])!r}; drop those neuroids or stimuli first"
        )
    mean = np.where(finite, trials, 0.0).sum(axis=1) / count
    return mean, finite.any(axis=2).sum(axis=1)

