"""Real stimulus folders: broken files, odd pixel formats, nesting, unicode; and flat memory."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import unitrec as ur
from unitrec.cli import main


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    (root / "a").mkdir(parents=True)
    (root / "b" / "c").mkdir(parents=True)
    Image.fromarray(gray8).save(root / "a" / "gray8.png")
    Image.fromarray((gray8.astype(np.uint16) * 257)).save(root / "b" / "gray16.png")  # same image, 16-bit
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "a" / "same.png")
    Image.fromarray(rgb[::-1]).save(root / "b" / "c" / "same.png")  # duplicate basename
    Image.fromarray(rgb).convert("P").save(root / "ñandú_日本.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    rgba = np.dstack([rgb, rng.integers(0, 256, (40, 40), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


BROKEN = {"truncated.jpg", "empty.png", "text.jpg"}


def test_skip_policy_names_every_broken_file_and_keeps_the_list(zoo, messy, transform64, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = ur.record(zoo("resnet18"), messy, ["conv1"], tmp_path / "a.h5", transform=transform64,
                         batch_size=3, progress=False)
    warned = " ".join(str(w.message) for w in caught)
    for name in BROKEN:
        assert name in warned
    with h5py.File(path, "r") as h5:
        labels = [s.decode() for s in h5["stimulus"][...]]
        done = dict(zip(labels, h5["done"][...]))
        assert all(done[b] == 2 for b in BROKEN) and sum(v == 1 for v in done.values()) == 7
        assert all(b in h5.attrs["skipped"] for b in BROKEN)
    assert "notes.txt" not in labels
    assert {"a/same.png", "b/c/same.png", "ñandú_日本.png"} <= set(labels)
    da = ur.load_layer(path, "conv1")  # skipped rows are dropped, not NaN-polluting analyses
    assert da.sizes["stimulus"] == 7 and not np.isnan(da.values).any()
    assert ur.load_layer(path, "conv1", include_missing=True).sizes["stimulus"] == 10
    # the 16-bit copy (×257) gives exactly the 8-bit image's activations
    np.testing.assert_array_equal(da.sel(stimulus="a/gray8.png").values, da.sel(stimulus="b/gray16.png").values)


def test_raise_policy_is_one_line_naming_the_file(messy, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: resnet18}}\nstimuli: {{path: {messy}, on_error: raise}}\n"
                   "preprocess: {resize: 64, crop: 64}\nlayers: [conv1]\nrecord: {progress: false}\n"
                   "output: out.h5\n")
    assert main(["run", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot decode stimulus" in err
    assert any(b in err for b in BROKEN)


_MEMORY_CHILD = """
import sys, unitrec as ur
from tests.conftest import make_images
from unitrec.anatomy.preprocess import build_transform
folder = make_images(__import__("pathlib").Path(sys.argv[1]), n=int(sys.argv[2]), size=64)
model = ur.load_model("resnet18")
t = build_transform({"resize": None, "crop": None})
ur.record(model, folder, ["conv1"], sys.argv[1] + ".h5", transform=t, batch_size=32, progress=False)
# VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts from its parent's (pytest)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_stimuli(tmp_path):
    root = Path(__file__).resolve().parents[2]
    peaks = {}
    for n in (200, 2000):
        res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(tmp_path / f"s{n}"), str(n)],
                             capture_output=True, text=True, cwd=root, check=True)
        peaks[n] = int(res.stdout.split()[-1]) / 1024  # KiB → MiB
    size = (tmp_path / "s2000.h5").stat().st_size / 2**20
    assert size > 400  # the 2,000-image recording is far larger than the allowed growth
    assert peaks[2000] - peaks[200] < 150, peaks
