"""The recording file: layout, provenance, NaN fill, plain-xarray reading, loaders."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import xarray as xr
import yaml

import unitrec as ur
from unitrec.files.layout import chunk_shape


@pytest.fixture
def recording(zoo, images, transform64, tmp_path):
    layers = ["conv1", "layer1.0.relu:1", {"name": "layer3", "units": "center"},
              {"name": "layer4", "pool": "mean"}, "fc", "fc@input"]
    return ur.record(zoo("resnet18"), images, layers, tmp_path / "acts.h5", transform=transform64,
                     batch_size=4, progress=False)


def test_plain_xarray_opens_it_lazily_with_labels(recording):
    tree = xr.open_datatree(recording, engine="h5netcdf")
    try:
        assert set(tree.children) == {"conv1", "layer1.0.relu:1", "layer3", "layer4", "fc", "fc@input"}
        act = tree["conv1"]["activation"]
        assert act.dims == ("stimulus", "channel", "y", "x")
        assert act.variable._in_memory is False  # lazy
        ours = ur.load_layer(recording, "conv1")
        np.testing.assert_array_equal(act.values, ours.values)
        assert list(act.stimulus.values) == list(ours.stimulus.values)
        assert tree["layer3"]["activation"].dims == ("stimulus", "unit")
        assert "channel" in tree["layer3"]["activation"].coords
    finally:
        tree.close()


def test_provenance_attributes(recording):
    with h5py.File(recording, "r") as h5:
        a = h5.attrs
        assert a["status"] == "complete" and a["model"] == "resnet18" and a["weights"] == "none"
        assert len(a["weights_sha256"]) == 64 and len(a["stimulus_set_sha256"]) == 64
        assert "Normalize" in a["preprocessing"]
        cfg = yaml.safe_load(a["config"])
        assert cfg["model"]["name"] == "resnet18" and cfg["record"]["batch_size"] == 4
        assert json.loads(a["library_versions"])["torch"]
        assert a["unitrec_version"] == ur.__version__
        assert h5["conv1/activation"].attrs["module_type"] == "Conv2d"
        # fill value NaN: an unwritten row can never pass for a ReLU zero
        assert np.isnan(h5["conv1/activation"].fillvalue)
        assert h5["conv1/activation"].compression is None


def test_load_layer_coords_and_errors(recording):
    da = ur.load_layer(recording, "conv1")
    assert da.sizes == {"stimulus": 10, "channel": 64, "y": 32, "x": 32}
    assert set(da.label.values) == {"cats", "dogs"}
    np.testing.assert_array_equal(da.rf_center_y.values, 2.0 * np.arange(32))
    assert list(da.attrs["rf_size"]) == [7, 7] and list(da.attrs["rf_stride"]) == [2, 2]
    assert da.attrs["model"] == "resnet18"
    with pytest.raises(ur.LayerNotFoundError, match="conv1"):
        ur.load_layer(recording, "conv2")
    with pytest.raises(KeyError):  # also a KeyError, as a Python user would expect
        ur.load_layer(recording, "nope")


def test_population_view(recording):
    pop = ur.load_population(recording)
    conv1 = ur.load_layer(recording, "conv1")
    assert pop.dims == ("stimulus", "unit")
    sel = pop.isel(unit=np.flatnonzero((pop.layer == "conv1").values))
    assert sel.sizes["unit"] == 64 * 32 * 32
    one = pop.isel(unit=int(np.flatnonzero(((pop.layer == "conv1") & (pop.channel == 5) &
                                            (pop.y == 3) & (pop.x == 7)).values)[0]))
    np.testing.assert_array_equal(one.values, conv1.sel(channel=5, y=3, x=7).values)
    fc = pop.isel(unit=np.flatnonzero((pop.layer == "fc").values))
    assert fc.sizes["unit"] == 1000 and (fc.y == -1).all()
    sub = ur.load_population(recording, ["layer3", "layer4"])
    assert sub.sizes["unit"] == 256 + 512


def test_open_recording_with_dask_chunks(recording):
    tree = ur.open_recording(recording, chunks={})
    try:
        import dask.array

        assert isinstance(tree["layer1.0.relu:1"]["activation"].data, dask.array.Array)
    finally:
        tree.close()


@pytest.mark.parametrize(
    "shape, batch, want",
    [((1000, 64, 112, 112), 32, (1, 64, 112, 112)),  # 3.2 MB per stimulus
     ((1000, 512, 7, 7), 32, (32, 512, 7, 7)),  # 100 KB: a whole batch is 3.2 MB
     ((1000, 1000), 32, (32, 1000)),
     ((1000, 64, 224, 224), 8, (1, 20, 224, 224)),  # one stimulus > 4 MiB: split channels
     ((5, 10), 32, (5, 10))],  # never more rows than stimuli
)
def test_chunks_are_a_few_mib_and_within_a_batch(shape, batch, want):
    got = chunk_shape(shape, batch, 4)
    assert got == want
    assert np.prod(got) * 4 <= 4 << 20
    assert batch % got[0] == 0 or got[0] == shape[0]
