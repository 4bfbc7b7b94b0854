"""The file of a ``kind: visualize`` run: every unit's image, scores and field, with provenance.

A NetCDF-4/HDF5 file (``xarray.open_dataset(path)`` opens it): ``image`` (unit,
channel, y, x) in [0, 1], ``score`` (unit, step), ``receptive_field`` (unit, box:
centre y, centre x, height, width; NaN where a unit has none), ``entry`` (unit: the
unit's entry as JSON) and the run's provenance in its attributes. Written whole
(beside, then renamed), so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unitrec.errors import ConfigError
from unitrec.files.disk import refuse_foreign

__all__ = ["save_visualizations"]


def save_visualizations(visualizations: Sequence[Any], path: str | os.PathLike, *, provenance: dict[str, Any],
                        overwrite: bool = False) -> Path:
    """Write :func:`unitrec.visualize` results to `path` (see the module docstring)."""
    import xarray as xr

    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; choose another output, or rerun with --overwrite (overwrite: true)")
    if path.exists():
        refuse_foreign(path, "choose another output path")
    if not visualizations:
        raise ConfigError("no visualisations to save")
    shapes = {v.image.shape for v in visualizations}
    if len(shapes) != 1:
        raise ConfigError(f"the images differ in shape ({sorted(shapes)}); save runs of one size together")
    fields = np.full((len(visualizations), 4), np.nan)
    for i, v in enumerate(visualizations):
        rf = v.receptive_field
        if rf is not None:
            fields[i] = [rf["center_y"], rf["center_x"], rf["height"], rf["width"]]
    ds = xr.Dataset(
        {"image": (("unit", "channel", "y", "x"), np.stack([v.image for v in visualizations]).astype(np.float32),
                   {"long_name": "optimised image, RGB in [0, 1]"}),
         "score": (("unit", "step"), np.stack([v.scores for v in visualizations]).astype(np.float64),
                   {"long_name": "the objective on each step's transformed image"}),
         "receptive_field": (("unit", "box"), fields,
                             {"long_name": "theoretical receptive field: centre y, centre x, height, width "
                                           "(input pixels)"})},
        coords={"unit": np.arange(len(visualizations)), "box": ["center_y", "center_x", "height", "width"],
                "entry": ("unit", [json.dumps(v.unit.get("unit"), sort_keys=True) for v in visualizations]),
                "objective": ("unit", [str(v.unit.get("objective")) for v in visualizations])},
        attrs={**{k: v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True, default=str)
                  for k, v in provenance.items()},
               "kind": "unitrec visualizations",
               "settings": json.dumps(visualizations[0].settings, sort_keys=True, default=str),
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".writing.nc")
    tmp.unlink(missing_ok=True)
    ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False)
    os.replace(tmp, path)
    return path
