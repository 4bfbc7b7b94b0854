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
    assert da["orientation"].attrs["units"] == "degree"  # CF units reach the coordinates
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


# ------------------------------------------------------------------ readers × storage
_READERS = {
    "h5py": "import h5py; print(h5py.File(PATH)['0/activation'][:].shape)",
    "h5netcdf": "import xarray as xr; print(xr.open_datatree(PATH, engine='h5netcdf')['0'].activation.values.shape)",
    "netCDF4": "import netCDF4; print(netCDF4.Dataset(PATH).groups['0'].variables['activation'][:].shape)",
    "xarray-netcdf4": "import xarray as xr; print(xr.open_datatree(PATH, engine='netcdf4')['0'].activation.values.shape)",
}


def _read(reader: str, path, env=None) -> int:
    import os
    import subprocess
    import sys

    code = _READERS[reader].replace("PATH", repr(str(path)))
    clean = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}  # as a fresh shell has it
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **(env or {})})
    if res.returncode == 0:
        assert res.stdout.strip() == "(4, 2, 6, 6)"
    return res.returncode


@pytest.fixture(scope="module")
def storages(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    model = nn.Sequential(nn.Conv2d(3, 2, 3)).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, kwargs in {"float32": {}, "float16": {"dtype": "float16"}, "zstd": {"compression": "zstd"}}.items():
        out[name] = ur.record(model, x, ["0"], root / f"{name}.h5", progress=False, **kwargs)
    return out


@pytest.mark.slow  # a fresh interpreter per reader and storage
def test_which_reader_reads_which_storage(storages):
    """The table in the docs (The file, "Reading the file elsewhere"), reader by reader."""
    pytest.importorskip("netCDF4")
    import hdf5plugin

    plugins = {"HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}
    for reader in _READERS:
        assert _read(reader, storages["float32"]) == 0, reader
    assert _read("h5py", storages["float16"]) == 0 and _read("h5netcdf", storages["float16"]) == 0
    assert _read("netCDF4", storages["float16"]) != 0  # netCDF has no half-float type: netCDF-C crashes
    assert _read("xarray-netcdf4", storages["float16"]) != 0
    assert _read("h5py", storages["zstd"]) != 0  # no filter without hdf5plugin ...
    for reader in ("h5py", "h5netcdf", "netCDF4"):  # ... found through HDF5_PLUGIN_PATH
        assert _read(reader, storages["zstd"], plugins) == 0, reader
    assert _read("netCDF4", storages["zstd"]) == 0  # the netCDF4 wheel brings its own Zstd filter


def test_unitrec_reads_every_storage_and_info_warns_about_float16(storages, capsys):
    from unitrec.cli import main

    for path in storages.values():
        assert ur.load_layer(path, "0").shape == (4, 2, 6, 6)
    main(["info", str(storages["float16"]), "--no-config"])
    assert "netCDF-C readers" in capsys.readouterr().out
    main(["info", str(storages["zstd"]), "--no-config"])
    assert "HDF5_PLUGIN_PATH" in capsys.readouterr().out


# ------------------------------------------------------------------ converters
def test_to_rsatoolbox_keeps_every_label_and_gives_our_rdm(gratings_file):
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from unitrec.convert import to_rsatoolbox

    da = ur.load_layer(gratings_file, "1")
    data = to_rsatoolbox(da)
    assert data.measurements.shape == (4, 4 * 14 * 14)
    assert list(data.obs_descriptors["stimulus"]) == list(da.stimulus.values)
    np.testing.assert_array_equal(data.obs_descriptors["orientation"], da.orientation.values)
    assert {"channel", "y", "x", "rf_center_y", "rf_center_x"} <= set(data.channel_descriptors)
    np.testing.assert_array_equal(data.channel_descriptors["channel"][:3], [0, 0, 0])  # C order: x fastest
    np.testing.assert_array_equal(data.channel_descriptors["x"][:3], [0, 1, 2])
    assert data.descriptors["site"] == "1" and data.descriptors["run_id"]
    theirs = rsatoolbox.rdm.calc_rdm(data, method="correlation").get_matrices()[0]
    np.testing.assert_allclose(theirs, A.rdm(da).values, atol=1e-12)
    pop = to_rsatoolbox(ur.load_population(gratings_file))
    assert set(pop.channel_descriptors["layer"]) == {"1", "3"}


def test_to_brainscore_is_presentation_by_neuroid_with_brainscore_ids(gratings_file):
    from unitrec.convert import to_brainscore

    da = ur.load_layer(gratings_file, "1")
    assembly = to_brainscore(da)
    assert assembly.dims == ("presentation", "neuroid") and assembly.dtype == np.float32
    np.testing.assert_array_equal(assembly.values, da.values.reshape(4, -1))  # C order: x fastest
    np.testing.assert_array_equal(assembly["stimulus_id"].values, da.stimulus.values)
    np.testing.assert_array_equal(assembly["orientation"].values, da.orientation.values)
    assert str(assembly["stimulus_path"].values[0]).startswith(str(gratings_file.parent / "stim"))
    assert list(assembly["neuroid_id"].values[:2]) == ["Sequential.1.0", "Sequential.1.1"]
    np.testing.assert_array_equal(assembly["channel_x"].values[:3], [0, 1, 2])
    np.testing.assert_array_equal(assembly["channel"].values[[0, 14 * 14]], [0, 1])
    pop = to_brainscore(ur.load_population(gratings_file), model="net")
    assert len(set(pop["neuroid_id"].values)) == pop.sizes["neuroid"] == 4 * 14 * 14 + 3
    assert pop["neuroid_id"].values[-1] == "net.3.2" and pop["neuroid_num"].values[-1] == 2
    np.testing.assert_array_equal(pop.values, ur.load_population(gratings_file).values)


def test_to_brainscore_passes_brainscores_own_validation(gratings_file):
    pytest.importorskip("boto3")  # brainscore_core's brainio package imports it
    brainio = pytest.importorskip("brainscore_core.supported_data_standards.brainio")
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
    from brainscore_core.supported_data_standards.brainio.upload_validator import validate_assembly

    from unitrec.convert import to_brainscore

    assembly = to_brainscore(ur.load_population(gratings_file))
    assert isinstance(assembly, NeuroidAssembly) and brainio is not None
    assert validate_assembly(assembly)
    assert assembly.sel(layer="3").shape == (4, 3)


def test_a_site_opened_alone_has_every_stimulus_coordinate(gratings_file, tmp_path):
    for path in (gratings_file, _stitched_gratings(gratings_file, tmp_path)):
        alone = xr.open_dataset(path, group="1", engine="h5netcdf")
        want = ur.load_layer(path, "1")
        np.testing.assert_array_equal(alone["stimulus_id"].astype(str).values, want["stimulus"].values)
        np.testing.assert_array_equal(alone["orientation"].values, want["orientation"].values)
        site = xr.open_datatree(path, engine="h5netcdf")["1"]
        assert {"orientation", "spatial_frequency", "stimulus_id"} <= set(site.coords)
        assert "stimulus_id" not in want.coords  # load_layer has them as the stimulus index already


def _stitched_gratings(single, tmp_path):
    """The same recording in 2 shards, stitched."""
    stim = single.parent / "stim"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)).eval()
    transform = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    for i in range(2):
        path = ur.record(model, stim, ["1", "3"], tmp_path / "st.h5", batch_size=2, progress=False,
                         transform=transform, shard=(i, 2))
    return path


def test_to_brainscore_takes_the_stimulus_id_column_and_the_rename_is_warned(tmp_path):
    from unitrec.convert import to_brainscore

    root = tmp_path / "stim"
    ur.stimuli.gratings(root, size=8, orientations=[0, 90], spatial_frequencies=[2], phases=[0])
    labels = ur.stimuli.find_stimuli(root)
    (root / "metadata.csv").write_text("path,stimulus_id,image_id\n" + "".join(
        f"{lab},bs{i},{10 + i}\n" for i, lab in enumerate(labels)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()).eval()
    transform = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    with pytest.warns(ur.UnitrecWarning, match="'stimulus_id' as 'meta_stimulus_id'"):
        path = ur.record(model, root, ["1"], tmp_path / "a.h5", progress=False, transform=transform)
    da = ur.load_layer(path, "1")
    assembly = to_brainscore(da)
    assert list(assembly["stimulus_id"].values) == ["bs0", "bs1"]  # the column, not the file names
    assert list(assembly["stimulus_file"].values) == labels
    assert "meta_stimulus_id" not in assembly.coords
    chosen = to_brainscore(da, stimulus_id="image_id")
    assert list(chosen["stimulus_id"].values) == ["10", "11"]
    assert list(to_brainscore(da, stimulus_id="stimulus_id")["stimulus_id"].values) == ["bs0", "bs1"]
    with pytest.raises(ur.ConfigError, match=r"stimulus_id='imageid' is not a stimulus coordinate.*image_id"):
        to_brainscore(da, stimulus_id="imageid")
    with pytest.raises(ur.ConfigError, match="repeats ids"):
        to_brainscore(da.assign_coords(image_id=("stimulus", [5, 5])), stimulus_id="image_id")
