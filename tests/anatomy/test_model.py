"""load_model: zoo names, seeded random init, checkpoints, factories, plain errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import unitrec as ur


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_random_init_is_seeded_and_in_eval_mode():
    a, b, c = ur.load_model("resnet18"), ur.load_model("resnet18"), ur.load_model("resnet18", seed=1)
    assert not a.training
    assert _same(a, b) and not _same(a, c)
    assert a.unitrec_description["description"].startswith("random init (seed 0)")


def test_checkpoint_is_loaded(tmp_path):
    trained = ur.load_model("resnet18", seed=7)
    path = tmp_path / "ckpt.pt"
    torch.save(trained.state_dict(), path)
    loaded = ur.load_model("resnet18", checkpoint=path)
    assert _same(loaded, trained) and not _same(loaded, ur.load_model("resnet18"))
    # wrapped and DataParallel-prefixed checkpoints too
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, path)
    assert _same(ur.load_model("resnet18", checkpoint=path), trained)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ur.ModelError, match="checkpoint file not found"):
        ur.load_model("resnet18", checkpoint=tmp_path / "missing.pt")
    torch.save(ur.load_model("resnet34").state_dict(), tmp_path / "other.pt")
    with pytest.raises(ur.ModelError, match="does not fit the model"):
        ur.load_model("resnet18", checkpoint=tmp_path / "other.pt")


def test_weights_that_cannot_be_downloaded_say_how_to_provide_them(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(ur.ModelError) as err:
        ur.load_model("resnet18", weights="DEFAULT")
    assert "checkpoint" in str(err.value) and "no network" in str(err.value)


def test_unknown_model_and_weights_name_the_closest():
    with pytest.raises(ur.ModelError, match="resnet50"):
        ur.load_model("resnet05")
    with pytest.raises(ur.ModelError, match="IMAGENET1K_V1"):
        ur.load_model("resnet18", weights="IMAGENET_V9")


def tiny_net() -> torch.nn.Module:
    """A user's own model, importable as tests.anatomy.test_model:tiny_net."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 2))


def test_factory_models(tmp_path):
    m = ur.load_model("tests.anatomy.test_model:tiny_net")
    assert isinstance(m, torch.nn.Sequential) and not m.training
    with pytest.raises(ur.ModelError, match="cannot import"):
        ur.load_model("tests.anatomy.test_model:nope")
    rows = ur.list_layers(m, (3, 16, 16))
    assert [r.name for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0].rf_size == (3, 3)


_README_NET = '''
from torch import nn

def build(width=32, depth=3):
    layers, c = [], 3
    for i in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
'''


def test_the_readme_own_network_runs_from_a_config_with_kwargs_and_a_checkpoint(tmp_path, monkeypatch):
    """docs, Recording, "Models", "Your own network": a factory next to the config, kwargs, checkpoint."""
    (tmp_path / "mynets.py").write_text(_README_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(ur.load_model("mynets:build", kwargs={"width": 64}, seed=5).state_dict(), tmp_path / "mynet.pt")
    (tmp_path / "job.yaml").write_text(
        'model: {name: "mynets:build", kwargs: {width: 64}, checkpoint: mynet.pt}\n'
        "preprocess: {resize: 64, crop: 64, normalize: imagenet}\n"
        'layers: ["2", "5", "8"]\n'
        "stimuli: {generate: {kind: gratings, size: 64, orientations: [0, 90], spatial_frequencies: [4], "
        "phases: [0]}}\n"
        "record: {batch_size: 2, progress: false}\n"
        "output: acts.h5\n")
    path = ur.run_config(tmp_path / "job.yaml", progress=False)
    site = ur.load_layer(path, "8")
    assert site.shape == (2, 64, 8, 8)
    assert list(site.attrs["rf_size"]) == [22, 22] and list(site.attrs["rf_stride"]) == [8, 8]
    assert "mynet.pt" in site.attrs["model_description"]
