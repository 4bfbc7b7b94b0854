"""Compact storage without plugins: ``keepbits`` (BitRound + shuffle + gzip) and ``compression: gzip``.

The contract: a keepbits file holds exactly the BitRounded float32 of a full-precision
recording of the same job (round to nearest, ties to even; NaN and inf unchanged);
it and a gzip file read with every HDF5/netCDF reader without any filter plugin;
keepbits is part of the run key; summaries see the unrounded values; shards stitch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import unitrec as ur
from unitrec.files.info import recording_info
from unitrec.files.storage import KEEPBITS_ATTR, bitround

from tests.conftest import Interrupting

KEEPBITS = 10
SRC = str(Path(ur.__file__).parents[1])


# ------------------------------------------------------------------ BitRound itself
def _reference(x: np.ndarray, keepbits: int) -> np.ndarray:
    """BitRound by arithmetic, not bits: the nearest multiple (ties to even) of the value's quantum,
    2^(e-keepbits) for a value in [2^e, 2^(e+1)), subnormals on the smallest normal binade's grid."""
    with np.errstate(invalid="ignore"):  # signalling NaNs
        x64 = x.astype(np.float64)
    finite = np.isfinite(x64) & (x64 != 0)
    _, exp = np.frexp(np.where(finite, x64, 1.0))
    quantum = np.ldexp(1.0, np.maximum(exp - 1, -126) - keepbits)
    with np.errstate(over="ignore"):
        rounded = (np.round(x64 / quantum) * quantum).astype(np.float32)  # np.round: ties to even
    return np.where(finite, rounded, x)


def _bits(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def _edge_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    powers = np.ldexp(np.float32(1), np.arange(-126, 128)).astype(np.float32)
    near = np.concatenate([powers, np.nextafter(powers, np.float32(0)), np.nextafter(powers, np.float32(np.inf))])
    ties = np.array([1 + 2.0 ** -(k + 1) for k in range(1, 23)] + [1 + 3 * 2.0 ** -(k + 1) for k in range(1, 22)],
                    dtype=np.float32)  # exactly half way for keepbits = k
    subnormal = np.concatenate([np.arange(1, 64, dtype=np.uint32), rng.integers(1, 1 << 23, 500, dtype=np.uint32),
                                [(1 << 23) - 1]]).astype(np.uint32).view(np.float32)
    special = np.array([0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFC00001, 0x7F800000, 0xFF800000,
                        0x00000000, 0x80000000], dtype=np.uint32).view(np.float32)  # NaNs, ±inf, ±0
    normal = (rng.standard_normal(20000) * np.exp(rng.uniform(-80, 80, 20000))).astype(np.float32)
    values = np.concatenate([near, ties, subnormal, normal, np.float32(np.finfo(np.float32).max)[None]])
    return np.concatenate([values, -values, special])


@pytest.mark.parametrize("keepbits", [1, 2, 5, 7, 10, 16, 22, 23])
def test_bitround_rounds_to_nearest_even_keeping_nan_and_inf(keepbits):
    x = _edge_values()
    got = bitround(x.copy(), keepbits)
    special = ~np.isfinite(x)
    np.testing.assert_array_equal(_bits(got)[special], _bits(x)[special])  # NaN payloads and ±inf, bit for bit
    np.testing.assert_array_equal(_bits(got)[~special], _bits(_reference(x, keepbits))[~special])
    assert np.all(np.signbit(got[x == 0]) == np.signbit(x[x == 0])) and np.all(got[x == 0] == 0)
    tiny = np.finfo(np.float32).tiny
    normal = np.isfinite(x) & (np.abs(x) >= tiny) & np.isfinite(got)
    err = np.abs(got[normal].astype(np.float64) - x[normal])
    assert np.all(err <= np.abs(x[normal].astype(np.float64)) * 2.0 ** -(keepbits + 1))  # the relative bound
    sub = np.isfinite(x) & (np.abs(x) < tiny)
    assert np.all(np.abs(got[sub].astype(np.float64) - x[sub]) <= 2.0 ** -(127 + keepbits))
    assert np.all(np.isfinite(got[np.abs(x) <= 2.0 ** 127]))  # only values by float32's largest reach inf
    low_bits = np.uint32((1 << (23 - keepbits)) - 1)
    assert not np.any(_bits(got)[~special] & low_bits)  # the dropped bits are zero: what gzip saves


def test_ties_go_to_the_even_neighbour():
    one_and_half_ulp = np.array([1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, -(1 + 2.0 ** -11)], dtype=np.float32)
    np.testing.assert_array_equal(bitround(one_and_half_ulp, 10), np.float32([1, 1 + 2.0 ** -9, -1]))


# ------------------------------------------------------------------ recordings
_MODEL_SEED = 0


def _model() -> nn.Module:
    torch.manual_seed(_MODEL_SEED)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3)).eval()


def _stimuli(n: int = 12) -> torch.Tensor:
    x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    x[:, :, 0, 0] *= 1e3  # large values beside small ones
    return x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    model, x = _model(), _stimuli()
    layers = ["0", {"name": "2", "keep": "both"}]
    out = {}
    for name, kwargs in {"plain": {}, "keepbits": {"keepbits": KEEPBITS}, "gzip": {"compression": "gzip"},
                         "gzip16": {"compression": "gzip", "dtype": "float16"}}.items():
        out[name] = ur.record(model, x, layers, root / f"{name}.h5", batch_size=4, progress=False, **kwargs)
    return out


def _want(files, site: str, keepbits: int | None = KEEPBITS) -> np.ndarray:
    with h5py.File(files["plain"]) as h5:
        plain = h5[f"{site}/activation"][...]
    return bitround(plain, keepbits) if keepbits else plain


def test_keepbits_file_is_the_bitrounded_full_precision_recording(files):
    for site in ("0", "2"):
        with h5py.File(files["keepbits"]) as h5:
            ds = h5[f"{site}/activation"]
            got = ds[...]
            assert (ds.compression, ds.compression_opts, ds.shuffle, ds.fletcher32) == ("gzip", 1, True, True)
            assert int(ds.attrs[KEEPBITS_ATTR]) == KEEPBITS and ds.dtype == np.float32
        np.testing.assert_array_equal(_bits(got), _bits(_want(files, site)))
        assert not np.array_equal(got, _want(files, site, None))  # it did round
    with h5py.File(files["keepbits"]) as h5:
        assert int(h5.attrs["keepbits"]) == KEEPBITS and '"keepbits": 10' in h5.attrs["run_key"]
    assert os.path.getsize(files["keepbits"]) < os.path.getsize(files["plain"])


def test_gzip_file_holds_the_same_values(files):
    with h5py.File(files["gzip"]) as h5, h5py.File(files["gzip16"]) as h16:
        assert (h5["0/activation"].compression, h5["0/activation"].shuffle) == ("gzip", True)
        assert KEEPBITS_ATTR not in h5["0/activation"].attrs and "keepbits" not in h5.attrs
        np.testing.assert_array_equal(_bits(h5["0/activation"][...]), _bits(_want(files, "0", None)))
        assert h16["0/activation"].dtype == np.float16 and h16["0/activation"].compression == "gzip"
        np.testing.assert_array_equal(h16["0/activation"][...], _want(files, "0", None).astype(np.float16))


def test_summaries_are_computed_from_the_unrounded_values(files):
    keepbits, plain = ur.load_summary(files["keepbits"], "2"), ur.load_summary(files["plain"], "2")
    for name in ("mean", "std", "min", "max", "top_response"):
        np.testing.assert_array_equal(keepbits[name].values, plain[name].values)


def test_info_says_compression_and_keepbits_per_site(files):
    sites = {p: {s["name"]: (s.get("compression"), s.get("keepbits")) for s in recording_info(files[p])["sites"]}
             for p in ("plain", "keepbits", "gzip")}
    assert sites["plain"]["0"] == (None, None)
    assert sites["keepbits"]["0"] == sites["keepbits"]["2"] == ("gzip", KEEPBITS)
    assert sites["gzip"]["0"] == ("gzip", None)
    assert recording_info(files["keepbits"])["keepbits"] == KEEPBITS


# ------------------------------------------------------------------ other readers, no plugin anywhere
_READ = r"""
import hashlib, sys
sys.modules["hdf5plugin"] = None  # no filter plugin: only what HDF5 and netCDF-C have built in
import numpy as np
path, site, reader = sys.argv[1:]
if reader == "h5py":
    import h5py
    values = h5py.File(path, "r")[site + "/activation"][...]
elif reader == "netCDF4":
    import netCDF4
    var = netCDF4.Dataset(path).groups[site].variables["activation"]
    values = np.ma.getdata(var[:])
    if "_QuantizeBitRoundNumberOfSignificantBits" in var.ncattrs():
        assert var.quantization()[1] == "BitRound", var.quantization()
else:
    import xarray as xr
    values = xr.open_datatree(path, engine=reader.split("-")[1])[site].activation.values
print(values.shape, values.dtype, hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest())
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}  # as a fresh shell has it
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest()


@pytest.mark.parametrize("reader", ["h5py", "netCDF4", "xarray-h5netcdf", "xarray-netcdf4"])
def test_python_readers_read_keepbits_and_gzip_files_without_plugins(files, reader):
    if reader != "h5py":
        pytest.importorskip({"netcdf4": "netCDF4"}.get(reader.split("-")[-1], reader.split("-")[-1]))
    for name, keepbits in (("keepbits", KEEPBITS), ("gzip", None)):
        want = _want(files, "0", keepbits)
        done = subprocess.run([sys.executable, "-c", _READ, str(files[name]), "0", reader], capture_output=True,
                              text=True, env=_env(), timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[-1] == _digest(want), (name, reader)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install netcdf-bin hdf5-tools; CI installs them)")
    return path


@pytest.mark.parametrize("name", ["keepbits", "gzip"])
def test_h5dump_reads_the_values_bit_for_bit_without_plugins(files, name, tmp_path):
    h5dump = _tool("h5dump")
    raw = tmp_path / "values.bin"
    done = subprocess.run([h5dump, "-d", "/0/activation", "-b", "LE", "-o", str(raw), str(files[name])],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-1000:]
    want = _want(files, "0", KEEPBITS if name == "keepbits" else None)
    np.testing.assert_array_equal(np.fromfile(raw, dtype="<u4"), _bits(want).ravel())


@pytest.mark.parametrize("name", ["keepbits", "gzip"])
def test_ncdump_reads_the_file_and_names_the_quantization(files, name):
    ncdump = _tool("ncdump")
    header = subprocess.run([ncdump, "-h", "-s", str(files[name])], capture_output=True, text=True, env=_env(),
                            timeout=120)
    assert header.returncode == 0, header.stderr[-1000:]
    assert "activation:_Shuffle = \"true\"" in header.stdout and "activation:_DeflateLevel = 1" in header.stdout
    assert (f"_QuantizeBitRoundNumberOfSignificantBits = {KEEPBITS}" in header.stdout) == (name == "keepbits")
    data = subprocess.run([ncdump, "-p", "9,17", "-v", "/0/activation", str(files[name])], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert data.returncode == 0, data.stderr[-1000:]
    text = data.stdout.split("activation =", 1)[1].split(";", 1)[0]
    values = np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float32)
    want = _want(files, "0", KEEPBITS if name == "keepbits" else None)
    np.testing.assert_array_equal(_bits(values), _bits(want).ravel())  # 9 digits give float32 back exactly


# ------------------------------------------------------------------ the job
def test_keepbits_is_in_the_run_key_a_resume_with_another_is_refused(tmp_path):
    model, out = _model(), tmp_path / "acts.h5"
    with pytest.raises(KeyboardInterrupt):
        ur.record(model, Interrupting(n=24, stop_at=13), ["0"], out, batch_size=4, progress=False, keepbits=8)
    assert ur.files.layout.partial_path(out).exists()
    with pytest.raises(ur.RecordingError, match=r"keepbits \(file: 8; now: 12\)"):
        ur.record(model, Interrupting(n=24), ["0"], out, batch_size=4, progress=False, keepbits=12)
    with pytest.raises(ur.RecordingError, match=r"keepbits \(file: 8; now: none\)"):
        ur.record(model, Interrupting(n=24), ["0"], out, batch_size=4, progress=False)
    ur.record(model, Interrupting(n=24), ["0"], out, batch_size=4, progress=False, keepbits=8)  # the same job resumes
    with pytest.raises(ur.RecordingError, match="keepbits"):  # a finished file: the same
        ur.record(model, Interrupting(n=24), ["0"], out, batch_size=4, progress=False, keepbits=9)
    whole = ur.record(model, Interrupting(n=24), ["0"], tmp_path / "whole.h5", batch_size=4, progress=False)
    np.testing.assert_array_equal(_bits(ur.load_layer(out, "0").values),
                                  _bits(bitround(ur.load_layer(whole, "0").values.copy(), 8)))


@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_stitched_shards_with_keepbits_equal_one_process(tmp_path, copy):
    model, x = _model(), _stimuli(20)
    one = ur.record(model, x, ["0", "2"], tmp_path / "one.h5", batch_size=4, progress=False, keepbits=KEEPBITS)
    out = tmp_path / "sharded.h5"
    for i in range(3):
        ur.record(model, x, ["0", "2"], out, batch_size=4, progress=False, keepbits=KEEPBITS, shard=(i, 3))
    if copy:
        assert ur.merge(out, copy=True, overwrite=True) == out
    with h5py.File(out) as h5, h5py.File(one) as ref:
        assert h5.attrs["stitched"] == ("copy" if copy else "virtual") and int(h5.attrs["keepbits"]) == KEEPBITS
        assert h5.attrs["run_id"] == ref.attrs["run_id"]
        for site in ("0", "2"):
            ds = h5[f"{site}/activation"]
            assert int(ds.attrs[KEEPBITS_ATTR]) == KEEPBITS
            if copy:  # the copy keeps the shards' filters
                assert (ds.compression, ds.shuffle, ds.fletcher32) == ("gzip", True, True)
            np.testing.assert_array_equal(_bits(ds[...]), _bits(ref[f"{site}/activation"][...]))
    assert all(s["compression"] == "gzip" and s["keepbits"] == KEEPBITS for s in recording_info(out)["sites"])


def test_keepbits_mistakes_are_one_line(tmp_path):
    model, x = _model(), _stimuli(4)
    with pytest.raises(ur.ConfigError, match="keepbits rounds float32 values.*float16") as err:
        ur.record(model, x, ["0"], tmp_path / "a.h5", progress=False, keepbits=10, dtype="float16")
    assert "\n" not in str(err.value)
    for bad in (0, 24, 10.0, True):
        with pytest.raises(ur.ConfigError, match="keepbits must be an integer from 1 to 23"):
            ur.record(model, x, ["0"], tmp_path / "a.h5", progress=False, keepbits=bad)
    with pytest.raises(ur.ConfigError, match="compression must be None, 'gzip' or 'zstd'"):
        ur.record(model, x, ["0"], tmp_path / "a.h5", progress=False, compression="lz4")


def test_the_config_takes_keepbits_and_gzip():
    from unitrec.schema import RecordSpec

    assert RecordSpec(keepbits=7).keepbits == 7 and RecordSpec(compression="gzip").compression == "gzip"
    for bad in (0, 24, "7"):
        with pytest.raises(ValueError):
            RecordSpec(keepbits=bad)


def test_keepbits_with_zstd_uses_zstd_with_shuffle(tmp_path):
    pytest.importorskip("hdf5plugin")
    path = ur.record(_model(), _stimuli(4), ["0"], tmp_path / "z.h5", progress=False, keepbits=6,
                     compression="zstd")
    with h5py.File(path) as h5:
        ds = h5["0/activation"]
        plist = ds.id.get_create_plist()
        assert ds.shuffle and 32015 in [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    assert [(s["compression"], s["keepbits"]) for s in recording_info(path)["sites"]] == [("zstd", 6)]


# ------------------------------------------------------------------ zstd without hdf5plugin: one line
_NO_PLUGIN = r"""
import sys
sys.modules["hdf5plugin"] = None  # not installed
import unitrec as ur
from unitrec.files.info import recording_info
for name, read in [("open_recording", lambda p: ur.open_recording(p)),
                   ("load_layer", lambda p: ur.load_layer(p, "0").values),
                   ("load_population", lambda p: ur.load_population(p).values),
                   ("load_summary", lambda p: ur.load_summary(p, "2")["mean"].values),
                   ("info", lambda p: recording_info(p)["sites"][0]["compression"])]:
    for path in sys.argv[1:]:
        try:
            result = read(path)
            print(name, "ok", result if name == "info" else "")
        except ur.RecordingError as exc:
            print(name, "error", exc)
"""


def test_every_reader_of_a_zstd_file_without_hdf5plugin_says_one_line(tmp_path):
    pytest.importorskip("hdf5plugin")
    model, x = _model(), _stimuli(8)
    kwargs = dict(batch_size=4, progress=False, compression="zstd")
    one = ur.record(model, x, ["0", {"name": "2", "keep": "both"}], tmp_path / "one.h5", **kwargs)
    sharded = tmp_path / "sharded.h5"
    for i in range(2):
        ur.record(model, x, ["0", {"name": "2", "keep": "both"}], sharded, shard=(i, 2), **kwargs)
    done = subprocess.run([sys.executable, "-c", _NO_PLUGIN, str(one), str(sharded)], capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 10, done.stdout
    for line in lines:
        name, outcome = line.split()[:2]
        if name in ("open_recording", "load_layer", "load_population"):
            assert outcome == "error" and "compressed with zstd" in line and "pip install hdf5plugin" in line \
                and "import hdf5plugin" in line, line
        else:  # summaries are never compressed, and info reads no data: both work, info names the compression
            assert outcome == "ok", line
            assert name != "info" or line.endswith("zstd")


def test_keepbits_takes_a_numpy_integer(tmp_path):
    import unitrec as ur

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = ur.record(model, x, ["0"], tmp_path / "k.h5", keepbits=np.arange(12)[10], progress=False)
    with h5py.File(out) as h5:
        assert int(h5.attrs["keepbits"]) == 10


def test_ncdump_dumps_a_whole_recording_of_image_files(tmp_path):
    from tests.conftest import make_images

    ncdump = _tool("ncdump")
    folder = make_images(tmp_path / "images", n=4, size=16)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)).eval()
    out = ur.record(model, folder, ["0"], tmp_path / "acts.h5", keepbits=KEEPBITS, progress=False,
                    transform=ur.build_transform({"resize": None, "crop": None}))
    done = subprocess.run([ncdump, str(out)], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]  # file_sha256 is variable-length: netCDF-C dumps it
    with h5py.File(out) as h5:
        digests = [d.decode() if isinstance(d, bytes) else d for d in h5["file_sha256"][...]]
    assert all(len(d) == 64 for d in digests) and digests[0] in done.stdout
