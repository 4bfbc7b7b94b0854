"""Neuroscience-style analyses of recorded activations.

Every function takes recordings as :class:`xarray.DataArray` with first dim
``"stimulus"`` (other dims: ``unit``; ``channel``; or ``channel, y, x``) and works on
dask-backed arrays without loading them whole. :func:`top_stimuli`,
:func:`lifetime_sparseness` and :func:`plot_montage` also take a site's summary
(:func:`unitrec.load_summary`, for sites recorded with ``keep: summary`` or
``both``). Figures need the ``plots`` extra.
"""

from __future__ import annotations

from unitrec.analysis.cka import cka
from unitrec.analysis.dimensionality import participation_ratio
from unitrec.analysis.encoding import encoding_model, plot_encoding
from unitrec.analysis.plots import (
    plot_layer_matrix,
    plot_montage,
    plot_rdm,
    plot_tuning_curves,
)
from unitrec.analysis.preferred import top_stimuli
from unitrec.analysis.rsa import rdm, rsa
from unitrec.analysis.similarity import layer_similarity
from unitrec.analysis.sparseness import lifetime_sparseness, population_sparseness
from unitrec.analysis.tuning import tuning_curves

__all__ = [
    "cka",
    "encoding_model",
    "layer_similarity",
    "lifetime_sparseness",
    "participation_ratio",
    "plot_encoding",
    "plot_layer_matrix",
    "plot_montage",
    "plot_rdm",
    "plot_tuning_curves",
    "population_sparseness",
    "rdm",
    "rsa",
    "top_stimuli",
    "tuning_curves",
]
