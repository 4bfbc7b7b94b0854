"""Representational dissimilarity matrices (RDMs) and their comparison (RSA)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import xarray as xr

from unitrec.analysis._units import (
    STIMULUS,
    as_population,
    check_choice,
    nan_rows,
    stimulus_gram,
    stimulus_labels,
)
from unitrec.errors import ConfigError, UnitrecError

__all__ = ["rdm", "rsa"]

#: Name of the second stimulus dim of an RDM; coordinates get the same suffix.
STIMULUS_2 = "stimulus_2"
_METRICS = ("correlation", "euclidean", "cosine")
_METHODS = ("spearman", "pearson", "kendall")
#: The dissimilarities :func:`rdm` computes (as ``_METRICS``).
Metric = Literal["correlation", "euclidean", "cosine"]
#: The RDM comparisons :func:`rsa` makes (as ``_METHODS``).
Method = Literal["spearman", "pearson", "kendall"]


def rdm(
    da: xr.DataArray, metric: Metric = "correlation", *, chunk_size: int | None = None
) -> xr.DataArray:
    """Representational dissimilarity matrix between the stimuli of a recording.

    Parameters
    ----------
    da : xarray.DataArray
        Recording with first dim ``"stimulus"``; all other dims are the units
        (the pattern of each stimulus). May be dask-backed and larger than memory.
    metric : {"correlation", "euclidean", "cosine"}
        Dissimilarity between two response patterns ``u`` and ``v`` (definitions of
        :func:`scipy.spatial.distance.pdist`): ``"correlation"`` is ``1 - r``, with
        ``r`` the Pearson correlation across units (as rsatoolbox's
        ``"correlation"``); ``"euclidean"`` is ``||u - v||`` (rsatoolbox's
        ``"euclidean"`` is ``||u - v||² / n_units`` instead); ``"cosine"`` is
        ``1 - u·v / (||u|| ||v||)``.
    chunk_size : int, optional
        Units per block when streaming the array (default: blocks of a sixteenth of the machine's memory, 128 MiB to 1 GiB).

    Returns
    -------
    xarray.DataArray
        Symmetric float64 matrix with dims ``("stimulus", "stimulus_2")`` and zero
        diagonal. Both dims carry the stimulus labels; each stimulus coordinate
        ``c`` is on the first dim as ``c`` and on the second as ``c_2``.

    Notes
    -----
    The matrix is built from the ``(stimulus × stimulus)`` Gram matrix,
    accumulated over blocks of units, so only one block is in memory at a time.
    A stimulus with any NaN value (e.g. a skipped one) keeps its place but its
    row and column are NaN; :func:`rsa` leaves those pairs out. A pattern with zero
    variance (correlation) or zero norm (cosine) also gives NaN.
    """
    check_choice("metric", metric, _METRICS)
    pop = as_population(da)
    bad = nan_rows(pop)
    good = ~bad
    center = {"correlation": "stimuli", "euclidean": "units", "cosine": None}[metric]
    gram = stimulus_gram(pop.data, chunk_size, good, center=center)
    sq = np.diag(gram).copy()
    if metric == "euclidean":
        dist = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * gram, 0, None))
    else:
        norm = np.sqrt(sq)
        norm[norm == 0] = np.nan
        dist = 1 - gram / norm[:, None] / norm[None, :]
    finite = np.isfinite(np.diag(dist))
    dist[np.diag_indices_from(dist)] = np.where(finite, 0.0, np.nan)

    n = pop.n_stimuli
    full = np.full((n, n), np.nan)
    full[np.ix_(good, good)] = dist
    return _as_rdm(full, pop.data, metric)


def _as_rdm(values: np.ndarray, flat: xr.DataArray, metric: str) -> xr.DataArray:
    coords: dict[str, tuple[Any, np.ndarray]] = {}
    for name, coord in flat.coords.items():
        if coord.ndim == 0:  # e.g. the layer name
            coords[str(name)] = ((), coord.values)
        if coord.dims != (STIMULUS,):
            continue
        second = STIMULUS_2 if name == STIMULUS else f"{name}_2"
        coords[str(name)] = (STIMULUS, coord.values)
        coords[second] = (STIMULUS_2, coord.values)
    out = xr.DataArray(
        values, dims=(STIMULUS, STIMULUS_2), coords=coords, name="dissimilarity"
    )
    out.attrs["metric"] = metric
    return out


def rsa(rdm_a: xr.DataArray, rdm_b: xr.DataArray, method: Method = "spearman") -> float:
    """Compare two RDMs over the same stimuli (representational similarity).

    Parameters
    ----------
    rdm_a, rdm_b : xarray.DataArray
        Square RDMs from :func:`rdm`. ``rdm_b`` is reordered to ``rdm_a``'s
        stimulus labels; both must hold the same set of labels.
    method : {"spearman", "pearson", "kendall"}
        Correlation between the upper triangles (diagonal excluded): Spearman's
        rho (Pearson on ranks, ties averaged), Pearson's r, or Kendall's tau-b,
        as :func:`scipy.stats.spearmanr`, :func:`scipy.stats.pearsonr` and
        :func:`scipy.stats.kendalltau` and rsatoolbox's ``compare`` methods
        ``"spearman"``, ``"corr"`` and ``"kendall"``. ``"kendall"`` needs scipy.

    Returns
    -------
    float
        The correlation; NaN if either triangle is constant.

    Raises
    ------
    ConfigError
        If the inputs are not square RDMs over the same stimuli, or fewer than
        three stimulus pairs are left once pairs with NaN are dropped.

    Notes
    -----
    Pairs that are NaN in either RDM (stimuli skipped during recording) are
    left out of the comparison.
    """
    check_choice("method", method, _METHODS)
    a = _square(rdm_a, "rdm_a")
    b = _square(rdm_b, "rdm_b")
    labels_a, labels_b = stimulus_labels(rdm_a), stimulus_labels(rdm_b)
    if len(set(labels_a)) != labels_a.size or set(labels_a) != set(labels_b):
        raise ConfigError(
            f"rsa needs two RDMs over the same stimuli, got {labels_a.size} and "
            f"{labels_b.size} stimuli with different labels"
        )
    if not np.array_equal(labels_a, labels_b):
        position = {label: i for i, label in enumerate(labels_b)}
        order = np.array([position[label] for label in labels_a])
        b = b[np.ix_(order, order)]
    upper = np.triu_indices(a.shape[0], k=1)
    x, y = a[upper], b[upper]
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        raise ConfigError(
            f"only {int(keep.sum())} stimulus pairs have finite dissimilarities in "
            "both RDMs; rsa needs at least 3"
        )
    x, y = x[keep], y[keep]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if method == "spearman":
        return _pearson(_rank(x), _rank(y))
    if method == "pearson":
        return _pearson(x, y)
    try:
        from scipy import stats
    except ImportError as exc:
        raise UnitrecError(
            "method='kendall' needs scipy: pip install 'unitrec[analysis]' "
            "(or use method='spearman')"
        ) from exc
    return float(stats.kendalltau(x, y).statistic)


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size)
    _, tie, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(tie, weights=ranks) / counts)[tie]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    return float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))


def _square(matrix: xr.DataArray, name: str) -> np.ndarray:
    if not isinstance(matrix, xr.DataArray):
        raise ConfigError(
            f"{name} must be an xarray.DataArray from unitrec.analysis.rdm, "
            f"got {type(matrix).__name__}"
        )
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ConfigError(f"{name} must be a square RDM, got shape {matrix.shape}")
    if matrix.dims[0] != STIMULUS:
        raise ConfigError(f"{name} must have dims ('stimulus', ...), got {matrix.dims}")
    return np.asarray(matrix.values, dtype=np.float64)
