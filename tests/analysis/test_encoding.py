"""Encoding models: synthetic neurons read out from one known layer, aligned by label."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from unitrec.analysis.experiments.encoding import encoding_model
from unitrec.analysis.figures.encoding import plot_encoding
from unitrec.errors import ConfigError, UnitrecError, UnitrecWarning

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
N, P, K, T = 150, 20, 12, 4
LABELS = np.array([f"set/img_{i:03d}.png" for i in range(N)])
FIELDS = ("r", "r2", "alpha", "prediction", "ceiling", "r_ceiled")


def _layer(values: np.ndarray, name: str, labels: np.ndarray = LABELS) -> xr.DataArray:
    n = values.shape[0]
    return xr.DataArray(
        values,
        dims=("stimulus", "channel", "y", "x"),
        coords={"stimulus": labels, "image_id": ("stimulus", np.arange(n) + 1000),
                "orientation": ("stimulus", np.arange(n) % 6 * 30.0), "channel": np.arange(values.shape[1])},
        name=name,
    )


@pytest.fixture(scope="module")
def synthetic():
    """Layers A (a noisy mix of B), B (read out by the neurons), C (unrelated); trials of B @ W + noise."""
    rng = np.random.default_rng(0)
    b = rng.standard_normal((N, P))
    a = 0.6 * b @ rng.standard_normal((P, P)) / np.sqrt(P) + rng.standard_normal((N, P))
    c = rng.standard_normal((N, P))
    signal = b @ rng.standard_normal((P, K)) / np.sqrt(P)
    trials = signal[:, None, :] + 0.7 * rng.standard_normal((N, T, K))
    layers = {name: _layer(x.reshape(N, P // 4, 2, 2), name) for name, x in (("A", a), ("B", b), ("C", c))}
    neural = xr.DataArray(trials, dims=("stimulus", "trial", "neuroid"),
                          coords={"stimulus": LABELS, "neuroid": [f"v4_{j}" for j in range(K)],
                                  "animal": ("neuroid", ["m1", "m2"] * (K // 2))})
    return layers, neural


@pytest.fixture(scope="module")
def result(synthetic):
    layers, neural = synthetic
    return encoding_model(layers, neural)


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    for name in FIELDS:
        if name in a or name in b:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_the_read_out_layer_predicts_best_up_to_the_noise_ceiling(result):
    assert list(result.layer.values) == ["A", "B", "C"]
    assert result.sizes["neuroid"] == K and result.attrs["best_layer"] == "B"
    median = result.median_r.to_series()
    assert median["B"] > median["A"] + 0.3 > median["C"] + 0.3
    assert float(result.median_r_ceiled.sel(layer="B")) > 0.9
    # a model that predicts the noise-free signal reaches r = sqrt(ceiling) (Brain-Score's r / ceiling > 1)
    assert abs(median["B"] - np.sqrt(float(result.median_ceiling))) < 0.05
    assert list(result.animal.values[:2]) == ["m1", "m2"]
    assert result.n_features.values.tolist() == [P] * 3 and result.attrs["n_stimuli"] == N


def test_equals_scikit_learn_cross_val_predict(synthetic, result):
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    layers, neural = synthetic
    y = neural.mean("trial").values
    cv = KFold(5, shuffle=True, random_state=0)
    alphas = np.logspace(-3, 7, 21)
    for name, da in layers.items():
        x = da.values.reshape(N, -1)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas, alpha_per_target=True))
        pred = cross_val_predict(model, x, y, cv=cv)
        got = result.sel(layer=name)
        np.testing.assert_allclose(got.prediction.values, pred, rtol=0, atol=1e-10)
        r = [np.corrcoef(pred[:, j], y[:, j])[0, 1] for j in range(K)]
        np.testing.assert_allclose(got.r.values, r, atol=1e-10)
        np.testing.assert_allclose(got.r2.values, r2_score(y, pred, multioutput="raw_values"), atol=1e-10)
        chosen = [model.fit(x[tr], y[tr])[-1].alpha_ for tr, _ in cv.split(x)]
        np.testing.assert_array_equal(got.alpha.values, np.median(chosen, axis=0))


def test_neural_row_order_does_not_matter(synthetic, result):
    layers, neural = synthetic
    shuffled = neural.isel(stimulus=np.random.default_rng(1).permutation(N))
    _same(encoding_model(layers, shuffled), result)


def test_missing_and_extra_stimuli_use_the_intersection(synthetic):
    layers, neural = synthetic
    extra = neural.isel(stimulus=slice(0, 3)).assign_coords(stimulus=["other/a.png", "other/b.png", "other/c.png"])
    partial = xr.concat([neural.isel(stimulus=slice(10, None)), extra], "stimulus")
    with pytest.warns(UnitrecWarning, match="10 recorded stimuli have no responses"), \
            pytest.warns(UnitrecWarning, match="3 stimuli with responses were not recorded"):
        got = encoding_model(layers, partial)
    assert got.attrs["n_stimuli"] == N - 10 and list(got.stimulus.values) == list(LABELS[10:])
    assert "150 recorded stimuli, 143 with responses, 140 in both, 140 used" in got.attrs["alignment"]
    direct = encoding_model({k: v.isel(stimulus=slice(10, None)) for k, v in layers.items()},
                            neural.isel(stimulus=slice(10, None)))
    _same(got, direct)


def test_stimuli_with_nan_in_any_layer_are_dropped_everywhere(synthetic):
    layers, neural = synthetic
    broken = dict(layers, A=layers["A"].copy(data=layers["A"].values.copy()))
    broken["A"][5] = np.nan
    with pytest.warns(UnitrecWarning, match="1 stimuli with NaN in layer 'A' dropped"):
        got = encoding_model(broken, neural)
    assert got.attrs["n_stimuli"] == N - 1 and LABELS[5] not in got.stimulus.values
    assert "NaN" in got.attrs["notes"]


def test_join_on_another_stimulus_coordinate(synthetic, result):
    layers, neural = synthetic
    by_id = neural.assign_coords(stimulus=np.arange(N) + 1000)  # the lab's own image ids
    got = encoding_model(layers, by_id, on="image_id")
    _same(got, result)
    assert list(got.image_id.values[:2]) == [1000, 1001] and "'image_id'" in got.attrs["alignment"]


def test_repeated_recording_keys_are_refused(synthetic):
    layers, neural = synthetic
    with pytest.raises(ConfigError, match=r"on='orientation' does not identify .* values repeat \('0' ×25"):
        encoding_model(layers, neural, on="orientation")


def test_unknown_on_lists_the_stimulus_coordinates(synthetic):
    layers, neural = synthetic
    with pytest.raises(ConfigError, match="on='img' is not a stimulus coordinate of layer 'A'; "
                                          "available: stimulus, image_id, orientation"):
        encoding_model(layers, neural, on="img")


def test_too_few_matching_stimuli_show_keys_of_both_sides(synthetic):
    layers, neural = synthetic
    names = neural.assign_coords(stimulus=[Path(s).name for s in LABELS])  # basenames, not relative paths
    with pytest.raises(ConfigError) as err:
        encoding_model(layers, names)
    message = str(err.value)
    assert "0 in both" in message and "at least 10" in message
    assert "set/img_000.png" in message and "img_000.png'" in message and "image_id" in message


def test_csv_netcdf_and_brainscore_inputs_give_the_same_result(synthetic, result, tmp_path):
    import pandas as pd

    layers, neural = synthetic
    long = neural.transpose("stimulus", "trial", "neuroid").values.reshape(N * T, K)
    table = pd.DataFrame(long, columns=neural.neuroid.values)
    table.insert(0, "stimulus", np.repeat(LABELS, T))
    table.insert(1, "trial", np.tile(np.arange(T), N))
    table.to_csv(tmp_path / "v4.csv", index=False)
    neural.to_netcdf(tmp_path / "v4.nc")
    assembly = xr.DataArray(long, dims=("presentation", "neuroid"),
                            coords={"stimulus_id": ("presentation", np.repeat(LABELS, T)),
                                    "repetition": ("presentation", np.tile(np.arange(T), N)),
                                    "neuroid_id": ("neuroid", neural.neuroid.values)})
    for source in (tmp_path / "v4.csv", str(tmp_path / "v4.nc"), assembly):
        _same(encoding_model(layers, source), result)
    result.to_netcdf(tmp_path / "result.nc")  # the result itself is a valid netCDF
    assert xr.open_dataset(tmp_path / "result.nc").attrs["best_layer"] == "B"


def test_split_half_ceiling_is_spearman_brown_corrected():
    rng = np.random.default_rng(3)
    n, k = 600, 30
    labels = np.array([f"s{i:04d}" for i in range(n)])
    layer = _layer(rng.standard_normal((n, 4, 1, 1)), "L", labels)
    signal = rng.standard_normal((n, 1, k))
    # two trials, one split (drawn as documented): exactly 2r/(1+r) of the two halves' correlation
    two = xr.DataArray(signal + rng.standard_normal((n, 2, k)), dims=("stimulus", "trial", "neuroid"),
                       coords={"stimulus": labels})
    got = encoding_model(layer, two, n_splits=1, seed=7).ceiling.values
    draw = np.random.default_rng(7).random((n, 2))
    first = (draw[:, 0] < draw[:, 1])[:, None]
    half_a = np.where(first, two.values[:, 0], two.values[:, 1])
    half_b = np.where(first, two.values[:, 1], two.values[:, 0])
    rho = np.array([np.corrcoef(half_a[:, j], half_b[:, j])[0, 1] for j in range(k)])
    np.testing.assert_allclose(got, 2 * rho / (1 + rho), atol=1e-12)
    # four trials of noise s.d. 1.5: reliability of the 4-trial mean = 1 / (1 + 1.5² / 4)
    four = xr.DataArray(signal + 1.5 * rng.standard_normal((n, 4, k)), dims=("stimulus", "trial", "neuroid"),
                        coords={"stimulus": labels})
    ceiling = encoding_model(layer, four).ceiling.values
    assert abs(ceiling.mean() - 1 / (1 + 1.5**2 / 4)) < 0.02


def test_ragged_trials_are_padded_and_single_trials_have_no_ceiling(synthetic):
    layers, neural = synthetic
    ragged = neural.copy(data=neural.values.copy())
    ragged[:40, 2:] = np.nan  # 40 stimuli with 2 trials, the rest with 4
    got = encoding_model(layers["B"], ragged)
    assert got.n_trials.values.tolist() == [2] * 40 + [4] * (N - 40)
    np.testing.assert_allclose(got.response.values[:40], neural.values[:40, :2].mean(axis=1))
    one = encoding_model(layers["B"], neural.isel(trial=0, drop=True))
    assert "ceiling" not in one and "r_ceiled" not in one and one.r.dims == ("neuroid",)
    assert str(one.layer.values) == "B"
    cell = encoding_model(layers["B"], neural.isel(trial=0, neuroid=3))  # one neuron, no trials
    assert cell.neuroid.values.tolist() == ["v4_3"] and cell.r.values[0] == pytest.approx(one.r.values[3], abs=1e-12)


def test_folds_are_shuffled_by_default():
    """Stimuli sorted along a parameter: contiguous folds hold out a range never seen in training."""
    rng = np.random.default_rng(0)
    n = 120
    theta = np.sort(rng.random(n))
    labels = np.array([f"grating/{i:03d}.png" for i in range(n)])
    bumps = np.exp(-((theta[:, None] - np.linspace(0, 1, 40)) ** 2) / (2 * 0.03**2))
    layer = xr.DataArray(bumps, dims=("stimulus", "unit"), coords={"stimulus": labels})
    tuning = np.sin(2 * np.pi * theta[:, None] * [1, 2, 3] + [0, 1, 2]) + 0.1 * rng.standard_normal((n, 3))
    neural = xr.DataArray(tuning, dims=("stimulus", "neuroid"), coords={"stimulus": labels})
    shuffled = encoding_model(layer, neural)
    blocks = encoding_model(layer, neural, shuffle=False)
    assert float(shuffled.median_r2) > 0.8
    assert float(blocks.median_r2) < float(shuffled.median_r2) - 0.5
    assert "shuffle=True" in shuffled.attrs["cv"] and "shuffle=False" in blocks.attrs["cv"]


def test_groups_keep_each_group_in_one_fold(synthetic):
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    layers, neural = synthetic
    got = encoding_model(layers["B"], neural, groups="orientation")
    x, y = layers["B"].values.reshape(N, -1), neural.mean("trial").values
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 7, 21), alpha_per_target=True))
    pred = cross_val_predict(model, x, y, cv=GroupKFold(5), groups=layers["B"].orientation.values)
    np.testing.assert_allclose(got.prediction.values, pred, atol=1e-10)
    with pytest.raises(ConfigError, match="groups='phase' is not a stimulus coordinate; available: stimulus"):
        encoding_model(layers["B"], neural, groups="phase")


def test_large_layers_are_refused_with_the_next_step(synthetic):
    layers, neural = synthetic
    with pytest.raises(ConfigError, match=r"layer 'B': 150 stimuli × 20 units .*`units: center` or `pool: mean`"):
        encoding_model(layers["B"], neural, max_gib=1e-6)


def test_bad_options_are_refused(synthetic):
    layers, neural = synthetic
    for kwargs in ({"folds": 1}, {"alphas": [0.0, 1.0]}, {"n_splits": 0}, {"max_gib": -1}):
        with pytest.raises(ConfigError):
            encoding_model(layers["B"], neural, **kwargs)
    with pytest.raises(ConfigError, match="dict of layer name"):
        encoding_model("layer.h5", neural)


def test_missing_scikit_learn_is_one_line(synthetic, monkeypatch):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)
    layers, neural = synthetic
    with pytest.raises(UnitrecError) as err:
        encoding_model(layers["B"], neural)
    assert str(err.value) == "encoding models need scikit-learn: pip install 'unitrec[encoding]'"


def test_plot_encoding(result):
    pytest.importorskip("matplotlib")
    fig = plot_encoding(result)
    left, right = fig.axes
    assert left.get_ylabel() == "prediction r (Pearson, held-out)"
    assert right.get_ylabel() == "ceiled r (r / ceiling)"
    assert [t.get_text() for t in left.get_xticklabels()] == ["A", "B", "C"]
    assert len(plot_encoding(result.isel(layer=1)).axes) == 2


def test_module_imports_without_torch_or_sklearn():
    code = ("import sys, unitrec.analysis.experiments.encoding; "
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # records a model: about 5 s
def test_recorded_layers_of_a_small_model(tmp_path):
    """A real recording: neurons read out from the second site are best predicted by it."""
    import torch
    from torch import nn

    import unitrec as ur

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()
    x = torch.randn(120, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ur.record(model, x, ["0", "3"], tmp_path / "acts.h5", batch_size=40, progress=False)
    layers = {s: ur.load_layer(tmp_path / "acts.h5", s) for s in ("0", "3")}
    rng = np.random.default_rng(0)
    signal = layers["3"].mean(["y", "x"]).values @ rng.standard_normal((4, 5))  # pooled channels
    trials = signal[::-1, None, :] + 0.2 * signal.std() * rng.standard_normal((120, 3, 5))
    neural = xr.DataArray(trials, dims=("stimulus", "trial", "neuroid"),
                          coords={"stimulus": layers["3"].stimulus.values[::-1]})  # in another order
    got = encoding_model(layers, neural)
    assert got.attrs["best_layer"] == "3" and float(got.median_r_ceiled.sel(layer="3")) > 0.9


def test_number_keys_join_however_they_are_written(synthetic, tmp_path):
    # metadata.csv reads the column `image_id` = 001000 as the number 1000; a CSV of responses
    # keyed "001000", a float 1000.0 or an int 1000 names the same stimulus
    import pandas as pd

    layers, neural = synthetic
    ids = layers["B"].image_id.values
    wide = pd.DataFrame(neural.mean("trial").values, columns=[str(v) for v in neural.neuroid.values])
    ref = None
    for written in ([f"{i:06d}" for i in ids], [float(i) for i in ids], list(ids)):
        path = tmp_path / "codes.csv"
        wide.assign(image_id=written)[["image_id", *wide.columns]].to_csv(path, index=False)
        ds = encoding_model(layers, path, on="image_id")
        assert ds.attrs["alignment"].endswith(f"{N} used")
        if ref is None:
            ref = ds
        np.testing.assert_array_equal(ds.r.values, ref.r.values)
