"""Hand a recording to the tools its analysis goes on with: rsatoolbox, Brain-Score.

Every converter takes what ``load_layer`` / ``load_population`` return and keeps the
labels: stimuli stay named (with their coordinates), units keep their layer, channel,
position, source and receptive field. No torch is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

import numpy as np

from unitrec.errors import ConfigError, UnitrecError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["to_brainscore", "to_rsatoolbox"]

_PROVENANCE = ("model", "weights", "run_id", "recording", "layers")


def to_rsatoolbox(da: xr.DataArray):
    """A recording as an ``rsatoolbox.data.Dataset`` (stimuli are its observations).

    Parameters
    ----------
    da : xarray.DataArray
        A site (``ur.load_layer``) or a population (``ur.load_population``) with
        first dim ``"stimulus"``; it is loaded into memory, as rsatoolbox needs.

    Returns
    -------
    rsatoolbox.data.Dataset
        ``measurements`` ``(stimulus, unit)`` in float64; ``obs_descriptors``: the
        stimulus labels (``stimulus``) and every stimulus coordinate (``label``,
        ``orientation``, ...); ``channel_descriptors``: every unit coordinate
        (``channel``, ``y``, ``x``, ``layer``, ``source``, ``rf_center_y``, ...);
        ``descriptors``: the site (or layers), model, weights and run id.

    Raises
    ------
    UnitrecError
        If rsatoolbox is not installed (``pip install 'unitrec[rsa]'``).

    Examples
    --------
    >>> import rsatoolbox  # doctest: +SKIP
    >>> data = to_rsatoolbox(ur.load_layer("acts.h5", "layer3"))  # doctest: +SKIP
    >>> rdm = rsatoolbox.rdm.calc_rdm(data, method="correlation", descriptor="stimulus")  # doctest: +SKIP
    """
    try:
        from rsatoolbox.data import Dataset
    except ImportError:
        raise UnitrecError("to_rsatoolbox needs rsatoolbox: pip install 'unitrec[rsa]'") from None
    values, obs, channels = _flat_with_labels(da)
    descriptors = {k: str(v) for k, v in da.attrs.items() if k in _PROVENANCE}
    descriptors["site"] = str(da.name) if da.name is not None else ""
    return Dataset(np.asarray(values, dtype=np.float64), descriptors=descriptors, obs_descriptors=obs,
                   channel_descriptors=channels or None)


def to_brainscore(da: xr.DataArray, model: str | None = None, stimulus_id: str | None = None) -> xr.DataArray:
    """A recording in Brain-Score's ``NeuroidAssembly`` convention.

    Brain-Score's model activations are ``(presentation, neuroid)`` with
    ``stimulus_id`` on ``presentation`` and ``neuroid_id`` = ``"<model>.<layer>.<n>"``
    on ``neuroid``; this gives a recording the same shape, so its benchmarks, metrics
    and ``brainscore_core``'s ``validate_assembly`` take it.

    Parameters
    ----------
    da : xarray.DataArray
        A site (``ur.load_layer``) or a population (``ur.load_population``) with
        first dim ``"stimulus"``; it is loaded into memory.
    model : str, optional
        The model identifier in ``neuroid_id`` and the ``model`` coordinate; default:
        the recording's ``model`` attribute (``resnet18``, ...).
    stimulus_id : str, optional
        The stimulus coordinate (a metadata.csv column) that holds each stimulus's
        Brain-Score id, e.g. ``"image_id"``; its values must be unique and non-empty.
        Default: a ``stimulus_id`` column of metadata.csv when there is one (stored as
        ``meta_stimulus_id``), else the stimulus label. Where the id is a column, the
        label is kept as ``stimulus_file``.

    Returns
    -------
    xarray.DataArray
        A ``NeuroidAssembly`` when ``brainscore_core`` (or the older ``brainio``) is
        installed, else a plain DataArray of the same layout, which
        ``NeuroidAssembly(result)`` takes later. Values keep the file's dtype.
        ``presentation`` coordinates: ``stimulus_id`` (the stimulus label),
        ``stimulus_path`` (absolute, where the stimulus root is known) and every
        stimulus coordinate (``label``, ``orientation``, ...). ``neuroid``
        coordinates: ``neuroid_id``, ``neuroid_num`` (per layer, as Brain-Score
        numbers them), ``model``, ``layer``, ``channel``, ``channel_y``/``channel_x``
        (the unit's position; ``-1`` where the site has none), ``source``,
        ``rf_center_y/x``. The recording's attributes are kept.

    Examples
    --------
    >>> assembly = to_brainscore(ur.load_population("acts.h5", ["layer2", "layer3"]))  # doctest: +SKIP
    >>> assembly.sel(layer="layer3")  # doctest: +SKIP
    """
    values, obs, units = _flat_with_labels(da)
    n_units = values.shape[1]
    layers = units.pop("layer", None)
    if layers is None:
        layers = np.full(n_units, str(da.attrs.get("site", da.name or "")))
    model = str(da.attrs.get("model", "model")) if model is None else str(model)
    numbers = np.zeros(n_units, dtype=np.int64)
    for layer in np.unique(layers):  # Brain-Score numbers neuroids within each layer
        where = layers == layer
        numbers[where] = np.arange(int(where.sum()))
    ids = np.array([f"{model}.{layer}.{n}" for layer, n in zip(layers, numbers)])
    renamed = {"y": "channel_y", "x": "channel_x"}
    neuroid = {"neuroid_id": ids, "neuroid_num": numbers, "model": np.full(n_units, model), "layer": layers}
    neuroid.update({renamed.get(name, name): column for name, column in units.items() if name != "unit"})
    labels = obs.pop("stimulus")
    column = _id_column(obs, stimulus_id)
    presentation = {"stimulus_id": labels if column is None else _ids(obs.pop(column), column)}
    if column is not None and "stimulus_file" not in obs:
        presentation["stimulus_file"] = labels
    root = da.attrs.get("stimulus_root")
    if root and "stimulus_path" not in obs:
        presentation["stimulus_path"] = np.array([str(Path(str(root)) / s) for s in labels])
    presentation.update({name: column for name, column in obs.items() if name != "done"})
    coords = {name: ("presentation", column) for name, column in presentation.items()}
    coords.update({name: ("neuroid", column) for name, column in neuroid.items()})
    attrs = {k: v for k, v in da.attrs.items() if k not in ("layers",)}
    data = np.asarray(values, dtype=da.dtype if da.dtype.kind == "f" else None)
    assembly_class = _neuroid_assembly()
    if assembly_class is None:
        import xarray as xr

        return xr.DataArray(data, coords=coords, dims=("presentation", "neuroid"), attrs=attrs)
    return assembly_class(data, coords=coords, dims=["presentation", "neuroid"], attrs=attrs)


def _id_column(obs: dict[str, np.ndarray], asked: str | None) -> str | None:
    """The stimulus coordinate that gives Brain-Score's ``stimulus_id``, or None for the label."""
    if asked is None:
        return "meta_stimulus_id" if "meta_stimulus_id" in obs else None
    if asked in obs:
        return asked
    if f"meta_{asked}" in obs:  # the column's name in metadata.csv, stored with a prefix
        return f"meta_{asked}"
    names = ", ".join(sorted(n for n in obs if n != "done")) or "none"
    raise ConfigError(f"stimulus_id={asked!r} is not a stimulus coordinate of this recording (it has: {names}); "
                      "name a metadata.csv column, or leave stimulus_id out to use the stimulus labels")


def _ids(values: np.ndarray, column: str) -> np.ndarray:
    """A column's values as Brain-Score stimulus ids: text, unique, none empty."""
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise ConfigError(f"stimulus_id column {column!r} is empty for {int(np.isnan(values).sum())} stimuli; "
                          "give every stimulus an id in metadata.csv")
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        values = values.astype(np.int64)  # 3.0 -> "3"
    ids = np.asarray(values).astype(str)
    empty = int((np.char.strip(ids) == "").sum())
    if empty:
        raise ConfigError(f"stimulus_id column {column!r} is empty for {empty} stimuli; "
                          "give every stimulus an id in metadata.csv")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        twice = ", ".join(repr(str(u)) for u in unique[counts > 1][:3])
        raise ConfigError(f"stimulus_id column {column!r} repeats ids ({twice}); Brain-Score needs one id per "
                          "stimulus: make the column unique or name another with stimulus_id=")
    return ids


def _neuroid_assembly():
    """Brain-Score's NeuroidAssembly class, from brainscore_core or the older brainio; None if neither."""
    try:
        from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
    except ImportError:
        try:
            from brainio.assemblies import NeuroidAssembly
        except ImportError:
            return None
    return NeuroidAssembly


def _flat_with_labels(da: xr.DataArray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(stimulus, unit)`` values, the stimulus coordinates and one column per unit coordinate."""
    from unitrec.analysis._units import STIMULUS, UNIT, as_population, stimulus_labels

    pop = as_population(da)
    flat = pop.data
    obs = {STIMULUS: stimulus_labels(flat)}
    units: dict[str, np.ndarray] = {}
    for name, coord in flat.coords.items():
        values = np.asarray(coord.values)
        values = values.astype(str) if values.dtype == object else values
        if coord.dims == (STIMULUS,) and name != STIMULUS:
            obs[str(name)] = values
        elif coord.dims == (UNIT,):
            units[str(name)] = values
    for dim in pop.unit_dims:  # a site's own unit dims (channel, y, x), one value per unit
        if dim not in units:
            grids = np.meshgrid(*[np.asarray(pop.unit_coords[d].values) if d in pop.unit_coords
                                  else np.arange(n) for d, n in zip(pop.unit_dims, pop.unit_shape)], indexing="ij")
            units[dim] = grids[pop.unit_dims.index(dim)].reshape(-1)
    return np.asarray(flat.values), obs, units
