"""No silent wrong result: a finished or unfinished file is only ever continued by the same job.

Each test here failed on the code before issue 8: a different job "succeeding" on a
finished file, an image edited between a crash and the resume, values that depended on
the batch size of the resume, float16 overflow, a full disk, a crash while the file
was being created, loader workers outliving a killed run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import unitrec as ur
from unitrec.cli import main
from unitrec.files.layout import creating_path, partial_path
from unitrec.files.writer import RecordingFile

from tests.conftest import Interrupting, batches_done, float32_sum_bound, make_images

REPO = Path(__file__).resolve().parents[2]
SITES = ["conv1", "layer1.0.bn2", "fc"]


def _values(path: Path, sites=("conv1", "layer1.0.bn2", "fc")) -> dict[str, np.ndarray]:
    return {s: ur.load_layer(path, s).values for s in sites}


# ------------------------------------------------------------------ 1. a finished file
def _config(tmp_path: Path, **changes) -> Path:
    cfg = {
        "model": {"name": "resnet18", "seed": 0},
        "stimuli": {"path": "stim"},
        "preprocess": {"resize": 64, "crop": 64, "normalize": "imagenet"},
        "layers": ["layer1", "layer3", "fc"],
        "record": {"batch_size": 4, "progress": False},
        "output": "out.h5",
    }
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / f"exp{len(list(tmp_path.glob('exp*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_another_job_on_a_finished_file_is_refused_naming_what_differs(tmp_path, capsys):
    make_images(tmp_path / "stim", n=6, size=48)
    assert main(["run", str(_config(tmp_path))]) == 0
    out = tmp_path / "out.h5"
    stamp = out.stat().st_mtime_ns
    capsys.readouterr()
    other = _config(tmp_path, model={"name": "resnet34", "seed": 5},
                    preprocess={"resize": 32, "crop": 32, "normalize": None}, layers=["layer2"])
    assert main(["run", str(other)]) == 1
    err = capsys.readouterr().err
    assert "already holds a finished recording of another job" in err and "Traceback" not in err
    for what in ("model (file: resnet18; now: resnet34)", "weights", "preprocessing",
                 "sites (file: layer1, layer3, fc; now: layer2)", "--overwrite"):
        assert what in err, what
    assert out.stat().st_mtime_ns == stamp  # the old file is kept as it was
    # the same job: nothing to record, and no timing figures of an earlier run
    assert main(["run", str(_config(tmp_path))]) == 0
    said = capsys.readouterr().out
    assert "nothing to record" in said and "images/s" not in said
    assert out.stat().st_mtime_ns == stamp
    # --overwrite replaces it
    assert main(["run", str(other), "--overwrite"]) == 0
    assert ur.load_layer(out, "layer2").sizes["stimulus"] == 6
    assert "images/s" in capsys.readouterr().out


def test_same_job_from_python_returns_the_file_untouched_and_another_is_refused(zoo, tmp_path):
    m = zoo("resnet18")
    out = ur.record(m, Interrupting(n=8), ["conv1"], tmp_path / "a.h5", progress=False)
    stamp = out.stat().st_mtime_ns
    assert ur.record(m, Interrupting(n=8), ["conv1"], out, progress=False) == out
    assert out.stat().st_mtime_ns == stamp
    for kwargs, what in [({"layers": ["fc"]}, "sites"), ({"dtype": "float16"}, "dtype"),
                         ({"model": ur.load_model("resnet18", seed=3)}, "weights")]:
        args = {"model": m, "layers": ["conv1"], **kwargs}
        with pytest.raises(ur.RecordingError, match=f"another job.*{what}"):
            ur.record(args.pop("model"), Interrupting(n=8), args.pop("layers"), out, progress=False, **args)
    assert out.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------ 2. stimulus files
def _crash_then(tmp_path: Path, transform, edit) -> Path:
    """Record 12 images, crash after the first batches, let `edit` change the folder, resume."""
    stim = make_images(tmp_path / "stim", n=12, size=48)
    m = ur.load_model("resnet18")
    out = tmp_path / "out.h5"
    real, calls = RecordingFile.write, {"n": 0}

    def crash_on_third(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(self, *args)

    RecordingFile.write = crash_on_third
    try:
        with pytest.raises(ur.RecordingError):  # the writer thread's interruption stops the run
            ur.record(m, stim, ["conv1"], out, transform=transform, batch_size=4, progress=False)
    finally:
        RecordingFile.write = real
    with h5py.File(partial_path(out), "r") as h5:
        assert (h5["done"][...] == 1).sum() == 8
    edit(stim)
    return ur.record(m, stim, ["conv1"], out, transform=transform, batch_size=4, progress=False)


def test_an_image_edited_in_place_after_it_was_recorded_is_caught_and_named(tmp_path, transform64):
    def repaint(stim: Path) -> None:  # same size in bytes, other pixels
        target = stim / "cats" / "img_02.png"
        data = bytearray(target.read_bytes())
        data[-40:-20] = bytes(20)  # damages the image data but keeps the length
        time.sleep(0.01)
        target.write_bytes(bytes(data))

    with pytest.raises(ur.RecordingError, match=r"1 stimulus file\(s\) changed.*cats/img_02.png.*--overwrite"):
        _crash_then(tmp_path, transform64, repaint)


def test_a_copy_with_new_timestamps_resumes_and_an_unrecorded_edit_is_fine(tmp_path, transform64):
    def touch_all_and_edit_a_later_one(stim: Path) -> None:
        for p in stim.rglob("*.png"):
            os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # as a plain cp would
        make_images(tmp_path / "fresh", n=12, size=48, seed=9)  # row 11 is not recorded yet
        shutil.copy(tmp_path / "fresh" / "dogs" / "img_11.png", stim / "dogs" / "img_11.png")

    path = _crash_then(tmp_path, transform64, touch_all_and_edit_a_later_one)
    want = ur.record(ur.load_model("resnet18"), tmp_path / "stim", ["conv1"], tmp_path / "ref.h5",
                     transform=transform64, batch_size=4, progress=False)
    np.testing.assert_array_equal(ur.load_layer(path, "conv1").values, ur.load_layer(want, "conv1").values)
    with h5py.File(path, "r") as h5:
        assert len(h5.attrs["stimulus_content_sha256"]) == 64
        assert all(len(d) == 64 for d in h5["file_sha256"][...])


def test_a_finished_file_notices_an_edited_image_too(zoo, images, transform64, tmp_path):
    out = ur.record(zoo("resnet18"), images, ["conv1"], tmp_path / "a.h5", transform=transform64, progress=False)
    target = images / "cats" / "img_00.png"
    other = images / "dogs" / "img_01.png"
    target.write_bytes(other.read_bytes())
    with pytest.raises(ur.RecordingError, match="changed after their responses were recorded.*img_00"):
        ur.record(zoo("resnet18"), images, ["conv1"], out, transform=transform64, progress=False)


def test_new_or_missing_files_are_named(zoo, images, transform64, tmp_path):
    out = ur.record(zoo("resnet18"), images, ["conv1"], tmp_path / "a.h5", transform=transform64, progress=False)
    (images / "cats" / "img_00.png").rename(images / "cats" / "zz.png")
    with pytest.raises(ur.RecordingError, match=r"stimuli \(1 new, e.g. cats/zz.png, 1 gone, e.g. cats/img_00"):
        ur.record(zoo("resnet18"), images, ["conv1"], out, transform=transform64, progress=False)


# ------------------------------------------------------------------ 3. batch size
def test_a_resume_with_another_batch_size_equals_the_uninterrupted_run(zoo, tmp_path):
    m = zoo("resnet18")
    whole = ur.record(m, Interrupting(), SITES, tmp_path / "whole.h5", batch_size=8, progress=False)
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(m, Interrupting(stop_at=10), SITES, out, batch_size=8, progress=False)
    with pytest.warns(ur.UnitrecWarning, match="started with batch_size 8; keeping it"):
        path = ur.record(m, Interrupting(), SITES, out, batch_size=32, progress=False)
    for site, want in _values(whole).items():
        np.testing.assert_array_equal(_values(path)[site], want, err_msg=site)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["batch_size"] == 8


def test_values_do_not_depend_on_where_a_run_was_interrupted(zoo, tmp_path):
    m = zoo("resnet18")
    whole = _values(ur.record(m, Interrupting(), SITES, tmp_path / "whole.h5", batch_size=5, progress=False))
    for stop_at in (1, 6, 20):  # in the first block, the second, the last (short) one
        out = tmp_path / f"cut{stop_at}.h5"
        with pytest.raises(KeyboardInterrupt):
            ur.record(m, Interrupting(stop_at=stop_at), SITES, out, batch_size=5, progress=False)
        got = _values(ur.record(m, Interrupting(), SITES, out, batch_size=5, progress=False))
        for site in SITES:
            np.testing.assert_array_equal(got[site], whole[site], err_msg=f"cut at {stop_at}, {site}")


def test_the_last_short_block_is_computed_at_full_batch_size(zoo, tmp_path):
    m = zoo("resnet18")
    sizes = []
    handle = m.conv1.register_forward_hook(lambda mod, args, out: sizes.append(out.shape[0]))
    try:
        ur.record(m, Interrupting(n=10), ["conv1"], tmp_path / "a.h5", batch_size=4, progress=False)
    finally:
        handle.remove()
    assert sizes[1:] == [4, 4, 4]  # after the dry trace: 4 + 4 + (2 padded to 4)


def test_a_bad_image_keeps_its_neighbours_in_their_slots(zoo, images, transform64, tmp_path):
    """Rows next to an undecodable image are computed in the same batch as in a clean set."""
    m = zoo("resnet18")
    clean = ur.record(m, images, ["fc"], tmp_path / "clean.h5", transform=transform64, batch_size=4,
                      progress=False)
    (images / "cats" / "img_02.png").write_bytes(b"not an image")
    with pytest.warns(ur.UnitrecWarning, match="skipped: cannot decode"):
        dirty = ur.record(m, images, ["fc"], tmp_path / "dirty.h5", transform=transform64, batch_size=4,
                          progress=False)
    got, want = ur.load_layer(dirty, "fc"), ur.load_layer(clean, "fc")
    assert "cats/img_02.png" not in got.stimulus.values
    np.testing.assert_array_equal(got.values, want.sel(stimulus=got.stimulus.values).values)


# ------------------------------------------------------------------ 4. float16
class Loud(torch.nn.Module):
    """Outputs values float16 cannot hold (±70000) in two of its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.head = torch.nn.Identity()
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([70000.0, -70000.0, 1.0, 65519.0]))

    def forward(self, x):
        return self.head(self.conv(x))


def test_float16_overflow_is_counted_warned_and_stored(tmp_path):
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ur.record(Loud(), x, ["conv", "head", {"name": "conv", "as": "conv_pooled", "pool": "mean"}],
                        tmp_path / "a.h5", dtype="float16", batch_size=4, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, ur.UnitrecWarning)]
    per_site = 2 * 6 * 16  # two channels × 6 stimuli × 16 positions
    assert sorted(said) == sorted(
        f"{site}: {count} values exceeded float16's range (±65504) and are stored as ±inf (counted in the "
        "site's 'float16_overflow' attribute); record it as float32"
        for site, count in [("conv", per_site), ("head", per_site), ("conv_pooled", 12)])
    da = ur.load_layer(out, "conv")
    assert np.isinf(da.values[:, :2]).all() and np.isfinite(da.values[:, 2:]).all()
    assert da.values[0, 3, 0, 0] == 65504  # rounds down, not an overflow
    with h5py.File(out, "r") as h5:
        assert h5["conv/activation"].attrs["float16_overflow"] == per_site
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ur.record(Loud(), x, ["conv"], tmp_path / "b.h5", progress=False)  # float32: nothing to say


# ------------------------------------------------------------------ 5. a full disk
def _tmpfs(path: Path, megabytes: int) -> None:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}M", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, 6)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


_FILLER = '''
import torch
class Filler(torch.nn.Module):
    """A tiny conv net that fills the disk at its 4th forward pass, as another program might."""
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.calls = 0
    def forward(self, x):
        self.calls += 1
        import os, shutil
        if self.calls == 4 and os.environ.get("FILL"):
            import time
            time.sleep(2)  # the writer thread's turn: batches 1-3, queued before this pass, reach the disk
            with open(os.path.join(os.environ["FILL"], "filler"), "wb", buffering=0) as fh:
                try:
                    while True:
                        fh.write(b"x" * 4096)
                except OSError:
                    pass  # the disk is full
        return self.conv(x)
def build():
    torch.manual_seed(0)
    return Filler()
'''


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_space(small_disk, tmp_path):
    make_images(tmp_path / "stim", n=24, size=16)  # 65 KB a row, 1.6 MB in all: fits in 6 MB
    (tmp_path / "fillmod.py").write_text(_FILLER)
    cfg = {"model": {"name": "fillmod:build"}, "stimuli": {"path": str(tmp_path / "stim")},
           "preprocess": {"resize": None, "crop": None, "normalize": None}, "layers": ["conv"],
           "record": {"batch_size": 4, "progress": False}, "output": str(small_disk / "acts.h5")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", FILL=str(small_disk))
    run = [sys.executable, "-m", "unitrec", "run", str(tmp_path / "exp.yaml")]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1, first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith("unitrec: error: no space left on device writing")
    assert "Traceback" not in first.stderr and "resume" in first.stderr
    with h5py.File(partial_path(small_disk / "acts.h5"), "r") as h5:  # whole, with the batches done
        kept = int((h5["done"][...] == 1).sum())
    assert 8 <= kept < 24
    (small_disk / "filler").unlink()
    del env["FILL"]  # no more filling
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "recorded 24 of 24" in again.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        import fillmod
        model = fillmod.build()
    finally:
        sys.path.remove(str(tmp_path))
    from unitrec.stimuli import find_stimuli, load_rgb
    from torchvision.transforms.functional import to_tensor

    labels = find_stimuli(tmp_path / "stim")
    x = torch.stack([to_tensor(load_rgb(tmp_path / "stim" / lab)) for lab in labels])
    with torch.no_grad():  # recorded in another process (other threads, blocks of 4): float32 sums of 3·3·3 + 1 terms
        want = model.conv(x)
        bound = float32_sum_bound(torch.nn.functional.conv2d(x.abs(), model.conv.weight.abs(),
                                                             model.conv.bias.abs(), padding=1), 3 * 3 * 3 + 1)
    got = ur.load_layer(small_disk / "acts.h5", "conv").values
    assert (np.abs(got.astype(np.float64) - want.numpy()) <= bound).all()


def test_a_recording_that_cannot_fit_is_refused_before_it_starts(small_disk, zoo):
    x = torch.randn(64, 3, 64, 64)
    with pytest.raises(ur.RecordingError, match=r"needs about \d+\.\d MB more and .* has \d\.\d MB free"):
        ur.record(zoo("resnet18"), x, ["conv1"], small_disk / "a.h5", progress=False)
    assert list(small_disk.iterdir()) == []


# ------------------------------------------------------------------ 6. creating the file
def test_a_crash_while_creating_the_file_leaves_nothing_to_trip_over(zoo, tmp_path, monkeypatch):
    out = tmp_path / "a.h5"
    real, made = RecordingFile._create_site, []

    def interrupted(h5, site, *args):
        made.append(site.key)
        if len(made) == 2:
            raise KeyboardInterrupt  # Ctrl-C with half the sites made
        real(h5, site, *args)

    monkeypatch.setattr(RecordingFile, "_create_site", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        ur.record(zoo("resnet18"), Interrupting(n=6), SITES, out, progress=False)
    assert not partial_path(out).exists() and not creating_path(out).exists()
    monkeypatch.undo()
    creating_path(out).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(88))  # what a SIGKILL leaves: 96 bytes
    path = ur.record(zoo("resnet18"), Interrupting(n=6), SITES, out, progress=False)
    assert ur.load_layer(path, "fc").sizes["stimulus"] == 6 and not creating_path(out).exists()


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + bytes(88), b"hello"])
def test_a_damaged_partial_file_is_one_line_with_the_way_out(tmp_path, images, content, capsys):
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": str(images)},
           "preprocess": {"resize": 32, "crop": 32}, "layers": ["conv1"], "output": str(tmp_path / "a.h5"),
           "record": {"progress": False}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    partial_path(tmp_path / "a.h5").write_bytes(content)
    assert main(["run", str(tmp_path / "exp.yaml")]) == 1
    err = capsys.readouterr().err
    assert "is damaged" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["run", str(tmp_path / "exp.yaml"), "--overwrite"]) == 0


def test_a_partial_from_an_older_format_is_refused(zoo, tmp_path):
    out = tmp_path / "a.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(zoo("resnet18"), Interrupting(stop_at=9), ["conv1"], out, batch_size=4, progress=False)
    with h5py.File(partial_path(out), "r+") as h5:
        h5.attrs["format_version"] = "1"
    with pytest.raises(ur.RecordingError, match="another version of unitrec.*--overwrite"):
        ur.record(zoo("resnet18"), Interrupting(), ["conv1"], out, batch_size=4, progress=False)


# ------------------------------------------------------------------ 7. workers
_CHILD = """
import sys, unitrec as ur
ur.run_config(sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_sigkill_with_workers_frees_the_output_at_once(tmp_path):
    make_images(tmp_path / "stim", n=400, size=64)
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": "stim"},
           "preprocess": {"resize": None, "crop": None, "normalize": "imagenet"},
           "layers": ["conv1", "layer2"], "record": {"batch_size": 4, "num_workers": 2},
           "output": "out/acts.h5"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out" / "acts.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "exp.yaml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        if partial_path(out).exists() and batches_done(partial_path(out)) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the child finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    start = time.time()
    with open(out.with_name(out.name + ".lock"), "a+") as fh:
        while True:  # the workers must not hold the lock: it is free within a moment
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                assert time.time() - start < 1.5, "orphaned loader workers still hold the lock"
                time.sleep(0.02)
        fcntl.flock(fh, fcntl.LOCK_UN)
    with h5py.File(partial_path(out), "r+"):  # nor HDF5's lock on the partial file
        pass


@pytest.mark.slow
def test_sigkill_while_the_file_is_created_then_rerun(tmp_path):
    make_images(tmp_path / "stim", n=8, size=32)
    sites = [r.name for r in ur.list_layers(ur.load_model("resnet18"), (3, 32, 32))]
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": "stim"},
           "preprocess": {"resize": None, "crop": None, "normalize": "imagenet"},
           "layers": sites, "record": {"batch_size": 4}, "output": "out/acts.h5"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out" / "acts.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    caught = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "exp.yaml")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not creating_path(out).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        caught += not partial_path(out).exists()
        if partial_path(out).exists():  # created before the kill landed: it must be whole
            with h5py.File(partial_path(out), "r") as h5:
                assert all(s in h5 for s in sites)
    assert caught, "never killed while the layout was being made"
    path = ur.run_config(tmp_path / "exp.yaml", progress=False)
    assert ur.load_layer(path, "fc").sizes["stimulus"] == 8 and not creating_path(out).exists()


# ------------------------------------------------------------------ names and messages
def test_a_site_named_like_a_metadata_column_is_refused_before_any_file(zoo, images, transform64, tmp_path):
    labels = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    (images / "metadata.csv").write_text("path,layer1\n" + "".join(f"{lab},{i}\n" for i, lab in enumerate(labels)))
    out = tmp_path / "a.h5"
    with pytest.raises(ur.ConfigError, match="'layer1' would be stored under a stimulus coordinate.*as:"):
        ur.record(zoo("resnet18"), images, ["layer1"], out, transform=transform64, progress=False)
    assert not partial_path(out).exists()
    path = ur.record(zoo("resnet18"), images, [{"name": "layer1", "as": "layer1_out"}], out,
                     transform=transform64, progress=False)
    assert list(ur.load_layer(path, "layer1_out").layer1.values) == list(range(10))


def test_an_output_path_that_is_a_folder_is_one_line(tmp_path, images, capsys):
    (tmp_path / "out.h5").mkdir()
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": str(images)}, "layers": ["conv1"],
           "preprocess": {"resize": 32, "crop": 32}, "output": str(tmp_path / "out.h5")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "exp.yaml")]) == 1
    err = capsys.readouterr().err
    assert "is a folder; give a file path inside it" in err and len(err.strip().splitlines()) == 1


def test_skipped_images_are_one_line_each_on_the_command_line(tmp_path, images, capsys):
    (images / "cats" / "broken.png").write_bytes(b"not an image")
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": str(images)}, "layers": ["conv1"],
           "preprocess": {"resize": 32, "crop": 32}, "output": str(tmp_path / "a.h5"),
           "record": {"progress": False}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "exp.yaml")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"unitrec: warning: skipped: cannot decode stimulus {images / 'cats' / 'broken.png'}: "
                   "not a recognised image format"]


def test_a_set_where_nothing_decodes_says_so_with_the_first_reason(tmp_path):
    (tmp_path / "stim").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "stim" / name).write_bytes(b"")
    with pytest.raises(ur.StimulusError, match=r"none of the 2 stimuli could be decoded; the first: .*a.png: file is empty"):
        ur.record(ur.load_model("resnet18"), tmp_path / "stim", ["conv1"], tmp_path / "a.h5", progress=False)


def test_a_changed_layer_entry_under_the_same_name_is_named(zoo, tmp_path):
    out = ur.record(zoo("resnet18"), Interrupting(n=8), ["conv1", {"name": "layer2", "units": "center"}],
                    tmp_path / "a.h5", progress=False)
    with pytest.raises(ur.RecordingError, match=r'sites \(file: \{"name":"layer2","units":"center"\}; '
                                                r'now: \{"name":"layer2","pool":"mean"\}\)'):
        ur.record(zoo("resnet18"), Interrupting(n=8), ["conv1", {"name": "layer2", "pool": "mean"}], out,
                  progress=False)


def test_overwrite_never_deletes_a_file_that_is_not_a_recording(zoo, images, tmp_path):
    target = images / "cats" / "img_00.png"
    before = target.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(ur.RecordingError, match="is not an HDF5 file; unitrec will not overwrite it"):
            ur.record(zoo("resnet18"), Interrupting(n=4), ["conv1"], target, progress=False, overwrite=overwrite)
    assert target.read_bytes() == before


class Other(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(3, 32, 32)


def test_another_dataset_class_of_the_same_length_is_another_job(zoo, tmp_path):
    out = ur.record(zoo("resnet18"), Interrupting(n=8), ["conv1"], tmp_path / "a.h5", progress=False)
    with pytest.raises(ur.RecordingError, match=r"stimuli \(file: Interrupting, 8 stimuli.*now: Other, 8 stimuli"):
        ur.record(zoo("resnet18"), Other(), ["conv1"], out, progress=False)


def test_cuda_without_a_gpu_and_odd_values_are_one_line_config_errors(zoo, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ur.ConfigError, match="no usable CUDA GPU"):
        ur.record(zoo("resnet18"), Interrupting(n=4), ["conv1"], tmp_path / "a.h5", device="cuda", progress=False)
    from unitrec.schema import RecordSpec, parse

    for bad in (True, "8", 8.5):
        with pytest.raises(ur.ConfigError, match="batch_size"):
            parse(RecordSpec, {"batch_size": bad})
    with pytest.raises(ur.ConfigError, match="NUL"):
        ur.record(zoo("resnet18"), Interrupting(n=4), [{"name": "conv1", "as": "a\0b"}], tmp_path / "b.h5",
                  progress=False)


def test_metadata_columns_named_like_site_coordinates_are_prefixed(zoo, images, transform64, tmp_path):
    labels = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    (images / "metadata.csv").write_text("path,source,rf_center_x\n" + "".join(f"{lab},coco,{i}\n"
                                                                            for i, lab in enumerate(labels)))
    with pytest.warns(ur.UnitrecWarning, match="'source' as 'meta_source', 'rf_center_x' as 'meta_rf_center_x'"):
        path = ur.record(zoo("resnet18"), images, ["conv1"], tmp_path / "a.h5", transform=transform64,
                         progress=False)
    da = ur.load_layer(path, "conv1")
    assert da.rf_center_x.dims == ("x",) and list(da.meta_source.values) == ["coco"] * 10
