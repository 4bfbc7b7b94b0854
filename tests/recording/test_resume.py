"""Crash safety: partial files, resume after SIGKILL, run keys, locks, writer failures."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import unitrec as ur
from unitrec.files.layout import partial_path
from unitrec.files.writer import RecordingFile
from unitrec.recording.recorder import Recorder

from tests.conftest import Interrupting, config_and_reference, killed_runs, make_images

SITES = ["conv1", "layer1.0.bn2", {"name": "layer2", "units": "center"}]


def _values(path: Path) -> dict[str, np.ndarray]:
    return {s: ur.load_layer(path, s).values for s in ["conv1", "layer1.0.bn2", "layer2"]}


def test_interrupted_run_resumes_to_the_same_values(zoo, tmp_path, monkeypatch):
    m = zoo("resnet18")
    whole = ur.record(m, Interrupting(), SITES, tmp_path / "whole.h5", batch_size=4, progress=False)
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(m, Interrupting(stop_at=13), SITES, out, batch_size=4, progress=False)
    assert not out.exists()
    with h5py.File(partial_path(out), "r") as h5:
        done = h5["done"][...]
        assert h5.attrs["status"] == "incomplete"
        assert done[:12].all() and not done[12:].any()  # whole batches only
        assert np.isnan(h5["conv1/activation"][12:]).all()  # unwritten rows are NaN, never 0
    # counted where the recorder runs the model: a hook on the model would change its
    # anatomy, which the run key holds (a hook may change the values)
    calls = []
    run = Recorder.run
    monkeypatch.setattr(Recorder, "run", lambda self, x, **kw: (calls.append(x.shape[0]), run(self, x, **kw))[1])
    path = ur.record(m, Interrupting(), SITES, out, batch_size=4, progress=False)
    assert sum(calls) == 12  # only the 12 missing rows were recomputed
    assert not partial_path(out).exists()
    for site, want in _values(whole).items():
        np.testing.assert_array_equal(_values(path)[site], want, err_msg=site)


def test_a_different_run_is_refused_and_says_what_differs(zoo, tmp_path):
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(zoo("resnet18"), Interrupting(stop_at=9), SITES, out, batch_size=4, progress=False)
    with pytest.raises(ur.RecordingError, match="weights.*--overwrite"):
        ur.record(ur.load_model("resnet18", seed=1), Interrupting(), SITES, out, progress=False)
    with pytest.raises(ur.RecordingError, match="sites"):
        ur.record(zoo("resnet18"), Interrupting(), ["conv1"], out, progress=False)
    with pytest.raises(ur.RecordingError, match="stimuli"):
        ur.record(zoo("resnet18"), Interrupting(n=20), SITES, out, progress=False)
    with pytest.raises(ur.RecordingError, match="dtype"):
        ur.record(zoo("resnet18"), Interrupting(), SITES, out, progress=False, dtype="float16")
    path = ur.record(zoo("resnet18"), Interrupting(), ["conv1"], out, progress=False, overwrite=True)
    assert list(ur.load_layer(path, "conv1").stimulus.values)[:2] == ["00", "01"]


def test_finished_files_are_never_rewritten_unless_asked(zoo, tmp_path):
    out = ur.record(zoo("resnet18"), Interrupting(), ["conv1"], tmp_path / "a.h5", progress=False)
    stamp = out.stat().st_mtime_ns
    assert ur.record(zoo("resnet18"), Interrupting(), ["conv1"], out, progress=False) == out
    assert out.stat().st_mtime_ns == stamp
    with pytest.raises(ur.RecordingError, match="already holds a finished recording"):
        ur.record(zoo("resnet18"), Interrupting(n=8), ["conv1"], out, progress=False)
    ur.record(zoo("resnet18"), Interrupting(n=8), ["conv1"], out, progress=False, overwrite=True)
    assert ur.load_layer(out, "conv1").sizes["stimulus"] == 8


def test_a_second_writer_of_the_same_output_is_refused(zoo, tmp_path):
    out = tmp_path / "a.h5"
    with open(tmp_path / "a.h5.lock", "a+") as held:  # what a running writer holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ur.RecordingError, match="another process is writing"):
            ur.record(zoo("resnet18"), Interrupting(), ["conv1"], out, progress=False)
    assert ur.record(zoo("resnet18"), Interrupting(), ["conv1"], out, progress=False).exists()


def test_a_failing_writer_stops_the_run_with_its_error(zoo, tmp_path, monkeypatch):
    real = RecordingFile.write
    calls = {"n": 0}

    def flaky(self, rows, values, *rest):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(self, rows, values, *rest)

    monkeypatch.setattr(RecordingFile, "write", flaky)
    start = time.perf_counter()
    with pytest.raises(ur.RecordingError, match="no space left on device.*rerun the same command to resume"):
        ur.record(zoo("resnet18"), Interrupting(n=40), ["conv1"], tmp_path / "a.h5", batch_size=2,
                  progress=False)
    assert time.perf_counter() - start < 30  # an error, never a hang


def test_early_stop_skips_the_rest_without_changing_values(zoo, tmp_path):
    m = zoo("resnet18")
    later = []
    handle = m.layer2.register_forward_hook(lambda *a: later.append(1))
    try:
        early = ur.record(m, Interrupting(), ["layer1"], tmp_path / "e.h5", progress=False)
        assert len(later) == 1  # only the dry trace reached layer2
        full = ur.record(m, Interrupting(), ["layer1"], tmp_path / "f.h5", progress=False, stop_early=False)
    finally:
        handle.remove()
    np.testing.assert_array_equal(ur.load_layer(early, "layer1").values, ur.load_layer(full, "layer1").values)


def test_workers_float16_and_zstd(zoo, images, transform64, tmp_path):
    hdf5plugin = pytest.importorskip("hdf5plugin")
    m = zoo("resnet18")
    base = ur.record(m, images, ["layer1"], tmp_path / "a.h5", transform=transform64, progress=False)
    workers = ur.record(m, images, ["layer1"], tmp_path / "w.h5", transform=transform64, progress=False,
                        num_workers=2, batch_size=3)
    half = ur.record(m, images, ["layer1"], tmp_path / "h.h5", transform=transform64, progress=False,
                     dtype="float16", compression="zstd")
    want = ur.load_layer(base, "layer1").values
    np.testing.assert_array_equal(ur.load_layer(workers, "layer1").values, want)
    got = ur.load_layer(half, "layer1")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.values, want.astype(np.float16))
    with h5py.File(half, "r") as h5:
        assert str(hdf5plugin.ZSTD_ID) in h5["layer1/activation"]._filters
    assert half.stat().st_size < base.stat().st_size / 2


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_value_for_value(tmp_path):
    make_images(tmp_path / "stim", n=160, size=64)
    cfg = {
        "model": {"name": "resnet18"},
        "stimuli": {"path": "stim"},
        "preprocess": {"resize": None, "crop": None, "normalize": "imagenet"},
        "layers": ["conv1", "layer1.0.bn2", {"name": "layer3", "pool": "max"}],
        "record": {"batch_size": 2, "stop_early": False},
        "output": "out/acts.h5",
    }
    config, out, ref = config_and_reference(tmp_path, cfg)
    partial = partial_path(out)
    progress = []
    for _ in killed_runs(config, out, seed=0):
        with h5py.File(partial, "r") as h5:  # the killed file always reopens
            progress.append(int((h5["done"][...] == 1).sum()))
    assert progress, "the child finished before it could be killed"
    assert progress == sorted(progress)  # every kill kept the batches already done
    path = ur.run_config(config, progress=False)
    for site in ("conv1", "layer1.0.bn2", "layer3"):
        np.testing.assert_array_equal(ur.load_layer(path, site).values, ur.load_layer(ref, site).values,
                                      err_msg=site)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["status"] == "complete" and (h5["done"][...] == 1).all()
