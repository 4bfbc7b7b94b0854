"""The atlas's data files, checked without a browser against independent readers.

The ranked stimuli of a summary site equal ``ur.load_summary``; those of a full site equal
a stable numpy argsort of the responses; means and maxima equal numpy; sparseness
``analysis.lifetime_sparseness``; tuning ``analysis.tuning_curves``; every ranked stimulus
has one thumbnail, with the pixels the network saw. Then the bad inputs of issue 26: moved
or changed stimuli, a partial recording, a site too large, a folder that is not an atlas.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import unitrec as ur
from unitrec import analysis as A
from unitrec.cli import main
from unitrec.errors import ConfigError
from tests.conftest import float32_sum_bound

RANKS = 5
pytestmark = pytest.mark.filterwarnings("ignore::unitrec.errors.UnitrecWarning")  # the messages, checked as such


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


def _transform():
    return ur.build_transform({"resize": None, "crop": None, "normalize": "imagenet"})


LAYERS = [{"name": "1", "keep": "both", "top": 9}, "2", "3", {"name": "6", "keep": "summary", "top": 4}]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """Gratings (image files with orientation), a site kept in full and as a summary, one in
    full only, one as a summary only."""
    tmp = tmp_path_factory.mktemp("atlas")
    ur.stimuli.gratings(tmp / "stimuli", size=16, orientations=[0, 45, 90, 135], spatial_frequencies=[2, 4],
                        phases=[0, 180])
    return ur.record(_model(), tmp / "stimuli", LAYERS, tmp / "acts.h5", batch_size=8, progress=False,
                     transform=_transform())


@pytest.fixture(scope="module")
def built(recording, tmp_path_factory) -> Path:
    return ur.atlas(recording, tmp_path_factory.mktemp("built") / "atlas", ranks=RANKS, progress=False).parent


def read_js(path: Path) -> list:
    """The arguments of the one ``unitrecAtlas.<loader>(...);`` call a data file makes."""
    text = path.read_text(encoding="utf-8")
    match = re.fullmatch(r"unitrecAtlas\.(\w+)\((.*)\);\n", text, flags=re.S)
    assert match, f"{path} is not one loader call"
    return json.loads("[" + match[2].replace("<\\/", "</") + "]")


def manifest(folder: Path) -> dict:
    return read_js(folder / "data" / "manifest.js")[0]


def site(folder: Path, name: str) -> dict:
    return next(s for s in manifest(folder)["sites"] if s["name"] == name)


def table(folder: Path, entry: dict) -> dict[str, list]:
    columns: dict[str, list] = {}
    for k in range(entry["n_table_chunks"]):
        key, index, chunk = read_js(folder / "data" / entry["key"] / f"table-{k}.js")
        assert (key, index, chunk["start"]) == (entry["key"], k, k * entry["table_chunk"])
        for name, values in chunk["columns"].items():
            columns.setdefault(name, []).extend(values)
    return columns


def details(folder: Path, entry: dict) -> dict[str, list]:
    out: dict[str, list] = {}
    for k in range(entry["n_detail_chunks"]):
        _, _, chunk = read_js(folder / "data" / entry["key"] / f"units-{k}.js")
        assert chunk["start"] == k * entry["detail_chunk"]
        for name, values in chunk.items():
            if name != "start":
                out.setdefault(name, []).extend(values)
    return out


def _float(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def test_the_folder_opens_without_a_server(built):
    assert {p.name for p in built.iterdir()} >= {"index.html", "atlas.js", "atlas.css", "data", "thumbs"}
    page = (built / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"([^\"]+)\"", page)
    assert scripts and all(not re.match(r"[a-z]+:|//", s) and (built / s).is_file() for s in scripts), scripts
    for text in (page, (built / "atlas.js").read_text(encoding="utf-8"), (built / "atlas.css").read_text()):
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)  # nothing fetched from elsewhere


def test_a_summary_sites_ranks_equal_load_summary(recording, built):
    for name, ranks in (("1", RANKS), ("6", 4)):  # "6" kept 4 ranks: fewer than asked
        entry = site(built, name)
        s = ur.load_summary(recording, name)
        dims = list(s["mean"].dims)
        assert entry["keep"] in ("both", "summary") and entry["ranks"] == ranks
        assert entry["n_units"] == int(np.prod([s.sizes[d] for d in dims]))
        got = details(built, entry)
        for side in ("top", "bottom"):
            want = s[f"{side}_index"].isel(rank=slice(0, ranks)).transpose(*dims, "rank").values.reshape(-1, ranks)
            np.testing.assert_array_equal(np.array(got[side]), want)
            want_r = s[f"{side}_response"].isel(rank=slice(0, ranks)).transpose(*dims, "rank").values
            assert np.array_equal(want_r, want_r.astype(np.float32), equal_nan=True)  # float32 responses
            # 9 significant digits give a float32 back exactly
            np.testing.assert_array_equal(_float(sum(got[f"{side}_response"], [])).astype(np.float32),
                                          want_r.reshape(-1).astype(np.float32))
        columns = table(built, entry)
        for stat in ("mean", "max", "sparseness"):
            np.testing.assert_allclose(_float(columns[stat]), s[stat].transpose(*dims).values.reshape(-1),
                                       rtol=5e-7)  # printed to 7 significant digits


def test_a_full_sites_ranks_equal_a_numpy_sort(recording, built):
    entry = site(built, "3")
    da = ur.load_layer(recording, "3")
    values = da.values.reshape(da.sizes["stimulus"], -1).astype(np.float64)
    got = details(built, entry)
    order = np.argsort(-values, axis=0, kind="stable")[:RANKS].T  # ties: the earlier stimulus first
    np.testing.assert_array_equal(np.array(got["top"]), order)
    np.testing.assert_array_equal(np.array(got["bottom"]), np.argsort(values, axis=0, kind="stable")[:RANKS].T)
    np.testing.assert_array_equal(np.array(got["top_response"], dtype=np.float32),
                                  np.take_along_axis(values, order.T, 0).T.astype(np.float32))
    columns = table(built, entry)
    np.testing.assert_array_equal(np.array(columns["channel"]), np.repeat(np.arange(6), 7 * 7))
    np.testing.assert_array_equal(np.array(columns["y"]), np.tile(np.repeat(np.arange(7), 7), 6))
    # the table is printed to 7 significant digits: within half a unit of the 7th
    np.testing.assert_allclose(_float(columns["mean"]), values.mean(axis=0), rtol=5e-7)
    np.testing.assert_allclose(_float(columns["max"]), values.max(axis=0), rtol=5e-7)
    np.testing.assert_allclose(_float(columns["sparseness"]), A.lifetime_sparseness(da).values.reshape(-1), rtol=5e-7)
    np.testing.assert_array_equal(np.array(columns["rf_center_y"]), da["rf_center_y"].broadcast_like(
        da.isel(stimulus=0)).transpose("channel", "y", "x").values.reshape(-1))


@pytest.mark.parametrize("name", ["3", "2"])  # after a ReLU, and a convolution's signed responses
def test_tuning_curves_and_their_selectivity_where_the_stimuli_are_parametric(recording, built, name):
    entry = site(built, name)
    da = ur.load_layer(recording, name)
    curves = A.tuning_curves(da, by="orientation")
    assert entry["tuning"] == {"by": "orientation", "levels": [0.0, 45.0, 90.0, 135.0]}
    got = details(built, entry)
    # float32 means of 8 responses each, maybe summed in another order: within the float32
    # bound of a sum of 8 terms (and the division's rounding) of each other
    n = 8
    flat = lambda v: v.transpose("channel", "y", "x", "orientation").values.reshape(-1, 4)  # noqa: E731
    abs_mean = flat(A.tuning_curves(abs(da), by="orientation")["mean"]).astype(np.float64)
    bound = float32_sum_bound(abs_mean * n, n) / n + np.finfo(np.float32).eps * abs_mean
    printed = 5e-7 * np.abs(flat(curves["mean"]))  # and printed to 7 significant digits
    assert np.all(np.abs(np.array(got["tuning"], dtype=float) - flat(curves["mean"])) <= bound + printed)
    column = next(c for c in entry["columns"] if c["name"] == "selectivity")
    assert column["label"] == "selectivity (orientation)"
    # the index of the rectified responses (a ratio of such sums), in [0, 1] where a signed curve's is not
    rectified = A.tuning_curves(da.clip(min=0), by="orientation")["selectivity"].values.reshape(-1)
    shown = _float(table(built, entry)["selectivity"])
    np.testing.assert_allclose(shown, rectified, rtol=1e-5, equal_nan=True)
    assert np.nanmin(shown) >= 0 and np.nanmax(shown) <= 1 + 1e-6
    signed = curves["selectivity"].values
    assert (name == "2") == bool((signed < 0).any() or (signed > 1).any())  # the signed index leaves [0, 1]
    summary_only = site(built, "6")  # no responses to average: the peak z of its summary
    assert summary_only["tuning"] is None
    assert next(c for c in summary_only["columns"] if c["name"] == "selectivity")["label"] == "selectivity (peak z)"


def test_each_ranked_stimulus_is_thumbnailed_once_as_the_network_saw_it(recording, built):
    ranked = set()
    for entry in manifest(built)["sites"]:
        got = details(built, entry)
        ranked |= {r for side in ("top", "bottom") for line in got[side] for r in line if r >= 0}
    thumbs = {int(p.stem) for p in (built / "thumbs").iterdir()}
    assert thumbs == ranked
    _, stimuli = read_js(built / "data" / "stimuli-0.js")
    labels = ur.load_layer(recording, "3")["stimulus"].values
    assert stimuli["labels"] == [str(v) for v in labels]
    assert [i for i, t in enumerate(stimuli["thumb"]) if t] == sorted(ranked)
    assert stimuli["coords"]["orientation"] == [float(v) for v in ur.load_layer(recording, "3")["orientation"]]
    row = min(ranked)
    seen = np.asarray(Image.open(recording.parent / "stimuli" / str(labels[row])).convert("RGB"), dtype=float)
    thumb = np.asarray(Image.open(built / "thumbs" / f"{row}.jpg").convert("RGB"), dtype=float)
    assert thumb.shape == seen.shape == (16, 16, 3)  # the input's size: no resize in this preprocessing
    assert np.abs(thumb - seen).mean() < 8  # JPEG at quality 90
    assert manifest(built)["stimuli"]["input_size"] == [16, 16]


def test_the_manifest_carries_anatomy_and_provenance(recording, built):
    m = manifest(built)
    info = ur.open_recording(recording).attrs
    assert m["recording"]["run_id"] == info["run_id"] and m["recording"]["weights_sha256"] == info["weights_sha256"]
    assert m["messages"] == ["site 6: its summary keeps 4 top and bottom stimuli per unit, so 4 are shown, not 5"]
    entry = site(built, "3")
    da = ur.load_layer(recording, "3")
    assert entry["rf_size"] == [int(v) for v in da.attrs["rf_size"]]
    assert entry["rf_stride"] == [int(v) for v in da.attrs["rf_stride"]]
    assert entry["dims"] == ["channel", "y", "x"] and entry["shape"] == [6, 7, 7] and entry["module_type"] == "ReLU"
    assert entry["selection"] == da.attrs["selection"]


def test_moved_and_changed_stimuli_are_shown_by_label_and_said(recording, tmp_path):
    copy = tmp_path / "rec"
    shutil.copytree(recording.parent, copy, ignore=shutil.ignore_patterns("built*", "atlas*"))
    import h5py

    with h5py.File(copy / "acts.h5", "r+") as h5:  # as if recorded here, then the stimuli moved away
        h5.attrs["stimulus_root"] = str(copy / "stimuli")
    moved = tmp_path / "elsewhere"
    (copy / "stimuli").rename(moved)
    with pytest.warns(ur.UnitrecWarning) as caught:  # each message is a warning too
        out = ur.atlas(copy / "acts.h5", tmp_path / "a", progress=False).parent
    m = manifest(out)
    assert m["stimuli"]["thumbs"] is False and not (out / "thumbs").exists()
    moved_message = [msg for msg in m["messages"] if "moved" in msg]
    assert len(moved_message) == 1 and "is not there (moved since recording?)" in moved_message[0]
    assert [str(w.message) for w in caught] == m["messages"]
    assert site(out, "3")["has_units"]  # the units are all there, only without pictures
    # told where they are now, the pictures come back; a changed file is caught by its SHA-256
    first = sorted(p.name for p in moved.iterdir() if p.suffix == ".png")[0]
    Image.new("RGB", (16, 16), (255, 0, 0)).save(moved / first)
    out = ur.atlas(copy / "acts.h5", tmp_path / "a", stimulus_root=moved, progress=False).parent
    m = manifest(out)
    assert m["stimuli"]["thumbs"] is True
    assert any("changed since recording" in msg and first in msg for msg in m["messages"]), m["messages"]
    _, stimuli = read_js(out / "data" / "stimuli-0.js")
    assert stimuli["thumb"][stimuli["labels"].index(first)] is False


def test_a_partial_recording_gives_an_atlas_of_what_is_there(tmp_path):
    from tests.conftest import Interrupting

    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(model, Interrupting(n=12, stop_at=9), [{"name": "1", "keep": "both", "top": 3}], out,
                  batch_size=4, progress=False)
    partial = out.with_name(out.name + ".partial.h5")
    folder = ur.atlas(partial, tmp_path / "a", progress=False).parent
    m = manifest(folder)
    assert m["recording"]["status"] != "complete"
    assert any("8 of 12 stimuli recorded so far" in msg for msg in m["messages"]), m["messages"]
    assert "stimuli were tensors" in " ".join(m["messages"])
    got = details(folder, site(folder, "1"))
    assert max(r for line in got["top"] for r in line) < 8  # only the rows recorded
    s = ur.load_summary(partial, "1")
    np.testing.assert_array_equal(np.array(got["top"]), s["top_index"].transpose("channel", "y", "x", "rank")
                                  .values.reshape(-1, 3))


def test_a_site_too_large_is_listed_without_its_units(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 16, 1)).eval()  # 16 × 256 × 256: over a million units
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    path = ur.record(model, x, ["0", {"name": "0", "pool": "mean", "as": "pooled"}], tmp_path / "big.h5",
                     progress=False)
    folder = ur.atlas(path, tmp_path / "a", progress=False).parent
    big, pooled = site(folder, "0"), site(folder, "pooled")
    assert big["n_units"] == 1_048_576 and not big["has_units"] and not (folder / "data" / big["key"]).exists()
    assert "more than max_units (200,000)" in big["note"]
    assert [m for m in manifest(folder)["messages"] if "max_units" in m] == [f"site 0: {big['note']}"]
    assert pooled["has_units"] and pooled["n_units"] == 16


def test_the_output_folder_is_never_someone_elses(recording, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no unitrec atlas"):
        ur.atlas(recording, other, progress=False)
    assert (other / "thesis.tex").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ur.atlas(recording, tmp_path / "file", progress=False)
    for ranks in (-1, 65, 2.0, True):
        with pytest.raises(ConfigError, match="ranks must be an integer from 0 to 64"):
            ur.atlas(recording, tmp_path / "x", ranks=ranks, progress=False)
    with pytest.raises(ConfigError, match="by='colour' is not a stimulus parameter.*orientation"):
        ur.atlas(recording, tmp_path / "x", by="colour", progress=False)
    # an atlas is replaced whole by a new one, leaving nothing beside it; a file of the user's in it is kept
    index = ur.atlas(recording, tmp_path / "a", progress=False)
    (index.parent / "NOTES.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files the atlas did not write \(NOTES.txt\)"):
        ur.atlas(recording, tmp_path / "a", progress=False)
    (index.parent / "NOTES.txt").unlink()
    (tmp_path / ".a.building-killed").mkdir()  # what a build killed by SIGKILL leaves
    (tmp_path / ".a.building-killed" / "half.js").write_text("unitrecAtlas.units(")
    old = (index.parent / "data").stat().st_ino
    ur.atlas(recording, tmp_path / "a", progress=False)
    assert index.is_file() and (index.parent / "data").stat().st_ino != old  # a new folder in its place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file", "notes"]
    # the folder follows the umask as its files do (not mkdtemp's 0700), and a link is written through
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o777 & ~_umask()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    ur.atlas(recording, tmp_path / "link", progress=False)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link" / "index.html").is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow  # a recording of resnet18 from a config, and a python subprocess
def test_the_command_line_and_a_configs_atlas(recording, tmp_path, capsys):
    assert main(["atlas", str(recording), "-o", str(tmp_path / "cli"), "--no-progress", "--ranks", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"atlas: {tmp_path / 'cli' / 'index.html'}"
    assert site(tmp_path / "cli", "1")["ranks"] == 2
    assert main(["atlas", str(tmp_path / "nothing.h5"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing.h5" in err
    config = tmp_path / "c.yaml"
    shutil.copytree(recording.parent / "stimuli", tmp_path / "stimuli")
    config.write_text("model: {name: resnet18, weights: null, seed: 0}\nstimuli: {path: stimuli}\n"
                      "preprocess: {resize: null, crop: null, normalize: imagenet}\n"
                      "layers: [{name: layer4, pool: mean}]\nrecord: {batch_size: 16, progress: false}\n"
                      "output: out/acts.h5\natlas: {path: browse, ranks: 3}\n")
    ur.run_config(config, progress=False)
    entry = site(tmp_path / "browse", "layer4")
    assert entry["has_units"] and entry["ranks"] == 3 and entry["n_units"] == 512
    config.write_text(config.read_text().replace("atlas: {path: browse, ranks: 3}", "atlas: {by: colour}"))
    with pytest.raises(ConfigError, match="atlas.by 'colour' is not a stimulus coordinate"):
        ur.run_config(config, progress=False, overwrite=True)
    # a folder the atlas may not write is refused before the recording, not after it
    config.write_text(config.read_text().replace("atlas: {by: colour}", "atlas: {path: stimuli}"))
    before = (tmp_path / "out" / "acts.h5").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="stimuli is not empty and holds no unitrec atlas"):
        ur.run_config(config, progress=False, overwrite=True)
    assert (tmp_path / "out" / "acts.h5").stat().st_mtime_ns == before
    # on the command line, the atlas's messages are warning lines
    done = subprocess.run([sys.executable, "-m", "unitrec", "atlas", str(recording), "-o", str(tmp_path / "cli"),
                           "--no-progress", "--ranks", "6"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0 and done.stderr.splitlines() == [
        "unitrec: warning: site 6: its summary keeps 4 top and bottom stimuli per unit, so 4 are shown, not 6"]


@pytest.mark.slow  # a python subprocess
def test_building_the_atlas_imports_no_torch(recording, tmp_path):
    code = ("import sys, unitrec as ur; ur.atlas(sys.argv[1], sys.argv[2], progress=False); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(recording), str(tmp_path / "a")], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def test_visualisations_and_evolutions_are_shown_with_their_units(recording, tmp_path):
    pytest.importorskip("cmaes")
    from unitrec.anatomy.model import state_dict_sha256
    from unitrec.closedloop.gallery import save_visualizations

    model = _model()
    unit = {"name": "3", "channels": [2], "units": "center"}  # channel 2 at the centre of the 7 × 7 map
    shown = ur.visualize(model, unit, size=16, steps=2, transforms=None, progress=False)
    vis = save_visualizations([shown, ur.visualize(model, {"name": "3", "channels": [4]}, size=16, steps=2,
                                                   transforms=None, progress=False)],
                              tmp_path / "vis.nc", provenance={"weights_sha256": state_dict_sha256(model)})
    evo = tmp_path / "evo.h5"
    ur.evolve(model, {"name": "1", "channels": [1], "positions": [[3, 5]]}, evo, size=16, generations=2,
              population=4, progress=False)
    torch.manual_seed(1)
    other = nn.Sequential(*list(_model().children()))
    for p in other.parameters():
        nn.init.normal_(p)
    foreign = save_visualizations([ur.visualize(other, unit, size=16, steps=1, transforms=None, progress=False)],
                                  tmp_path / "other.nc", provenance={"weights_sha256": state_dict_sha256(other)})
    # a unit named by its map position: the same filter at the same place in input pixels, whatever
    # the image size (here the visualisation's 32 px against the recording's 16)
    at = {"name": "3", "channels": [0], "positions": [[1, 2]]}
    sha = state_dict_sha256(model)
    larger = ur.visualize(model, at, size=32, steps=1, transforms=None, progress=False)
    assert larger.receptive_field["center_y"] == 3 and larger.receptive_field["center_x"] == 5
    larger = save_visualizations([larger], tmp_path / "larger.nc", provenance={"weights_sha256": sha})
    folder = ur.atlas(recording, tmp_path / "a", visualizations=[vis, foreign, larger], evolutions=[evo],
                      progress=False).parent
    messages = [m for m in manifest(folder)["messages"] if "left out" in m]
    assert len(messages) == 1 and "other.nc left out: made on other weights" in messages[0]
    three, one = site(folder, "3"), site(folder, "1")
    extras = details(folder, three)["extras"]
    with_images = {u: e for u, e in enumerate(extras) if e}
    centre = 2 * 49 + 3 * 7 + 3
    channel_4 = set(range(4 * 49, 5 * 49))  # a channel's mean: every unit of the channel
    assert set(with_images) == {centre, 0 * 49 + 1 * 7 + 2} | channel_4  # the centre, [1, 2] at 16 px, channel 4
    assert [e["file"] for e in with_images[9]] == [str(larger)]
    columns = table(folder, three)
    assert (columns["rf_center_y"][9], columns["rf_center_x"][9]) == (3, 5)  # the recorded unit's field: the same
    (only,) = with_images[centre]
    assert only["kind"] == "visualization" and only["score"] == pytest.approx(float(shown.scores[-1]), rel=1e-6)
    image = np.asarray(Image.open(folder / only["image"]))
    np.testing.assert_array_equal(image, (np.clip(shown.image.transpose(1, 2, 0), 0, 1) * 255).round())
    evolved = {u: e for u, e in enumerate(details(folder, one)["extras"]) if e}
    assert list(evolved) == [1 * 256 + 3 * 16 + 5] and evolved[1 * 256 + 3 * 16 + 5][0]["kind"] == "evolution"
    best = ur.load_evolution(evo)
    g = int(best["clean_scores"].max("individual").argmax("generation"))
    np.testing.assert_array_equal(np.asarray(Image.open(folder / evolved[1 * 256 + 3 * 16 + 5][0]["image"])),
                                  (best["best_image"].isel(generation=g).transpose("y", "x", "channel").values
                                   * 255).round())


def test_a_sparse_noise_recording_gets_receptive_field_maps(tmp_path):
    ur.stimuli.sparse_noise(tmp_path / "noise", size=12, grid=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 5, padding=2), nn.ReLU(), nn.Conv2d(2, 2, 9, padding=4), nn.ReLU()).eval()
    layers = [{"name": "1", "units": "center"}, {"name": "3", "units": "center"}]  # fields of 5 and 13 px
    path = ur.record(model, tmp_path / "noise", layers, tmp_path / "acts.h5", progress=False, transform=_transform())
    folder = ur.atlas(path, tmp_path / "a", progress=False).parent
    for name, field in (("1", 5), ("3", 13)):
        entry = site(folder, name)
        assert entry["rf_map"] is True and entry["rf_size"] == [field, field]
        got = details(folder, entry)
        maps = A.sparse_noise_map(ur.load_layer(path, name))
        assert entry["rf_map_polarities"] == [str(p) for p in maps["polarity"].values] == ["on", "off"]
        for unit, file in enumerate(got["rf_map"]):
            png = np.asarray(Image.open(folder / file).convert("RGB"), dtype=int)
            on = maps.isel(polarity=0, unit=unit).values  # red where above the mean, blue below
            zoom = png.shape[0] // on.shape[0]
            _signs_match(png, on)
            gap = png[:, on.shape[1] * zoom:png.shape[1] - on.shape[1] * zoom]  # between the on and off maps
            assert gap.size and (gap == 255).all()  # a field larger than the input stays on its own map


def _signs_match(png: np.ndarray, values: np.ndarray) -> None:
    """The map's pixel centres are red where ``values`` is above 0 and blue below, at the
    pixels of at least half the largest deviation."""
    zoom = png.shape[0] // values.shape[0]
    pixels = png[zoom // 2::zoom, zoom // 2:values.shape[1] * zoom:zoom][: values.shape[0], : values.shape[1]]
    strong = np.abs(values) > 0.5 * np.nanmax(np.abs(values))
    assert strong.any()
    red_minus_blue = pixels[..., 0] - pixels[..., 2]
    assert np.all(np.sign(red_minus_blue[strong]) == np.sign(values[strong]))


@pytest.fixture(scope="module")
def white(tmp_path_factory) -> Path:
    """White noise recorded at two sites' centre units (fields of 5 and 13 px) and one summary site."""
    tmp = tmp_path_factory.mktemp("white")
    ur.stimuli.white_noise(tmp / "noise", size=12, n=160, seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 5, padding=2), nn.ReLU(), nn.Conv2d(2, 2, 9, padding=4), nn.ReLU()).eval()
    layers = [{"name": "1", "units": "center", "keep": "both"}, {"name": "3", "units": "center"},
              {"name": "2", "keep": "summary"}]
    return ur.record(model, tmp / "noise", layers, tmp / "acts.h5", progress=False, transform=_transform())


def test_a_white_noise_recording_gets_spike_triggered_averages(white, tmp_path):
    folder = ur.atlas(white, tmp_path / "a", progress=False).parent
    assert manifest(folder)["messages"] == []
    for name, field in (("1", 5), ("3", 13)):
        entry = site(folder, name)
        assert entry["rf_map"] is True and entry["rf_size"] == [field, field]
        assert entry["rf_map_method"] == "spike_triggered_average" and entry["rf_map_polarities"] == ["STA"]
        sta = A.spike_triggered_average(ur.load_layer(white, name))
        files = details(folder, entry)["rf_map"]
        assert len(files) == entry["n_units"] == 2
        for unit, file in enumerate(files):
            png = np.asarray(Image.open(folder / file).convert("RGB"), dtype=int)
            values = sta.isel(unit=unit).values
            assert png.shape[:2] == (values.shape[0] * (128 // 12), values.shape[1] * (128 // 12))  # one tile
            _signs_match(png, values)
    assert site(folder, "2")["rf_map"] is False  # a summary has no responses to correlate


def test_white_noise_that_changed_since_recording_gets_no_maps_and_says_so(white, tmp_path):
    stimuli = tmp_path / "noise"
    shutil.copytree(white.parent / "noise", stimuli)
    image = sorted(stimuli.glob("white_*.png"))[7]
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)  # the same size, other pixels
    with pytest.warns(ur.UnitrecWarning) as caught:
        folder = ur.atlas(white, tmp_path / "a", stimulus_root=stimuli, progress=False).parent
    said = [str(w.message) for w in caught if "spike-triggered" in str(w.message)]
    assert len(said) == 1 and image.name in said[0] and "changed since recording" in said[0]
    assert said[0] in manifest(folder)["messages"]
    assert all(site(folder, name)["rf_map"] is False for name in ("1", "3"))
    with pytest.warns(ur.UnitrecWarning, match="spike-triggered.*not there"):
        ur.atlas(white, tmp_path / "b", stimulus_root=tmp_path / "nowhere", progress=False)


def test_maps_too_large_for_the_real_input_are_left_out_and_said(white, tmp_path, monkeypatch):
    from unitrec.web import build

    # the sites have 2 centre units each, 12 × 12 maps of 1,152 bytes: room for 3 maps, not 4
    monkeypatch.setattr(build, "_RF_MAP_BYTES", 3 * 12 * 12 * 8)
    folder = ur.atlas(white, tmp_path / "three", progress=False).parent
    assert site(folder, "1")["rf_map"] is True  # 2 maps fit: the limit is the real input's, not 256 × 256's
    monkeypatch.setattr(build, "_RF_MAP_BYTES", 12 * 12 * 8)
    with pytest.warns(ur.UnitrecWarning, match=r"site 1: no receptive-field maps: those of 2 units of a 12 × 12 input"):
        folder = ur.atlas(white, tmp_path / "one", progress=False).parent
    assert site(folder, "1")["rf_map"] is False


def test_white_noise_in_part_or_through_unknown_preprocessing_gets_no_maps_and_says_so(white, tmp_path):
    from torchvision import transforms as T

    stimuli = tmp_path / "mixed"
    shutil.copytree(white.parent / "noise", stimuli)
    ur.stimuli.gratings(tmp_path / "gratings", size=12, orientations=[0, 90], spatial_frequencies=[2], phases=[0])
    with open(stimuli / "metadata.csv", "a") as fh:
        for image in sorted((tmp_path / "gratings").glob("*.png")):
            shutil.copy(image, stimuli / image.name)
            fh.write(f"{image.name},,,,,,\n")
    path = ur.record(_model()[:2], stimuli, [{"name": "1", "units": "center"}], tmp_path / "mixed.h5",
                     progress=False, transform=_transform())
    with pytest.warns(ur.UnitrecWarning, match="no receptive-field maps: 160 of the 162 stimuli recorded are white"):
        folder = ur.atlas(path, tmp_path / "a", progress=False).parent
    assert site(folder, "1")["rf_map"] is False
    flip = T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])  # a transform the atlas cannot rebuild
    path = ur.record(_model()[:2], white.parent / "noise", [{"name": "1", "units": "center"}, "0"],
                     tmp_path / "flip.h5", progress=False, transform=flip)
    with pytest.warns(ur.UnitrecWarning) as caught:
        folder = ur.atlas(path, tmp_path / "b", progress=False).parent
    said = [str(w.message) for w in caught if "receptive-field" in str(w.message)]
    assert said == ["no receptive-field maps (spike-triggered averages) of the white noise: the preprocessing "
                    "cannot be rebuilt, so the images the network saw are unknown"]  # once, not per site


def test_a_failed_build_leaves_the_old_atlas_whole(recording, tmp_path, monkeypatch):
    from unitrec.web import build

    index = ur.atlas(recording, tmp_path / "a", progress=False)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "write_stimuli", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ur.atlas(recording, tmp_path / "a", progress=False)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before and index.is_file()


def test_preprocessing_that_cannot_be_rebuilt_shows_the_originals_without_fields(recording, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    stimuli = recording.parent / "stimuli"
    path = ur.record(model, stimuli, ["1"], tmp_path / "acts.h5", progress=False,
                     transform=lambda image: _transform()(image.rotate(90)))
    m = manifest(ur.atlas(path, tmp_path / "a", progress=False).parent)
    assert m["stimuli"]["thumbs"] is True and m["stimuli"]["input_size"] is None  # no outlines
    assert len(m["messages"]) == 1 and "cannot be rebuilt" in m["messages"][0]


def test_a_file_without_sites_gives_an_atlas_that_says_so(recording, tmp_path):
    import h5py

    copy = tmp_path / "acts.h5"
    shutil.copy(recording, copy)
    with h5py.File(copy, "r+") as h5:
        for name in [k for k, v in h5.items() if isinstance(v, h5py.Group)]:
            del h5[name]
    m = manifest(ur.atlas(copy, tmp_path / "a", progress=False).parent)
    assert m["sites"] == [] and m["messages"] == ["acts.h5 holds no site in full and no summary: there are no "
                                                  "units to show"]
