"""The layout of a recording file: its names, chunks and CF labels.

Layout (see docs/design.md, "The file"): a root dimension scale ``stimulus``
(relative paths), a ``done`` mask, stimulus coordinates and, for image files, each
file's size, modification time and content hash; one group per site holding
``activation`` and its own scales and coordinates. Datasets are preallocated with
NaN, so an unwritten row can never pass for a ReLU zero.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from unitrec._text import text_of
from unitrec.errors import RecordingError

__all__ = ["FORMAT_VERSION", "PARTIAL", "STIMULUS_ID", "chunk_shape", "creating_path", "partial_path", "reserve_margin",
           "reserved_names"]


FORMAT_VERSION = "3"  # 3: the run key holds model kwargs, anatomy and stimulus coordinates


TODO, DONE, SKIPPED = 0, 1, 2  # values of the done mask


_CHUNK_BYTES = 4 << 20


MARGIN = 1 << 20  # room reserved beyond a batch's data for HDF5's own metadata


def reserve_margin(n_rows: int, n_sites: int) -> int:
    """Bytes beyond the data a recording needs free: the layout, coordinates, one batch's margin."""
    return 2 * MARGIN + n_rows * (200 + 8 * n_sites)


FILE_COLUMNS = ("file_size", "file_mtime_ns", "file_sha256")  # per-stimulus identity of image files


#: what a recording's name ends with until it is complete
PARTIAL = ".partial.h5"


def partial_path(out: Path) -> Path:
    """Where a recording lives until it is complete: ``<out>.partial.h5``."""
    return out.with_name(out.name + PARTIAL)


def creating_path(out: Path) -> Path:
    """Where the layout of a new recording is made before it becomes the partial file."""
    return out.with_name(out.name + ".creating.h5")


def reserved_names() -> tuple[str, ...]:
    """Names at the root of every recording that a site cannot be stored under."""
    return ("stimulus", "done", *FILE_COLUMNS)


def chunk_shape(shape: tuple[int, ...], batch_size: int, itemsize: int) -> tuple[int, ...]:
    """Chunks of about 1–4 MiB that never span more stimuli than one batch.

    The stimulus extent is the largest divisor of the batch size that fits, so that
    a batch writes whole chunks; a single stimulus larger than 4 MiB is split along
    its first (channel) axis.
    """
    per_row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    small = [d for d in range(1, math.isqrt(batch_size) + 1) if batch_size % d == 0]
    rows = max((d for d in small + [batch_size // d for d in small] if d * per_row <= _CHUNK_BYTES), default=1)
    rows = min(rows, shape[0])
    inner = list(shape[1:])
    if per_row > _CHUNK_BYTES and inner:
        per_channel = per_row // inner[0]
        inner[0] = max(1, min(inner[0], _CHUNK_BYTES // max(per_channel, 1)))
    return (max(rows, 1), *inner)


COORDINATE_NAMES = {  # CF long_name and units of the unit coordinates a site may carry
    "rf_center_y": ("receptive field centre: row in input pixels", "1"),
    "rf_center_x": ("receptive field centre: column in input pixels", "1"),
    "source": ("module whose output these channels are, in a concatenation",),
    "source_index": ("sources numbered in channel order",),
}


#: The stimulus labels as a site group's copy names them (a group cannot hold the root's `stimulus` scale).
STIMULUS_ID = "stimulus_id"


def stimulus_copies(h5: h5py.File, group: h5py.Group) -> list[str]:
    """Copy the stimulus labels and coordinates into a site group, on the root's `stimulus` dim.

    netCDF readers open a group without its parents' variables (and xarray's
    DataTree passes only indexed coordinates down), so a site opened alone would
    otherwise have no labels. Returns the names, for the `coordinates` attribute.
    """
    names = [n for n in text_of(h5["done"].attrs.get("coordinates", "")).split() if n]
    copies = {STIMULUS_ID: h5["stimulus"], **{n: h5[n] for n in names}}
    for name, src in copies.items():
        ds = group.create_dataset(name, data=src[...], dtype=src.dtype)
        for key in ("long_name", "units"):
            if key in src.attrs:
                ds.attrs[key] = src.attrs[key]
        ds.dims[0].attach_scale(h5["stimulus"])
    return list(copies)


def nc_char(text: str) -> np.bytes_:
    """A fixed-length string attribute (netCDF NC_CHAR, as CF wants for ``coordinates``)."""
    return np.bytes_(text.encode())


def describe(ds: h5py.Dataset, long_name: str, units: str | None = None) -> None:
    """CF ``long_name`` and ``units`` (``"1"``: a number without unit)."""
    ds.attrs["long_name"] = long_name
    if units is not None:
        ds.attrs["units"] = units


def digests_sha256(values: Any) -> str:
    """SHA-256 over the per-file hashes of a recording, as 64-byte cells (``stimulus_content_sha256``).

    The same for the old fixed-length (``S64``) column and the variable-length one that
    netCDF-C's ``ncdump`` can dump: each hash is padded with NUL to 64 bytes."""
    digest = hashlib.sha256()
    for value in values:
        raw = value if isinstance(value, bytes) else str(value).encode()
        digest.update(raw.ljust(64, b"\0"))
    return digest.hexdigest()


def strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=h5py.string_dtype())


def column(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return strings(values) if values.dtype == object or values.dtype.kind in "US" else values


def load_plugins() -> None:
    try:  # registers the Zstd filter for files recorded with compression
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass


ZSTD = 32015  # HDF5's id of the Zstd filter


def no_zstd(path: str) -> RecordingError:
    return RecordingError(f"{path} is compressed with zstd and this Python cannot decompress it: pip install "
                          "hdf5plugin (here and, on a dask cluster, on every worker; unitrec then imports it, other "
                          "code needs `import hdf5plugin` before reading); compression 'gzip' needs no plugin")
