"""How a recording was made: the attributes every file carries and the run key.

The run key is the part of the provenance that decides whether an unfinished file
may be resumed, and whether a finished one is the same job: same model (name and
constructor kwargs), weights, anatomy (module types, settings, hooks, forward code,
non-persistent buffers: see :mod:`unitrec.anatomy.fingerprint`), preprocessing (and background
colour for image files), sites, stimulus list and stimulus coordinates (the
metadata.csv columns), dtype, keepbits (when set) and device kind. Batch size is not in it: a file keeps the batch size it was started
with (see ``record``). Workers and progress bars cannot change a value. Each image
file's identity (size, time, content hash) is checked per stimulus by the writer.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import platform
from typing import Any, Sequence

import yaml

from unitrec._version import __version__
from unitrec.files.layout import FORMAT_VERSION

__all__ = ["coordinates_sha256", "file_attrs", "library_versions", "run_key"]


def library_versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers (from metadata: no slow imports).

    Read once per process: the code that computes is the code imported then, whatever
    is installed later."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import h5py

    out = {"unitrec": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "h5py", "xarray", "pillow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    out["hdf5"] = h5py.version.hdf5_version
    return out


def run_key(*, model: dict[str, Any], weights_sha256: str, anatomy_sha256: str, preprocessing: str,
            sites: list[dict], stimuli_sha256: str, n_stimuli: int, coordinates_sha256: str, dtype: str,
            device: str, background: Sequence[int] | None = None,
            stimuli_description: str | None = None, ablation: str | None = None,
            keepbits: int | None = None) -> dict[str, Any]:
    """The facts that must match for a partial recording to be resumed (or a finished one reused)."""
    key: dict[str, Any] = {
        "model": model.get("name"),
        "model_kwargs": json.dumps(model.get("kwargs") or {}, sort_keys=True, default=_named),
        "weights": weights_sha256,
        "anatomy": anatomy_sha256,
        "coordinates": coordinates_sha256,
        "preprocessing": preprocessing,
        "sites": json.dumps(sites, sort_keys=True),
        "stimuli": f"{n_stimuli} stimuli, sha256 {stimuli_sha256}",
        "dtype": dtype,
        "device": device.split(":")[0],
        "numerics": numerics(device),
    }
    if stimuli_description:  # a Dataset: its content is not hashed, its class and length are
        key["stimuli"] = f"{stimuli_description}, " + key["stimuli"]
    if background is not None:  # transparent pixels are composited on it
        key["background"] = "rgb(" + ", ".join(str(int(c)) for c in background) + ")"
    if ablation:  # only when there are lesions: a recording without any keeps the key it always had
        key["ablation"] = ablation
    if keepbits is not None:  # BitRound changes the stored values (compression alone does not)
        key["keepbits"] = keepbits
    return key


def numerics(device: str) -> str:
    """The global settings that change how the forward computes: autocast on the device kind and
    its dtype, float32 matmul precision, and on CUDA TF32 (part of the run key)."""
    import torch

    kind = device.split(":")[0]
    try:
        on, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # torch < 2.4
        on = torch.is_autocast_cpu_enabled() if kind == "cpu" else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if kind == "cpu" else torch.get_autocast_gpu_dtype()
    parts = [f"autocast {str(dtype).replace('torch.', '')}" if on else "no autocast",
             f"float32 matmul precision {torch.get_float32_matmul_precision()}"]
    if kind == "cuda":
        parts.append(f"tf32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
                     f"cudnn {torch.backends.cudnn.allow_tf32}")
    return "; ".join(parts)


def _named(value: Any) -> str:
    """A constructor argument that is not a JSON value (a class, a function) by its name, never
    by a repr that holds a memory address."""
    name = getattr(value, "__qualname__", None)
    if name is not None:
        return f"{getattr(value, '__module__', '?')}.{name}"
    text = repr(value)
    return text if " at 0x" not in text else type(value).__qualname__


def coordinates_sha256(coords: dict[str, Any]) -> str:
    """SHA-256 of the stimulus coordinates (metadata.csv columns, class labels): names,
    types and values in order. Part of the run key: shards or a resume with another
    metadata.csv would stitch two versions of the coordinates."""
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(coords):
        values = np.asarray(coords[name])
        digest.update(f"{name}\0{values.dtype.kind}\0{values.shape}\0".encode())
        if values.dtype.kind in "OUS":
            digest.update("\0".join(str(v) for v in values.tolist()).encode("utf-8", "surrogateescape"))
        else:
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def file_attrs(*, model: dict[str, Any], weights_sha256: str, preprocessing: str, config: dict[str, Any],
               stimuli_sha256: str, key: dict[str, Any], stimuli_description: str,
               stimulus_root: str = "", anatomy: str = "") -> dict[str, Any]:
    """Root attributes of a recording file (strings, so MATLAB and xarray read them)."""
    key_text = json.dumps(key, sort_keys=True)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "format": "unitrec",
        "format_version": FORMAT_VERSION,
        "unitrec_version": __version__,
        "model": model.get("name", ""),
        "model_description": model.get("description", ""),
        "weights": model.get("weights", "none"),
        "checkpoint": model.get("checkpoint", ""),
        "weights_sha256": weights_sha256,
        "anatomy": anatomy,
        "preprocessing": preprocessing,
        "stimuli": stimuli_description,
        "stimulus_root": stimulus_root,
        "stimulus_set_sha256": stimuli_sha256,
        "config": yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=None),
        "run_key": key_text,
        "run_id": hashlib.sha256(key_text.encode()).hexdigest()[:16],
        "library_versions": json.dumps(library_versions()),
        "created": created,
        "Conventions": "CF-1.10",
        "title": f"unitrec recording: {model.get('name', '')} responses to {stimuli_description}",
        "history": f"{created} unitrec {__version__}: recorded",
    }
