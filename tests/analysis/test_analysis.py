"""Tests of unitrec.analysis on synthetic populations with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from unitrec.analysis import (
    cka,
    layer_similarity,
    lifetime_sparseness,
    participation_ratio,
    population_sparseness,
    rdm,
    rsa,
    top_stimuli,
    tuning_curves,
)
from unitrec.errors import ConfigError

ORIENTATIONS = np.arange(0, 180, 15)  # 12 values
PHASES = np.array([0, 90, 180, 270])


def labels(n: int) -> list[str]:
    return [f"img/{i:03d}.png" for i in range(n)]


def conv_array(values: np.ndarray, **stim_coords: np.ndarray) -> xr.DataArray:
    """(stimulus, channel, y, x) recording from a (stimulus, unit) matrix."""
    n, p = values.shape
    assert p % 4 == 0
    return xr.DataArray(
        values.reshape(n, p // 4, 2, 2),
        dims=("stimulus", "channel", "y", "x"),
        coords={
            "stimulus": labels(n),
            **{k: ("stimulus", v) for k, v in stim_coords.items()},
        },
    )


def unit_array(values: np.ndarray) -> xr.DataArray:
    n, p = values.shape
    return xr.DataArray(
        values,
        dims=("stimulus", "unit"),
        coords={"stimulus": labels(n), "channel": ("unit", np.arange(p) % 3)},
    )


@pytest.fixture
def tuned() -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    """12 von Mises orientation-tuned units, 4 phases per orientation."""
    ori, ph = np.meshgrid(ORIENTATIONS, PHASES, indexing="ij")
    ori, ph = ori.ravel(), ph.ravel()
    preferred = np.array([0, 15, 30, 45, 60, 75, 90, 105, 120, 135, 150, 165])
    kappa = np.linspace(0.5, 4, 12)
    delta = np.deg2rad(ori[:, None] - preferred[None, :])
    curve = 0.2 + np.exp(kappa * (np.cos(2 * delta) - 1))
    # a phase term that averages out over the 4 phases
    values = curve + 0.3 * np.cos(np.deg2rad(ph))[:, None]
    da = conv_array(values, orientation=ori, phase=ph)
    mean = curve.reshape(12, 4, 12)[:, 0, :]  # (orientation, unit)
    return da, preferred, mean


# -- tuning ------------------------------------------------------------------------


def test_tuning_recovers_preferred_and_osi(tuned):
    da, preferred, mean = tuned
    ds = tuning_curves(da, by="orientation")
    assert ds["mean"].dims == ("orientation", "channel", "y", "x")
    np.testing.assert_allclose(ds["mean"].values.reshape(12, 12), mean)
    np.testing.assert_array_equal(ds["preferred"].values.ravel(), preferred)
    z = np.exp(2j * np.deg2rad(ORIENTATIONS))[:, None]
    osi = np.abs((mean * z).sum(0)) / mean.sum(0)
    np.testing.assert_allclose(ds["selectivity"].values.ravel(), osi)
    assert np.all((osi > 0.1) & (osi < 0.6))


def test_tuning_known_osi_values():
    theta = np.deg2rad(ORIENTATIONS)
    curves = np.stack(
        [
            1 + np.cos(2 * (theta - np.deg2rad(30))),  # OSI 0.5
            np.ones_like(theta),  # OSI 0
            (ORIENTATIONS == 90).astype(float),  # OSI 1
            np.zeros_like(theta),  # 0/0 -> NaN
        ],
        axis=1,
    )
    da = unit_array(curves).assign_coords(orientation=("stimulus", ORIENTATIONS))
    ds = tuning_curves(da)
    np.testing.assert_allclose(ds["selectivity"].values[:3], [0.5, 0.0, 1.0], atol=1e-12)
    assert np.isnan(ds["selectivity"].values[3])
    assert ds["preferred"].values[0] == 30 and ds["preferred"].values[2] == 90
    assert ds["mean"].dims == ("orientation", "unit")
    np.testing.assert_array_equal(ds["channel"].values, [0, 1, 2, 0])


def test_direction_uses_period_360_and_minmax_otherwise():
    directions = np.arange(0, 360, 45)
    r = np.where(directions == 90, 3.0, 1.0)
    da = unit_array(np.stack([r, r], axis=1)).assign_coords(
        direction=("stimulus", directions), size=("stimulus", directions / 45 + 1)
    )
    dsi = tuning_curves(da, by="direction")["selectivity"].values
    np.testing.assert_allclose(dsi, 2 / 10)  # |3 - 1| / (3 + 7)
    minmax = tuning_curves(da, by="size")["selectivity"].values
    np.testing.assert_allclose(minmax, (3 - 1) / (3 + 1))
    circ = tuning_curves(da, by="size", period=8)["selectivity"].values
    np.testing.assert_allclose(circ, 0.2)


def test_tuning_sem_count_and_nan_rows(tuned):
    da, _, _ = tuned
    ds = tuning_curves(da)
    v = da.values.reshape(12, 4, 12)
    np.testing.assert_allclose(
        ds["sem"].values.reshape(12, 12), v.std(1, ddof=1) / np.sqrt(4)
    )
    holed = da.copy(data=da.values.copy())
    holed[5] = np.nan  # stimulus 5: orientation 15, phase 90
    ds2 = tuning_curves(holed)
    assert ds2["count"].sel(orientation=15).values.min() == 3
    kept = da.drop_isel(stimulus=5)
    expected = kept.groupby("orientation").mean("stimulus")
    np.testing.assert_allclose(ds2["mean"].values, expected.values)


def test_tuning_dask_is_lazy_and_equal(tuned):
    da, _, _ = tuned
    lazy = tuning_curves(da.chunk({"stimulus": 10}))
    assert lazy["mean"].chunks is not None and lazy["selectivity"].chunks is not None
    xr.testing.assert_allclose(lazy.compute(), tuning_curves(da))


def test_tuning_unknown_by_lists_coords(tuned):
    da, _, _ = tuned
    with pytest.raises(ConfigError, match="orientation, phase"):
        tuning_curves(da, by="colour")
    with pytest.raises(ConfigError, match="period"):
        tuning_curves(da, period=-1)


def test_non_stimulus_first_dim_is_refused(tuned):
    da, _, _ = tuned
    with pytest.raises(ConfigError, match="first dim"):
        tuning_curves(da.transpose("channel", ...))


# -- sparseness ----------------------------------------------------------------------


def test_sparseness_known_values():
    one_hot = unit_array(np.eye(8))
    np.testing.assert_allclose(lifetime_sparseness(one_hot).values, 1.0)
    np.testing.assert_allclose(population_sparseness(one_hot).values, 1.0)
    flat = unit_array(np.full((8, 8), 2.5))
    np.testing.assert_allclose(lifetime_sparseness(flat).values, 0.0, atol=1e-12)
    half = unit_array(np.array([[1.0], [1.0], [0.0], [0.0]]))
    # (1 - 0.5**2 / 0.5) / (1 - 1/4) = 2/3
    np.testing.assert_allclose(lifetime_sparseness(half).values, [2 / 3])
    assert lifetime_sparseness(unit_array(np.zeros((4, 1)))).isnull().all()


def test_sparseness_negative_policy():
    da = unit_array(np.array([[1.0], [-1.0], [0.0], [0.0]]))
    np.testing.assert_allclose(lifetime_sparseness(da).values, [1.0])  # clipped
    np.testing.assert_allclose(lifetime_sparseness(da, negative="keep").values, [4 / 3])
    with pytest.raises(ConfigError, match="negative"):
        lifetime_sparseness(da, negative="raise")
    with pytest.raises(ConfigError, match="clip, raise, keep"):
        lifetime_sparseness(da, negative="abs")


def test_sparseness_ignores_nan_and_keeps_coords():
    values = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [np.nan, np.nan]])
    da = unit_array(values).assign_coords(orientation=("stimulus", [0, 45, 90, 135, 0]))
    np.testing.assert_allclose(lifetime_sparseness(da).values, [2 / 3, 2 / 3])
    pop = population_sparseness(da)
    assert pop.dims == ("stimulus",) and list(pop.orientation.values) == [0, 45, 90, 135, 0]
    np.testing.assert_allclose(pop.values[:3], [0.0, 1.0, np.nan])
    assert np.isnan(pop.values[4])


def test_sparseness_dask_lazy_and_equal(rng=np.random.default_rng(1)):
    da = conv_array(rng.normal(size=(40, 16)))
    lazy = lifetime_sparseness(da.chunk({"stimulus": 10}))
    assert lazy.chunks is not None and lazy.dims == ("channel", "y", "x")
    xr.testing.assert_allclose(lazy.compute(), lifetime_sparseness(da))
    lazy_pop = population_sparseness(da.chunk({"stimulus": 10}))
    assert lazy_pop.chunks is not None
    xr.testing.assert_allclose(lazy_pop.compute(), population_sparseness(da))


# -- RDM and RSA ---------------------------------------------------------------------


@pytest.fixture
def patterns() -> xr.DataArray:
    rng = np.random.default_rng(2)
    return conv_array(rng.normal(size=(20, 32)) + 1, orientation=np.arange(20) * 9)


@pytest.mark.parametrize("metric", ["correlation", "euclidean", "cosine"])
def test_rdm_matches_pdist(patterns, metric):
    out = rdm(patterns, metric)
    expected = squareform(pdist(patterns.values.reshape(20, -1), metric))
    np.testing.assert_allclose(out.values, expected, atol=1e-12)
    assert out.dims == ("stimulus", "stimulus_2")
    assert list(out.stimulus_2.values) == labels(20)
    np.testing.assert_array_equal(out.orientation_2.values, np.arange(20) * 9)
    blocked = rdm(patterns.chunk({"stimulus": 10}), metric, chunk_size=5)
    np.testing.assert_allclose(blocked.values, out.values, atol=1e-12)


def test_rdm_matches_rsatoolbox(patterns):
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm

    x = patterns.values.reshape(20, -1)
    data = Dataset(x)
    corr = calc_rdm(data, method="correlation").get_matrices()[0]
    np.testing.assert_allclose(rdm(patterns).values, corr, atol=1e-10)
    euc = calc_rdm(data, method="euclidean").get_matrices()[0]
    np.testing.assert_allclose(rdm(patterns, "euclidean").values ** 2 / x.shape[1], euc)


def test_rdm_nan_rows(patterns):
    holed = patterns.copy(data=patterns.values.copy())
    holed[3] = np.nan
    out = rdm(holed)
    assert np.isnan(out.values[3]).all() and np.isnan(out.values[:, 3]).all()
    keep = np.arange(20) != 3
    expected = squareform(pdist(patterns.values.reshape(20, -1)[keep], "correlation"))
    np.testing.assert_allclose(out.values[np.ix_(keep, keep)], expected, atol=1e-12)
    with pytest.raises(ConfigError, match="metric"):
        rdm(patterns, "manhattan")


@pytest.mark.parametrize(
    ("method", "scipy_fn", "rsatoolbox_name"),
    [
        ("spearman", stats.spearmanr, "spearman"),
        ("pearson", stats.pearsonr, "corr"),
        ("kendall", stats.kendalltau, "kendall"),
    ],
)
def test_rsa_matches_scipy_and_rsatoolbox(patterns, method, scipy_fn, rsatoolbox_name):
    from rsatoolbox.rdm import RDMs, compare

    rng = np.random.default_rng(3)
    other = patterns.copy(data=patterns.values + rng.normal(size=patterns.shape) * 0.7)
    a, b = rdm(patterns), rdm(other)
    upper = np.triu_indices(20, k=1)
    expected = scipy_fn(a.values[upper], b.values[upper]).statistic
    got = rsa(a, b, method)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.05 < got < 0.99  # related but not identical RDMs
    ours = compare(
        RDMs(a.values[upper][None]), RDMs(b.values[upper][None]), rsatoolbox_name
    )
    assert got == pytest.approx(float(ours[0, 0]), abs=1e-10)


def test_rsa_spearman_with_ties(patterns):
    a = rdm(patterns).round(1)  # many tied dissimilarities
    b = rdm(patterns, "euclidean").round(0)
    upper = np.triu_indices(20, k=1)
    assert np.unique(b.values[upper]).size < 40
    expected = stats.spearmanr(a.values[upper], b.values[upper]).statistic
    assert rsa(a, b) == pytest.approx(expected, abs=1e-12)


def test_rsa_aligns_labels_and_drops_nan(patterns):
    a = rdm(patterns)
    b = rdm(patterns, "euclidean")
    order = np.random.default_rng(4).permutation(20)
    shuffled = rdm(patterns.isel(stimulus=order), "euclidean")
    assert rsa(a, shuffled) == pytest.approx(rsa(a, b), abs=1e-12)
    holed = patterns.copy(data=patterns.values.copy())
    holed[0] = np.nan
    keep = np.arange(1, 20)
    assert rsa(rdm(holed), b) == pytest.approx(
        rsa(rdm(patterns.isel(stimulus=keep)), rdm(patterns.isel(stimulus=keep), "euclidean"))
    )
    with pytest.raises(ConfigError, match="same stimuli"):
        rsa(a, rdm(patterns.isel(stimulus=slice(0, 10))))


# -- CKA -------------------------------------------------------------------------


def _cka_feature(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    h = np.eye(n) - 1 / n

    def hsic(k, l_):
        return np.trace(k @ h @ l_ @ h) / (n - 1) ** 2

    k, l_ = x @ x.T, y @ y.T
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_cka_formulas_and_invariances():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 12)) + 3
    y = np.tanh(x @ rng.normal(size=(12, 20))) + rng.normal(size=(30, 20))
    da_x, da_y = conv_array(x), unit_array(y)
    value = cka(da_x, da_y)
    assert value == pytest.approx(_cka_feature(x, y), abs=1e-12)
    assert value == pytest.approx(_cka_hsic(x, y), abs=1e-12)
    assert 0.1 < value < 0.95
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert cka(conv_array(x @ q * 7.5), da_y) == pytest.approx(value, abs=1e-12)
    assert cka(da_x, da_x) == pytest.approx(1.0, abs=1e-12)
    lazy = cka(da_x.chunk({"stimulus": 10}), da_y.chunk({"stimulus": 10}), chunk_size=3)
    assert lazy == pytest.approx(value, abs=1e-12)


def test_cka_aligns_and_checks_labels():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(25, 8)), rng.normal(size=(25, 6))
    da_x, da_y = conv_array(x), unit_array(y)
    order = rng.permutation(25)
    assert cka(da_x, da_y.isel(stimulus=order)) == pytest.approx(cka(da_x, da_y))
    with pytest.raises(ConfigError, match="different stimuli"):
        cka(da_x, da_y.isel(stimulus=slice(0, 20)))
    holed = da_y.copy(data=y.copy())
    holed[2, 0] = np.nan
    keep = np.arange(25) != 2
    assert cka(da_x, holed) == pytest.approx(_cka_feature(x[keep], y[keep]))


# -- dimensionality ------------------------------------------------------------------


def _pr_numpy(x: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    return lam.sum() ** 2 / (lam**2).sum()


@pytest.mark.parametrize("shape", [(60, 16), (12, 40)])  # covariance and Gram routes
def test_participation_ratio_exact(shape):
    x = np.random.default_rng(7).normal(size=shape) @ np.diag(np.linspace(1, 3, shape[1]))
    da = conv_array(x)
    expected = _pr_numpy(x)
    assert participation_ratio(da) == pytest.approx(expected, rel=1e-10)
    lazy = participation_ratio(da.chunk({"stimulus": 10}), chunk_size=7)
    assert lazy == pytest.approx(expected, rel=1e-10)


def test_participation_ratio_known_latent_dims():
    rng = np.random.default_rng(8)
    k, n, p = 5, 4000, 80
    basis, _ = np.linalg.qr(rng.normal(size=(p, k)))
    x = rng.normal(size=(n, k)) @ basis.T
    assert participation_ratio(unit_array(x), chunk_size=500) == pytest.approx(k, abs=0.2)
    wide = unit_array(rng.normal(size=(40, k)) @ rng.normal(size=(k, 400)))
    assert participation_ratio(wide) <= k + 1e-9


def test_participation_ratio_drops_nan_rows():
    x = np.random.default_rng(9).normal(size=(30, 8))
    holed = x.copy()
    holed[4, 1] = np.nan
    assert participation_ratio(conv_array(holed)) == pytest.approx(
        _pr_numpy(np.delete(x, 4, axis=0))
    )
    with pytest.raises(ConfigError, match="chunk_size"):
        participation_ratio(conv_array(x), chunk_size=0)


# -- top stimuli ------------------------------------------------------------------------


def test_top_stimuli_order_ties_and_nan():
    values = np.array(
        [[0.1, 5.0], [0.9, 1.0], [0.5, 5.0], [np.nan, 2.0], [0.3, np.nan]]
    )
    da = unit_array(values).assign_coords(orientation=("stimulus", [0, 30, 60, 90, 120]))
    top = top_stimuli(da, k=5)
    assert top["stimulus"].dims == ("unit", "rank")
    names = labels(5)
    assert list(top["stimulus"].values[0]) == [names[1], names[2], names[4], names[0], ""]
    assert list(top["stimulus"].values[1]) == [names[0], names[2], names[3], names[1], ""]
    np.testing.assert_array_equal(top["response"].values[1, :4], [5.0, 5.0, 2.0, 1.0])
    assert np.isnan(top["response"].values[0, 4])
    np.testing.assert_array_equal(top["orientation"].values[0, :4], [30, 60, 120, 0])
    xr.testing.assert_equal(top_stimuli(da, k=5, chunk_size=2), top)  # ties across blocks
    with pytest.raises(ConfigError, match="between 1 and 5"):
        top_stimuli(da, k=6)


def test_top_stimuli_blank_every_kind_of_parameter_where_a_unit_has_no_rank():
    x = np.array([[1.0, 5.0], [3.0, np.nan], [2.0, 0.0]])  # unit 1 has two numbers for k = 3
    da = unit_array(x).assign_coords(
        when=("stimulus", np.array(["2026-01-01", "2026-01-02", "2026-01-03"], dtype="datetime64[D]")),
        thing=("stimulus", np.array(["a", 1, None], dtype=object)), flag=("stimulus", [True, False, True]))
    top = top_stimuli(da, k=3)
    assert list(top["stimulus"].values[1]) == [labels(3)[0], labels(3)[2], ""]
    assert np.isnat(top["when"].values[1, 2]) and not np.isnat(top["when"].values[0]).any()
    assert top["thing"].values[1, 2] is None and list(top["thing"].values[0]) == [1, None, "a"]
    assert np.isnan(top["flag"].values[1, 2]) and list(top["flag"].values[0]) == [0.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="no stimuli to rank"):
        top_stimuli(da.isel(stimulus=slice(0, 0)), k=1)
    with pytest.raises(ConfigError, match="named 'rank'"):
        top_stimuli(da.rename(unit="rank"), k=1)
    with pytest.raises(ConfigError, match="named 'rank'"):
        top_stimuli(da.assign_coords(rank=("stimulus", [0, 1, 2])), k=1)


@pytest.mark.parametrize("seed", range(4))
def test_top_stimuli_equal_a_stable_numpy_sort_with_ties_nan_and_inf(seed, monkeypatch):
    """The partition and merge of the running top k rank as one stable argsort of the whole
    array does (NaN after every number, ties by stimulus order), for any blocks of stimuli
    read and of units ranked."""
    from unitrec.analysis.statistics import preferred

    rng = np.random.default_rng(seed)
    n, p = 37, 23
    x = rng.integers(-3, 4, size=(n, p)).astype(np.float64)  # small integers: many ties
    x[:, 0] = 0.0  # a silent unit: every response ties
    x[rng.random((n, p)) < 0.15] = np.nan
    x[:, 1] = np.nan
    x[:25, 1] = 1.0  # a unit with 25 numbers, then NaN
    for value in (np.inf, -np.inf, np.finfo(np.float64).max, -np.finfo(np.float64).max, -0.0):
        x[rng.random((n, p)) < 0.04] = value
    x[:, 2] = np.nan  # a unit never recorded
    expected = np.argsort(-x, axis=0, kind="stable")  # NaN last
    names = np.array(labels(n))
    for k in (1, 4, n):
        for chunk_size, units in ((None, None), (5, None), (1, None), (None, 3), (7, 1)):
            if units is not None:  # ranked in blocks of about `units` units
                monkeypatch.setattr(preferred, "_SORT_BYTES", 8 * (n + k) * units)
            top = top_stimuli(unit_array(x), k=k, chunk_size=chunk_size)
            want = expected[:k].T
            missing = np.isnan(np.take_along_axis(x, want.T, axis=0).T)
            got = top["stimulus"].values
            np.testing.assert_array_equal(got[~missing], names[want][~missing], err_msg=f"{k} {chunk_size} {units}")
            assert (got[missing] == "").all()
            np.testing.assert_array_equal(top["response"].values, np.take_along_axis(x, want.T, axis=0).T)
            monkeypatch.undo()


def test_top_stimuli_dask_equal_and_dims():
    x = np.random.default_rng(10).normal(size=(30, 16))
    da = conv_array(x)
    top = top_stimuli(da, k=4)
    assert top["stimulus"].dims == ("channel", "y", "x", "rank")
    expected = np.argsort(-x, axis=0)[:4].T.reshape(4, 2, 2, 4)
    np.testing.assert_array_equal(top["stimulus"].values, np.array(labels(30))[expected])
    lazy = top_stimuli(da.chunk({"stimulus": 10}), k=4, chunk_size=3)
    xr.testing.assert_equal(lazy, top)


# -- layer similarity -----------------------------------------------------------------


def test_layer_similarity_matches_pairwise():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(24, 8))
    layers = {
        "conv1": conv_array(x),
        "conv2": unit_array(np.maximum(x @ rng.normal(size=(8, 10)), 0)),
        "fc": unit_array(rng.normal(size=(24, 5))),
    }
    m = layer_similarity(layers, "cka")
    assert m.dims == ("layer", "layer_2") and list(m.layer.values) == list(layers)
    assert m.sel(layer="conv1", layer_2="conv2") == pytest.approx(
        cka(layers["conv1"], layers["conv2"])
    )
    np.testing.assert_allclose(np.diag(m.values), 1.0)
    np.testing.assert_allclose(m.values, m.values.T)
    r = layer_similarity(layers, "rsa", metric="euclidean", rsa_method="kendall")
    assert r.sel(layer="conv2", layer_2="fc") == pytest.approx(
        rsa(rdm(layers["conv2"], "euclidean"), rdm(layers["fc"], "euclidean"), "kendall")
    )
    with pytest.raises(ConfigError, match="cka, rsa"):
        layer_similarity(layers, "svcca")


# -- memory: no function materialises the whole dask array --------------------------


class _LargestCompute:
    """A dask scheduler that records how many values each compute call returns."""

    def __init__(self) -> None:
        self.largest = 0

    def __call__(self, dsk, keys, **kwargs):
        import dask.local

        out = dask.local.get_sync(dsk, keys, **kwargs)
        self.largest = max(self.largest, _n_values(out))
        return out


def _n_values(obj) -> int:
    if isinstance(obj, (list, tuple)):
        return sum(_n_values(o) for o in obj)
    return int(np.size(obj))


@pytest.mark.parametrize(
    "analysis",
    [
        lambda d: tuning_curves(d).compute(),
        lambda d: lifetime_sparseness(d).compute(),
        lambda d: population_sparseness(d).compute(),
        lambda d: top_stimuli(d, k=3, chunk_size=4),
        lambda d: rdm(d, chunk_size=4),
        lambda d: cka(d, d, chunk_size=4),
        lambda d: participation_ratio(d, chunk_size=4),  # covariance route
        lambda d: participation_ratio(d.isel(stimulus=slice(0, 8)), chunk_size=4),  # Gram
        lambda d: layer_similarity({"a": d, "b": d}, chunk_size=4),
    ],
)
def test_dask_input_is_never_loaded_whole(tuned, analysis):
    import dask

    da, _, _ = tuned
    big = xr.concat([da] * 4, "stimulus").assign_coords(stimulus=labels(4 * 48))
    lazy = big.chunk({"stimulus": 10})
    scheduler = _LargestCompute()
    with dask.config.set(scheduler=scheduler):
        analysis(lazy)
    assert 0 < scheduler.largest < big.size / 2  # blocks of 4 of the 12 units at most
