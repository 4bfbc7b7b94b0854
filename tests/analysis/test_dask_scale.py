"""Analysis at scale: a stitched recording read as dask arrays and analysed on a dask.distributed cluster.

The contract: every ``unitrec.analysis`` function gives on a LocalCluster, over the dask
arrays of ``ur.load_layer(path, site, chunks={})``, what it gives on the same values in
numpy; streamed blocks follow the file's chunks; float16 recordings are summed in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import unitrec as ur
from unitrec import analysis as ua
from unitrec.analysis import _units
from unitrec.analysis._units import as_population, unit_blocks

distributed = pytest.importorskip("distributed")

SITES = ["1", "3", "6"]  # conv map (channel, y, x), a smaller conv map, the linear output (channel)
N = 12


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


def _sharded(out, dtype: str = "float32", scale: float = 1.0):
    """3 shards of 12 tensor stimuli, batch size 2; the last shard stitches."""
    x = torch.randn(N, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * scale
    for i in range(3):
        path = ur.record(_model(), x, SITES, out, batch_size=2, progress=False, shard=(i, 3), dtype=dtype)
    assert path == out
    return out


@pytest.fixture(scope="module")
def stitched(tmp_path_factory):
    return _sharded(tmp_path_factory.mktemp("dask") / "acts.h5")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def _orientation(da: xr.DataArray) -> xr.DataArray:
    return da.assign_coords(orientation=("stimulus", np.tile([0.0, 45.0, 90.0, 135.0], N // 4)))


def _pair(path, site):
    """The site as dask arrays (the file's chunks) and as numpy."""
    lazy = _orientation(ur.load_layer(path, site, chunks={}))
    eager = _orientation(ur.load_layer(path, site).load())
    return lazy, eager


def test_a_stitched_site_loads_as_dask_blocks_of_the_shards_chunks(stitched):
    import dask.array

    lazy = ur.load_layer(stitched, "1", chunks={})
    assert isinstance(lazy.data, dask.array.Array)
    assert lazy.data.chunks[0] == (2,) * 6  # a chunk per batch of 2 as the shards store it, not one block
    np.testing.assert_array_equal(lazy.values, ur.load_layer(stitched, "1").values)


# the smaller conv map is the same kind of site as "1": left to the slow run, for time
@pytest.mark.parametrize("site", [pytest.param(s, marks=pytest.mark.slow) if s == "3" else s for s in SITES])
def test_every_analysis_on_a_cluster_equals_numpy(stitched, client, site):
    lazy, eager = _pair(stitched, site)
    tight = {"rtol": 1e-12, "atol": 1e-12}
    got, want = ua.tuning_curves(lazy).compute(), ua.tuning_curves(eager)
    for name in ("mean", "sem", "count", "selectivity"):
        np.testing.assert_allclose(got[name].values, want[name].values, **tight, err_msg=name)
    np.testing.assert_array_equal(got["preferred"].values, want["preferred"].values)
    for f in (ua.lifetime_sparseness, ua.population_sparseness):
        np.testing.assert_allclose(f(lazy).compute().values, f(eager).values, **tight)
    rdms = {}
    for metric in ("correlation", "euclidean", "cosine"):
        rdms[metric], want = ua.rdm(lazy, metric), ua.rdm(eager, metric)
        np.testing.assert_allclose(rdms[metric].values, want.values, **tight, err_msg=metric)
    assert ua.rsa(rdms["correlation"], ua.rdm(eager)) == pytest.approx(1.0, abs=1e-12)
    other = ur.load_layer(stitched, "3")  # a second population for the two-population measures
    assert ua.cka(lazy, other) == pytest.approx(ua.cka(eager, other), rel=1e-12)
    assert ua.participation_ratio(lazy) == pytest.approx(ua.participation_ratio(eager), rel=1e-12)
    got, want = ua.top_stimuli(lazy, k=3, chunk_size=3), ua.top_stimuli(eager, k=3)
    np.testing.assert_array_equal(got["stimulus"].values, want["stimulus"].values)
    np.testing.assert_allclose(got["response"].values, want["response"].values, **tight)
    assert distributed.get_client() is client  # the cluster is the scheduler in use


@pytest.mark.parametrize("method", ["cka", "rsa"])
def test_layer_similarity_on_a_cluster_equals_numpy(stitched, client, method):
    got = ua.layer_similarity({s: ur.load_layer(stitched, s, chunks={}) for s in SITES}, method)
    want = ua.layer_similarity({s: ur.load_layer(stitched, s).load() for s in SITES}, method)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-12, atol=1e-12)


def test_streamed_blocks_are_whole_dask_chunks_where_they_fit(stitched, monkeypatch):
    """A block that cut a stored chunk would decompress it again for every block it meets."""
    fc = ur.load_layer(stitched, "6", chunks={}).chunk({"channel": (2, 2, 1)})
    monkeypatch.setattr(_units, "_BLOCK_BYTES", 3 * 8 * N)  # the default block: 3 units of N stimuli
    blocks = list(unit_blocks(as_population(fc).data, None))
    assert [b.shape[1] for b in blocks] == [2, 3]  # whole chunks, as many as fit in 3 units
    np.testing.assert_array_equal(np.hstack(blocks), ur.load_layer(stitched, "6").values)
    assert [b.shape[1] for b in unit_blocks(as_population(fc).data, 3)] == [2, 3]  # a given size too
    monkeypatch.setattr(_units, "_BLOCK_BYTES", 3 * 8 * 5)  # 3 stimuli of 5 units
    rows = list(_units.stimulus_blocks(as_population(fc).data, None))
    assert [b.shape[0] for b in rows] == [2] * 6  # chunks of 2 stimuli: 3 rows would cut one
    np.testing.assert_array_equal(np.vstack(rows), ur.load_layer(stitched, "6").values)


def test_a_chunk_bigger_than_a_block_is_cut_never_loaded_whole(stitched, monkeypatch):
    """A conv site's stored chunk holds every unit of a batch: the memory bound wins over alignment."""
    monkeypatch.setattr(_units, "_BLOCK_BYTES", 1000 * 8 * N)  # 1000 of the 2048 units of N stimuli
    conv = as_population(ur.load_layer(stitched, "1", chunks={})).data
    assert conv.data.chunks[1] == (8 * 16 * 16,)
    blocks = list(unit_blocks(conv, None))
    assert sorted(b.shape[1] for b in blocks) == [682, 683, 683]  # equal parts, each within the bound
    np.testing.assert_array_equal(np.hstack(blocks), ur.load_layer(stitched, "1").values.reshape(N, -1))
    lazy, eager = _pair(stitched, "1")
    np.testing.assert_allclose(ua.rdm(lazy).values, ua.rdm(eager).values, rtol=1e-12, atol=1e-12)
    assert ua.participation_ratio(lazy) == pytest.approx(ua.participation_ratio(eager), rel=1e-12)


def test_a_float16_rdm_is_summed_in_float64(tmp_path, client):
    """Row sums of 2048 float16 responses of ~100 pass float16's 65504: they must not be float16."""
    path = _sharded(tmp_path / "acts.h5", dtype="float16", scale=300.0)
    lazy = ur.load_layer(path, "1", chunks={})
    assert lazy.dtype == np.float16
    x = ur.load_layer(path, "1").values.reshape(N, -1).astype(np.float64)
    assert np.abs(x.sum(axis=1)).max() > 65504  # would overflow if summed in float16
    want = 1 - np.corrcoef(x)
    np.fill_diagonal(want, 0)
    for da in (lazy, ur.load_layer(path, "1").load()):
        np.testing.assert_allclose(ua.rdm(da).values, want, rtol=1e-12, atol=1e-12)
    mean = ua.tuning_curves(_orientation(lazy))["mean"].compute()
    np.testing.assert_allclose(mean.values.reshape(4, -1), x.reshape(3, 4, -1).mean(axis=0), rtol=1e-12)


@pytest.mark.slow  # a fresh interpreter imports torch: ~10 s
def test_importing_unitrec_and_its_analysis_does_not_import_distributed():
    import subprocess
    import sys

    code = "import sys, unitrec, unitrec.analysis; print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])  # this checkout's unitrec
    assert out.stdout.strip() == "[]"
