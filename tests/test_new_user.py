"""What a new user met following the README (issue 22's closing review): one line, never a traceback."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import unitrec as ur
from unitrec.anatomy.preprocess import build_transform
from unitrec.cli import main
from unitrec.files.layout import partial_path

from .conftest import Interrupting, make_images


def _fails(capsys, argv, *words):
    assert main([str(a) for a in argv]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


def test_a_recorder_mapped_at_another_size_says_how_to_give_the_size(zoo):
    model = zoo("resnet18")
    with pytest.raises(ur.RecordingError, match=r"mapped the model at input \(3, 224, 224\).*input_size=\(3, 64, 64\)"):
        with ur.Recorder(model, ["layer1.0.bn2"]):
            model(torch.randn(2, 3, 64, 64))
    with ur.Recorder(model, ["layer1.0.bn2"], input_size=(3, 64, 64)) as rec:
        model(torch.randn(2, 3, 64, 64))
    assert rec.activations["layer1.0.bn2"].shape == (2, 64, 16, 16)


def test_nested_recorders_and_names_for_models_are_one_line(zoo):
    model = zoo("resnet18")
    with ur.Recorder(model, ["fc"], input_size=(3, 32, 32)):
        with pytest.raises(ur.RecordingError, match="already has a Recorder attached"):
            with ur.Recorder(model, ["conv1"], input_size=(3, 32, 32)):
                pass
    with ur.Recorder(model, ["conv1"], input_size=(3, 32, 32)):  # closed: a new one is fine
        pass
    for call in (lambda: ur.record("resnet18", torch.randn(2, 3, 8, 8), ["conv1"], "o.h5"),
                 lambda: ur.Recorder("resnet18", ["fc"]).attach()):
        with pytest.raises(ur.ConfigError, match="must be a torch.nn.Module"):
            call()
    for name in (18, None, ""):
        with pytest.raises(ur.ModelError, match="model name must be a text"):
            ur.load_model(name)


def test_a_forward_that_fails_on_the_input_is_one_line(tmp_path, capsys):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    with pytest.raises(ur.ModelError, match=r"forward failed on an input of shape \(3, 8, 8\).*preprocessing"):
        ur.record(model, torch.randn(2, 3, 8, 8), ["0"], tmp_path / "o.h5", progress=False)
    _fails(capsys, ["layers", "resnet18", "--input-size", "-5"], "--input-size must be a positive")
    _fails(capsys, ["layers", "inception_v3", "--input-size", "32"], "forward failed")


def test_a_timm_vit_with_another_img_size_gets_that_size_by_default():
    pytest.importorskip("timm")
    model = ur.load_model("timm:vit_tiny_patch16_224", kwargs={"img_size": 32})
    assert "CenterCrop(size=(32, 32))" in repr(model.unitrec_transform)


@pytest.mark.parametrize("stimuli, words", [
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "as floats"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.float16), "the model's weights are torch.float32"),
    ([], "got an empty list"),
    ([1, 2], "got a list holding int"),
])
def test_stimuli_of_the_wrong_kind_are_named(tmp_path, stimuli, words):
    with pytest.raises(ur.StimulusError, match=words):
        ur.record(nn.Sequential(nn.Conv2d(3, 2, 1)), stimuli, ["0"], tmp_path / "o.h5", progress=False)


def test_an_iterable_dataset_a_folder_in_a_list_and_no_layers_are_named(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 8, 8)

    with pytest.raises(ur.StimulusError, match="map-style Dataset"):
        ur.record(nn.Sequential(nn.Conv2d(3, 2, 1)), Stream(), ["0"], tmp_path / "o.h5", progress=False)
    folder = make_images(tmp_path / "stim", n=2, size=8)
    with pytest.raises(ur.StimulusError, match="is a folder: give the folder itself"):
        ur.record(nn.Sequential(nn.Conv2d(3, 2, 1)), [folder / "cats"], ["0"], tmp_path / "o.h5", progress=False)
    with pytest.raises(ur.ConfigError, match="layers must name at least one site"):
        ur.record(nn.Sequential(nn.Conv2d(3, 2, 1)), torch.randn(2, 3, 8, 8), None, tmp_path / "o.h5")
    with pytest.raises(ur.ModelError, match="is a folder"):
        ur.load_model("resnet18", checkpoint=folder)


def test_reading_arguments_are_checked_as_arguments(tmp_path):
    path = ur.record(nn.Sequential(nn.Conv2d(3, 2, 1)), torch.randn(3, 3, 4, 4), ["0"], tmp_path / "o.h5",
                     progress=False)
    with pytest.raises(ur.ConfigError, match="chunks must be None"):
        ur.load_layer(path, "0", chunks="abc")
    assert ur.load_population(path, "0").sizes["unit"] == 2 * 4 * 4  # one name, not its letters
    with pytest.raises(ur.ConfigError, match="draws the result of A.tuning_curves"):
        ur.analysis.plot_tuning_curves(ur.load_layer(path, "0"))


def test_a_negative_sample_seed_is_a_config_error():
    from unitrec.schema import parse_layers

    with pytest.raises(ur.ConfigError, match="seed"):
        parse_layers([{"name": "layer1", "sample": 5, "seed": -1}])


def test_the_report_of_one_stimulus_and_of_moved_images_is_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from unitrec.report import write_report

    one = ur.record(ur.load_model("resnet18"), torch.randn(1, 3, 32, 32), ["fc", "layer1"], tmp_path / "one.h5",
                    progress=False)
    assert write_report(one, tmp_path / "rep1", progress=False).exists()
    stim = make_images(tmp_path / "stim", n=4, size=16)
    rec = ur.record(ur.load_model("resnet18"), stim, ["layer1"], tmp_path / "s.h5",
                    transform=build_transform({"resize": 16, "crop": 16}), progress=False)
    shutil.rmtree(stim / "cats")
    with pytest.warns(ur.UnitrecWarning, match="montages left out"):
        assert write_report(rec, tmp_path / "rep2", progress=False).exists()
    (tmp_path / "afile").write_text("x")
    _fails(capsys, ["report", one, tmp_path / "afile"], "is a file")


def test_a_bad_report_by_is_refused_before_recording(tmp_path):
    make_images(tmp_path / "stim", n=2, size=16)
    cfg = {"model": {"name": "resnet18"}, "stimuli": {"path": "stim"}, "layers": ["conv1"], "output": "o.h5",
           "preprocess": {"resize": 16, "crop": 16}, "report": {"by": "nope"}, "record": {"progress": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ur.ConfigError, match="report.by 'nope' is not a stimulus coordinate.*label"):
        ur.run_config(tmp_path / "c.yaml")
    assert not (tmp_path / "o.h5").exists() and not partial_path(tmp_path / "o.h5").exists()


def test_generators_refuse_what_cannot_fit(tmp_path, capsys):
    _fails(capsys, ["stimuli", "gratings", tmp_path / "g", "--size", "100000"], "size must be an integer from 2")
    _fails(capsys, ["stimuli", "white-noise", tmp_path / "w", "--size", "8000", "--n", "100000000"],
           "need up to", "free")
    assert not (tmp_path / "w").exists()


def test_an_interrupted_overwrite_of_the_same_job_leaves_no_partial_file(tmp_path):
    out = tmp_path / "acts.h5"
    model = nn.Sequential(nn.Conv2d(3, 2, 1))
    ur.record(model, Interrupting(n=8), ["0"], out, batch_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        ur.record(model, Interrupting(n=8, stop_at=5), ["0"], out, batch_size=4, progress=False, overwrite=True)
    assert partial_path(out).exists()
    with pytest.warns(ur.UnitrecWarning, match="removed .*an interrupted --overwrite of this same job"):
        ur.record(model, Interrupting(n=8), ["0"], out, batch_size=4, progress=False)
    assert not partial_path(out).exists()
    np.testing.assert_array_equal(ur.load_layer(out, "0").values.shape, (8, 2, 32, 32))


def test_metadata_rows_written_with_a_leading_dot_slash_are_matched(tmp_path):
    from unitrec.stimuli.dataset import as_stimulus_set

    folder = make_images(tmp_path / "stim", n=2, size=8, classes=("",))
    (folder / "metadata.csv").write_text("path,orientation\n./img_00.png,0\n./img_01.png,90\n")
    assert list(as_stimulus_set(folder).coords["orientation"]) == [0, 90]
