"""Participation ratio: the effective dimensionality of a population."""

from __future__ import annotations

import numpy as np
import xarray as xr

from unitrec.analysis._units import (
    UNIT,
    as_population,
    nan_rows,
    stimulus_blocks,
    stimulus_gram,
)
from unitrec.errors import ConfigError

__all__ = ["participation_ratio"]


def participation_ratio(da: xr.DataArray, *, chunk_size: int | None = None) -> float:
    """Participation ratio of the unit covariance across stimuli.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with first dim ``"stimulus"``; may be dask-backed and larger
        than memory.
    chunk_size : int, optional
        Rows (stimuli) or columns (units) per streamed block; default: blocks of
        a sixteenth of the machine's memory, 128 MiB to 1 GiB.

    Returns
    -------
    float
        ``PR = (Σ λ)² / Σ λ²`` over the eigenvalues ``λ`` of the unit covariance
        matrix, between 1 and ``min(n_units, n_stimuli - 1)``; NaN if the
        population does not vary.

    Raises
    ------
    ConfigError
        If fewer than two stimuli are left after dropping NaN.

    Notes
    -----
    See Gao et al. (2017), *A theory of multineuronal dimensionality, dynamics and
    measurement*, bioRxiv 214262. Since ``Σ λ = tr C`` and ``Σ λ² = ||C||_F²`` for
    the symmetric covariance ``C``, no eigendecomposition is needed. With more
    units than stimuli the centred stimulus Gram matrix ``X Xᵀ`` (same nonzero
    eigenvalues as ``Xᵀ X``) is accumulated over blocks of units; otherwise
    ``Xᵀ X`` is accumulated over blocks of stimuli. Either way only one block
    and one (small side)² matrix are in memory. The ``1/(n-1)`` factor of the
    covariance cancels in the ratio.

    Stimuli with any NaN value (e.g. skipped) are dropped.
    """
    pop = as_population(da)
    keep = ~nan_rows(pop)
    n, p = int(keep.sum()), pop.n_units
    if n < 2:
        raise ConfigError(
            f"participation_ratio needs at least 2 stimuli without NaN, got {n}"
        )
    if p > n:
        matrix = stimulus_gram(pop.data, chunk_size, keep, center="units")
    else:
        matrix = _unit_scatter(pop.data, chunk_size, keep)
    trace = float(np.trace(matrix))
    frob2 = float(np.sum(matrix * matrix))
    if frob2 == 0:
        return float("nan")
    return trace**2 / frob2


def _unit_scatter(
    data: xr.DataArray, chunk_size: int | None, keep: np.ndarray
) -> np.ndarray:
    """Centred ``Xᵀ X`` (units × units), accumulated over blocks of stimuli."""
    kept = data.isel(stimulus=np.flatnonzero(keep))
    mean = np.zeros(data.sizes[UNIT])
    for block in stimulus_blocks(kept, chunk_size):
        mean += block.sum(axis=0)
    mean /= kept.sizes["stimulus"]
    scatter = np.zeros((data.sizes[UNIT],) * 2)
    for block in stimulus_blocks(kept, chunk_size):
        block = block - mean
        scatter += block.T @ block
    return (scatter + scatter.T) / 2
