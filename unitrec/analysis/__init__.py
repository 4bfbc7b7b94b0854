"""Neuroscience-style analyses of recorded activations, and the experiments run on them.

Three rooms, and this module re-exports their public names (``import unitrec.analysis
as A``): ``statistics/`` (tuning, sparseness, RDM/RSA, CKA, dimensionality, top
stimuli, layer similarity), ``experiments/`` (grating protocols, receptive-field
mapping, encoding models) and ``figures/`` (every ``plot_*``; it imports the other
two, never the reverse).

Every function takes recordings as :class:`xarray.DataArray` with first dim
``"stimulus"`` (other dims: ``unit``; ``channel``; or ``channel, y, x``) and works on
dask-backed arrays without loading them whole. :func:`top_stimuli`,
:func:`lifetime_sparseness` and :func:`plot_montage` also take a site's summary
(:func:`unitrec.load_summary`, for sites recorded with ``keep: summary`` or
``both``). Figures need the ``plots`` extra.
"""

from __future__ import annotations

from unitrec.analysis.experiments.encoding import encoding_model
from unitrec.analysis.experiments.protocols import contrast_response, modulation_ratio, sf_tuning, size_tuning
from unitrec.analysis.experiments.rf_mapping import effective_rf, sparse_noise_map, spike_triggered_average
from unitrec.analysis.figures.encoding import plot_encoding
from unitrec.analysis.figures.matrices import plot_layer_matrix, plot_rdm
from unitrec.analysis.figures.protocols import (
    plot_contrast_response,
    plot_modulation_ratio,
    plot_sf_tuning,
    plot_size_tuning,
)
from unitrec.analysis.figures.rf_mapping import plot_rf_map
from unitrec.analysis.figures.single_units import plot_montage, plot_tuning_curves
from unitrec.analysis.statistics.cka import cka
from unitrec.analysis.statistics.dimensionality import participation_ratio
from unitrec.analysis.statistics.preferred import top_stimuli
from unitrec.analysis.statistics.rsa import rdm, rsa
from unitrec.analysis.statistics.similarity import layer_similarity
from unitrec.analysis.statistics.sparseness import lifetime_sparseness, population_sparseness
from unitrec.analysis.statistics.tuning import tuning_curves

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


def __dir__() -> list[str]:
    # the public API only: not the submodules nor the `annotations` of `from __future__`
    return sorted(__all__)
