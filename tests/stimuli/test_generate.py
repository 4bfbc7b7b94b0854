"""Tests of unitrec.stimuli.generate: file names, metadata, and the images' geometry."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unitrec.errors import ConfigError
from unitrec.stimuli.generate import gabors, gratings, protocols


def read_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def grey(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB"
        rgb = np.asarray(img).astype(int)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0]


def one(tmp_path: Path, **kwargs) -> np.ndarray:
    """Write a single grating and return its grey levels."""
    settings = {"orientations": (0,), "spatial_frequencies": (4,), "phases": (0,)}
    settings.update(kwargs)
    root = gratings(tmp_path / "one", overwrite=True, **settings)
    (row,) = read_rows(root)
    return grey(root / row["path"])


def test_gratings_files_and_metadata(tmp_path):
    root = gratings(tmp_path / "g", size=32)
    assert root == tmp_path / "g"
    rows = read_rows(root)
    assert len(rows) == 6 * 3 * 4
    assert list(rows[0]) == ["path", "orientation", "spatial_frequency", "phase", "contrast"]
    files = sorted(p.name for p in root.glob("*.png"))
    assert files == sorted(r["path"] for r in rows)
    assert "grating_ori030_sf04_ph090_c100.png" in files
    row = next(r for r in rows if r["path"] == "grating_ori030_sf04_ph090_c100.png")
    assert row == {
        "path": "grating_ori030_sf04_ph090_c100.png",
        "orientation": "30",
        "spatial_frequency": "4",
        "phase": "90",
        "contrast": "1",
    }
    assert all(float(r["contrast"]) == 1.0 for r in rows)
    with Image.open(root / files[0]) as img:
        assert img.size == (32, 32)


def test_non_integer_values_in_names_and_csv(tmp_path):
    root = gratings(
        tmp_path / "g",
        orientations=(22.5,),
        spatial_frequencies=(1.5,),
        phases=(-90,),
        contrasts=(0.25,),
    )
    (row,) = read_rows(root)
    assert row["path"] == "grating_ori022p5_sf01p5_phm090_c025.png"
    assert [float(row[k]) for k in ("orientation", "spatial_frequency", "phase", "contrast")] == [
        22.5,
        1.5,
        -90.0,
        0.25,
    ]


def test_orientation_convention(tmp_path):
    vertical = one(tmp_path, orientations=(0,))
    assert (vertical == vertical[0]).all()  # every column is constant down the rows
    assert np.ptp(vertical[0]) > 200
    horizontal = one(tmp_path, orientations=(90,))
    assert (horizontal == horizontal[:, :1]).all()  # every row is constant
    # counter-clockwise: at 45° the bars run from top-left to bottom-right
    diag = one(tmp_path, orientations=(45,))
    np.testing.assert_allclose(diag[1:, 1:], diag[:-1, :-1], atol=1)  # float ties at .5
    assert np.ptp(diag[0]) > 200
    anti = one(tmp_path, orientations=(135,))
    np.testing.assert_allclose(anti[1:, :-1], anti[:-1, 1:], atol=1)
    assert np.abs(diag[1:, :-1] - diag[:-1, 1:]).max() > 20  # not the other diagonal
    # the gradient points up at 90°: with phase 90 and 1 cycle the top is brightest
    up = one(tmp_path, orientations=(90,), spatial_frequencies=(1,), phases=(0,), size=64)
    assert up[16, 0] > 250 and up[48, 0] < 5  # sin(2π·y) peaks at y = +1/4 (row 16)


def test_spatial_frequency_phase_and_contrast(tmp_path):
    for sf in (2, 5):
        row = one(tmp_path, spatial_frequencies=(sf,), size=64)[0] / 255 - 0.5
        assert np.argmax(np.abs(np.fft.rfft(row))) == sf
    # odd size: the centre pixel sits at the reference point of the phase
    centre = 32
    assert one(tmp_path, phases=(90,), size=65)[centre, centre] == 255
    assert one(tmp_path, phases=(270,), size=65)[centre, centre] == 0
    assert one(tmp_path, phases=(0,), size=65)[centre, centre] == 128  # round(127.5)
    low = one(tmp_path, phases=(90,), size=65, contrasts=(0.5,))
    assert low[centre, centre] == round(0.75 * 255)
    assert low.min() == round(0.25 * 255)


def test_exact_luminance_formula(tmp_path):
    img = one(tmp_path, orientations=(30,), spatial_frequencies=(3,), phases=(45,), size=16)
    c = (np.arange(16) + 0.5) / 16 - 0.5
    x, y = c[None, :], -c[:, None]
    t = np.deg2rad(30)
    lum = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * (x * np.cos(t) + y * np.sin(t)) + np.pi / 4)
    np.testing.assert_array_equal(img, np.round(lum * 255))


def test_gabors(tmp_path):
    root = gabors(
        tmp_path / "b",
        size=64,
        orientations=(0, 90),
        spatial_frequencies=(4,),
        phases=(90,),
        sigmas=(0.1, 0.125),
    )
    rows = read_rows(root)
    assert len(rows) == 4 and list(rows[0])[-1] == "sigma"
    names = {r["path"] for r in rows}
    assert "gabor_ori000_sf04_ph090_c100_s010.png" in names
    assert "gabor_ori090_sf04_ph090_c100_s012p5.png" in names
    img = grey(root / "gabor_ori000_sf04_ph090_c100_s010.png")
    assert img[0, 0] == 128 and img[-1, -1] == 128  # background far from the centre
    assert img[31:33, 31:33].min() > 240  # peak of a cosine-phase carrier at the centre
    assert float(next(r for r in rows if "s012p5" in r["path"])["sigma"]) == 0.125


def test_refuses_non_empty_folder(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "metadata.csv").write_text("path,mine\n")
    for overwrite in (False, True):  # not generated by unitrec: never written into
        with pytest.raises(ConfigError, match="busy holds files that unitrec did not generate"):
            gratings(target, overwrite=overwrite)
    assert (target / "metadata.csv").read_text() == "path,mine\n"


def test_overwrite_replaces_a_generated_set_and_keeps_other_files(tmp_path):
    target = gratings(tmp_path / "g", orientations=(0, 90), spatial_frequencies=(2,), phases=(0,))
    assert (target / ".unitrec-generated").is_file()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="--overwrite .command line. or overwrite=True .Python."):
        gratings(target)
    gratings(target, orientations=(45,), spatial_frequencies=(2,), phases=(0,), overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"
    assert [r["path"] for r in read_rows(target)] == [p.name for p in target.glob("*.png")]
    assert len(read_rows(target)) == 1  # the images of the 0° / 90° set are gone


def test_a_set_generated_before_the_marker_existed_can_be_replaced(tmp_path):
    target = gratings(tmp_path / "g", orientations=(0, 90), spatial_frequencies=(2,), phases=(0,))
    (target / ".unitrec-generated").unlink()
    gratings(target, orientations=(45,), spatial_frequencies=(2,), phases=(0,), overwrite=True)
    assert [p.name for p in target.glob("*.png")] == ["grating_ori045_sf02_ph000_c100.png"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"contrasts": (1.0,), "background": 0.7}, "contrast"),
        ({"spatial_frequencies": (0,)}, "spatial_frequencies"),
        ({"orientations": ()}, "orientations"),
        ({"size": 1}, "size"),
        ({"fmt": "gif"}, "fmt"),
        ({"phases": (0, 0)}, "same file"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        gratings(tmp_path / "bad", **kwargs)


# -- apertures and the grating protocols ---------------------------------------------------


def test_apertures_show_the_full_field_grating_inside_and_background_outside(tmp_path):
    settings = {"orientations": (30,), "spatial_frequencies": (3,), "phases": (45,), "size": 32}
    full = one(tmp_path, **settings)
    root = gratings(tmp_path / "a", apertures=(6, 11.5, 60), aperture_center=(10, 20), **settings)
    rows = read_rows(root)
    assert list(rows[0]) == ["path", "orientation", "spatial_frequency", "phase", "contrast",
                             "aperture_diameter", "aperture_y", "aperture_x"]
    assert [r["path"] for r in rows] == ["grating_ori030_sf03_ph045_c100_d006.png",
                                         "grating_ori030_sf03_ph045_c100_d011p5.png",
                                         "grating_ori030_sf03_ph045_c100_d060.png"]
    assert [(r["aperture_diameter"], r["aperture_y"], r["aperture_x"]) for r in rows] == [
        ("6", "10", "20"), ("11.5", "10", "20"), ("60", "10", "20")]
    rr, cc = np.mgrid[:32, :32]
    for row in rows:
        d = float(row["aperture_diameter"])
        inside = (rr - 10) ** 2 + (cc - 20) ** 2 <= (d / 2) ** 2  # pixel (i, j) sits at (i, j)
        img = grey(root / row["path"])
        np.testing.assert_array_equal(img[inside], full[inside])
        assert (img[~inside] == 128).all()
    assert inside.all()  # 60 ≥ twice the farthest pixel's distance (29, to pixel (31, 0)): the full field
    assert inside.sum() == full.size and (grey(root / rows[0]["path"]) != full).any()


def test_default_aperture_centre_is_the_image_centre(tmp_path):
    root = gratings(tmp_path / "a", size=16, orientations=(0,), spatial_frequencies=(2,), phases=(90,),
                    apertures=(3,))
    (row,) = read_rows(root)
    assert (row["aperture_y"], row["aperture_x"]) == ("7.5", "7.5")
    img = grey(root / row["path"])
    assert (img[7:9, 7:9] != 128).all() and (img != 128).sum() == 4  # the four pixels within 1.5 of 7.5


def test_protocols_writes_three_protocols_with_every_column(tmp_path):
    root = protocols(tmp_path / "p", size=16, orientations=(0, 90), spatial_frequencies=(2, 4),
                     phases=(0, 120, 240), size_spatial_frequencies=(4,), diameters=(4, 8),
                     contrast_spatial_frequencies=(2,), contrasts=(0.1, 0.5), aperture_center=(8, 7))
    rows = read_rows(root)
    assert list(rows[0]) == ["path", "protocol", "orientation", "spatial_frequency", "phase", "contrast",
                             "aperture_diameter", "aperture_y", "aperture_x"]
    by = {name: [r for r in rows if r["protocol"] == name] for name in ("phase", "size", "contrast")}
    assert [len(v) for v in by.values()] == [2 * 2 * 3, 2 * 1 * 3 * 2, 2 * 1 * 3 * 2]
    assert all(all(r.values()) for r in rows)  # no empty cell
    assert {r["contrast"] for r in by["phase"] + by["size"]} == {"0.5"}  # the highest contrast
    assert {r["aperture_diameter"] for r in by["phase"] + by["contrast"]} == {"inf"}  # full field
    assert {(r["aperture_y"], r["aperture_x"]) for r in rows} == {("8", "7")}
    assert "grating_ori090_sf04_ph120_c050_d008_size.png" in {r["path"] for r in by["size"]}
    assert "grating_ori000_sf02_ph000_c010_contrast.png" in {r["path"] for r in by["contrast"]}
    assert sorted(p.name for p in root.glob("*.png")) == sorted(r["path"] for r in rows)
    small = grey(root / "grating_ori090_sf04_ph120_c050_d004_size.png")
    assert small[8, 7] != 128 and small[0, 0] == 128 and (small != 128).sum() <= 13
    # the loader reads inf back as a number, with no warning about empty cells
    import warnings

    from unitrec.stimuli import as_stimulus_set

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coords = as_stimulus_set(root).coords
    assert np.isinf(coords["aperture_diameter"]).sum() == 24 and coords["protocol"].dtype == object


def test_protocols_defaults_stay_under_2000_images(monkeypatch, tmp_path):
    from unitrec.stimuli import generate

    written = {}
    monkeypatch.setattr(generate, "_write_set", lambda out, kind, settings, *a: written.setdefault("s", settings))
    generate.protocols(tmp_path / "p")
    settings = written["s"]
    counts = {name: sum(s["protocol"] == name for s in settings) for name in generate.PROTOCOLS}
    assert counts == {"phase": 8 * 7 * 8, "size": 8 * 2 * 8 * 6, "contrast": 8 * 2 * 8 * 6}
    assert sum(counts.values()) == 1984
    assert sorted({s["aperture_diameter"] for s in settings if s["protocol"] == "size"}) == [4, 7, 12, 20, 34, 91]
    assert {(s["aperture_y"], s["aperture_x"]) for s in settings} == {(31.5, 31.5)}
    assert min(s["contrast"] for s in settings) == 0.02


@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("gratings", {"aperture_center": (3, 3)}, "give their diameters too"),
        ("gratings", {"apertures": (0,)}, "apertures must hold positive"),
        ("gratings", {"apertures": (4,), "aperture_center": (3, 99)}, r"outside the 64×64 image.*0 to 63"),
        ("gratings", {"apertures": (4,), "aperture_center": (3,)}, r"\(row, column\)"),
        ("protocols", {"phases": (0, 90, 180)}, "equally spaced over 360°"),
        ("protocols", {"diameters": ()}, "diameters must hold at least one"),
        ("protocols", {"contrasts": (0.1, 1.2)}, "contrast 1.2"),
        ("protocols", {"size_spatial_frequencies": (-1,)}, "size_spatial_frequencies"),
    ],
)
def test_bad_aperture_and_protocol_arguments(tmp_path, kind, kwargs, match):
    make = {"gratings": gratings, "protocols": protocols}[kind]
    with pytest.raises(ConfigError, match=match):
        make(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_cli_writes_protocols_and_apertures(tmp_path, capsys):
    from unitrec.cli import main

    argv = ["stimuli", "protocols", str(tmp_path / "p"), "--size", "16", "--orientations", "0", "90",
            "--spatial-frequencies", "2", "4", "--phases", "0", "120", "240", "--size-spatial-frequencies", "4",
            "--diameters", "4", "23", "--contrast-spatial-frequencies", "4", "--contrasts", "0.2", "1",
            "--aperture-center", "8", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote 36 gratings of the protocols (phase 12, size 12, contrast 12)" in out
    assert {r["aperture_y"] for r in read_rows(tmp_path / "p")} == {"8"}
    argv = ["stimuli", "gratings", str(tmp_path / "g"), "--size", "16", "--orientations", "0", "--phases", "0",
            "--spatial-frequencies", "2", "--apertures", "4", "8", "--aperture-center", "5", "6"]
    assert main(argv) == 0
    assert [(r["aperture_diameter"], r["aperture_y"], r["aperture_x"]) for r in read_rows(tmp_path / "g")] == [
        ("4", "5", "6"), ("8", "5", "6")]
    assert main(["stimuli", "gratings", str(tmp_path / "x"), "--sigmas", "0.1"]) == 1
    assert "--sigmas is for gabors, not gratings" in capsys.readouterr().err
    assert main(["stimuli", "gabors", str(tmp_path / "x"), "--diameters", "4"]) == 1
    assert "--diameters is for protocols, not gabors" in capsys.readouterr().err


def test_config_generate_kind_protocols():
    from unitrec.schema import GenerateSpec, parse

    spec = parse(GenerateSpec, {"kind": "protocols", "size": 32, "diameters": [4, 46], "aperture_center": [16, 16]})
    assert spec.arguments() == {"size": 32, "diameters": [4.0, 46.0], "aperture_center": (16.0, 16.0)}
    spec = parse(GenerateSpec, {"kind": "gratings", "apertures": [4, 8]})
    assert spec.arguments()["apertures"] == [4.0, 8.0]
    with pytest.raises(ConfigError, match=r"kind protocols does not take sigmas \(sigmas is for kind gabors\)"):
        parse(GenerateSpec, {"kind": "protocols", "sigmas": [0.1]})
    with pytest.raises(ConfigError, match="kind gratings does not take diameters"):
        parse(GenerateSpec, {"kind": "gratings", "diameters": [4]})
    with pytest.raises(ConfigError, match="unknown key 'aperture_centre'.*aperture_center"):
        parse(GenerateSpec, {"kind": "protocols", "aperture_centre": [1, 1]})


def test_frequencies_at_or_above_nyquist_are_refused_and_defaults_stop_below(tmp_path):
    from unitrec.stimuli import gratings, protocols

    with pytest.raises(ConfigError, match="Nyquist limit of a 32-pixel image"):
        gratings(tmp_path / "a", size=32, spatial_frequencies=(4, 16))
    folder = protocols(tmp_path / "p", size=16, orientations=(0,), phases=(0, 120, 240), diameters=(4, 8))
    with open(folder / "metadata.csv", newline="") as fh:
        assert max(float(r["spatial_frequency"]) for r in csv.DictReader(fh)) < 8


@pytest.mark.parametrize("values", ["45", [True], [0, "90"]])
def test_numbers_are_not_read_from_text_or_booleans(tmp_path, values):
    from unitrec.stimuli import gratings

    with pytest.raises(ConfigError, match="orientations must be a sequence of numbers"):
        gratings(tmp_path / "g", orientations=values)


def test_overwrite_refuses_images_it_did_not_write_and_unwritable_folders(tmp_path):
    from unitrec.stimuli import gratings

    small = {"size": 16, "orientations": (0,), "spatial_frequencies": (2,), "phases": (0,)}
    folder = gratings(tmp_path / "g", **small)
    (folder / "mine.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"images that unitrec did not generate \(mine.png\)"):
        gratings(folder, overwrite=True, **small)
    assert (folder / "mine.png").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write stimuli to"):
        gratings(tmp_path / "file" / "sub", **small)
