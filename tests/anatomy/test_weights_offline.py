"""Named weights with a checkpoint: their architecture and preprocessing, no download."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
import torchvision.models._api as api

import unitrec as ur


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_imagenet1k_v2_with_a_checkpoint_takes_its_preprocessing_without_a_download(tmp_path, offline):
    torch.manual_seed(3)
    trained = tvm.resnet50()
    torch.save(trained.state_dict(), tmp_path / "r50.pt")
    model = ur.load_model("resnet50", weights="IMAGENET1K_V2", checkpoint=tmp_path / "r50.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    transform = model.unitrec_transform
    assert transform.resize_size == [232] and transform.crop_size == [224]  # V2's own, not 256
    assert model.unitrec_description["weights"] == "IMAGENET1K_V2"
    assert not model.training


@pytest.mark.parametrize(("name", "weights"), [
    ("googlenet", "IMAGENET1K_V1"),  # transform_input on, aux heads off
    ("inception_v3", "IMAGENET1K_V1"),  # transform_input on, aux head kept
    # 384 px position embeddings; 13-18 s (a ViT-B built twice), so with the slow tests
    pytest.param("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", marks=pytest.mark.slow),
])
def test_the_architecture_is_the_one_the_builder_makes_for_those_weights(tmp_path, offline, monkeypatch, name,
                                                                        weights):
    """torchvision's builder, fed our model's values as its download, gives the same model."""
    torch.manual_seed(0)
    ours = ur.load_model(name, weights=weights, checkpoint=_save(tvm.get_model(name, weights=None,
                                                                               **_fit(name, weights)), tmp_path))
    # the files torchvision downloads for googlenet and inception_v3 hold the aux heads too
    with_aux = tvm.get_model(name, weights=None, **{**_fit(name, weights), "aux_logits": True}) \
        if name in ("googlenet", "inception_v3") else ours
    download = {**with_aux.state_dict(), **ours.state_dict()}
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: download)
    theirs = tvm.get_model(name, weights=weights).eval()  # loads strictly: same keys and shapes
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    size = tvm.get_model_weights(name)[weights].meta["min_size"]
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # same forward, same values
    # the file torchvision downloads works as the checkpoint too (googlenet's holds aux heads it drops)
    torch.save(download, tmp_path / "downloaded.pt")
    again = ur.load_model(name, weights=weights, checkpoint=tmp_path / "downloaded.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def _fit(name: str, weights: str) -> dict:
    from unitrec.anatomy.model import _fitting_kwargs

    return _fitting_kwargs(name, tvm.get_model_weights(name)[weights], {})


def _save(model: torch.nn.Module, tmp_path) -> str:
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def test_a_timm_tag_with_a_checkpoint_takes_its_data_config_without_a_download(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    torch.manual_seed(2)
    trained = timm.create_model("resnet18")
    model = ur.load_model("timm:resnet18", weights="a1_in1k", checkpoint=_save(trained, tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert model.pretrained_cfg["tag"] == "a1_in1k" and model.unitrec_input_size == (3, 224, 224)
