"""``evolve``: CMA-ES image evolution, streamed to HDF5, resumable bit for bit; ``load_evolution``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from unitrec.closedloop.evolve import evolve
from unitrec.closedloop.generators import DCTBasis, check_generator
from unitrec.closedloop.trajectory import load_evolution
from unitrec.errors import ConfigError, RecordingError, UnitrecWarning
from unitrec.files.layout import partial_path

REPO = Path(__file__).resolve().parents[2]
UNIT = {"name": "2", "channels": [1], "units": "center"}
FAST = {"size": 32, "population": 4, "generations": 4, "code_size": 48, "progress": False}  # k = 4: a small basis


def tiny_model() -> nn.Module:
    """A seeded two-layer conv net: fast, and its units' fields are 7 pixels wide."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an evolution file but the pickled optimiser: cmaes keeps a history
    buffer made by ``np.empty``, whose unwritten slots are whatever the memory held."""
    with h5py.File(path, "r") as h5:
        return {name: h5[name][...] for name in h5 if name != "optimizer_state"}


def assert_same_file(a: Path, b: Path) -> None:
    left, right = arrays(a), arrays(b)
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)
        assert left[name].dtype == right[name].dtype


class Stop(Exception):
    pass


def stop_after(k: int):
    def progress(generation: int, scores: np.ndarray) -> None:
        if generation == k - 1:
            raise Stop
    return progress


# --------------------------------------------------------------------------- the search
def test_scores_improve_for_a_resnet_unit_and_the_file_agrees(zoo, tmp_path):
    out = tmp_path / "evo.h5"
    evo = evolve(zoo("resnet18"), {"name": "layer3", "channels": [5], "units": "center"}, out, size=64,
                 population=8, generations=6, progress=False)
    assert evo.path == out and out.exists() and not partial_path(out).exists()
    assert not out.with_name(out.name + ".lock").exists()
    assert evo.scores.shape == evo.clean_scores.shape == (6, 8)
    np.testing.assert_array_equal(evo.scores, evo.clean_scores)  # no noise
    assert evo.scores[-2:].mean() > 2 * evo.scores[0].mean()
    assert evo.scores[-1].max() > evo.scores[0].max()
    assert evo.best_score == evo.scores.max()
    assert evo.scores[evo.best_generation, evo.best_individual] == evo.best_score
    assert evo.best_image.dtype == np.float32 and evo.best_image.shape == (3, 64, 64)
    assert 0 <= evo.best_image.min() and evo.best_image.max() <= 1
    assert evo.best_code.shape == (192,) and evo.best_code.dtype == np.float32

    ds = load_evolution(out)
    np.testing.assert_array_equal(ds.scores.values, evo.scores)
    np.testing.assert_array_equal(ds.clean_scores.values, evo.clean_scores)
    np.testing.assert_array_equal(ds.best_score.values, evo.scores.max(axis=1))
    np.testing.assert_array_equal(ds.best_image.values[evo.best_generation], evo.best_image)
    np.testing.assert_array_equal(ds.codes.values[evo.best_generation, evo.best_individual], evo.best_code)
    assert ds.codes.shape == (6, 8, 192) and ds.best_image.dims == ("generation", "channel", "y", "x")
    assert ds.attrs["status"] == "complete" and ds.attrs["kind"] == "unitrec evolution"
    assert ds.attrs["model"] == "resnet18" and len(ds.attrs["weights_sha256"]) == 64
    assert json.loads(ds.attrs["objective"])["objective"] == "unit"
    assert json.loads(ds.attrs["arguments"])["population"] == 8
    assert "cmaes" in json.loads(ds.attrs["library_versions"])
    # the stored best image of a generation is the generator's image of that code, in 8 bits
    g, i = evo.best_generation, evo.best_individual
    again = DCTBasis(64)(torch.from_numpy(ds.codes.values[g, i])[None])[0].numpy()
    np.testing.assert_allclose(evo.best_image, again, atol=0.5 / 255 + 1e-6)


def test_the_basis_is_grey_at_code_zero_and_checked():
    g = DCTBasis(16, k=3)
    assert g.code_size == 27
    assert torch.equal(g(torch.zeros(1, 27)), torch.full((1, 3, 16, 16), 0.5))
    assert check_generator(g, 27) == (16, 16)
    with pytest.raises(ConfigError, match="not 8×8"):
        check_generator(g, 27, size=8)


# --------------------------------------------------------------------------- resume
def test_an_interrupted_run_resumes_bit_for_bit(tiny, tmp_path):
    ref = evolve(tiny, UNIT, tmp_path / "ref.h5", **FAST)
    out = tmp_path / "evo.h5"
    with pytest.raises(Stop):
        evolve(tiny, UNIT, out, **{**FAST, "progress": stop_after(2)})
    assert partial_path(out).exists() and not out.exists()
    with pytest.warns(UnitrecWarning, match="not finished"):
        part = load_evolution(out)  # the unfinished file opens, with its done generations
    assert part.attrs["status"] == "partial" and part.sizes["generation"] == 2
    np.testing.assert_array_equal(part.scores.values, ref.scores[:2])

    seen = []
    evo = evolve(tiny, UNIT, out, **{**FAST, "progress": lambda g, s: seen.append(g)})
    assert seen == [2, 3]  # only the generations left
    assert_same_file(out, ref.path)
    np.testing.assert_array_equal(evo.best_image, ref.best_image)
    assert evo.best_score == ref.best_score


def test_without_the_optimizer_state_the_done_generations_are_replayed(tiny, tmp_path):
    ref = evolve(tiny, UNIT, tmp_path / "ref.h5", **FAST)
    out = tmp_path / "evo.h5"
    with pytest.raises(Stop):
        evolve(tiny, UNIT, out, **{**FAST, "progress": stop_after(3)})
    with h5py.File(partial_path(out), "a") as h5:  # as if killed between the state and its done mark
        h5["optimizer_state"].attrs["generation"] = 3
    evolve(tiny, UNIT, out, **FAST)
    assert_same_file(out, ref.path)


_CHILD = """
import sys, torch
torch.set_num_threads(2)
from tests.closedloop.test_evolve import tiny_model, UNIT
from unitrec.closedloop.evolve import evolve
evolve(tiny_model(), UNIT, sys.argv[1], size=32, population=6, generations=40, code_size=48,
       progress=lambda g, s: print(g, flush=True))
"""


@pytest.mark.slow
def test_a_killed_process_resumes_bit_for_bit(tmp_path):
    torch.set_num_threads(2)
    args = {"size": 32, "population": 6, "generations": 40, "code_size": 48, "progress": False}
    ref = evolve(tiny_model(), UNIT, tmp_path / "ref.h5", **args)
    out = tmp_path / "evo.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng, kills = random.Random(0), 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        first, wait = None, rng.randint(1, 6)
        for line in proc.stdout:  # generations as they are marked done
            first = int(line) if first is None else first
            if int(line) >= first + wait:
                break
        time.sleep(rng.uniform(0, 0.05))  # then anywhere: mid-generation, mid-write, mid-flush
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if out.exists():
            break
        kills += 1
    assert kills >= 2 and partial_path(out).exists()
    evo = evolve(tiny_model(), UNIT, out, **args)
    assert_same_file(out, ref.path)
    np.testing.assert_array_equal(evo.best_image, ref.best_image)


# --------------------------------------------------------------------------- reruns
def test_a_finished_file_is_reused_other_arguments_are_refused(tiny, tmp_path, monkeypatch):
    out = tmp_path / "evo.h5"
    first = evolve(tiny, UNIT, out, **FAST)

    def boom(*args, **kwargs):
        raise AssertionError("the model (or the objective) was called")

    with monkeypatch.context() as m:
        m.setattr("unitrec.closedloop.evolve.objective", boom)
        m.setattr(nn.Module, "__call__", boom)
        again = evolve(tiny, UNIT, out, **FAST)
    np.testing.assert_array_equal(again.scores, first.scores)
    np.testing.assert_array_equal(again.best_image, first.best_image)

    with pytest.raises(RecordingError, match=r"differs in population \(file: 4; now: 5\).*overwrite=True") as info:
        evolve(tiny, UNIT, out, **{**FAST, "population": 5})
    assert "\n" not in str(info.value)
    with pytest.raises(RecordingError, match="differs in unit"):
        evolve(tiny, {**UNIT, "channels": [2]}, out, **FAST)
    other = tiny_model()
    with torch.no_grad():
        other[0].weight[0, 0, 0, 0] += 1
    with pytest.raises(RecordingError, match="differs in weights"):
        evolve(other, UNIT, out, **FAST)

    redone = evolve(tiny, UNIT, out, **{**FAST, "population": 5, "overwrite": True})
    assert redone.scores.shape == (4, 5) and load_evolution(out).scores.shape == (4, 5)


def test_an_unfinished_file_of_another_run_is_refused(tiny, tmp_path):
    out = tmp_path / "evo.h5"
    with pytest.raises(Stop):
        evolve(tiny, UNIT, out, **{**FAST, "progress": stop_after(1)})
    with pytest.raises(RecordingError, match=r"unfinished evolution.*differs in seed \(file: 0; now: 1\)"):
        evolve(tiny, UNIT, out, **{**FAST, "seed": 1})
    assert evolve(tiny, UNIT, out, **{**FAST, "seed": 1, "overwrite": True}).scores.shape == (4, 4)


def test_a_file_that_is_not_hdf5_is_never_overwritten(tiny, tmp_path):
    out = tmp_path / "notes.h5"
    out.write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(RecordingError, match="is not an HDF5 file"):
            evolve(tiny, UNIT, out, **{**FAST, "overwrite": overwrite})
    assert out.read_text() == "my notes"
    with pytest.raises(RecordingError, match="not an HDF5 file"):
        load_evolution(out)
    with pytest.raises(RecordingError, match="does not exist"):
        load_evolution(tmp_path / "nothing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = 1
    with pytest.raises(RecordingError, match="not a unitrec evolution"):
        load_evolution(tmp_path / "other.h5")


# --------------------------------------------------------------------------- noise, fields, generators
def test_noise_is_seeded_and_multiplies_the_clean_scores(tiny, tmp_path):
    args = {**FAST, "noise": 0.3}
    a = evolve(tiny, UNIT, tmp_path / "a.h5", **args)
    b = evolve(tiny, UNIT, tmp_path / "b.h5", **args)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert_same_file(a.path, b.path)
    for g in range(4):
        z = np.random.default_rng([0, g]).standard_normal(4)
        np.testing.assert_array_equal(a.scores[g], a.clean_scores[g] * np.maximum(0.0, 1.0 + 0.3 * z))
    assert not np.array_equal(a.scores, a.clean_scores)
    c = evolve(tiny, UNIT, tmp_path / "c.h5", **{**args, "seed": 1})
    assert not np.array_equal(c.scores, a.scores)
    # the best is the image that drives the unit most, noise aside, in the result and the file
    g, i = np.unravel_index(np.argmax(a.clean_scores), a.clean_scores.shape)
    assert (a.best_generation, a.best_individual, a.best_score) == (g, i, a.clean_scores[g, i])
    with h5py.File(a.path) as h5:
        best = h5["best_image"][g].astype(np.float32) / 255
    np.testing.assert_array_equal(a.best_image, best)


def test_the_output_folder_is_made(tiny, tmp_path):
    evo = evolve(tiny, UNIT, tmp_path / "new" / "folder" / "e.h5", **FAST)
    assert evo.path.is_file()


def test_a_lesion_from_a_recording_is_keyed_by_its_run_not_its_path(tiny, tmp_path):
    import unitrec as ur

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    source = ur.record(tiny, x, ["0"], tmp_path / "means.h5", progress=False)
    lesion = [{"name": "0", "channels": [0], "set": "mean", "from": str(source)}]
    first = evolve(tiny, UNIT, tmp_path / "e.h5", ablate=lesion, **FAST)
    moved = tmp_path / "moved.h5"
    source.rename(moved)  # the same recording elsewhere: the same job
    again = evolve(tiny, UNIT, tmp_path / "e.h5", ablate=[{**lesion[0], "from": str(moved)}], **FAST)
    assert again.path == first.path
    np.testing.assert_array_equal(again.scores, first.scores)
    ur.record(tiny, x + 1, ["0"], source, progress=False)  # another recording under the first name
    with pytest.raises(RecordingError, match="ablate"):
        evolve(tiny, UNIT, tmp_path / "e.h5", ablate=lesion, **FAST)


def test_fit_rf_shows_the_image_only_inside_the_receptive_field(tiny, tmp_path):
    from unitrec.closedloop.scorer import Scorer

    scorer = Scorer(tiny, [UNIT], input_size=(3, 32, 32))
    cy, cx = float(scorer.units.rf_center_y[0]), float(scorer.units.rf_center_x[0])
    h, w = scorer.sites[0].field.size
    assert (h, w) == (7, 7)
    evolve(tiny, UNIT, tmp_path / "rf.h5", **{**FAST, "fit_rf": True})
    ds = load_evolution(tmp_path / "rf.h5")
    y0, y1, x0, x1 = json.loads(ds.attrs["rf_box"])
    assert (y0, y1, x0, x1) == (round(cy - 3), round(cy + 3) + 1, round(cx - 3), round(cx + 3) + 1)
    images = np.round(ds.best_image.values * 255).astype(int)
    inside = np.zeros(images.shape[2:], bool)
    inside[y0:y1, x0:x1] = True
    assert (images[:, :, ~inside] == 128).all()  # mid-grey, 0.5 in 8 bits
    assert (images[:, :, inside] != 128).any()
    with pytest.raises(ConfigError, match="one position"):
        evolve(tiny, {"name": "2", "channels": [1]}, tmp_path / "x.h5", **{**FAST, "fit_rf": True})


class TinyGenerator(nn.Module):
    """A user's generator: 10 numbers to a 16 × 16 image (resized to `size` by evolve)."""

    code_size = 10

    def __init__(self, squash: bool = True, shape: tuple[int, ...] = (3, 16, 16)) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear, self.squash, self.shape = nn.Linear(10, int(np.prod(shape))), squash, shape

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.linear(codes) * 4
        return (torch.sigmoid(x) if self.squash else x).view(len(codes), *self.shape)


def test_a_user_generator_works_and_bad_ones_are_refused_in_one_line(tiny, tmp_path):
    evo = evolve(tiny, UNIT, tmp_path / "g.h5", **{**FAST, "code_size": None, "generator": TinyGenerator()})
    assert evo.best_code.shape == (10,) and evo.best_image.shape == (3, 32, 32)
    assert "TinyGenerator" in json.loads(load_evolution(evo.path).attrs["arguments"])["generator"]

    bad = {
        "sigmoid, or rescale": TinyGenerator(squash=False),
        r"float image batch \(2, 3, H, W\)": TinyGenerator(shape=(16, 16, 3)),
        "must be a torch.nn.Module": lambda z: z,
    }
    for message, generator in bad.items():
        with pytest.raises(ConfigError, match=message) as info:
            evolve(tiny, UNIT, tmp_path / "bad.h5", **{**FAST, "code_size": 10, "generator": generator})
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="pass code_size"):
        evolve(tiny, UNIT, tmp_path / "bad.h5", **{**FAST, "code_size": None, "generator": nn.Identity()})
    with pytest.raises(ConfigError, match="failed on codes of shape \\(2, 7\\).*pass the code_size"):
        evolve(tiny, UNIT, tmp_path / "bad.h5", **{**FAST, "code_size": 7, "generator": TinyGenerator()})
    with pytest.raises(ConfigError, match="3·k·k"):
        evolve(tiny, UNIT, tmp_path / "bad.h5", **{**FAST, "code_size": 50})


def test_bad_arguments_are_refused_in_one_line(tiny, tmp_path, monkeypatch):
    out = tmp_path / "bad.h5"
    cases = {
        "generations must be an integer ≥ 1": {"generations": 0},
        "population must be an integer ≥ 4": {"population": 3},
        "size must be an integer ≥ 16": {"size": 10},
        "fit_rf must be True or False": {"fit_rf": "no"},
        "device 'cuda:0'|device 'cuda'|device must": {"device": "cuda:0" if not torch.cuda.is_available() else "tpu"},
        "sigma0 must be a finite number > 0": {"sigma0": 0.0},
        "noise must be a finite number ≥ 0": {"noise": -0.1},
        "normalize must be": {"normalize": "cifar"},
    }
    for message, change in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            evolve(tiny, UNIT, out, **{**FAST, **change})
        assert "\n" not in str(info.value)
    for unit in ({"name": "nope"}, {"name": "2", "channels": [99]}):
        with pytest.raises((ConfigError, KeyError, IndexError)) as info:
            evolve(tiny, unit, out, **FAST)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unit must be a site name"):
        evolve(tiny, 3, out, **FAST)
    assert not out.exists() and not partial_path(out).exists()

    monkeypatch.setitem(sys.modules, "cmaes", None)
    with pytest.raises(ConfigError, match=r"evolution needs cmaes: pip install 'unitrec\[evolve\]'"):
        evolve(tiny, UNIT, out, **FAST)


def test_nan_scores_are_refused(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model[2].weight.fill_(float("nan"))
    with pytest.raises(RecordingError, match="NaN or infinite scores") as info:
        evolve(model, UNIT, tmp_path / "nan.h5", **FAST)
    assert "\n" not in str(info.value)


def test_load_evolution_imports_no_torch(tiny, tmp_path):
    out = tmp_path / "evo.h5"
    evolve(tiny, UNIT, out, **FAST)
    code = ("import sys, unitrec.closedloop.trajectory as t\n"
            f"ds = t.load_evolution({str(out)!r})\n"
            "assert ds.sizes['generation'] == 4, ds\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
