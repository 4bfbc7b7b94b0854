"""Layer × layer similarity matrices (CKA or RSA) over one stimulus set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import xarray as xr

from unitrec.analysis._units import (
    aligned,
    as_population,
    check_choice,
    nan_rows,
    stimulus_gram,
)
from unitrec.analysis.statistics.cka import cka_from_grams
from unitrec.analysis.statistics.rsa import Method, Metric, rdm, rsa
from unitrec.errors import ConfigError

__all__ = ["layer_similarity"]

LAYER = "layer"
LAYER_2 = "layer_2"


def layer_similarity(
    populations: Mapping[str, xr.DataArray],
    method: Literal["cka", "rsa"] = "cka",
    *,
    metric: Metric = "correlation",
    rsa_method: Method = "spearman",
    chunk_size: int | None = None,
) -> xr.DataArray:
    """Similarity between every pair of recorded layers.

    Parameters
    ----------
    populations : mapping of str to xarray.DataArray
        Layer name → recording (first dim ``"stimulus"``), all on the same
        stimulus labels (in any order; they are aligned to the first).
    method : {"cka", "rsa"}
        ``"cka"``: linear CKA (see :func:`unitrec.analysis.cka`). ``"rsa"``: the
        ``rsa_method`` correlation between the layers' ``metric`` RDMs (see
        :func:`unitrec.analysis.rdm` and :func:`unitrec.analysis.rsa`).
    metric : {"correlation", "euclidean", "cosine"}
        RDM metric, for ``method="rsa"``.
    rsa_method : {"spearman", "pearson", "kendall"}
        RDM comparison, for ``method="rsa"``.
    chunk_size : int, optional
        Units per block when streaming each layer.

    Returns
    -------
    xarray.DataArray
        Symmetric matrix with dims ``("layer", "layer_2")`` labelled by layer
        name, in the order of ``populations``.

    Raises
    ------
    ConfigError
        If no layer is given, a name is not a string, an option is unknown, or
        the layers were recorded on different stimuli.

    Notes
    -----
    Each layer is streamed once (its Gram matrix or RDM is reused for every
    pair). For CKA, a stimulus with NaN in any layer is dropped from all layers,
    so every entry uses the same stimuli; for RSA, pairs with NaN are dropped per
    comparison (see :func:`unitrec.analysis.rsa`).
    """
    check_choice("method", method, ("cka", "rsa"))
    check_choice("metric", metric, ("correlation", "euclidean", "cosine"))
    check_choice("rsa_method", rsa_method, ("spearman", "pearson", "kendall"))
    if not isinstance(populations, Mapping) or not populations:
        raise ConfigError(
            "populations must be a non-empty dict of layer name -> DataArray"
        )
    names = list(populations)
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(f"layer names must be strings, got {names!r}")
    first = as_population(populations[names[0]]).data
    data = [first] + [
        aligned(first, as_population(populations[name]).data, f"layer {name!r}")
        for name in names[1:]
    ]
    m = len(names)
    matrix = np.ones((m, m))
    if method == "cka":
        keep = np.ones(first.sizes["stimulus"], dtype=bool)
        for flat in data:
            keep &= ~nan_rows(as_population(flat))
        if keep.sum() < 2:
            raise ConfigError(
                f"layer_similarity needs at least 2 stimuli without NaN in every "
                f"layer, got {int(keep.sum())}"
            )
        grams = [stimulus_gram(flat, chunk_size, keep, center="units") for flat in data]
        for i in range(m):
            for j in range(i, m):
                matrix[i, j] = matrix[j, i] = cka_from_grams(grams[i], grams[j])
    else:
        rdms = [rdm(flat, metric, chunk_size=chunk_size) for flat in data]
        for i in range(m):
            for j in range(i, m):
                matrix[i, j] = matrix[j, i] = rsa(rdms[i], rdms[j], rsa_method)
    out = xr.DataArray(
        matrix,
        dims=(LAYER, LAYER_2),
        coords={LAYER: names, LAYER_2: names},
        name=method,
    )
    out.attrs["method"] = method if method == "cka" else f"rsa ({metric}, {rsa_method})"
    return out
