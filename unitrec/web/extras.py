"""Feature visualisations and evolutions, matched to the recorded units they were made for.

A ``kind: visualize`` file (``closedloop/gallery.py``) holds one image per unit entry;
an evolution file (``ur.evolve``) one trajectory, whose best image is shown. Each entry
(``{"name": "layer3", "channels": [5], "units": "center"}``) is matched to the units of
the recording's site of that name: the channel's unit at the map's centre for ``units:
center``, every unit of the channel for a channel mean, the unit at ``[y, x]`` for one
position. A file made on another network (its weights' SHA-256 differs from the
recording's) is left out, and the atlas says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unitrec.errors import RecordingError, UnitrecError

__all__ = ["Extra", "read_extras", "units_of"]


@dataclass
class Extra:
    """One image for one unit entry."""

    kind: str  # "visualization" or "evolution"
    entry: dict[str, Any]
    image: np.ndarray  # (h, w, 3) uint8
    title: str
    score: float
    file: str


def read_extras(visualizations: Sequence[str | os.PathLike], evolutions: Sequence[str | os.PathLike],
                weights_sha256: str) -> tuple[list[Extra], list[str]]:
    """Every image of the given files, and one line per file left out."""
    extras: list[Extra] = []
    messages: list[str] = []
    for path in visualizations:
        try:
            extras += _visualizations(Path(path), weights_sha256)
        except (OSError, ValueError, KeyError, UnitrecError) as exc:
            messages.append(f"visualisations {path} left out: {_first_line(exc)}")
    for path in evolutions:
        try:
            extras.append(_evolution(Path(path), weights_sha256))
        except (OSError, ValueError, KeyError, UnitrecError) as exc:
            messages.append(f"evolution {path} left out: {_first_line(exc)}")
    return extras, messages


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _same_network(path: Path, sha: str, weights_sha256: str) -> None:
    if sha and weights_sha256 and sha != weights_sha256:
        raise RecordingError(f"made on other weights (SHA-256 {sha[:12]}…) than the recording's "
                             f"({weights_sha256[:12]}…)")


def _visualizations(path: Path, weights_sha256: str) -> list[Extra]:
    import xarray as xr

    if not path.is_file():
        raise RecordingError("no such file")
    import h5py

    if not h5py.is_hdf5(path):
        raise RecordingError("not a netCDF-4/HDF5 file (a kind: visualize run writes one)")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        if ds.attrs.get("kind") != "unitrec visualizations":
            raise RecordingError("not a file of unitrec visualisations (a kind: visualize run writes them)")
        _same_network(path, str(ds.attrs.get("weights_sha256", "")), weights_sha256)
        settings = json.loads(str(ds.attrs.get("settings", "{}")) or "{}")
        how = ", ".join(str(settings[k]) for k in ("param",) if k in settings)
        steps = settings.get("steps")
        title = "feature visualisation" + (f" ({how}{', ' if how and steps else ''}"
                                           f"{f'{steps} steps' if steps else ''})" if how or steps else "")
        images = np.asarray(ds["image"].transpose("unit", "y", "x", "channel").values)
        scores = np.asarray(ds["score"].values, dtype=np.float64)
        entries = [json.loads(str(e)) for e in np.asarray(ds["entry"].values)]
    return [Extra("visualization", _entry(e), (np.clip(images[i], 0, 1) * 255).round().astype(np.uint8), title,
                  float(scores[i, -1]) if scores.shape[1] else float("nan"), str(path))
            for i, e in enumerate(entries)]


def _evolution(path: Path, weights_sha256: str) -> Extra:
    import warnings

    from unitrec.closedloop.trajectory import load_evolution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unfinished evolution: its generations so far, said in the title
        try:
            ds = load_evolution(path)
        except RecordingError as exc:
            raise RecordingError(f"not an evolution (ur.evolve and kind: evolve runs write them): {exc}") from None
    _same_network(path, str(ds.attrs.get("weights_sha256", "")), weights_sha256)
    if ds.sizes["generation"] == 0:
        raise RecordingError("no generation done yet")
    clean = np.asarray(ds["clean_scores"].values, dtype=np.float64).max(axis=1)
    g = int(np.nanargmax(clean))
    image = np.asarray(ds["best_image"].isel(generation=g).transpose("y", "x", "channel").values)
    arguments = json.loads(str(ds.attrs.get("arguments", "{}")))
    done = "" if ds.attrs.get("status") == "complete" else ", unfinished"
    title = f"evolution: best image of {ds.sizes['generation']} generations (generation {g}{done})"
    return Extra("evolution", _entry(arguments.get("unit")), (np.clip(image, 0, 1) * 255).round().astype(np.uint8),
                 title, float(clean[g]), str(path))


def _entry(entry: Any) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise RecordingError(f"its unit entry {entry!r} names no site")
    return entry


def units_of(entry: dict[str, Any], site: str, columns: dict[str, np.ndarray], site_shape: Any) -> np.ndarray:
    """Flat indices of the recorded units of ``site`` that ``entry`` is about (maybe none)."""
    if entry.get("name") != site:
        return np.zeros(0, dtype=np.int64)
    channels = entry.get("channels")
    if not isinstance(channels, list) or len(channels) != 1 or "channel" not in columns:
        return np.zeros(0, dtype=np.int64)  # a layer's mean or a weighted population: no one unit
    match = columns["channel"] == channels[0]
    units, positions = entry.get("units"), entry.get("positions")
    if positions is not None:
        pairs = np.asarray(positions).reshape(-1, 2)
        if len(pairs) != 1:
            return np.zeros(0, dtype=np.int64)
        units = pairs[0].tolist()
    if units == "center":
        shape = [int(v) for v in np.asarray(site_shape).reshape(-1)] if site_shape is not None else []
        if "y" in columns and "x" in columns and len(shape) == 3:
            match &= (columns["y"] == shape[1] // 2) & (columns["x"] == shape[2] // 2)
    elif isinstance(units, list) and len(units) == 2 and "y" in columns and "x" in columns:
        match &= (columns["y"] == units[0]) & (columns["x"] == units[1])
    elif units is not None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(match)
