"""Summaries (keep: summary | both): exact against numpy on the full array, resumable, mergeable, flat.

The oracle is the full array recorded beside the summary (``keep: both``): numpy's
mean/std, min/max, a stable argsort for the ranks (ties: the lower row first) and
``analysis.lifetime_sparseness`` for the sparseness.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur
from unitrec import analysis as A
from unitrec.files import summary as summaries
from unitrec.files.layout import partial_path

from tests.conftest import Interrupting, config_and_reference, killed_runs

N = 30


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def _stimuli(n: int = N) -> torch.Tensor:
    x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    x[7] = x[2]  # identical stimuli: tied responses everywhere, the lower row must rank first
    x[20] = x[2]
    return x


LAYERS = [
    {"name": "1", "keep": "both", "top": 4},  # a full conv map (channel, y, x): many zeros, so ties
    {"name": "2", "units": "center", "keep": "both", "top": 5},  # selected units
    {"name": "3", "pool": "max", "keep": "both"},  # pooled, default top (16)
    {"name": "6", "keep": "both", "top": 40},  # more ranks than stimuli
]


def _check_against_numpy(path, site: str) -> None:
    full = ur.load_layer(path, site)
    s = ur.load_summary(path, site)
    x = full.values.reshape(full.sizes["stimulus"], -1).astype(np.float64)
    unit_shape = full.shape[1:]
    flat = lambda v: np.asarray(v).reshape(-1)  # noqa: E731
    assert int(s["count"]) == x.shape[0]
    np.testing.assert_allclose(flat(s["mean"]), x.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(flat(s["std"]), x.std(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(flat(s["min"]), x.min(0))
    np.testing.assert_array_equal(flat(s["max"]), x.max(0))
    np.testing.assert_allclose(flat(s["sparseness"]), flat(A.lifetime_sparseness(full)), rtol=1e-12, atol=1e-14,
                               equal_nan=True)
    top = s.sizes["rank"]
    m = min(top, x.shape[0])
    labels = full["stimulus"].values
    rows = np.flatnonzero(ur.load_layer(path, site, include_missing=True)["done"].values == 1)
    for side, order in (("top", np.argsort(-x, axis=0, kind="stable")), ("bottom", np.argsort(x, axis=0, kind="stable"))):
        index = s[f"{side}_index"].values.reshape(top, -1)
        np.testing.assert_array_equal(index[:m], rows[order[:m]], err_msg=side)  # rows of the file
        np.testing.assert_array_equal(s[f"{side}_response"].values.reshape(top, -1)[:m],
                                      np.take_along_axis(x, order[:m], 0), err_msg=side)
        np.testing.assert_array_equal(s[f"{side}_stimulus"].values.reshape(top, -1)[:m], labels[order[:m]])
        assert (index[m:] == -1).all() and np.isnan(s[f"{side}_response"].values.reshape(top, -1)[m:]).all()
    for dim in full.dims[1:]:  # the same unit coordinates as full storage
        np.testing.assert_array_equal(s[dim].values, full[dim].values)
    assert s["mean"].shape == unit_shape


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    return ur.record(_model(), _stimuli(), LAYERS, tmp_path_factory.mktemp("summary") / "acts.h5", batch_size=4,
                     progress=False)


@pytest.mark.parametrize("site", ["1", "2", "3", "6"])
def test_a_summary_equals_numpy_on_the_full_array(both, site):
    _check_against_numpy(both, site)


def test_ties_go_to_the_lower_stimulus_and_coordinates_follow_the_ranks(both):
    s = ur.load_summary(both, "3")
    best = s["top_index"].values[:, 0]  # channel 0
    tied = [i for i in best if i in (2, 7, 20)]
    assert tied == [2, 7, 20][: len(tied)]  # identical responses keep stimulus order
    full = ur.load_layer(both, "3")
    assert (s["top_stimulus"].values == full["stimulus"].values[s["top_index"].values]).all()
    assert s["top_stimulus"].dtype.kind == "U"  # fixed-width text, plottable


def test_a_summary_is_taken_before_float16_rounding(tmp_path):
    x = _stimuli() * 3000  # responses far beyond float16's precision (and some beyond its range)
    layers = [{"name": "1", "keep": "both", "top": 3}]
    half = ur.record(_model(), x, layers, tmp_path / "half.h5", batch_size=4, progress=False, dtype="float16")
    full = ur.record(_model(), x, layers, tmp_path / "full.h5", batch_size=4, progress=False)
    a, b = ur.load_summary(half, "1"), ur.load_summary(full, "1")
    for name in ("mean", "std", "max", "top_response"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    stored = ur.load_layer(half, "1").values.astype(np.float64)
    assert not np.array_equal(stored.max(0), b["max"].values)  # the stored float16 values are rounded


def test_summary_only_stores_no_responses_and_says_how_to_read_it(tmp_path):
    path = ur.record(_model(), _stimuli(), [{"name": "1", "keep": "summary"}, "3"], tmp_path / "a.h5", batch_size=4,
                     progress=False)
    with h5py.File(path) as h5:
        assert "activation" not in h5["1"] and "activation" in h5["3"]
        assert summaries.STATE_GROUP not in h5["1"]  # slots replaced by the finished datasets
    with pytest.raises(ur.LayerNotFoundError, match="load_summary"):
        ur.load_layer(path, "1")
    with pytest.raises(ur.LayerNotFoundError, match="stored in full"):
        ur.load_summary(path, "3")
    with pytest.raises(ur.LayerNotFoundError, match="summaries: 1"):
        ur.load_summary(path, "nope")
    assert ur.load_summary(path, "1").sizes["rank"] == summaries.DEFAULT_TOP


@pytest.mark.parametrize("entry, message", [
    ({"name": "1", "top": 5}, "keep: summary"),
    ({"name": "1", "keep": "summary", "top": 0}, "from 1 to 10,000"),
    ({"name": "1", "keep": "summary", "top": 10**12}, "from 1 to 10,000"),
    ({"name": "1", "keep": "summary", "top": True}, "valid integer"),
    ({"name": "1", "keep": "summary", "top": "5"}, "valid integer"),
    ({"name": "1", "keep": "summary", "top": 5.0}, "valid integer"),
    ({"name": "1", "keep": "some"}, "full.*summary.*both"),
])
def test_bad_summary_entries_are_one_line_errors(tmp_path, entry, message):
    with pytest.raises(ur.ConfigError, match=message):
        ur.record(_model(), _stimuli(), [entry], tmp_path / "a.h5", progress=False)


def test_the_summary_opens_without_unitrec(both):
    xr = pytest.importorskip("xarray")
    tree = xr.open_datatree(both, engine="h5netcdf")
    site = tree["1"]
    assert set(site["top_stimulus"].dims) == {"rank", "channel", "y", "x"}
    np.testing.assert_array_equal(site["mean"].values, ur.load_summary(both, "1")["mean"].values)


# ------------------------------------------------------------------ resume
SUMMARY_LAYERS = [{"name": "1", "keep": "summary", "top": 3}, {"name": "3", "pool": "mean", "keep": "both"}]


def _equal_summaries(a, b) -> None:
    for site in ("1", "3"):
        x, y = ur.load_summary(a, site), ur.load_summary(b, site)
        for name in x.data_vars:
            np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=f"{site}/{name}")


class _Data(Interrupting):
    def __init__(self, stop_at=None):
        super().__init__(n=26, stop_at=stop_at)


def test_an_interrupted_summary_resumes_bit_for_bit(tmp_path):
    whole = ur.record(_model(), _Data(), SUMMARY_LAYERS, tmp_path / "whole.h5", batch_size=4, progress=False)
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(_model(), _Data(stop_at=13), SUMMARY_LAYERS, out, batch_size=4, progress=False)
    part = ur.load_summary(partial_path(out), "1")  # a run in progress shows what it has saved
    assert int(part["count"]) == 12
    path = ur.record(_model(), _Data(), SUMMARY_LAYERS, out, batch_size=4, progress=False)
    _equal_summaries(path, whole)


@pytest.mark.parametrize("torn", [True, False])
def test_a_crash_while_saving_a_summary_neither_loses_nor_counts_twice(tmp_path, monkeypatch, torn):
    """torn: killed mid-save (the slot's stamp not written); else after the save, before the done mask."""
    whole = ur.record(_model(), _Data(), SUMMARY_LAYERS, tmp_path / "whole.h5", batch_size=4, progress=False)
    save, calls = summaries.save_slot, []

    def crashing(group, slot, state, through):
        calls.append(group.name)
        if len(calls) < 5:  # sites 1 and 3 for two batches, then the first site of the third batch
            return save(group, slot, state, through)
        if torn:
            group[summaries.STATE_GROUP]["through"][slot] = -1
            group[summaries.STATE_GROUP]["mean"][slot] = np.full_like(state.mean, 1e9)  # half written
            raise KeyboardInterrupt
        save(group, slot, state, through)
        if len(calls) == 6:  # both sites saved; the done mask not yet
            raise KeyboardInterrupt

    monkeypatch.setattr(summaries, "save_slot", crashing)
    out = tmp_path / "acts.h5"
    with pytest.raises(ur.RecordingError):
        ur.record(_model(), _Data(), SUMMARY_LAYERS, out, batch_size=4, progress=False)
    monkeypatch.setattr(summaries, "save_slot", save)
    with h5py.File(partial_path(out)) as h5:
        assert (h5["done"][...] == 1).sum() == 8  # two batches marked done
    path = ur.record(_model(), _Data(), SUMMARY_LAYERS, out, batch_size=4, progress=False)
    _equal_summaries(path, whole)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_the_summary_equals_an_uninterrupted_one(tmp_path):
    cfg = {
        "model": {"name": "resnet18"},
        "stimuli": {"generate": {"kind": "gratings", "size": 32, "orientations": list(range(0, 180, 6)),
                                 "spatial_frequencies": [2, 4, 6, 8]}},
        "layers": [{"name": "layer1", "keep": "summary", "top": 5}, {"name": "layer3", "pool": "max", "keep": "both"}],
        "record": {"batch_size": 2, "stop_early": False},
        "output": "out/acts.h5",
    }
    config, out, ref = config_and_reference(tmp_path, cfg)
    assert list(killed_runs(config, out, seed=1)), "the child finished before it could be killed"
    path = ur.run_config(config, progress=False)
    for site in ("layer1", "layer3"):
        x, y = ur.load_summary(path, site), ur.load_summary(ref, site)
        for name in x.data_vars:
            np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=f"{site}/{name}")


# ------------------------------------------------------------------ shards
def test_stitched_shards_summarise_as_one_process(tmp_path):
    x = _stimuli(N)
    one = ur.record(_model(), x, LAYERS, tmp_path / "one.h5", batch_size=4, progress=False)
    for i in range(3):
        stitched = ur.record(_model(), x, LAYERS, tmp_path / "st.h5", batch_size=4, progress=False, shard=(i, 3))
    assert stitched == tmp_path / "st.h5"
    for site in ("1", "2", "3", "6"):
        a, b = ur.load_summary(one, site), ur.load_summary(stitched, site)
        for name in a.data_vars:
            if name in ("mean", "std", "sparseness"):  # Chan's combination: equal to rounding
                np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-12, atol=1e-15, err_msg=name)
            else:  # counts, extremes and ranks exactly
                np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{site}/{name}")
    copy = ur.merge(tmp_path / "st.h5", copy=True)
    np.testing.assert_array_equal(ur.load_summary(copy, "1")["top_index"].values,
                                  ur.load_summary(one, "1")["top_index"].values)


# ------------------------------------------------------------------ flat
class _Noise(torch.utils.data.Dataset):
    """n stimuli made on demand: nothing in memory grows with n."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i))


@pytest.mark.slow  # 2-4 s: with the slow ones, to keep the default suite under 3 minutes
def test_file_size_does_not_grow_with_the_stimuli_but_their_labels(tmp_path):
    layers = [{"name": "1", "keep": "summary"}, {"name": "3", "pool": "max", "keep": "summary"}]
    sizes, sites = {}, {}
    for n in (200, 20_000):
        path = ur.record(_model(), _Noise(n), layers, tmp_path / f"{n}.h5", batch_size=200, progress=False)
        sizes[n] = path.stat().st_size
        with h5py.File(path) as h5:
            sites[n] = sum(ds.id.get_storage_size() for g in ("1", "3") for ds in h5[g].values())
        assert int(ur.load_summary(path, "1")["count"]) == n
    assert sites[20_000] == sites[200]  # the summaries take the same bytes
    per_stimulus = (sizes[20_000] - sizes[200]) / 19_800
    assert per_stimulus < 64  # the label (a variable-length string) and the done mask; full storage of
    #                           site 1 alone would be 6×12×12×4 = 3,456 bytes per stimulus


_RSS_CHILD = """
import resource, sys, torch, unitrec as ur
from tests.recording.test_summary import _Noise, _model
n = int(sys.argv[1])
ur.record(_model(), _Noise(n), [{"name": "1", "keep": "summary"}], sys.argv[2], batch_size=200, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_stimuli(tmp_path):
    root = Path(__file__).resolve().parents[2]
    peak = {}
    for n in (200, 20_000):
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(n), str(tmp_path / f"{n}.h5")], cwd=root,
                             capture_output=True, text=True, check=True)
        peak[n] = int(out.stdout.split()[-1]) * 1024
    assert peak[20_000] - peak[200] < 16 << 20  # 100× the stimuli; full storage would add 123 MB


def test_a_recorder_in_memory_refuses_keep_summary():
    with pytest.raises(ur.ConfigError, match="ur.record"):
        with ur.Recorder(_model(), [{"name": "1", "keep": "summary"}], input_size=(3, 12, 12)):
            pass


def test_undecodable_images_are_left_out_of_the_summary_also_in_the_last_block(tmp_path):
    from tests.conftest import make_images

    folder = make_images(tmp_path / "stim", n=10, size=16)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for bad in (files[4], files[9]):  # mid-block, and the whole last block (rows 9 of blocks of 3)
        bad.write_bytes(b"not an image")
    layers = [{"name": "1", "keep": "both", "top": 3}]
    with pytest.warns(ur.UnitrecWarning, match="skipped"):
        path = ur.record(_model(), folder, layers, tmp_path / "a.h5", batch_size=3, progress=False,
                         transform=lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1))
    assert int(ur.load_summary(path, "1")["count"]) == 8
    _check_against_numpy(path, "1")


def test_a_large_summary_leaves_out_per_rank_labels_but_top_stimuli_still_gives_them(both, monkeypatch):
    from unitrec.files import load

    labelled = ur.load_summary(both, "1")
    monkeypatch.setattr(load, "_LABELLED_MAX", 10)
    with pytest.warns(ur.UnitrecWarning, match="left out of the Dataset to save memory"):
        bare = ur.load_summary(both, "1")
    assert "top_stimulus" not in bare and "top_index" in bare
    np.testing.assert_array_equal(bare.stimulus.values[bare.top_index.values], labelled.top_stimulus.values)
    import xarray as xr

    xr.testing.assert_equal(A.top_stimuli(bare, 3), A.top_stimuli(labelled, 3))


def test_top_written_out_or_not_is_the_same_job(tmp_path):
    out = tmp_path / "a.h5"
    ur.record(_model(), _stimuli(), [{"name": "1", "keep": "summary"}], out, progress=False)
    before = out.stat().st_mtime_ns
    ur.record(_model(), _stimuli(), [{"name": "1", "keep": "summary", "top": 16}], out, progress=False)
    assert out.stat().st_mtime_ns == before  # nothing to record, not "another job"


def test_resuming_with_another_keep_names_the_difference(tmp_path):
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(_model(), _Data(stop_at=13), [{"name": "1", "keep": "summary"}], out, batch_size=4, progress=False)
    for keep in ("both", "full"):
        with pytest.raises(ur.RecordingError, match="differs in sites"):
            ur.record(_model(), _Data(), [{"name": "1", "keep": keep}], out, batch_size=4, progress=False)


def test_the_space_check_counts_summaries(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, 20 << 20))  # 20 MiB free
    layers = [{"name": "1", "keep": "summary", "top": 2000}]  # 864 units × ~16k float64 each: ~110 MB
    with pytest.raises(ur.RecordingError, match="needs about"):
        ur.record(_model(), _stimuli(), layers, tmp_path / "a.h5", progress=False)
    assert not (tmp_path / "a.h5.partial.h5").exists()


def test_metadata_columns_named_like_summary_variables_are_prefixed(tmp_path):
    from tests.conftest import make_images

    folder = make_images(tmp_path / "stim", n=6, size=16)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    names = ["mean", "response", "index", "activation", "top_x", "rank"]
    rows = [",".join(["path", *names])] + [",".join([f, *[str(100 + i)] * len(names)]) for i, f in enumerate(files)]
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    to_tensor = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    with pytest.warns(ur.UnitrecWarning, match="'mean' as 'meta_mean', 'response' as 'meta_response'"):
        path = ur.record(_model(), folder, [{"name": "1", "keep": "both", "top": 2},
                                            {"name": "3", "keep": "summary", "pool": "max", "top": 2}],
                         tmp_path / "a.h5", batch_size=3, progress=False, transform=to_tensor)
    _check_against_numpy(path, "1")
    s = ur.load_summary(path, "3")
    assert "top_meta_response" in s and float(s["top_response"].max()) < 100  # the responses, not the column
    assert A.top_stimuli(s, 2)["meta_index"].shape == (8, 2)


def test_nan_responses_are_summarised_as_numpy_does(tmp_path):
    class Holes(nn.Module):
        def forward(self, x):
            y = x.mean(dim=(2, 3))  # (n, 3)
            y = torch.cat([y, torch.full_like(y[:, :1], float("nan"))], 1)  # channel 3: always NaN
            y[::3, 0] = float("nan")  # channel 0: NaN on every third stimulus
            return y

    model = nn.Sequential(Holes()).eval()
    path = ur.record(model, _stimuli(), [{"name": "0", "keep": "both", "top": 4}], tmp_path / "a.h5", batch_size=4,
                     progress=False)
    full = ur.load_layer(path, "0")
    s = ur.load_summary(path, "0")
    x = full.values.astype(np.float64)
    for name, want in (("min", x.min(0)), ("max", x.max(0))):
        np.testing.assert_array_equal(s[name].values, want, err_msg=name)  # NaN where numpy has NaN
    np.testing.assert_allclose(s["mean"].values, x.mean(0), rtol=1e-12)  # NaN where numpy has NaN
    import xarray as xr

    xr.testing.assert_equal(A.top_stimuli(s, 4), A.top_stimuli(full, 4))  # NaN ranks nowhere
