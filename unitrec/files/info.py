"""What a recording holds, for people (``unitrec info``): provenance, sites, progress.

Reads the file with h5py alone: no xarray, no torch.
"""

from __future__ import annotations

import json
import os
from typing import Any

import h5py

from unitrec.files import summary as summaries
from unitrec.files.layout import load_plugins
from unitrec.files.load import summary_names, unit_dims
from unitrec.files.opening import check_file, open_h5
from unitrec.files.storage import storage_of

__all__ = ["recording_info"]


def summary_count(h5: h5py.File, group: h5py.Group) -> int:
    """How many stimuli a summary holds (finished, or saved so far in a partial file)."""
    if "count" in group:
        return int(group["count"][()])
    names = summary_names(h5)
    through, states, _ = summaries.restore_slots({k: h5[k] for k in names}, {k: int(h5[k].attrs["top"]) for k in names})
    return int(states[group.name.lstrip("/")].count)


_INFO_ATTRS = ("module_type", "selection", "rf_size", "rf_size_pooled")  # a site's, for `unitrec info`


def recording_info(path: str | os.PathLike) -> dict[str, Any]:
    """A summary of a recording for humans (``unitrec info``): provenance and sites."""
    path = check_file(path)
    load_plugins()
    with open_h5(path) as h5:
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
                entry.update(storage_of(act))  # compression ("gzip"/"zstd") and keepbits, where set
            elif keep == "summary":
                dims = unit_dims(group, group["mean"] if "mean" in group else None)
                entry = {"name": key, "dims": dims, "shape": tuple(group[d].shape[0] for d in dims),
                         "dtype": "float64", **{k: group.attrs[k] for k in _INFO_ATTRS
                                                if k in group.attrs}}
            else:
                continue
            entry["keep"] = str(keep)
            if keep != "full":
                entry["top"] = int(group.attrs["top"])
                entry["summary_of"] = summary_count(h5, group)
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
