"""How ``activation`` is stored: float16/32, compression filters, and BitRound (``keepbits``).

``keepbits: N`` keeps N of float32's 23 mantissa bits (BitRound: round to nearest,
ties to even, as numcodecs' ``BitRound`` and BitInformation.jl's ``round``; NaN and
±inf are kept as they are), so that shuffle + deflate, which every HDF5 and netCDF
reader has built in, compresses the zeroed low bits away. The relative error of a
normal value is at most 2^-(N+1); a subnormal's absolute error at most 2^-(127+N);
a value within half a quantum of float32's largest rounds to ±inf, as in numcodecs.
The dataset carries netCDF's ``_QuantizeBitRoundNumberOfSignificantBits = N``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from unitrec.errors import RecordingError

__all__ = ["GZIP_LEVEL", "KEEPBITS_ATTR", "bitround", "dataset_filters", "storage_of"]

#: netCDF's attribute for BitRound-quantized variables (netCDF-C ``quantize_mode`` NC_QUANTIZE_BITROUND)
KEEPBITS_ATTR = "_QuantizeBitRoundNumberOfSignificantBits"

#: deflate level of ``compression: gzip``: 1 is several times faster to write than h5py's default 4 and,
#: after shuffle, nearly as small
GZIP_LEVEL = 1

_MANTISSA = 23
_DEFLATE, _SHUFFLE, _ZSTD = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, 32015


def bitround(values: np.ndarray, keepbits: int) -> np.ndarray:
    """Round float32 `values` **in place** to `keepbits` mantissa bits (ties to even); returns them.

    NaN (with its payload) and ±inf are left unchanged; ±0 stays ±0.
    """
    if values.dtype != np.float32:
        raise TypeError(f"bitround rounds float32 values, got {values.dtype}")
    if keepbits >= _MANTISSA or values.size == 0:
        return values
    drop = _MANTISSA - keepbits
    bits = values.view(np.uint32)
    nan = np.isnan(values)
    saved = bits[nan] if nan.any() else None  # rounding could turn a NaN's payload into inf or carry out
    carry = bits >> np.uint32(drop)
    carry &= np.uint32(1)  # the last kept bit: a tie rounds to the even neighbour
    carry += np.uint32((1 << (drop - 1)) - 1)
    bits += carry
    bits &= np.uint32((0xFFFFFFFF >> drop) << drop)
    if saved is not None:
        bits[nan] = saved
    return values


def dataset_filters(compression: str | None, keepbits: int | None) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords for the compression asked for (Fletcher-32 is added beside)."""
    if compression == "zstd":
        try:
            import hdf5plugin
        except ImportError:
            raise RecordingError("compression 'zstd' needs hdf5plugin: pip install hdf5plugin (or "
                                 "'unitrec[zstd]'); compression 'gzip' needs no plugin anywhere") from None
        filters = dict(hdf5plugin.Zstd(clevel=1))
        if keepbits is not None:  # the zeroed low bits of every value, side by side
            filters["shuffle"] = True
        return filters
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
    return {}


def _filter_ids(ds: h5py.Dataset) -> list[int]:
    if ds.is_virtual:  # a stitched file: its shards' storage is the recording's
        sources = ds.virtual_sources()
        if not sources:
            return []
        path = Path(ds.file.filename).resolve().parent / sources[0].file_name.replace("%%", "%")
        try:
            with h5py.File(path, "r") as h5:
                return _filter_ids(h5[sources[0].dset_name])
        except (OSError, RuntimeError, KeyError):
            return []
    plist = ds.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def storage_of(ds: h5py.Dataset) -> dict[str, Any]:
    """``compression`` (``"zstd"``/``"gzip"``, absent when uncompressed) and ``keepbits`` of a site's
    ``activation``, for ``unitrec info``."""
    ids = _filter_ids(ds)
    out: dict[str, Any] = {}
    if _ZSTD in ids:
        out["compression"] = "zstd"
    elif _DEFLATE in ids:
        out["compression"] = "gzip"
    if KEEPBITS_ATTR in ds.attrs:
        out["keepbits"] = int(ds.attrs[KEEPBITS_ATTR])
    return out
