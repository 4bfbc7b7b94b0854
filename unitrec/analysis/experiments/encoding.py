"""Encoding models: cross-validated ridge regression from model units to neural responses.

The analysis of Yamins et al. (2014), Schrimpf et al. (2018, Brain-Score) and Cadena
et al. (2019): each recorded layer predicts every neuroid's trial-averaged response
with ridge regression, scored on held-out stimuli and, with repeated trials, against
the data's own split-half reliability. scikit-learn is optional (the ``encoding``
extra) and imported when a model is fitted.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import xarray as xr

from unitrec.analysis._units import STIMULUS, as_population, stimulus_labels
from unitrec.analysis.experiments._neural import (NEUROID, Neural, match_stimuli, mean_over_trials, number_text,
                                                  read_neural, stack_trials, stimulus_coords)
from unitrec.errors import ConfigError, UnitrecError, UnitrecWarning

__all__ = ["encoding_model"]

LAYER = "layer"
#: The default ridge penalties: 21 values, 1e-3 to 1e7, two per decade.
ALPHAS = np.logspace(-3, 7, 21)
_INSTALL = "pip install 'unitrec[encoding]'"


@dataclass(frozen=True)
class _Fit:
    """The settings every layer's fit shares, validated once."""

    alphas: np.ndarray
    folds: int
    shuffle: bool
    seed: int
    standardize: bool
    n_splits: int
    max_gib: float


def encoding_model(
    population: xr.DataArray | Mapping[str, xr.DataArray] | Sequence[xr.DataArray],
    neural: xr.DataArray | str | Path,
    *,
    on: str | None = None,
    alphas: Sequence[float] | np.ndarray | None = None,
    folds: int = 5,
    groups: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    trial_dim: str = "trial",
    standardize: bool = True,
    n_splits: int = 10,
    max_gib: float = 2.0,
) -> xr.Dataset:
    """Predict neural responses from recorded units with cross-validated ridge regression.

    Parameters
    ----------
    population : xarray.DataArray, dict of str to DataArray, or list of DataArray
        One recording (``ur.load_layer``; first dim ``"stimulus"``, its unit dims
        are flattened into features) or several (a dict layer name → recording, or a
        list named by each array's ``name``), each fitted on its own; the result
        then has a ``layer`` dim. Stimuli with NaN (skipped when recording) are
        dropped, from every layer alike, with a warning.
    neural : xarray.DataArray, or path to a CSV or NetCDF file
        Responses, ``(stimulus, neuroid)`` or ``(stimulus, trial, neuroid)``; a
        Brain-Score assembly ``(presentation, neuroid)`` keyed by ``stimulus_id``
        also works. A CSV is wide: one key column and one numeric column per
        neuroid, one row per trial (a key repeated = repeated trials; a column named
        ``trial_dim`` is ignored). A NetCDF file holds one such DataArray.
        Repeated labels are always trials, NaN-padded trials are ignored.
    on : str, optional
        The stimulus coordinate to join on (``"image_id"``, any coordinate from
        ``metadata.csv``); default the recording's stimulus labels (paths relative
        to the stimulus folder). On the neural side the keys are the coordinate (or
        CSV column) of the same name where there is one, else the stimulus index
        (``stimulus_id`` for a Brain-Score assembly; for a CSV the first of the
        columns ``stimulus``, ``path``, ``stimulus_id``). Keys are compared as
        strings.
    alphas : array_like, optional
        Ridge penalties to choose from (default ``np.logspace(-3, 7, 21)``), on
        standardised features.
    folds : int
        Outer cross-validation folds.
    groups : str, optional
        A stimulus coordinate whose stimuli stay in one fold together
        (scikit-learn ``GroupKFold``), e.g. a grating's ``orientation`` so that its
        phases are never split between training and test. Group folds are
        balanced by size, not shuffled.
    shuffle : bool
        Shuffle stimuli before cutting folds (``KFold(shuffle=True,
        random_state=seed)``). Keep it: stimuli come sorted by path, so unshuffled
        folds hold out contiguous blocks (all gratings of one orientation range)
        the model never saw; on a grating set that gave held-out R² between −5
        and −39.
    seed : int
        Seeds the folds and the split-half draws.
    trial_dim : str
        Name of the trial dim of a neural DataArray (or the trial column of a CSV).
    standardize : bool
        Z-score every feature with the training folds' mean and s.d. before the
        ridge (a scikit-learn ``Pipeline``), so one penalty fits units of any scale.
    n_splits : int
        Random split-halves averaged for the noise ceiling.
    max_gib : float
        Refuse a layer whose float64 feature matrix (``8 × stimuli × units`` bytes)
        is larger; see Notes.

    Returns
    -------
    xarray.Dataset
        Dims ``(neuroid,)`` for one recording, ``(layer, neuroid)`` for several
        (layers in the order given), with the neural data's neuroid coordinates:

        - ``r``: Pearson r between held-out predictions (all folds together) and
          the trial-averaged responses; ``r2``: R² of the same predictions
          (``sklearn.metrics.r2_score``, ``1 − SS_res / SS_tot``; negative when
          worse than the mean); ``alpha``: the chosen penalty (median over folds).
          A neuroid that gives every stimulus the same response has nothing to
          predict: its ``r`` and ``r2`` are NaN (not sklearn's R² of 1.0), and the
          medians leave it out.
        - with repeated trials: ``ceiling`` (neuroid) and ``r_ceiled = r / ceiling``.
        - per layer: ``median_r``, ``median_r2``, ``median_r_ceiled``,
          ``n_features`` (units fitted: a unit holding ±inf, a float16 overflow,
          is left out with a warning); ``median_ceiling``.
        - ``prediction`` (layer, stimulus, neuroid), ``response`` and ``n_trials``
          on the stimuli used, labelled like the recording.

        ``attrs``: ``method``, ``cv``, ``folds``, ``seed``, ``alphas``,
        ``n_stimuli``, ``alignment`` (how many stimuli matched, on what), ``notes``,
        ``ceiling_method`` and ``best_layer`` (the highest ``median_r``).

    Raises
    ------
    ConfigError
        If ``on`` or ``groups`` is not a stimulus coordinate (the message lists
        them), keys repeat on the recording side, fewer than ``2 × folds`` stimuli
        match (the message shows keys of both sides), a response is missing for a
        matched stimulus, or a layer is above ``max_gib``.
    UnitrecError
        If scikit-learn is not installed.

    Notes
    -----
    In each outer fold a ``RidgeCV(alphas, alpha_per_target=True)`` (after a
    ``StandardScaler``) is fitted on the training stimuli only; its penalty is
    chosen per neuroid by efficient leave-one-out on those stimuli, so nothing of
    the test fold enters the choice (nested cross-validation).

    Noise ceiling, as Brain-Score's ``InternalConsistency``: the trials of each
    stimulus are split at random into two halves, the two half means are
    correlated across stimuli (Pearson, per neuroid), the correlation ρ is
    Spearman–Brown corrected to the full trial count, ``ρ' = 2ρ / (1 + ρ)``, and
    ρ' is averaged over ``n_splits`` splits. Each split draws
    ``numpy.random.default_rng(seed).random((stimuli, trials))`` (one draw per
    split, in turn); the ``n // 2`` trials of a stimulus with the smallest numbers
    form its first half, the rest its second. Unlike Brain-Score, which splits the
    repetition indices the same way for every stimulus, each stimulus is split on
    its own, so stimuli may have different trial counts; stimuli with one trial
    are left out of the ceiling. With an odd count the halves differ by one trial
    and the corrected value is slightly low.

    ``r_ceiled = r / ceiling`` is Brain-Score's ceiled score (``ceil_score`` in
    the original ``brainscore.benchmarks``: ``score / ceiling``; today's
    ``brainscore_vision.benchmark_helpers.neural_common.explained_variance``
    reports ``(r / ceiling)²``, both with the median over neuroids of r and of the
    ceiling, not per neuroid as here). It assumes the model is as
    noisy as the data (Yamins et al. 2014). A model that predicts the noise-free
    signal reaches ``r = √ceiling``, so ``r_ceiled`` can exceed 1 (up to
    ``1 / √ceiling``); Spearman's correction for attenuation is
    ``ds.r / np.sqrt(ds.ceiling)``. Brain-Score's benchmark number is
    ``(median_r / median_ceiling)²``. Where the ceiling is not positive,
    ``r_ceiled`` is NaN.

    Memory: each layer in turn is loaded whole as a float64 ``(stimuli × units)``
    matrix (float16/32 recordings are converted), and fitting peaks at about four
    times that matrix (measured: the matrix, a fold's training copy, scikit-learn's
    centred copy, a float64 copy of a float32 input), so the default
    ``max_gib=2`` means a peak near 8 GiB. With more units than stimuli the ridge is
    solved through the ``stimulus × stimulus`` Gram matrix, so time grows with
    ``stimuli² × units``; but a ``64 × 56 × 56`` map (200,704 units) on 2,000
    stimuli is 3 GiB per copy and is refused. Record such sites with
    ``units: center`` or ``pool: mean`` (or a few ``channels``), or raise
    ``max_gib`` where the memory is there.

    Examples
    --------
    >>> ds = encoding_model({s: ur.load_layer("acts.h5", s) for s in ["layer2", "layer3"]},
    ...                     "v4_responses.csv")  # doctest: +SKIP
    >>> ds.median_r_ceiled.to_series()  # doctest: +SKIP
    """
    sk = _sklearn()
    fit = _settings(alphas, folds, shuffle, seed, standardize, n_splits, max_gib)
    single = isinstance(population, xr.DataArray)
    layers = [(name, as_population(da).data) for name, da in _layers(population)]
    data = read_neural(neural, on, trial_dim)
    if on is not None and on != STIMULUS and on in layers[0][1].coords and layers[0][1][on].dtype.kind in "iuf":
        # metadata.csv read `007` as the number 7: compare the neural keys as numbers too
        data = replace(data, keys=number_text(data.keys))
    rows, labels, notes, alignment = match_stimuli(layers, data, on, fit.folds)
    n = labels.size
    for name, flat in layers:
        _check_memory(name, n, int(flat.sizes["unit"]), fit.max_gib)
    trials = stack_trials(data, labels)
    response, n_trials = mean_over_trials(trials, labels, data)
    cv, group_values = _splitter(sk, fit, layers[0][1], rows[0], groups)
    splits = list(cv.split(np.zeros((n, 1)), groups=group_values))

    k = response.shape[1]
    pred = np.empty((len(layers), n, k))
    alpha = np.empty((len(layers), k))
    n_features = np.empty(len(layers), np.int64)
    for i, (name, flat) in enumerate(layers):
        x = _finite_units(name, flat, _features(flat, rows[i]), notes)
        n_features[i] = x.shape[1]
        pred[i], alpha[i] = _fit_layer(sk, fit, x, response, splits)
    r = np.stack([_pearson(p, response) for p in pred])
    r2 = np.stack([sk.r2_score(response, p, multioutput="raw_values") for p in pred])
    # a neuroid that gives every stimulus the same response has nothing to predict: r is 0/0 and
    # sklearn's R² 1.0 (a constant prediction of a constant), which would inflate the medians
    constant = (response == response[:1]).all(axis=0)
    if constant.any():
        r[:, constant] = r2[:, constant] = np.nan
        first = str(data.neuroid[NEUROID][np.flatnonzero(constant)[0]])
        _note(notes, f"{int(constant.sum())} neuroids give every stimulus used the same response (e.g. {first!r}): "
                     "their r and r2 are NaN and left out of the medians")

    coords = _coords(layers, rows[0], labels, on, data)
    ds = xr.Dataset(coords=coords)
    ds["r"] = ((LAYER, NEUROID), r, {"long_name": "prediction r (Pearson, held-out)"})
    ds["r2"] = ((LAYER, NEUROID), r2, {"long_name": "explained variance R² (held-out)"})
    ds["alpha"] = ((LAYER, NEUROID), alpha, {"long_name": "ridge penalty (median over folds)"})
    ds["prediction"] = ((LAYER, STIMULUS, NEUROID), pred, {"long_name": "held-out prediction"})
    ds["response"] = ((STIMULUS, NEUROID), response, {"long_name": "trial-averaged response"})
    ds["n_trials"] = ((STIMULUS,), n_trials.astype(np.int64))
    ds["n_features"] = ((LAYER,), n_features, {"long_name": "units fitted (those holding ±inf left out)"})
    ds["median_r"] = ds["r"].median(NEUROID)
    ds["median_r2"] = ds["r2"].median(NEUROID)
    ceiling_method = "none: one trial per stimulus"
    if n_trials.max() >= 2:
        ceiling, ceiling_method = _split_half(trials, n_trials, fit.n_splits, fit.seed)
        positive = np.where(ceiling > 0, ceiling, np.nan)
        ds["ceiling"] = ((NEUROID,), ceiling, {"long_name": "split-half reliability, Spearman–Brown corrected"})
        ds["r_ceiled"] = ((LAYER, NEUROID), r / positive, {"long_name": "ceiled r (r / ceiling)"})
        ds["median_r_ceiled"] = ds["r_ceiled"].median(NEUROID)
        ds["median_ceiling"] = ds["ceiling"].median(NEUROID)
    ds.attrs.update(
        method=(
            "cross-validated ridge regression (scikit-learn RidgeCV, penalty chosen per neuroid by "
            "leave-one-out on the training folds" + (", features standardised on the training folds" if
                                                     fit.standardize else "") +
            ") from model units to trial-averaged responses; r: Pearson r of the held-out predictions "
            "of all folds; r2: sklearn r2_score"
        ),
        cv=repr(cv), folds=fit.folds, seed=fit.seed, shuffle=int(fit.shuffle), groups=groups or "",
        standardize=int(fit.standardize), alphas=fit.alphas, n_stimuli=n, n_splits=fit.n_splits,
        alignment=alignment, notes="; ".join(notes), ceiling_method=ceiling_method,
        best_layer=str(ds[LAYER].values[int(np.nanargmax(ds["median_r"].values))])
        if np.isfinite(ds["median_r"].values).any() else "",
    )
    return ds.isel({LAYER: 0}) if single else ds


def _note(notes: list[str], note: str, stacklevel: int = 3) -> None:
    notes.append(note)
    warnings.warn(f"encoding_model: {note}", UnitrecWarning, stacklevel=stacklevel)


def _finite_units(name: str, flat: xr.DataArray, x: np.ndarray, notes: list[str]) -> np.ndarray:
    """``x`` without the units that hold ±inf (a float16 overflow), which no fit can take; noted."""
    bad = ~np.isfinite(x).all(axis=0)
    if not bad.any():
        return x
    first = int(np.flatnonzero(bad)[0])
    where = ", ".join(f"{c}={np.asarray(flat[c].values)[first]}" for c in flat.coords
                      if flat[c].dims == ("unit",) and c != "unit") or f"unit {first}"
    if bad.all():
        raise ConfigError(f"layer {name!r}: all {bad.size} units hold ±inf on the stimuli used (e.g. {where}), "
                          "so nothing can be fitted; record the layer as float32 (float16 overflows at 65504)")
    _note(notes, f"{int(bad.sum())} of {bad.size} units of layer {name!r} hold ±inf (e.g. {where}; a float16 "
                 "overflow?): left out of its fit", stacklevel=4)
    return x[:, ~bad]


def _sklearn() -> SimpleNamespace:
    """The scikit-learn pieces an encoding model needs, or one line saying how to get them."""
    try:
        # untyped: drop the ignores once pyproject's mypy overrides list sklearn.*
        from sklearn.base import clone
        from sklearn.linear_model import RidgeCV
        from sklearn.metrics import r2_score
        from sklearn.model_selection import GroupKFold, KFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise UnitrecError(f"encoding models need scikit-learn: {_INSTALL}") from None
    return SimpleNamespace(clone=clone, RidgeCV=RidgeCV, r2_score=r2_score, GroupKFold=GroupKFold,
                           KFold=KFold, make_pipeline=make_pipeline, StandardScaler=StandardScaler)


def _settings(alphas: Any, folds: Any, shuffle: Any, seed: Any, standardize: Any,
              n_splits: Any, max_gib: Any) -> _Fit:
    grid = np.asarray(ALPHAS if alphas is None else alphas, dtype=np.float64).ravel()
    if not grid.size or not np.isfinite(grid).all() or (grid <= 0).any():
        raise ConfigError(f"alphas must be positive finite numbers, got {alphas!r}")
    for name, value, low in (("folds", folds, 2), ("n_splits", n_splits, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(max_gib, bool) or not isinstance(max_gib, (int, float)) or not max_gib > 0:
        raise ConfigError(f"max_gib must be a positive number, got {max_gib!r}")
    return _Fit(grid, int(folds), bool(shuffle), int(seed), bool(standardize), int(n_splits), float(max_gib))


def _layers(population: Any) -> list[tuple[str, xr.DataArray]]:
    """``(name, recording)`` pairs from one DataArray, a dict or a list."""
    if isinstance(population, xr.DataArray):
        pairs = [(str(population.name if population.name is not None else ""), population)]
    elif isinstance(population, Mapping):
        pairs = [(str(name), da) for name, da in population.items()]
    elif isinstance(population, Sequence) and not isinstance(population, (str, bytes)):
        pairs = [(str(da.name) if getattr(da, "name", None) is not None else f"layer{i}", da)
                 for i, da in enumerate(population)]
    else:
        raise ConfigError(
            "population must be a DataArray (ur.load_layer), a dict of layer name -> DataArray "
            f"or a list of DataArrays, got {type(population).__name__}"
        )
    names = [name for name, _ in pairs]
    if not pairs or len(set(names)) != len(names):
        raise ConfigError(f"population needs at least one layer, each named once; got names {names}")
    return pairs


def _check_memory(name: str, n: int, p: int, max_gib: float) -> None:
    gib = 8 * n * p / 2**30
    if gib > max_gib:
        raise ConfigError(
            f"layer {name!r}: {n:,} stimuli × {p:,} units is {gib:.1f} GiB as float64 (fitting peaks at about "
            f"4 times that), above max_gib={max_gib:g}. Record fewer units (`units: center` or `pool: mean` "
            "in the layer entry, or `channels:`), or pass a larger max_gib= if the memory is there"
        )


def _splitter(sk: SimpleNamespace, fit: _Fit, flat: xr.DataArray, rows: np.ndarray,
              groups: str | None) -> tuple[Any, np.ndarray | None]:
    if groups is None:
        return sk.KFold(fit.folds, shuffle=fit.shuffle, random_state=fit.seed if fit.shuffle else None), None
    if groups not in flat.coords or flat[groups].dims != (STIMULUS,):
        raise ConfigError(
            f"groups={groups!r} is not a stimulus coordinate; available: {', '.join(stimulus_coords(flat))}"
        )
    values = np.asarray(flat[groups].values)[rows]
    if np.unique(values).size < fit.folds:
        raise ConfigError(f"groups={groups!r} has {np.unique(values).size} values, fewer than folds={fit.folds}")
    return sk.GroupKFold(fit.folds), values


def _features(flat: xr.DataArray, rows: np.ndarray) -> np.ndarray:
    """The layer's ``(stimulus, unit)`` matrix for ``rows``, read in file order."""
    if (np.diff(rows) > 0).all():  # the first layer's rows always are
        return np.asarray(flat.isel({STIMULUS: rows}).values, dtype=np.float64)
    order = np.argsort(rows, kind="stable")
    values = np.asarray(flat.isel({STIMULUS: rows[order]}).values, dtype=np.float64)
    out = np.empty_like(values)
    out[order] = values
    return out


def _fit_layer(sk: SimpleNamespace, fit: _Fit, x: np.ndarray, y: np.ndarray,
               splits: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Held-out predictions over all folds and the median chosen penalty per neuroid."""
    ridge = sk.RidgeCV(alphas=fit.alphas, alpha_per_target=True)
    # copy=False: the scaler works on the fold's own copy (x[train], x[test]), one copy fewer
    scaler = sk.StandardScaler(copy=False)
    template = sk.make_pipeline(scaler, ridge) if fit.standardize else sk.make_pipeline(ridge)
    pred = np.empty_like(y)
    chosen = np.empty((len(splits), y.shape[1]))
    for f, (train, test) in enumerate(splits):
        model = sk.clone(template).fit(x[train], y[train])
        pred[test] = np.reshape(model.predict(x[test]), (test.size, -1))  # one neuroid: 1-D
        chosen[f] = np.broadcast_to(np.asarray(model[-1].alpha_, dtype=np.float64), (y.shape[1],))
    return pred, np.median(chosen, axis=0)


def _pearson(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Pearson r of each column pair, over the rows where ``weight`` is True (default all)."""
    w = np.ones(a.shape) if weight is None else weight.astype(np.float64)
    a, b = np.where(w > 0, a, 0.0), np.where(w > 0, b, 0.0)
    n = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (a - (w * a).sum(axis=0) / n) * w
        b = (b - (w * b).sum(axis=0) / n) * w
        return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def _split_half(trials: np.ndarray, n_trials: np.ndarray, n_splits: int, seed: int) -> tuple[np.ndarray, str]:
    """Spearman–Brown corrected split-half reliability per neuroid, averaged over random splits."""
    rng = np.random.default_rng(seed)
    use = n_trials >= 2
    trials = trials[use]
    valid = np.isfinite(trials).any(axis=2)
    half = (n_trials[use] // 2)[:, None]
    corrected = []
    for _ in range(n_splits):
        draw = np.where(valid, rng.random(valid.shape), np.inf)
        rank = np.argsort(np.argsort(draw, axis=1), axis=1)
        first = rank < half
        means = []
        for part in (first, valid & ~first):
            inside = part[:, :, None] & np.isfinite(trials)
            count = inside.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                means.append(np.where(inside, trials, 0.0).sum(axis=1) / count)
        both = np.isfinite(means[0]) & np.isfinite(means[1])
        rho = _pearson(means[0], means[1], both)
        with np.errstate(invalid="ignore", divide="ignore"):
            corrected.append(2 * rho / (1 + rho))
    method = (f"split-half: trials of each stimulus split at random into two halves, Pearson r of the half "
              f"means across {int(use.sum())} stimuli with >= 2 trials, Spearman-Brown corrected 2r/(1+r), "
              f"mean over {n_splits} splits (seed {seed}); r_ceiled = r / ceiling (Brain-Score)")
    return np.mean(corrected, axis=0), method


def _coords(layers: list[tuple[str, xr.DataArray]], rows: np.ndarray, labels: np.ndarray,
            on: str | None, data: Neural) -> dict[str, Any]:
    first = layers[0][1]
    coords: dict[str, Any] = {LAYER: [name for name, _ in layers]}
    coords[STIMULUS] = (STIMULUS, stimulus_labels(first)[rows])
    for name, coord in first.coords.items():
        if coord.dims == (STIMULUS,) and name != STIMULUS:
            coords[str(name)] = (STIMULUS, np.asarray(coord.values)[rows])
    if on is not None and on not in coords:
        coords[on] = (STIMULUS, labels)
    for name, values in data.neuroid.items():
        coords[name] = (NEUROID, values)
    return coords
