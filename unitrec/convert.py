"""Hand a recording to the tools its analysis goes on with: rsatoolbox, scikit-learn.

Every converter takes what ``load_layer`` / ``load_population`` return and keeps the
labels: stimuli stay named (with their coordinates), units keep their layer, channel,
position, source and receptive field. No torch is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import UnitrecError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["to_rsatoolbox"]

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
    from .analysis._units import STIMULUS, UNIT, as_population, stimulus_labels

    pop = as_population(da)
    flat = pop.data
    obs = {STIMULUS: stimulus_labels(flat)}
    channels: dict[str, np.ndarray] = {}
    for name, coord in flat.coords.items():
        values = np.asarray(coord.values)
        values = values.astype(str) if values.dtype == object else values
        if coord.dims == (STIMULUS,) and name != STIMULUS:
            obs[str(name)] = values
        elif coord.dims == (UNIT,):
            channels[str(name)] = values
    for dim, coord in pop.unit_coords.items():  # a site's own unit dims (channel, y, x) per unit
        if dim in pop.unit_dims and dim not in channels:
            grids = np.meshgrid(*[np.asarray(pop.unit_coords[d].values) if d in pop.unit_coords
                                  else np.arange(n) for d, n in zip(pop.unit_dims, pop.unit_shape)], indexing="ij")
            channels[dim] = grids[pop.unit_dims.index(dim)].reshape(-1)
    descriptors = {k: str(v) for k, v in da.attrs.items() if k in _PROVENANCE}
    descriptors["site"] = str(da.name) if da.name is not None else ""
    return Dataset(np.asarray(flat.values, dtype=np.float64), descriptors=descriptors, obs_descriptors=obs,
                   channel_descriptors=channels or None)
