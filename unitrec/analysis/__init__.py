"""Neuroscience-style analyses of recorded activations, and the experiments run on them:
grating protocols (:mod:`~unitrec.analysis.protocols`), receptive-field mapping
(:mod:`~unitrec.analysis.rf_mapping`) and encoding models (:mod:`~unitrec.analysis.encoding`).

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
from unitrec.analysis.protocol_plots import (
    plot_contrast_response,
    plot_modulation_ratio,
    plot_sf_tuning,
    plot_size_tuning,
)
from unitrec.analysis.protocols import contrast_response, modulation_ratio, sf_tuning, size_tuning
from unitrec.analysis.rf_mapping import effective_rf, plot_rf_map, sparse_noise_map, spike_triggered_average
from unitrec.analysis.rsa import rdm, rsa
from unitrec.analysis.similarity import layer_similarity
from unitrec.analysis.sparseness import lifetime_sparseness, population_sparseness
from unitrec.analysis.tuning import tuning_curves

__all__ = [
    "cka",
    "contrast_response",
    "effective_rf",
    "encoding_model",
    "layer_similarity",
    "lifetime_sparseness",
    "modulation_ratio",
    "participation_ratio",
    "plot_contrast_response",
    "plot_encoding",
    "plot_layer_matrix",
    "plot_modulation_ratio",
    "plot_montage",
    "plot_rdm",
    "plot_rf_map",
    "plot_sf_tuning",
    "plot_size_tuning",
    "plot_tuning_curves",
    "population_sparseness",
    "rdm",
    "rsa",
    "sf_tuning",
    "size_tuning",
    "sparse_noise_map",
    "spike_triggered_average",
    "top_stimuli",
    "tuning_curves",
]
