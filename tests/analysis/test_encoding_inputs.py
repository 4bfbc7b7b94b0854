"""encoding_model on awkward inputs: units holding ±inf (float16 overflow) and neuroids that
give every stimulus the same response (issue 22, item 14)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from unitrec.analysis.experiments.encoding import encoding_model
from unitrec.errors import ConfigError, UnitrecWarning

pytest.importorskip("sklearn")

N, P, K = 40, 6, 4
LABELS = np.array([f"img_{i:03d}.png" for i in range(N)])


def _data(seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, P))
    y = x @ rng.standard_normal((P, K)) + 0.5 * rng.standard_normal((N, K))
    layer = xr.DataArray(x, dims=("stimulus", "channel"), coords={"stimulus": LABELS, "channel": np.arange(P)},
                         name="layer")
    neural = xr.DataArray(y, dims=("stimulus", "neuroid"),
                          coords={"stimulus": LABELS, "neuroid": [f"n{j}" for j in range(K)]})
    return layer, neural


def test_a_constant_neuroid_gets_nan_r_and_r2_and_stays_out_of_the_medians():
    layer, neural = _data()
    neural[:, 2] = 0.1  # the same response to every stimulus: nothing to predict
    with pytest.warns(UnitrecWarning, match=r"1 neuroids give every stimulus used the same response \(e.g. 'n2'\)"):
        ds = encoding_model(layer, neural)
    assert np.isnan(float(ds.r.sel(neuroid="n2"))) and np.isnan(float(ds.r2.sel(neuroid="n2")))  # sklearn: 1.0
    others = ds.sel(neuroid=["n0", "n1", "n3"])
    assert np.isfinite(others.r2.values).all()
    # the medians are over the other neuroids only (both are the numpy median of the same numbers)
    assert float(ds.median_r2) == float(np.median(others.r2.values))
    assert float(ds.median_r) == float(np.median(others.r.values))
    assert "same response" in ds.attrs["notes"]
    # the other neuroids' fits are untouched by it (each neuroid is fitted on its own)
    alone = encoding_model(layer, neural.sel(neuroid=["n0", "n1", "n3"]))
    np.testing.assert_array_equal(alone.r2.values, others.r2.values)


def test_units_holding_inf_are_left_out_with_a_warning():
    layer, neural = _data(1)
    bad = layer.copy()
    bad[5, 1] = np.inf  # a float16 overflow
    bad[9, 4] = -np.inf
    with pytest.warns(UnitrecWarning, match=r"2 of 6 units of layer 'layer' hold ±inf \(e.g. channel=1"):
        ds = encoding_model(bad, neural)
    # exactly the fit of the finite units (same float64 matrix, same folds)
    expected = encoding_model(layer.isel(channel=[0, 2, 3, 5]), neural)
    for name in ("r", "r2", "alpha", "prediction"):
        np.testing.assert_array_equal(ds[name].values, expected[name].values, err_msg=name)
    assert int(ds.n_features) == 4 and "±inf" in ds.attrs["notes"]


def test_a_layer_of_only_infinite_units_is_refused_in_one_line():
    layer, neural = _data(2)
    with pytest.raises(ConfigError, match=r"'layer': all 6 units hold ±inf .*record the layer as float32") as err:
        encoding_model(layer.where(False, np.inf), neural)
    assert "\n" not in str(err.value)
