"""The file as other readers see it: CF metadata, text coordinates, plain xarray opens."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import unitrec as ur
from unitrec import analysis as A


@pytest.fixture(scope="module")
def gratings_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    ur.stimuli.gratings(root / "stim", size=16, orientations=[0, 45, 90, 135], spatial_frequencies=[2],
                        phases=[0])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)).eval()
    transform = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    return ur.record(model, root / "stim", ["1", "3"], root / "a.h5", batch_size=2, progress=False,
                     transform=transform)


def test_text_coordinates_are_fixed_width_unicode_so_plots_work(gratings_file):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    da = ur.load_layer(gratings_file, "3")
    assert da["stimulus"].dtype.kind == "U"
    da.isel(channel=0).plot()  # raised "data of type object" on object coordinates
    A.rdm(da).plot()
    pop = ur.load_population(gratings_file)
    assert pop["layer"].dtype.kind == "U" and pop["source"].dtype.kind == "U"


def test_cf_metadata(gratings_file):
    with h5py.File(gratings_file) as h5:
        assert h5.attrs["Conventions"] == "CF-1.10"
        assert "unitrec" in h5.attrs["title"] and "recorded" in h5.attrs["history"]
        assert h5["orientation"].attrs["units"] == "degree"
        assert h5["spatial_frequency"].attrs["long_name"].startswith("spatial frequency")
        assert h5["1/rf_center_y"].attrs["units"] == "1"
        assert "response of 1 (ReLU, output)" in h5["1/activation"].attrs["long_name"]
        for ds in (h5["done"], h5["1/activation"]):  # CF wants NC_CHAR, not NC_STRING
            kind = ds.attrs.get_id("coordinates").dtype
            assert h5py.check_string_dtype(kind).length is not None, ds.name


def test_a_plain_xarray_open_decodes_the_coordinates_and_units(gratings_file):
    tree = xr.open_datatree(gratings_file, engine="h5netcdf")
    assert "orientation" in tree.to_dataset().coords  # root: listed in done's coordinates
    site = tree["1"].to_dataset()
    assert {"rf_center_y", "rf_center_x"} <= set(site.coords)
    assert site["activation"].attrs["units"] == "1"


def test_stitched_history_says_so(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3)).eval()
    x = torch.randn(8, 3, 8, 8)
    for i in range(2):
        path = ur.record(model, x, ["0"], tmp_path / "a.h5", batch_size=2, progress=False, shard=(i, 2))
    with h5py.File(path) as h5:
        lines = h5.attrs["history"].splitlines()
    assert lines[0].endswith("recorded") and lines[1].endswith("stitched from 2 shards (virtual)")
