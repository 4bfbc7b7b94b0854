"""Linear centred kernel alignment (CKA) between two populations."""

from __future__ import annotations

import numpy as np
import xarray as xr

from unitrec.analysis._units import aligned, as_population, nan_rows, stimulus_gram
from unitrec.errors import ConfigError

__all__ = ["cka"]


def cka(
    da_a: xr.DataArray, da_b: xr.DataArray, *, chunk_size: int | None = None
) -> float:
    """Linear CKA between two populations recorded on the same stimuli.

    Parameters
    ----------
    da_a, da_b : xarray.DataArray
        Recordings with first dim ``"stimulus"``; the unit counts may differ.
        ``da_b`` is aligned to ``da_a`` by stimulus label (reordered if needed).
        Either may be dask-backed and larger than memory.
    chunk_size : int, optional
        Units per block when streaming (default: blocks of a sixteenth of the machine's memory, 128 MiB to 1 GiB).

    Returns
    -------
    float
        CKA in [0, 1]; NaN if either population is constant across stimuli.

    Raises
    ------
    ConfigError
        If the two recordings hold different stimulus labels, or fewer than two
        stimuli are left after dropping NaN.

    Notes
    -----
    Linear CKA of Kornblith, Norouzi, Lee & Hinton (2019), *Similarity of Neural
    Network Representations Revisited*, ICML. With ``X`` (stimuli × units) and ``Y``
    centred over stimuli,

    .. math:: \\mathrm{CKA}(X, Y) = \\frac{\\|Y^\\top X\\|_F^2}
              {\\|X^\\top X\\|_F\\, \\|Y^\\top Y\\|_F}
              = \\frac{\\langle K_c, L_c\\rangle_F}{\\|K_c\\|_F \\|L_c\\|_F},

    with the centred stimulus Gram matrices ``K_c = X Xᵀ`` and ``L_c = Y Yᵀ`` (the
    HSIC form). It is computed in the second form, streaming each population by
    blocks of units, so memory grows with the number of stimuli only. It is
    invariant to orthogonal transforms and isotropic scaling of either population.

    A stimulus with any NaN value in either recording (e.g. skipped) is dropped
    from both before centring.
    """
    pop_a = as_population(da_a)
    pop_b = as_population(aligned(pop_a.data, as_population(da_b).data, "cka"))
    keep = ~(nan_rows(pop_a) | nan_rows(pop_b))
    if keep.sum() < 2:
        raise ConfigError(
            f"cka needs at least 2 stimuli without NaN, got {int(keep.sum())}"
        )
    gram_a = stimulus_gram(pop_a.data, chunk_size, keep, center="units")
    gram_b = stimulus_gram(pop_b.data, chunk_size, keep, center="units")
    return cka_from_grams(gram_a, gram_b)


def cka_from_grams(gram_a: np.ndarray, gram_b: np.ndarray) -> float:
    """Linear CKA from two centred stimulus Gram matrices (the HSIC form)."""
    norm = np.linalg.norm(gram_a) * np.linalg.norm(gram_b)
    if norm == 0:
        return float("nan")
    return float(np.sum(gram_a * gram_b) / norm)
