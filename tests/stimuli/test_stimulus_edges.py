"""Stimulus folders at the edges (issue 8): broken links, odd names, messy metadata.csv,
images of different sizes, and generating into a folder that holds the user's files."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from PIL import Image

import unitrec as ur
from unitrec.cli import main
from unitrec.errors import StimulusError, UnitrecError
from unitrec.stimuli import as_stimulus_set, find_stimuli, gratings

from tests.conftest import make_images


def _folder(tmp_path: Path, n: int = 4) -> tuple[Path, list[str]]:
    root = make_images(tmp_path / "stim", n=n, size=32)
    return root, find_stimuli(root)


def _metadata(root: Path, text: str, encoding: str = "utf-8") -> None:
    (root / "metadata.csv").write_bytes(text.encode(encoding))


def _caught(func, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _config(tmp_path: Path, stimuli: dict, **changes) -> Path:
    cfg = {"model": {"name": "resnet18"}, "stimuli": stimuli,
           "preprocess": {"resize": 64, "crop": 64, "normalize": "imagenet"},
           "layers": ["conv1"], "record": {"batch_size": 4, "progress": False}, "output": "out/acts.h5"}
    cfg.update(changes)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_line_error(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- 1. broken links ------------------------------------------------------------------


def test_broken_links_are_left_out_and_named_in_one_warning(tmp_path):
    root, labels = _folder(tmp_path)
    try:
        os.symlink(tmp_path / "gone.png", root / "dangling.png")
        os.symlink(root / "loop.png", root / "loop.png")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not available here")
    found, warned = _caught(find_stimuli, root)
    assert found == labels
    assert len(warned) == 1 and "2 broken links" in warned[0]
    assert "dangling.png" in warned[0] and "loop.png" in warned[0]
    stim, _ = _caught(as_stimulus_set, root)
    assert len(stim.sha256()) == 64  # was FileNotFoundError from os.path.getsize


# --- 2. file names that are not UTF-8 ---------------------------------------------------


def test_non_utf8_file_name_is_refused_in_one_line(tmp_path, capsys):
    root, _ = _folder(tmp_path)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, "PNG")
    try:
        fd = os.open(os.fsencode(root) + b"/caf\xe9.png", os.O_WRONLY | os.O_CREAT, 0o644)
    except (OSError, ValueError):
        pytest.skip("this file system refuses names that are not UTF-8")
    os.write(fd, buf.getvalue())
    os.close(fd)
    with pytest.raises(StimulusError, match=r"caf\\xe9\.png.*rename"):
        find_stimuli(root)
    err = _one_line_error(capsys, ["run", _config(tmp_path, {"path": "stim"})])
    assert "caf\\xe9.png" in err and "UTF-8" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- 3.-7. metadata.csv -----------------------------------------------------------------


def test_latin1_metadata_is_refused_naming_the_line(tmp_path):
    root, labels = _folder(tmp_path)
    rows = "".join(f"{lab},{'café' if i == 1 else 'tea'}\n" for i, lab in enumerate(labels))
    _metadata(root, "path,drink\n" + rows, encoding="latin-1")
    with pytest.raises(StimulusError) as info:
        as_stimulus_set(root)
    message = str(info.value)
    assert "not UTF-8" in message and "line 3" in message and "save it as UTF-8" in message
    assert "\n" not in message


def test_empty_cells_are_nan_or_empty_text_with_one_warning(tmp_path, zoo, transform64):
    root, labels = _folder(tmp_path)
    # row 1: empty cells; row 2: a short row (csv.DictReader gave None, stored as 'None')
    cells = {0: "0,0.5,a", 1: ",,", 2: "2", 3: "3,1.5,d"}
    _metadata(root, "path,n,f,t\n" + "".join(f"{lab},{cells[i]}\n" for i, lab in enumerate(labels)))
    path, warned = _caught(ur.record, zoo("resnet18"), root, ["conv1"], tmp_path / "a.h5",
                           transform=transform64, progress=False)
    empty = [w for w in warned if "empty cells" in w]
    assert len(empty) == 1
    assert "'n' in 1 of 4 rows (stored as NaN), 'f' in 2 of 4 rows (stored as NaN), " \
           "'t' in 2 of 4 rows (stored as '')" in empty[0]
    da = ur.load_layer(path, "conv1")
    np.testing.assert_array_equal(da.n.values, [0, np.nan, 2, 3])  # int with a gap → float
    np.testing.assert_array_equal(da.f.values, [0.5, np.nan, np.nan, 1.5])
    assert da.t.values.tolist() == ["a", "", "", "d"]  # not 'None'


def test_duplicate_rows_are_refused(tmp_path):
    root, labels = _folder(tmp_path)
    rows = [f"{lab},{i}\n" for i, lab in enumerate(labels)] + [f"{labels[2]},9\n"]
    _metadata(root, "path,n\n" + "".join(rows))
    with pytest.raises(StimulusError, match=f"two rows for {labels[2]} .lines 4 and 6."):
        as_stimulus_set(root)


def test_label_column_overrides_the_subfolder_label_with_a_warning(tmp_path):
    root, labels = _folder(tmp_path)
    _metadata(root, "path,label\n" + "".join(f"{lab},L{i}\n" for i, lab in enumerate(labels)))
    stim, warned = _caught(as_stimulus_set, root)
    assert stim.coords["label"].tolist() == ["L0", "L1", "L2", "L3"]
    assert len(warned) == 1 and "'label' replaces the class-subfolder label" in warned[0]


def test_column_names_are_made_storable(tmp_path, zoo, transform64):
    root, labels = _folder(tmp_path)
    rows = "".join(f"{lab},{i},{i},u{i},{i},\n" for i, lab in enumerate(labels))
    _metadata(root, "path,my col,a/b,,x,\n" + rows)  # the last, unnamed column is empty: dropped
    path, warned = _caught(ur.record, zoo("resnet18"), root, ["conv1"], tmp_path / "a.h5",
                           transform=transform64, progress=False)
    renamed = [w for w in warned if "renamed columns" in w]
    assert len(renamed) == 1 and "'my col' to 'my_col', 'a/b' to 'a_b', '' to 'column_4'" in renamed[0]
    with xr.open_dataset(path, engine="h5netcdf") as ds:  # xarray alone reads it
        assert {"my_col", "a_b", "column_4", "meta_x"} <= set(ds.coords) | set(ds.data_vars)
    da = ur.load_layer(path, "conv1")
    assert da.my_col.values.tolist() == [0, 1, 2, 3]
    assert da.column_4.values.tolist() == ["u0", "u1", "u2", "u3"]


def test_column_names_that_collide_after_renaming_are_refused(tmp_path):
    root, labels = _folder(tmp_path)
    _metadata(root, "path,my col,my_col\n" + "".join(f"{lab},1,2\n" for lab in labels))
    with pytest.raises(StimulusError, match="'my col' and 'my_col' would both be stored as 'my_col'"):
        as_stimulus_set(root)


# --- 8. images of different sizes without resizing ----------------------------------------


def _shut_down_loader(exc: BaseException) -> None:
    """Stop the DataLoader workers that raised `exc`, now.

    A worker's exception, re-raised by torch, holds its DataLoader iterator in a
    reference cycle; left to the garbage collector, its shutdown waits 5 s per
    worker (the queues are finalised first) in whichever test runs then.
    """
    tb = exc.__traceback__
    while tb is not None:
        it = tb.tb_frame.f_locals.get("self")
        if isinstance(it, torch.utils.data.dataloader._MultiProcessingDataLoaderIter):
            it._shutdown_workers()
        tb = tb.tb_next


@pytest.mark.parametrize(("num_workers", "batch_size"), [(0, 4), (2, 2), (0, 1)])
def test_different_sizes_without_resize_is_one_line(tmp_path, zoo, num_workers, batch_size):
    from unitrec.anatomy.preprocess import build_transform

    root, labels = _folder(tmp_path)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(root / labels[1])
    transform = build_transform({"resize": None, "crop": None, "normalize": "imagenet"})
    with pytest.raises(UnitrecError) as info:  # not torch.stack's RuntimeError, also from a worker
        ur.record(zoo("resnet18"), root, ["conv1"], tmp_path / "a.h5", transform=transform,
                  num_workers=num_workers, batch_size=batch_size, progress=False)
    _shut_down_loader(info.value)
    assert isinstance(info.value, StimulusError)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert f"{labels[0]} gives 3×32×32, {labels[1]} gives 3×40×48" in message
    assert "resize" in message and "crop" in message


def test_different_sizes_from_the_command_line(tmp_path, capsys):
    root, labels = _folder(tmp_path)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(root / labels[1])
    cfg = _config(tmp_path, {"path": "stim"}, preprocess={"resize": None, "crop": None})
    err = _one_line_error(capsys, ["run", cfg])
    assert "stimuli differ in size" in err and labels[1] in err


# --- 9. generating into a folder -----------------------------------------------------------

GRATINGS = {"kind": "gratings", "size": 32, "orientations": [0, 90], "spatial_frequencies": [2],
            "phases": [0]}


def test_config_does_not_generate_into_the_users_folder(tmp_path, capsys):
    root, labels = _folder(tmp_path)
    mine = "path,n\n" + "".join(f"{lab},{i}\n" for i, lab in enumerate(labels))
    _metadata(root, mine)
    err = _one_line_error(capsys, ["run", _config(tmp_path, {"path": "stim", "generate": GRATINGS})])
    assert str(root) in err and "did not generate" in err and "another path" in err
    assert (root / "metadata.csv").read_text() == mine
    assert find_stimuli(root) == labels


def test_config_regenerates_its_own_folder_with_new_parameters(tmp_path):
    first = ur.run_config(_config(tmp_path, {"path": "gen", "generate": GRATINGS}))
    assert ur.load_layer(first, "conv1").orientation.values.tolist() == [0, 90]
    cfg = _config(tmp_path, {"path": "gen", "generate": {**GRATINGS, "orientations": [45]}},
                  output="out2/acts.h5")
    second = ur.run_config(cfg)  # the old images are gone: no stale images without a metadata row
    assert ur.load_layer(second, "conv1").orientation.values.tolist() == [45]
    assert (tmp_path / "gen" / ".unitrec-generated").is_file()


def test_cli_generator_on_a_generated_folder_names_both_overwrite_spellings(tmp_path, capsys):
    argv = ["stimuli", "gratings", tmp_path / "g", "--size", "16", "--orientations", "0", "--phases", "0",
            "--spatial-frequencies", "2"]
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, argv)
    assert "--overwrite" in err and "overwrite=True" in err
    assert main([str(a) for a in argv] + ["--overwrite"]) == 0
    assert gratings(tmp_path / "g", size=16, orientations=(0,), phases=(0,), spatial_frequencies=(2,),
                    overwrite=True) == tmp_path / "g"
