"""Sharding: shards of one job recorded apart (job arrays, torchrun), stitched into one file.

The contract: a stitched recording equals a one-process recording of the same job,
value for value, for every site kind; it opens like any recording, also after its
folder is moved; merging refuses shards that are missing, unfinished or foreign.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
import yaml

import unitrec as ur
from unitrec.anatomy.preprocess import build_transform
from unitrec.cli import main
from unitrec.files.layout import partial_path
from unitrec.files.shards import plan, shard_path

from tests.conftest import batches_done, make_images

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["conv1", {"name": "layer2", "units": "center"}, {"name": "layer3", "pool": "mean"}, "fc@input"]
SITES = ["conv1", "layer2", "layer3", "fc@input"]
RAW = {"resize": None, "crop": None, "normalize": "imagenet"}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """22 images (one undecodable), their one-process recording and their 3 shards, batch size 4.

    Tests work on copies of the sharded folder (``_copy``); a copy is also a move.
    """
    root = tmp_path_factory.mktemp("job")
    stim = make_images(root / "stim", n=21, size=32)
    (stim / "cats" / "img_05b.png").write_bytes(b"not an image")  # row 6: skipped in shard 0
    model = ur.load_model("resnet18")
    with pytest.warns(ur.UnitrecWarning, match="skipped"):
        ref = ur.record(model, stim, LAYERS, root / "one/acts.h5", transform=build_transform(RAW), batch_size=4,
                        progress=False)
    job = {"root": root, "stim": stim, "model": model, "ref": ref}
    job["returned"] = _shards(job, root / "sharded" / "acts.h5")
    return job


def _record(job, out: Path, shard=(0, 3), **kwargs) -> Path:
    return ur.record(job["model"], job["stim"], kwargs.pop("layers", LAYERS), out, transform=build_transform(RAW),
                     batch_size=kwargs.pop("batch_size", 4), progress=False, shard=shard, **kwargs)


def _shards(job, out: Path, count: int = 3) -> list[Path]:
    """Every shard in turn, as a job array's tasks would; shard 0 skips the undecodable image."""
    paths = []
    for i in range(count):
        with pytest.warns(ur.UnitrecWarning, match="skipped") if i == 0 else contextlib.nullcontext():
            paths.append(_record(job, out, (i, count)))
    return paths


def _copy(job, tmp_path: Path, name: str = "copy") -> Path:
    """A copy of the stitched recording and its shards folder; returns the copy's acts.h5."""
    shutil.copytree(job["root"] / "sharded", tmp_path / name)
    return tmp_path / name / "acts.h5"


def _same_as_one_process(path: Path, ref: Path) -> None:
    """Every site, coordinate and provenance key of a one-process run, through load_layer, xarray and h5py."""
    for site in SITES:
        a, b = ur.load_layer(ref, site, include_missing=True), ur.load_layer(path, site, include_missing=True)
        np.testing.assert_array_equal(b.values, a.values, err_msg=site)
        xr.testing.assert_identical(b.drop_attrs(), a.drop_attrs())
    one, stitched = xr.open_datatree(ref, engine="h5netcdf"), xr.open_datatree(path, engine="h5netcdf")
    for group in ["/", *(f"/{s}" for s in SITES)]:
        xr.testing.assert_equal(stitched[group].to_dataset(), one[group].to_dataset())
    with h5py.File(path, "r") as h5, h5py.File(ref, "r") as r:
        for key in ("run_id", "run_key", "stimulus_content_sha256", "skipped", "batch_size", "status",
                    "weights_sha256", "stimulus_set_sha256"):
            assert h5.attrs.get(key) == r.attrs.get(key), key
        for site in SITES:
            np.testing.assert_array_equal(h5[site]["activation"][...], r[site]["activation"][...])


# ------------------------------------------------------------------ plan
def test_shards_are_whole_batches_split_as_evenly_as_can_be():
    assert plan(22, 4, 3) == [(0, 8), (8, 16), (16, 22)]  # 6 batches: 2 + 2 + 2
    assert plan(22, 4, 4) == [(0, 8), (8, 16), (16, 20), (20, 22)]  # the first shards get the extra batch
    assert plan(10, 4, 1) == [(0, 10)]
    for n, b, k in [(1000, 32, 7), (5, 1, 5), (33, 32, 2)]:
        parts = plan(n, b, k)
        assert parts[0][0] == 0 and parts[-1][1] == n and len(parts) == k
        assert all(a % b == 0 and a < z for a, z in parts)
        assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
        assert plan(n, b, k) == parts  # the same on every machine
    with pytest.raises(ur.ConfigError, match="shard count cannot be larger than the number of stimuli"):
        plan(22, 4, 23)
    with pytest.raises(ur.ConfigError, match=r"6 batches.*use at most 6 shards or a smaller batch_size"):
        plan(22, 4, 7)


# ------------------------------------------------------------------ equal to one process
@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_stitched_equals_one_process_for_every_site_kind(job, tmp_path, copy):
    first = job["root"] / "sharded" / "acts.h5"
    assert job["returned"][:2] == [shard_path(first, 0, 3), shard_path(first, 1, 3)]  # waiting for the others
    assert job["returned"][2] == first  # the last one stitched
    out = _copy(job, tmp_path)
    with h5py.File(shard_path(out, 0, 3), "r") as h5:  # each shard is an ordinary recording of its rows
        assert h5.attrs["status"] == "complete" and h5["stimulus"].shape == (8,)
        assert json.loads(h5.attrs["shard"])["rows"] == [0, 8] and "shard" in json.loads(h5.attrs["run_key"])
        assert (h5["done"][...] == 2).sum() == 1  # the undecodable image, skipped by its shard
    if copy:
        assert ur.merge(out, copy=True) == out
    with h5py.File(out, "r") as h5:
        assert all(h5[s]["activation"].is_virtual != copy for s in SITES)
        assert h5.attrs["stitched"] == ("copy" if copy else "virtual")
        files = [s["file"] for s in json.loads(h5.attrs["shards"])]
        assert files == [f"acts.h5.shards/{i:05d}-of-00003.h5" for i in range(3)]
        if not copy:
            assert [v.file_name for v in h5["conv1"]["activation"].virtual_sources()] == files  # relative
    _same_as_one_process(out, job["ref"])
    pop = ur.load_population(out)
    np.testing.assert_array_equal(pop.values, ur.load_population(job["ref"]).values)
    assert ur.open_recording(out)["layer3"]["activation"].shape == (22, 256)
    lazy = ur.load_layer(out, "conv1", chunks={})  # dask blocks as in a one-process file, not one block
    assert lazy.data.chunksize == ur.load_layer(job["ref"], "conv1", chunks={}).data.chunksize
    np.testing.assert_array_equal(lazy.values, ur.load_layer(job["ref"], "conv1").values)
    if copy:
        shutil.rmtree(out.with_name("acts.h5.shards"))  # self-contained
        _same_as_one_process(out, job["ref"])


def test_the_same_job_after_stitching_records_nothing(job, tmp_path):
    out = _copy(job, tmp_path)
    stamp = out.stat().st_mtime_ns
    for shard in [(1, 3), None]:  # a rerun of one task, and the one-process run of the same job
        assert _record(job, out, shard) == out
    assert out.stat().st_mtime_ns == stamp
    with pytest.raises(ur.RecordingError, match="another job.*sites"):
        _record(job, out, (0, 3), layers=["conv1"])
    assert _record(job, out, (1, 3), overwrite=True) == out  # records shard 1 again, then stitches anew
    assert out.stat().st_mtime_ns != stamp
    _same_as_one_process(out, job["ref"])


def test_every_shard_keeps_the_batch_size_the_job_was_started_with(job, tmp_path):
    out = _copy(job, tmp_path)
    out.unlink()
    shard_path(out, 1, 3).unlink()
    with pytest.warns(ur.UnitrecWarning, match="recorded with batch_size 4; keeping it for every shard"):
        assert _record(job, out, (1, 3), batch_size=8) == out
    _same_as_one_process(out, job["ref"])


def test_tensor_stimuli_shard_too(job, tmp_path):
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ref = ur.record(job["model"], x, ["conv1", "fc"], tmp_path / "one.h5", batch_size=2, progress=False)
    out = tmp_path / "t" / "acts.h5"
    paths = [ur.record(job["model"], x, ["conv1", "fc"], out, batch_size=2, progress=False, shard=(i, 4))
             for i in range(4)]
    assert paths[-1] == out and [p.name for p in paths[:3]] == [f"{i:05d}-of-00004.h5" for i in range(3)]
    for site in ("conv1", "fc"):
        a, b = ur.load_layer(ref, site), ur.load_layer(out, site)
        np.testing.assert_array_equal(b.values, a.values)
        xr.testing.assert_identical(b.drop_attrs(), a.drop_attrs())  # labels 0 … 9 as in one process


# ------------------------------------------------------------------ moving, reading
def test_a_stitched_file_reads_after_its_folder_moved_from_another_cwd(job, tmp_path, monkeypatch):
    _copy(job, tmp_path, "a")
    moved = tmp_path / "elsewhere" / "b"
    moved.parent.mkdir()
    shutil.move(tmp_path / "a", moved)
    other = tmp_path / "cwd"
    other.mkdir()
    monkeypatch.chdir(other)
    path = Path("..") / "elsewhere" / "b" / "acts.h5"
    _same_as_one_process(path, job["ref"])
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["fc@input"]["activation"][...],
                                      ur.load_layer(job["ref"], "fc@input", include_missing=True).values)
    # without its shards the file is refused by name (HDF5 alone would read NaN)
    shutil.move(moved / "acts.h5.shards", tmp_path / "away")
    for read in (lambda: ur.load_layer(path, "conv1"), lambda: ur.open_recording(path)):
        with pytest.raises(ur.RecordingError, match=r"shard files that are not there: acts.h5.shards/00000-of-00003"
                                                    r".h5.*move the .shards folder together with the file"):
            read()


def test_info_says_how_a_file_was_sharded(job, tmp_path, capsys):
    out = _copy(job, tmp_path)
    assert main(["info", str(out), "--no-config"]) == 0
    said = capsys.readouterr().out
    assert "sharded:       3 shards, virtual: activations read from acts.h5.shards/" in said
    assert main(["info", str(shard_path(out, 1, 3)), "--no-config"]) == 0
    assert "shard:         1 of 3 (rows 8-16 of 22, batches of 4)" in capsys.readouterr().out
    assert main(["merge", str(out), "--copy"]) == 0
    assert "stitched 3 shards" in capsys.readouterr().out
    assert main(["info", str(out), "--no-config"]) == 0
    assert "sharded:       3 shards, copied into this file" in capsys.readouterr().out


# ------------------------------------------------------------------ refusals
def test_merge_refuses_missing_unfinished_and_foreign_shards_by_name(job, tmp_path):
    out = _copy(job, tmp_path)
    out.unlink()
    s0, s1, s2 = (shard_path(out, i, 3) for i in range(3))
    s2.rename(tmp_path / "kept.h5")
    with pytest.raises(ur.RecordingError, match=r"cannot stitch .*missing 00002-of-00003.h5 \(rows 16-22\)"):
        ur.merge(out)
    (tmp_path / "kept.h5").rename(partial_path(s2))  # as a killed task leaves it
    with pytest.raises(ur.RecordingError, match=r"unfinished 00002-of-00003.h5 \(rows 16-22\).*rerun"):
        ur.merge(out)
    partial_path(s2).rename(s2)
    s1.unlink()
    with pytest.raises(ur.RecordingError, match="this shard is recorded, but cannot stitch"):
        _record(job, out, (1, 3), dtype="float16")  # another job's shard 1
    assert s1.exists() and not out.exists()  # the last to finish does not stitch a foreign shard
    with pytest.raises(ur.RecordingError, match=r"00001-of-00003.h5 is from another job: it differs in dtype "
                                                r"\(this shard: float16; the others: float32\)"):
        ur.merge(out)
    assert not out.exists()


def test_two_shard_counts_for_one_output_are_refused(job, tmp_path):
    out = _copy(job, tmp_path)
    shutil.copy(shard_path(out, 0, 3), shard_path(out, 0, 2))  # left by an earlier job of 2 shards
    with pytest.raises(ur.RecordingError, match=r"one of 3 shards, but .* holds shards of another shard count: "
                                                r"00000-of-00002.h5; .*remove them"):
        _record(job, out, (1, 3))
    with pytest.raises(ur.RecordingError, match=r"2 different shard counts: 1 of 2 \(00000-of-00002.h5 …\), "
                                                r"3 of 3 \(00000-of-00003.h5 …\).*remove the set you do not want"):
        ur.merge(out)


def _one_line(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_shard_mistakes_are_one_line_errors(job, tmp_path, capsys, monkeypatch):
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": str(job["stim"])}, "preprocess": RAW,
           "layers": ["fc"], "record": {"batch_size": 4, "progress": False}, "output": str(tmp_path / "o.h5")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    run = ["run", str(tmp_path / "exp.yaml"), "--shard"]
    assert "--shard must be INDEX/COUNT, e.g. 3/64" in _one_line(capsys, run + ["3-64"])
    assert "shard index 4 is out of range for 4 shards: use 0 to 3" in _one_line(capsys, run + ["4/4"])
    assert "cannot be larger than the number of stimuli" in _one_line(capsys, run + ["0/23"])
    assert "use at most 6 shards or a smaller batch_size" in _one_line(capsys, run + ["0/7"])
    assert "no shards of" in _one_line(capsys, ["merge", str(tmp_path / "o.h5")])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert "cannot be combined with torchrun" in _one_line(capsys, run + ["0/2"])
    with pytest.raises(ur.ConfigError, match="cannot be combined with torchrun"):
        ur.record(job["model"], job["stim"], ["fc"], tmp_path / "p.h5", shard=(0, 2))
    monkeypatch.delenv("WORLD_SIZE")
    for bad in [(3, 3), (0, 0), "1/2", (1.0, 2)]:
        with pytest.raises(ur.ConfigError, match="shard"):
            ur.record(job["model"], job["stim"], ["fc"], tmp_path / "p.h5", shard=bad)


def test_torchrun_environment_gives_the_shard_the_gpu_and_the_bar(monkeypatch):
    from unitrec.recording.job import launched_shard

    assert launched_shard(None, "cuda", True) == (None, "cuda", True)  # not under torchrun
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launched_shard(None, "cuda", True) == (None, "cuda", True)  # torchrun with one process
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")  # second process of the second node
    assert launched_shard(None, "cuda", True) == ((3, 4), "cuda:1", False)
    assert launched_shard(None, "cuda:0", True) == ((3, 4), "cuda:0", False)  # an explicit index is kept
    assert launched_shard(None, "cpu", True) == ((3, 4), "cpu", False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_shard(None, "cuda", True) == ((0, 4), "cuda:0", True)  # rank 0 draws the bar


# ------------------------------------------------------------------ processes: job arrays, torchrun
_SLOW = '''
import os, time
import unitrec as ur

def _pause(*_):  # the same hook in every task (hooks are part of the job); the delay is the task's own
    time.sleep(float(os.environ.get("SLOW_FORWARD", "0")))

def build():
    model = ur.load_model("resnet18")
    model.register_forward_pre_hook(_pause)
    return model
'''


def _config(folder: Path, output: str, model: str = "resnet18", progress: bool = False) -> Path:
    cfg = {"model": {"name": model}, "stimuli": {"path": "stim"}, "preprocess": RAW, "layers": LAYERS,
           "record": {"batch_size": 2, "progress": progress}, "output": output}
    path = folder / f"{output.split('/')[0]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_a_job_array_with_a_task_killed_and_rerun_equals_one_process(tmp_path, monkeypatch):
    make_images(tmp_path / "stim", n=24, size=32)
    (tmp_path / "slowmodel.py").write_text(_SLOW)
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = ur.run_config(_config(tmp_path, "one/acts.h5", "slowmodel:build"), progress=False)
    cfg = _config(tmp_path, "array/acts.h5", "slowmodel:build")
    out = tmp_path / "array" / "acts.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO), SLURM_ARRAY_TASK_COUNT="3")
    # what a SLURM array task runs (see README), three tasks at once; task 1 is slowed down and killed
    command = f'exec {sys.executable} -m unitrec run {cfg} --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"'
    tasks = {i: subprocess.Popen(["bash", "-c", command], cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=env | {"SLURM_ARRAY_TASK_ID": str(i), "SLOW_FORWARD": "0.5" if i == 1 else "0"})
             for i in range(3)}
    victim = partial_path(shard_path(out, 1, 3))
    deadline = time.time() + 120
    while time.time() < deadline and tasks[1].poll() is None:
        if victim.exists() and batches_done(victim) >= 2:
            break
        time.sleep(0.05)
    assert tasks[1].poll() is None, "task 1 finished before it could be killed"
    tasks[1].send_signal(signal.SIGKILL)
    tasks[1].wait()
    for i in (0, 2):
        stdout, stderr = tasks[i].communicate(timeout=120)
        assert tasks[i].returncode == 0, stderr
        assert f"shard {i}/3" in stdout
    assert not out.exists()  # one shard is unfinished: nobody stitched
    with pytest.raises(ur.RecordingError, match="unfinished 00001-of-00003.h5"):
        ur.merge(out)
    with h5py.File(victim, "r") as h5:
        assert 0 < (h5["done"][...] == 1).sum() < 8
    rerun = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                           env=env | {"SLURM_ARRAY_TASK_ID": "1"}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "stitched from 3 shards" in rerun.stdout
    _same_as_one_process(out, ref)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu_equal_one_process(tmp_path):
    make_images(tmp_path / "stim", n=24, size=32)
    ref = ur.run_config(_config(tmp_path, "one/acts.h5"), progress=False)
    cfg = _config(tmp_path, "torchrun/acts.h5", progress=True)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | {"PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--tee", "3",
                          "-m", "unitrec", "run", str(cfg)], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[default0]:recording" in res.stderr and "[default1]:recording" not in res.stderr  # one bar: rank 0
    out = tmp_path / "torchrun" / "acts.h5"
    assert sorted(p.name for p in out.with_name("acts.h5.shards").iterdir()) == \
        ["00000-of-00002.h5", "00001-of-00002.h5"]
    assert "stitched from 2 shards" in res.stdout
    _same_as_one_process(out, ref)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "unitrec",
                          "run", str(cfg), "--shard", "0/2"], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode != 0 and "unitrec: error: --shard (shard=) cannot be combined with torchrun" in res.stderr


_SUBMITIT = """
import sys
import submitit
import unitrec as ur

executor = submitit.AutoExecutor(folder="runs/logs")
executor.update_parameters(timeout_min=60, slurm_array_parallelism=64)
jobs = executor.map_array(lambda i: ur.run_config("imagenet.yaml", shard=(i, 2)), range(2))
print([str(job.result()) for job in jobs])
"""


@pytest.mark.slow
def test_submitit_three_lines_from_the_readme(tmp_path):
    pytest.importorskip("submitit")
    make_images(tmp_path / "stim", n=24, size=32)
    ref = ur.run_config(_config(tmp_path, "one/acts.h5"), progress=False)
    _config(tmp_path, "runs/acts.h5").rename(tmp_path / "imagenet.yaml")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path[1:]]))
    res = subprocess.run([sys.executable, "-c", _SUBMITIT], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "runs" / "acts.h5"
    assert str(out) in res.stdout  # the last job to finish stitched
    _same_as_one_process(out, ref)
