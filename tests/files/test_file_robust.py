"""A recording survives what the world does to it (issue 22, items 5, 9-13, 24, 25).

Platforms without ``os.fdatasync`` or without opening folders, absurd settings, bit
flips in the file, a full disk and a read-only folder while merging, a notebook that
still holds the unfinished file, pandas, and zstd files on dask process workers.
Every test here failed on the code before.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import unitrec as ur
from unitrec.cli import main
from unitrec.files import writer
from unitrec.files.info import recording_info
from unitrec.files.layout import chunk_shape

from tests.conftest import Interrupting

REPO = Path(__file__).resolve().parents[2]
SITES = ("conv", "fc")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def _tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def _stimuli(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _expected(x: torch.Tensor) -> dict[str, np.ndarray]:
    model = _tiny()
    with torch.no_grad():
        conv = model.conv(x)
        return {"conv": conv.numpy(), "fc": model(x).numpy()}


def _record(out: Path, **kwargs) -> Path:
    return ur.record(_tiny(), _stimuli(), list(SITES), out, **{"batch_size": 4, "progress": False, **kwargs})


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("unitrec: error: ")
    return err


# ------------------------------------------------------------------ 5. fsync on macOS and Windows
def test_a_python_without_fdatasync_syncs_with_fsync(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "fdatasync", raising=False)  # macOS and Windows Pythons have none
    monkeypatch.setattr(writer, "_SYNC_BYTES", 1)  # sync after every batch, as past 64 MB
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    out = _record(tmp_path / "acts.h5")
    assert len(synced) >= 4  # the layout, each of the two batches, the finished file
    for site, want in _expected(_stimuli()).items():
        np.testing.assert_allclose(ur.load_layer(out, site).values, want, atol=1e-6)


def test_a_system_that_cannot_open_a_folder_still_records(tmp_path, monkeypatch):
    opened = os.open

    def windows_open(path, flags, *args):  # Windows: os.open of a folder is EACCES
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, flags, *args)

    monkeypatch.setattr(os, "open", windows_open)
    out = _record(tmp_path / "acts.h5")
    assert ur.load_layer(out, "fc").shape == (8, 3)


# ------------------------------------------------------------------ 9. absurd settings
def _config(tmp_path: Path, model: dict | None = None, **record) -> Path:
    cfg = {"model": {"name": "resnet18", **(model or {})},
           "stimuli": {"generate": {"kind": "gratings", "size": 16, "orientations": [0, 90]}},
           "preprocess": {"resize": None, "crop": None, "normalize": None}, "layers": ["conv1"],
           "record": {"progress": False, **record}, "output": str(tmp_path / "out" / "acts.h5")}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _within(seconds: float, fn):
    """`fn()`'s result (or its exception), failing if it takes longer than `seconds` (a hang)."""
    result: list = []

    def run():
        try:
            result.append(("value", fn()))
        except BaseException as exc:  # handed to the test
            result.append(("error", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"still running after {seconds} s"
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


def test_a_huge_batch_size_is_one_line_at_once_and_leaves_nothing(tmp_path, capsys):
    config = _config(tmp_path, batch_size=100_000_000_000)
    err = _one_line_error(capsys, _within(60, lambda: main(["run", str(config)])))
    assert "batch_size" in err and "65536" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    with pytest.raises(ur.ConfigError, match="batch_size must be an integer from 1 to 65536"):
        _within(60, lambda: _record(tmp_path / "acts.h5", batch_size=100_000_000_000))
    assert not list(tmp_path.glob("acts.h5*"))


def test_chunk_shape_of_a_huge_batch_size_returns_at_once():
    # before: a loop over 1e11 candidate divisors
    assert _within(10, lambda: chunk_shape((10, 64, 8, 8), 100_000_000_000, 4)) == (10, 64, 8, 8)
    assert chunk_shape((1000, 256, 16, 16), 90, 4) == (15, 256, 16, 16)  # the largest divisor within 4 MiB


def test_a_model_seed_torch_cannot_take_is_one_line(tmp_path, capsys):
    config = _config(tmp_path, model={"seed": 1e21})  # YAML 1.0e+21: a float with an integer value
    err = _one_line_error(capsys, _within(60, lambda: main(["run", str(config)])))
    assert "model.seed" in err
    with pytest.raises(ur.ConfigError, match="model seed must be an integer from"):
        ur.load_model("resnet18", seed=10**21)


# ------------------------------------------------------------------ 10. bit flips
def _chunk_bytes(path: Path, site: str) -> list[tuple[int, int]]:
    with h5py.File(path, "r") as h5:
        ds = h5[f"{site}/activation"]
        return [(info.byte_offset, info.size) for info in
                (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks()))]


def test_activation_chunks_carry_a_fletcher32_checksum(tmp_path):
    out = _record(tmp_path / "acts.h5")
    with h5py.File(out, "r") as h5:
        for site in SITES:
            assert h5[f"{site}/activation"].fletcher32
    for site in SITES:  # still read by plain xarray, without unitrec
        import xarray as xr

        with xr.open_dataset(out, group=site, engine="h5netcdf") as ds:
            np.testing.assert_allclose(ds["activation"].values, _expected(_stimuli())[site], atol=1e-6)


def test_a_flipped_bit_in_the_data_is_an_error_never_a_wrong_value(tmp_path):
    out = _record(tmp_path / "acts.h5")
    data, want = out.read_bytes(), _expected(_stimuli())
    rng = random.Random(0)
    checked = 0
    for site in SITES:
        for offset, size in _chunk_bytes(out, site):
            for _ in range(3):
                flipped = bytearray(data)
                flipped[offset + rng.randrange(size)] ^= 1 << rng.randrange(8)
                path = tmp_path / f"flip{checked}.h5"  # a new name each time: HDF5 shares open files by inode
                path.write_bytes(flipped)
                with pytest.raises(OSError, match="filter returned failure|checksum") as caught:
                    values = ur.load_layer(path, site).values
                    np.testing.assert_array_equal(values, want[site])  # (not reached: it must raise)
                assert len(str(caught.value).splitlines()) == 1
                checked += 1
    assert checked == 12


_FLIPS = r"""
import contextlib, io, json, random, sys, traceback
import numpy as np
import unitrec as ur
from unitrec.cli import main
from unitrec.files.info import recording_info

src, count, seed, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), np.load(sys.argv[4])
data = open(src, "rb").read()
rng = random.Random(seed)
report = {"bad": [], "read": 0, "refused": 0}
for i in range(count):
    offset, bit = rng.randrange(len(data)), rng.randrange(8)
    flipped = bytearray(data)
    flipped[offset] ^= 1 << bit
    path = f"{src}.flip{i}.h5"  # a new name each time: HDF5 shares an open file by inode
    open(path, "wb").write(flipped)
    print(i, offset, bit, file=sys.stderr, flush=True)  # the last line names a crash's flip
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["info", path])
    except BaseException:
        report["bad"].append([offset, bit, "info", traceback.format_exc(limit=-1)])
        continue
    lines = err.getvalue().strip().splitlines()
    if rc not in (0, 1) or (rc == 1 and len(lines) != 1) or (rc == 0 and lines and "error" in err.getvalue()):
        report["bad"].append([offset, bit, "info", err.getvalue()])
    for site in expected.files:
        for how in ("load_layer", "open_recording") if site == expected.files[0] else ("load_layer",):
            try:
                if how == "load_layer":
                    values = ur.load_layer(path, site).values
                else:
                    values = ur.open_recording(path)[site]["activation"].values
            except (ur.UnitrecError, OSError) as exc:  # a one-line error: h5py's for a chunk read lazily
                if len(str(exc).splitlines()) != 1:
                    report["bad"].append([offset, bit, how, str(exc)])
                report["refused"] += 1
                continue
            except BaseException:
                report["bad"].append([offset, bit, how, traceback.format_exc(limit=-1)])
                continue
            if how == "open_recording":
                values = values[:len(expected[site])]
            if values.shape != expected[site].shape or not np.array_equal(values, expected[site]):
                report["bad"].append([offset, bit, how, "wrong values"])
            else:
                report["read"] += 1
print(json.dumps(report))
"""


def test_unitrec_info_on_bit_flipped_files_is_a_description_or_one_line(tmp_path, capsys):
    """`unitrec info` (in this process) on seeded flips over the whole file: never a traceback."""
    out = _record(tmp_path / "acts.h5")
    data, rng = out.read_bytes(), random.Random(7)
    refused = 0
    for i in range(48):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flip{i}.h5"
        path.write_bytes(flipped)
        rc = main(["info", str(path)])
        err = capsys.readouterr().err.strip()
        assert rc in (0, 1) and "Traceback" not in err, err
        if rc == 1:
            assert len(err.splitlines()) == 1 and err.startswith("unitrec: error: "), err
            refused += 1
    assert 0 < refused < 48


@pytest.mark.slow
def test_bit_flips_anywhere_never_crash_nor_read_wrong_values(tmp_path):
    """Seeded flips over the whole file: `unitrec info` says one line or describes it; a load
    gives the recorded values or one line; no traceback, no segfault (hence a subprocess)."""
    out = _record(tmp_path / "acts.h5")
    np.savez(tmp_path / "expected.npz", **{s: ur.load_layer(out, s).values for s in SITES})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(ur.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _FLIPS, str(out), "64", "22", str(tmp_path / "expected.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"crashed ({done.returncode}) at flip: {done.stderr.strip().splitlines()[-1:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["bad"] == []
    assert report["read"] > 0 and report["refused"] > 0  # flips hit both what is read and what is checked


# ------------------------------------------------------------------ 12. a read-only folder
@contextlib.contextmanager
def _folder_to_make_read_only(tmp_path: Path):
    """A folder, and how to make it read-only: a tmpfs remounted read-only as root (root ignores
    permissions), chmod otherwise. Unmounted or made writable again at the end."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        try:
            yield folder, lambda: folder.chmod(0o555)
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_merge_in_a_read_only_folder_is_one_line(tmp_path, capsys):
    with _folder_to_make_read_only(tmp_path) as (folder, make_read_only):
        out = folder / "acts.h5"
        for i in range(2):
            _record(out, shard=(i, 2))
        out.unlink()  # the last shard stitched it; merge again, by hand, once the folder is read-only
        make_read_only()
        err = _one_line_error(capsys, main(["merge", str(out)]))
        assert "acts.h5.lock" in err and "writable" in err


# ------------------------------------------------------------------ 11. a full disk while merging --copy
@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file that leaves about `leave` bytes free on `disk`."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"x" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


_MERGE = r"""
import shutil, sys
from unitrec.cli import main
from unitrec.files.info import recording_info
if sys.argv[2] == "lie":  # the free-space check passes: the disk fills during the copy
    usage = shutil.disk_usage
    shutil.disk_usage = lambda p: usage(p)._replace(free=1 << 40)
sys.exit(main(["merge", sys.argv[1], "--copy"]))
"""


@pytest.mark.slow
def test_merge_copy_on_a_full_disk_is_one_line_and_leaves_the_shards_whole(small_disk, tmp_path):
    out = small_disk / "acts.h5"
    x = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # 64 KB a row of conv: 2 MB
    for i in range(2):
        ur.record(_tiny(), x, list(SITES), out, batch_size=4, progress=False, shard=(i, 2))
    want = {s: ur.load_layer(out, s).values for s in SITES}  # the virtual stitch of the last shard
    out.unlink()
    filler = _fill(small_disk, 1 << 20)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(ur.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    for how, message in (("check", "not enough space to copy the shards"),
                         ("lie", "no space left on device copying the shards")):
        done = subprocess.run([sys.executable, "-c", _MERGE, str(out), how], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 1, (how, done.returncode, done.stderr[-2000:])
        assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr[-2000:]  # one line
        assert message in done.stderr and "Exception ignored" not in done.stderr
        assert sorted(p.name for p in small_disk.iterdir()) == ["acts.h5.shards", "filler"]
    filler.unlink()
    assert main(["merge", str(out), "--copy"]) == 0
    for site in SITES:
        np.testing.assert_array_equal(ur.load_layer(out, site).values, want[site])


# ------------------------------------------------------------------ 25. zstd on dask process workers
@pytest.mark.slow
def test_zstd_recording_computes_on_a_cluster_of_process_workers(tmp_path):
    pytest.importorskip("hdf5plugin")
    distributed = pytest.importorskip("dask.distributed")
    out = _record(tmp_path / "acts.h5", compression="zstd")
    want = _expected(_stimuli())
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster):  # the worker is a fresh process: it never imported hdf5plugin
        da = ur.load_layer(out, "conv", chunks={})
        np.testing.assert_allclose(da.sum("stimulus").compute().values, want["conv"].sum(0), atol=1e-5)
        np.testing.assert_allclose(da.values, want["conv"], atol=1e-6)


_NO_PLUGIN = r"""
import sys
sys.modules["hdf5plugin"] = None  # not installed
import unitrec as ur
from unitrec.cli import main
from unitrec.files.info import recording_info
try:
    ur.load_layer(sys.argv[1], "conv").values
except ur.RecordingError as exc:
    print("load_layer:", exc)
try:
    ur.open_recording(sys.argv[1])
except ur.RecordingError as exc:
    print("open_recording:", exc)
"""


def test_reading_zstd_without_hdf5plugin_is_one_line_naming_it(tmp_path):
    pytest.importorskip("hdf5plugin")
    out = _record(tmp_path / "acts.h5", compression="zstd")
    (tmp_path / "no_plugins").mkdir()
    env = dict(os.environ, HDF5_PLUGIN_PATH=str(tmp_path / "no_plugins"),
               PYTHONPATH=os.pathsep.join([str(Path(ur.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _NO_PLUGIN, str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["load_layer", "open_recording"], done.stdout
    assert all("compressed with zstd" in line and "hdf5plugin" in line for line in lines)


# ------------------------------------------------------------------ 13. a notebook holding the unfinished file
class _StopsAt(Interrupting):
    """The stimuli, with a Ctrl-C when the loader reaches `stop_at`."""

    def __init__(self, stop_at: int) -> None:
        super().__init__(stop_at=stop_at)
        self.x = _stimuli()


_FINISH = r"""
import os, sys
import h5py, numpy as np
partial, final, values = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
with h5py.File(partial, "r+") as h5:  # what the rest of the run does: the other rows, done, complete
    for site in values.files:
        h5[site + "/activation"][4:] = values[site][4:]
    h5["done"][:] = 1
    h5.attrs["status"] = "complete"
    h5.attrs["finished"] = "2026-01-01T00:00:00+00:00"
    h5.attrs["history"] = "x" * 5000  # metadata that moves
os.replace(partial, final)
"""


def _unfinished(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(_tiny(), _StopsAt(6), list(SITES), out, batch_size=4, progress=False)
    partial = writer.partial_path(out)
    np.savez(tmp_path / "values.npz", **_expected(_stimuli()))
    return out, partial


def _finish_elsewhere(tmp_path: Path, partial: Path, out: Path) -> None:
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")  # as a run beside a notebook that set it
    subprocess.run([sys.executable, "-c", _FINISH, str(partial), str(out), str(tmp_path / "values.npz")], env=env,
                   check=True, timeout=120)


def test_a_lazy_array_of_the_partial_file_does_not_spoil_the_finished_one(tmp_path):
    out, partial = _unfinished(tmp_path)
    early = ur.load_layer(partial, "conv")  # lazy: the file stays open in xarray's cache
    assert early.sizes["stimulus"] == 4
    chunked = ur.load_layer(partial, "fc", chunks={})  # dask: the same cached file
    _finish_elsewhere(tmp_path, partial, out)
    assert recording_info(out)["status"] == "complete"
    want = _expected(_stimuli())
    for site in SITES:
        np.testing.assert_allclose(ur.load_layer(out, site).values, want[site], atol=1e-6)
    np.testing.assert_allclose(ur.open_recording(out)["fc"]["activation"].values, want["fc"], atol=1e-6)
    del early, chunked


def test_an_h5py_file_of_the_partial_file_is_one_line(tmp_path, capsys):
    out, partial = _unfinished(tmp_path)
    held = h5py.File(partial, "r", locking=False)
    try:
        _finish_elsewhere(tmp_path, partial, out)
        with pytest.raises(ur.RecordingError, match=r"still open in this Python as .*partial\.h5") as caught:
            ur.load_layer(out, "conv").values
        assert len(str(caught.value).splitlines()) == 1
        err = _one_line_error(capsys, main(["info", str(out)]))
        assert "close it" in err
    finally:
        held.close()
    assert recording_info(out)["status"] == "complete"  # closed: reads the finished file


# ------------------------------------------------------------------ 24. pandas
def test_the_readme_recipe_gives_pandas_labelled_columns(tmp_path):
    import re

    out = _record(tmp_path / "acts.h5")
    recipe = re.search(r"`(ur\.load_population\(path\)\.set_index\([^`]*\)\.to_pandas\(\))`",
                       (REPO / "docs" / "user-guide" / "analysis.md").read_text())
    assert recipe, "the docs (Analysis) say how to get labelled columns in pandas"
    df = eval(recipe.group(1), {"ur": ur, "path": out})
    assert list(df.columns.names) == ["layer", "channel", "y", "x"]
    np.testing.assert_allclose(df["fc"].values, _expected(_stimuli())["fc"], atol=1e-6)
    assert df.loc[:, ("conv", 2)].shape == (8, 64) and list(df.index) == [str(i) for i in range(8)]
