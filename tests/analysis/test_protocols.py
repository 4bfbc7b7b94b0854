"""Tests of unitrec.analysis.experiments.protocols: each statistic against an independent computation
on responses built by hand with known answers, and one run from generated stimuli to figures."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from unitrec.analysis.experiments.protocols import contrast_response, modulation_ratio, sf_tuning, size_tuning
from unitrec.analysis.figures.protocols import (
    plot_contrast_response,
    plot_modulation_ratio,
    plot_sf_tuning,
    plot_size_tuning,
)
from unitrec.errors import ConfigError

pytest.importorskip("scipy")

PHASES8 = np.arange(0, 360, 45.0)


def grid(**levels) -> dict[str, np.ndarray]:
    """Stimulus coordinates of every combination of `levels` (one row per combination), C order."""
    names = list(levels)
    rows = list(itertools.product(*levels.values()))
    return {name: np.array([r[i] for r in rows]) for i, name in enumerate(names)}


def recording(values: np.ndarray, coords: dict[str, np.ndarray], **unit_coords) -> xr.DataArray:
    """A ``(stimulus, unit)`` recording with the given stimulus and unit coordinates."""
    n = values.shape[0]
    return xr.DataArray(
        values, dims=("stimulus", "unit"),
        coords={"stimulus": [f"s{i:04d}.png" for i in range(n)],
                **{k: ("stimulus", v) for k, v in coords.items()},
                **{k: ("unit", np.asarray(v)) for k, v in unit_coords.items()}},
        attrs={"site": "fake"},
    )


# -- F1/F0 ---------------------------------------------------------------------------------


def test_shifted_cosine_gives_f0_a_and_f1_b_as_numpy_fft_does():
    c = grid(orientation=[0.0, 90.0], spatial_frequency=[4.0], phase=PHASES8)
    a = np.array([2.0, 1.0, 5.0])
    b = np.array([0.5, 0.9, 4.0])
    phi0 = np.deg2rad([0.0, 100.0, 222.0])
    phi = np.deg2rad(c["phase"])[:, None]
    gain = np.where(c["orientation"] == 90, 1.0, 0.25)[:, None]  # preferred: 90°
    da = recording(gain * (a + b * np.cos(phi - phi0)), c)
    ds = modulation_ratio(da)
    np.testing.assert_allclose(ds.f0, a, rtol=1e-12)
    np.testing.assert_allclose(ds.f1, b, rtol=1e-12)
    np.testing.assert_allclose(ds.ratio, b / a, rtol=1e-12)
    np.testing.assert_array_equal(ds.is_simple, b / a > 1)
    np.testing.assert_array_equal(ds.preferred_orientation, [90, 90, 90])
    # the same numbers from numpy's FFT of the curve at the preferred condition
    spectrum = np.fft.rfft(ds.response.values, axis=0) / len(PHASES8)
    np.testing.assert_allclose(ds.f0, np.abs(spectrum[0]), rtol=1e-12)
    np.testing.assert_allclose(ds.f1, 2 * np.abs(spectrum[1]), rtol=1e-12)
    assert ds.attrs["n_simple"] == 0 and ds.attrs["n_complex"] == 3  # F1 <= F0 while r >= 0


def test_half_wave_rectified_sinusoid_gives_pi_over_2():
    phases = np.arange(0, 360, 5.0)  # fine sampling: the rectified sine's harmonic 72 aliases into F0
    c = grid(orientation=[0.0], spatial_frequency=[2.0], phase=phases)
    phi = np.deg2rad(c["phase"])[:, None]
    da = recording(np.cos(phi - np.deg2rad([0.0, 33.0])), c)
    ds = modulation_ratio(da)  # rectify=True by default
    np.testing.assert_allclose(ds.ratio, math.pi / 2, rtol=1e-3)
    assert ds.is_simple.all()
    spectrum = np.fft.rfft(np.maximum(ds.response.values, 0), axis=0)
    np.testing.assert_allclose(ds.ratio, 2 * np.abs(spectrum[1]) / np.abs(spectrum[0]), rtol=1e-12)
    raw = modulation_ratio(da, rectify=False)  # a zero-mean sine: F0 = 0, no ratio
    assert np.isnan(raw.ratio).all() and not raw.is_simple.any()


def test_phases_must_cover_one_cycle_evenly():
    c = grid(orientation=[0.0], spatial_frequency=[2.0], phase=[0.0, 90.0, 180.0])
    with pytest.raises(ConfigError, match=r"equally spaced over one 360° cycle.*\[0.0, 90.0, 180.0\]"):
        modulation_ratio(recording(np.ones((3, 1)), c))
    with pytest.raises(ConfigError, match="needs the stimulus coordinate phase; the recording has: "
                                          "orientation, spatial_frequency"):
        modulation_ratio(recording(np.ones((3, 1)), {k: c[k] for k in ("orientation", "spatial_frequency")}))


# -- spatial frequency ---------------------------------------------------------------------


def test_sf_tuning_recovers_a_log_gaussian():
    sfs = 2.0 ** np.arange(0, 5.01, 0.5)
    c = grid(orientation=[0.0, 45.0, 90.0], spatial_frequency=sfs, phase=[0.0, 120.0, 240.0])
    mu = np.array([2.0, 1.3, 3.6, 2.5])
    sigma = np.array([0.8, 0.5, 1.1, 0.6])
    base = np.array([0.1, -0.3, 0.0, 0.2])
    amp = np.array([2.0, 1.0, 3.0, 0.5])
    x = np.log2(c["spatial_frequency"])[:, None]
    curve = base + amp * np.exp(-(x - mu) ** 2 / (2 * sigma**2))
    phase_wobble = 0.3 * np.sin(np.deg2rad(c["phase"]))[:, None]  # averages out over the three phases
    ori_gain = np.where(c["orientation"] == 45, 1.0, 0.5)[:, None]
    flat = np.full((x.size, 1), 1.0)  # a fifth unit that does not care: no fit
    da = recording(np.hstack([ori_gain * (curve + phase_wobble), flat]), c)
    ds = sf_tuning(da)
    width = 2 * np.sqrt(2 * np.log(2)) * sigma
    np.testing.assert_allclose(ds.fit_spatial_frequency[:4], 2.0**mu, rtol=1e-3)
    np.testing.assert_allclose(ds.bandwidth[:4], width, rtol=1e-3)
    np.testing.assert_allclose(ds.fit_baseline[:4], 0.5 * base * 2, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ds.fit_r2[:4], 1.0, atol=1e-9)
    np.testing.assert_array_equal(ds.preferred_orientation[:4], 45)
    nearest = sfs[np.argmin(np.abs(np.log2(sfs)[:, None] - mu), axis=0)]
    np.testing.assert_array_equal(ds.preferred_spatial_frequency[:4], nearest)  # fit-free: the argmax
    np.testing.assert_allclose(ds.response.isel(unit=0), curve[c["orientation"] == 45][::3, 0], rtol=1e-12)
    assert np.isnan(ds.bandwidth[4]) and ds.attrs["n_fit_failed"] == 1


def test_sf_peak_outside_the_sampled_range_gives_no_preferred_frequency():
    sfs = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    c = grid(spatial_frequency=sfs)
    low_pass = 1 + np.exp(-(np.log2(sfs) + 0.5) ** 2 / 2)  # peak at 2**-0.5, below the range
    ds = sf_tuning(recording(low_pass[:, None], c))
    assert np.isnan(ds.fit_spatial_frequency[0]) and np.isnan(ds.bandwidth[0])
    assert ds.attrs["n_peak_outside"] == 1 and np.isfinite(ds.fit_sigma[0])
    assert np.isnan(ds.preferred_orientation[0])  # no orientation coordinate: one level, NaN


# -- size ----------------------------------------------------------------------------------


DIAMETERS = np.array([2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0])


def dog(d: np.ndarray, ke: float, we: float, ki: float, wi: float) -> np.ndarray:
    """Integrated difference of Gaussians: the response to a disc of diameter d."""
    return ke * (1 - np.exp(-(d / we) ** 2)) - ki * (1 - np.exp(-(d / wi) ** 2))


def size_recording(centre=(15.5, 15.5)) -> tuple[xr.DataArray, np.ndarray]:
    """A (stimulus, channel, y, x) recording: 2 channels on a 3 × 3 grid (stride 4);
    the middle position sits on the aperture centre; plus rows of another protocol."""
    size = grid(protocol=["size"], orientation=[0.0, 90.0], spatial_frequency=[4.0, 8.0],
                phase=[0.0, 90.0, 180.0, 270.0], aperture_diameter=DIAMETERS)
    other = grid(protocol=["phase"], orientation=[0.0, 90.0], spatial_frequency=[4.0, 8.0],
                 phase=[0.0, 90.0, 180.0, 270.0], aperture_diameter=[np.inf])
    c = {k: np.concatenate([size[k], other[k]]) for k in size}
    c["aperture_y"] = np.full(c["phase"].size, centre[0])
    c["aperture_x"] = np.full(c["phase"].size, centre[1])
    truth = np.stack([dog(DIAMETERS, 3.0, 10.0, 2.0, 30.0), dog(DIAMETERS, 1.0, 6.0, 0.0, 1.0)], axis=1)
    d = np.searchsorted(DIAMETERS, np.where(np.isfinite(c["aperture_diameter"]), c["aperture_diameter"], 2))
    condition = np.where((c["orientation"] == 90) & (c["spatial_frequency"] == 8), 1.0, 0.4)
    ripple = np.cos(np.deg2rad(c["phase"]))  # sums to 0 over the four phases
    per_channel = condition[:, None] * truth[d] + 0.5 * ripple[:, None]
    per_channel[c["protocol"] == "phase"] = 100.0  # other protocols' rows must not count
    values = np.broadcast_to(per_channel[:, :, None, None], (c["phase"].size, 2, 3, 3)).copy()
    da = xr.DataArray(
        values, dims=("stimulus", "channel", "y", "x"),
        coords={**{k: ("stimulus", v) for k, v in c.items()}, "channel": [0, 1],
                "rf_center_y": ("y", [12.0, 16.0, 20.0]), "rf_center_x": ("x", [12.0, 16.0, 20.0])},
        attrs={"site": "layer1", "rf_stride": [4, 4]},
    )
    return da, truth


def test_size_tuning_of_a_difference_of_gaussians_and_unit_selection():
    da, truth = size_recording()
    ds = size_tuning(da)
    assert ds.ssi.dims == ("channel", "y", "x") and ds.attrs["max_offset"] == 2  # half the stride
    np.testing.assert_array_equal(ds.centered.sel(channel=0), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    centre = ds.isel(y=1, x=1)
    peak = truth.max(axis=0)
    np.testing.assert_allclose(centre.response, truth, rtol=1e-12)
    np.testing.assert_allclose(centre.peak_response, peak, rtol=1e-12)
    np.testing.assert_allclose(centre.ssi, (peak - truth[-1]) / peak, rtol=1e-12)
    assert 0.5 < float(centre.ssi[0]) < 1 and abs(float(centre.ssi[1])) < 1e-12  # suppressed, not
    np.testing.assert_array_equal(centre.preferred_size, DIAMETERS[truth.argmax(axis=0)])
    np.testing.assert_array_equal(centre.preferred_orientation, [90, 90])
    np.testing.assert_array_equal(centre.preferred_spatial_frequency, [8, 8])
    off = ds.isel(y=0, x=1)
    assert np.isnan(off.ssi).all() and np.isnan(off.response).all()


def test_size_tuning_warns_when_preprocessing_resizes(recwarn):
    from unitrec.errors import UnitrecWarning

    da, _ = size_recording()
    da.attrs["preprocessing"] = "Compose( ToTensor() Normalize(mean=[0.5], std=[0.2]) )"
    size_tuning(da)
    assert not [w for w in recwarn if issubclass(w.category, UnitrecWarning)]
    da.attrs["preprocessing"] = ("Compose( Resize(size=256, interpolation=bilinear, max_size=None, antialias=True) "
                                 "CenterCrop(size=(224, 224)) ToTensor() )")
    with pytest.warns(UnitrecWarning, match="resizes or crops the stimuli.*resize: null, crop: null"):
        size_tuning(da)


def test_size_tuning_refuses_when_no_unit_is_on_the_aperture():
    da, _ = size_recording(centre=(2.0, 30.0))
    with pytest.raises(ConfigError, match=r"within 2 px of the aperture centre \(row 2, column 30\).*"
                                          r"\(12, 12\).*units: center.*aperture_center"):
        size_tuning(da)
    assert size_tuning(da, max_offset=10).centered.sum() == 2  # one position, both channels
    with pytest.raises(ConfigError, match="rf_center_y, rf_center_x"):
        size_tuning(da.drop_vars(["rf_center_y", "rf_center_x"]))


# -- contrast ------------------------------------------------------------------------------


def naka_rushton(c, r_max, c50, n, b):
    return r_max * c**n / (c**n + c50**n) + b


def test_contrast_response_recovers_naka_rushton():
    contrasts = np.array([0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0])
    c = grid(protocol=["contrast"], orientation=[0.0, 90.0], spatial_frequency=[4.0],
             phase=PHASES8[::2], contrast=contrasts)
    params = np.array([[2.0, 0.15, 2.5, 0.1], [1.0, 0.4, 1.5, 0.0], [5.0, 0.08, 3.0, -0.5]])
    curves = naka_rushton(c["contrast"][:, None], *params.T)
    gain = np.where(c["orientation"] == 0, 1.0, 0.2)[:, None]
    da = recording(gain * curves + 0.1 * np.sin(np.deg2rad(c["phase"]))[:, None], c)
    ds = contrast_response(da.chunk({"stimulus": 7}))  # dask-backed: the same answers
    for name, column in zip(("r_max", "c50", "exponent", "baseline"), params.T):
        np.testing.assert_allclose(ds[name], column, rtol=1e-3, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(ds.r2, 1.0, atol=1e-9)
    np.testing.assert_array_equal(ds.preferred_orientation, 0)
    np.testing.assert_allclose(ds.response, naka_rushton(contrasts[:, None], *params.T), rtol=1e-12)
    assert ds.attrs["n_fit_failed"] == 0


def test_protocol_rows_and_missing_coordinates_are_named():
    c = grid(protocol=["phase"], orientation=[0.0], spatial_frequency=[2.0, 4.0], phase=PHASES8)
    da = recording(np.ones((16, 1)), c)
    with pytest.raises(ConfigError, match=r"protocol 'contrast'; the recording's protocols are \['phase'\]"):
        contrast_response(da.assign_coords(contrast=("stimulus", np.ones(16))))
    with pytest.raises(ConfigError, match="needs the stimulus coordinates aperture_diameter, aperture_y, "
                                          "aperture_x; the recording has: orientation, phase, protocol"):
        size_tuning(da)
    with pytest.raises(ConfigError, match="first dim"):
        sf_tuning(da.T)


def test_a_unit_tuned_to_90_degrees_has_its_curves_taken_at_90():
    c = grid(orientation=np.arange(0, 180, 22.5), spatial_frequency=[2.0, 4.0, 8.0, 16.0], phase=PHASES8)
    ori = np.exp(np.cos(np.deg2rad(2 * (c["orientation"] - 90))) - 1)
    sf = np.exp(-(np.log2(c["spatial_frequency"]) - 2) ** 2)
    phase = 1 + 0.8 * np.cos(np.deg2rad(c["phase"]))
    da = recording((ori * sf * phase)[:, None], c)
    at_90 = c["orientation"] == 90
    mr, sft = modulation_ratio(da), sf_tuning(da)
    assert mr.preferred_orientation.item() == 90 and sft.preferred_orientation.item() == 90
    np.testing.assert_allclose(sft.response[:, 0], sf[at_90][::8], rtol=1e-12)
    np.testing.assert_allclose(mr.response[:, 0], (sf * phase)[at_90 & (c["spatial_frequency"] == 4)],
                               rtol=1e-12)
    np.testing.assert_allclose(mr.ratio, 0.8, rtol=1e-12)


@pytest.mark.slow  # a fresh interpreter: 1-2 s
def test_analysis_imports_without_torch():
    code = ("import sys, unitrec.analysis.experiments.protocols; "
            "print(sorted(m for m in ('torch', 'scipy', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


# -- from generated stimuli to figures -----------------------------------------------------


@pytest.mark.slow  # imports torchvision, scipy and matplotlib and builds resnet18: 6-15 s
def test_protocols_end_to_end(tmp_path, zoo):
    pytest.importorskip("matplotlib")
    from torchvision import transforms as T

    import unitrec as ur
    from unitrec.stimuli import protocols

    root = protocols(tmp_path / "stim", size=32, orientations=(0, 90), spatial_frequencies=(2, 4, 8, 12),
                     phases=(0, 90, 180, 270), size_spatial_frequencies=(4,), diameters=(4, 8, 16, 46),
                     contrast_spatial_frequencies=(4,), contrasts=(0.05, 0.1, 0.25, 0.5, 1.0))
    # no resize or crop: stimulus pixels are input pixels
    transform = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    path = ur.record(zoo("resnet18"), root, [{"name": "conv1", "units": "center"}], tmp_path / "a.h5",
                     transform=transform, progress=False)
    da = ur.load_layer(path, "conv1")
    assert set(np.unique(da.protocol.values)) == {"phase", "size", "contrast"}
    mr = modulation_ratio(da)
    # conv1 is linear: rectified, each unit's phase curve is a half-wave rectified sinusoid
    ratio = mr.ratio.values
    assert mr.ratio.dims == ("unit",) and np.isfinite(ratio).all() and (ratio > 1.2).all()
    sf = sf_tuning(da, rectify=True)
    size = size_tuning(da, rectify=True)
    contrast = contrast_response(da, rectify=True)
    assert size.attrs["n_centered"] == da.sizes["unit"] == 64  # the centre unit (rf 16, 16) of every channel
    assert np.isfinite(size.ssi).any() and np.isfinite(contrast.c50).any() and np.isfinite(sf.fit_mu).any()
    figures = {"sf": plot_sf_tuning(sf, max_units=2), "size": plot_size_tuning(size, max_units=2),
               "contrast": plot_contrast_response(contrast, max_units=2), "f1f0": plot_modulation_ratio(mr)}
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png", dpi=50)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    labels = {name: (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) for name, fig in figures.items()}
    assert labels == {
        "sf": ("spatial frequency (cycles/image)", "mean response (a.u.)"),
        "size": ("aperture diameter (pixels)", "mean response (a.u.)"),
        "contrast": ("Michelson contrast", "mean response (a.u.)"),
        "f1f0": ("modulation ratio F1/F0 (dimensionless)", "units (count)"),
    }
    assert figures["sf"].axes[0].get_title().startswith("conv1 · channel=0")


def test_units_without_responses_prefer_nothing_and_infinities_count_as_missing():
    c = grid(orientation=[0.0, 90.0], spatial_frequency=[4.0], phase=PHASES8)
    phi = np.deg2rad(c["phase"])
    values = np.stack([1 + (1 + np.cos(phi)) * (c["orientation"] == 90), np.full(phi.size, np.nan),
                       1 + (1 + np.cos(phi)) * (c["orientation"] == 0)], axis=1)
    values[np.flatnonzero(c["orientation"] == 90)[0], 2] = np.inf  # an overflow where the unit is weak
    ds = modulation_ratio(recording(values, c))
    assert np.isnan(ds.preferred_orientation[1]) and np.isnan(ds.preferred_spatial_frequency[1])
    assert np.isnan(ds.ratio[1])
    np.testing.assert_array_equal(ds.preferred_orientation[[0, 2]], [90, 0])


def test_fits_need_four_levels_and_flag_what_the_samples_cannot_tell():
    c = grid(orientation=[0.0], spatial_frequency=[2.0, 4.0, 8.0], phase=PHASES8)
    with pytest.raises(ConfigError, match="sf_tuning: fitting needs at least 4 spatial frequencies"):
        sf_tuning(recording(np.ones((c["phase"].size, 1)), c))
    c = grid(orientation=[0.0], contrast=[0.1, 1.0], phase=PHASES8)
    with pytest.raises(ConfigError, match="contrast_response: fitting needs at least 4 contrasts"):
        contrast_response(recording(np.ones((c["phase"].size, 1)), c | {"spatial_frequency": np.full(16, 4.0)}))
    # a linear contrast response has not bent within the contrasts shown: c50 lies beyond them
    levels = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
    c = grid(orientation=[0.0], contrast=levels, phase=PHASES8)
    ds = contrast_response(recording(np.stack([c["contrast"], c["contrast"] ** 2 / (c["contrast"] ** 2 + 0.01)],
                                              axis=1), c | {"spatial_frequency": np.full(c["phase"].size, 4.0)}))
    np.testing.assert_array_equal(ds.c50_in_range, [False, True])


def test_a_figure_given_another_result_says_which_it_draws():
    pytest.importorskip("matplotlib")
    other = xr.Dataset({"f0": ("unit", np.ones(3))})
    for plot, analysis in ((plot_sf_tuning, "sf_tuning"), (plot_size_tuning, "size_tuning"),
                           (plot_contrast_response, "contrast_response"), (plot_modulation_ratio, "modulation_ratio")):
        with pytest.raises(ConfigError, match=f"draws the result of {analysis}"):
            plot(other)
