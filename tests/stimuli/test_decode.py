"""Tests of unitrec.stimuli.decode: finding stimulus files and decoding them to RGB."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from unitrec.errors import ConfigError, StimulusError, UnitrecError
from unitrec.stimuli.decode import IMAGE_EXTENSIONS, _to_rgb, find_stimuli, load_rgb

RNG = np.random.default_rng(1234)
CAT = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
OTHER_CAT = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (7, 9), dtype=np.uint8)
PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0, 1, 2, 3]
INDICES = np.array([[0, 1], [2, 3]], dtype=np.uint8)
ALPHAS = np.array([[0, 64, 128], [200, 254, 255]], dtype=np.uint8)
COLOURS = np.array(
    [[[250, 0, 10], [30, 60, 90], [255, 255, 0]], [[0, 0, 0], [17, 200, 3], [99, 98, 97]]],
    dtype=np.uint8,
)

EXPECTED_LIST = [
    "UPPER.PNG",
    "a/cat.png",
    "a/grey16.png",
    "a/grey8.png",
    "anim.gif",
    "b/c/cat.png",
    "b/rgb16.png",
    "broken/empty.png",
    "broken/text.jpg",
    "broken/truncated.jpg",
    "cmyk.jpg",
    "exif.jpg",
    "exif.png",
    "float01.tif",
    "float255.tif",
    "int32.tif",
    "la.png",
    "lab.tif",
    "mono.png",
    "palette.png",
    "palette_trns.png",
    "rgba.png",
    "ñandú_日本.png",
]


def _png16(values: np.ndarray, transparent: int | None = None) -> bytes:
    """Encode a uint16 (H, W) or (H, W, 3) array as a 16-bit PNG, by hand.

    PIL cannot write 48-bit RGB PNGs (nor a 16-bit grey tRNS), so the chunks are
    written directly. `transparent` is the grey value marked fully transparent.
    """
    height, width = values.shape[:2]
    colour_type = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + (chunk(b"tRNS", struct.pack(">H", transparent)) if transparent is not None else b"")
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.fixture(scope="module")
def stimuli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stimuli")
    for sub in ("a", "b/c", "broken", ".git"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(CAT).save(root / "a/cat.png")
    Image.fromarray(OTHER_CAT).save(root / "b/c/cat.png")  # same basename, other folder
    Image.fromarray(CAT).save(root / "UPPER.PNG", format="PNG")
    Image.fromarray(CAT).save(root / "ñandú_日本.png")
    Image.fromarray(GREY).save(root / "a/grey8.png")
    Image.fromarray(GREY.astype(np.uint16) * 257).save(root / "a/grey16.png")
    (root / "b/rgb16.png").write_bytes(_png16(CAT.astype(np.uint16) * 257))

    palette = Image.fromarray(INDICES, mode="P")
    palette.putpalette(PALETTE)
    palette.save(root / "palette.png")
    palette.save(root / "palette_trns.png", transparency=1)

    Image.fromarray(np.stack([COLOURS[..., 0], ALPHAS], axis=-1)).save(root / "la.png")
    Image.fromarray(np.concatenate([COLOURS, ALPHAS[..., None]], axis=-1)).save(root / "rgba.png")
    Image.fromarray(np.array([[True, False], [False, True]])).save(root / "mono.png")

    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # left half red
    cmyk.paste((255, 0, 0, 0), (16, 0, 32, 16))  # right half cyan
    cmyk.save(root / "cmyk.jpg", quality=100)

    # Orientation 6: the viewer rotates 90 degrees clockwise.
    Image.fromarray(CAT).save(root / "exif.png", exif=_exif(6))
    halves = Image.new("RGB", (32, 16), (255, 0, 0))
    halves.paste((0, 0, 255), (16, 0, 32, 16))
    halves.save(root / "exif.jpg", quality=95, exif=_exif(6))

    Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32)).save(root / "float01.tif")
    Image.fromarray(np.array([[-5.0, 100.4, 300.0]], dtype=np.float32)).save(root / "float255.tif")
    ints = np.array([[0, 25700, 386, 65535, 70000, -3]], dtype=np.int32)
    Image.fromarray(ints).save(root / "int32.tif")
    Image.new("LAB", (2, 2), (255, 128, 128)).save(root / "lab.tif")

    frames = [Image.new("P", (4, 4), 0), Image.new("P", (4, 4), 1)]
    for frame in frames:
        frame.putpalette([255, 0, 0, 0, 0, 255])
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50)

    (root / "broken/empty.png").write_bytes(b"")
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "full.jpg")
    full = (root / "full.jpg").read_bytes()
    (root / "full.jpg").unlink()
    (root / "broken/truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "broken/text.jpg").write_text("this is not a JPEG\n")

    # Everything below must be ignored by find_stimuli.
    (root / "notes.txt").write_text("notes")
    (root / "meta.csv").write_text("file,label\n")
    Image.fromarray(CAT).save(root / ".hidden.png")
    Image.fromarray(CAT).save(root / ".git/inside_hidden.png")
    return root


def _rgb(root: Path, rel: str, **kwargs: object) -> np.ndarray:
    image = load_rgb(root / rel, **kwargs)
    assert image.mode == "RGB"
    return np.asarray(image)


def _composite(colour: np.ndarray, alpha: np.ndarray, bg: tuple[int, int, int]) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255.0
    return np.round(a * colour + (1.0 - a) * np.asarray(bg, dtype=np.float64))


# --- find_stimuli -------------------------------------------------------------------


def test_find_stimuli_lists_sorted_relative_posix_paths(stimuli: Path) -> None:
    assert find_stimuli(stimuli) == EXPECTED_LIST
    assert find_stimuli(str(stimuli)) == EXPECTED_LIST


def test_image_extensions_are_lowercase_with_dot() -> None:
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".webp"} <= IMAGE_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)


def test_find_stimuli_follows_symlinked_files(tmp_path: Path) -> None:
    Image.fromarray(CAT).save(tmp_path / "real.png")
    try:
        os.symlink(tmp_path / "real.png", tmp_path / "link.png")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not available here")
    assert find_stimuli(tmp_path) == ["link.png", "real.png"]
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "link.png")), CAT)


def test_find_stimuli_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(StimulusError, match="^stimulus folder not found: .*nope$"):
        find_stimuli(missing)


def test_find_stimuli_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(StimulusError, match="stimulus folder not found: .*x.png .it is a file"):
        find_stimuli(tmp_path / "x.png")


def test_find_stimuli_no_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/meta.csv").write_text("x")
    Image.fromarray(CAT).save(tmp_path / ".hidden.png")  # hidden: neither image nor "other"
    with pytest.raises(StimulusError) as info:
        find_stimuli(tmp_path)
    message = str(info.value)
    assert message.startswith(f"no images in stimulus folder {tmp_path} (looked for .bmp, ")
    assert message.endswith("; found 2 other files)")
    assert "\n" not in message
    assert isinstance(info.value, (UnitrecError, OSError))


# --- load_rgb: formats and modes ------------------------------------------------------


@pytest.mark.parametrize("rel", ["a/cat.png", "UPPER.PNG", "ñandú_日本.png"])
def test_plain_rgb_is_exact(stimuli: Path, rel: str) -> None:
    assert np.array_equal(_rgb(stimuli, rel), CAT)


def test_duplicate_basenames_are_distinct_files(stimuli: Path) -> None:
    assert np.array_equal(_rgb(stimuli, "b/c/cat.png"), OTHER_CAT)


def test_sixteen_bit_grey_is_scaled_not_clipped(stimuli: Path) -> None:
    with Image.open(stimuli / "a/grey16.png") as raw:
        assert raw.mode == "I;16"  # the case the test is about
    expected = np.repeat(GREY[..., None], 3, axis=-1)
    assert np.array_equal(_rgb(stimuli, "a/grey8.png"), expected)
    assert np.array_equal(_rgb(stimuli, "a/grey16.png"), expected)


def test_int32_values_are_clipped_then_divided_by_257(stimuli: Path) -> None:
    # 386/257 = 1.502 -> 2; 70000 and -3 fall outside 0..65535 and are clipped.
    assert _rgb(stimuli, "int32.tif")[0, :, 0].tolist() == [0, 100, 2, 255, 255, 0]


def test_sixteen_bit_rgb_png_equals_eight_bit(stimuli: Path) -> None:
    assert np.array_equal(_rgb(stimuli, "b/rgb16.png"), CAT)


def test_sixteen_bit_rgb_png_rounds_within_one(tmp_path: Path) -> None:
    # PIL reduces 48-bit RGB by the high byte (v // 256); documented as within 1 of v / 257.
    values = np.array([[[0, 128, 129], [385, 386, 32767], [32896, 65279, 65535]]], np.uint16)
    (tmp_path / "odd16.png").write_bytes(_png16(values))
    got = np.asarray(load_rgb(tmp_path / "odd16.png")).astype(int)
    assert np.abs(got - np.round(values / 257)).max() <= 1


def test_sixteen_bit_grey_transparent_value(tmp_path: Path) -> None:
    values = np.array([[0, 1285, 65535]], dtype=np.uint16)
    (tmp_path / "trns16.png").write_bytes(_png16(values, transparent=1285))
    got = np.asarray(load_rgb(tmp_path / "trns16.png", background=(1, 2, 3)))
    assert got[0].tolist() == [[0, 0, 0], [1, 2, 3], [255, 255, 255]]


def test_float_images(stimuli: Path) -> None:
    assert _rgb(stimuli, "float01.tif")[0, :, 1].tolist() == [0, 64, 255]  # [0, 1] range
    assert _rgb(stimuli, "float255.tif")[0, :, 1].tolist() == [0, 100, 255]  # clipped


def test_palette_without_transparency(stimuli: Path) -> None:
    expected = np.array(PALETTE, dtype=np.uint8).reshape(4, 3)[INDICES]
    assert np.array_equal(_rgb(stimuli, "palette.png"), expected)


def test_palette_with_transparency_shows_background(stimuli: Path) -> None:
    expected = np.array(PALETTE, dtype=np.uint8).reshape(4, 3)[INDICES]
    expected[INDICES == 1] = (0, 0, 255)
    assert np.array_equal(_rgb(stimuli, "palette_trns.png", background=(0, 0, 255)), expected)


@pytest.mark.parametrize("bg", [(255, 255, 255), (0, 0, 0), (10, 200, 77)])
def test_rgba_composited_over_background(stimuli: Path, bg: tuple[int, int, int]) -> None:
    got = _rgb(stimuli, "rgba.png", background=bg)
    assert np.abs(got - _composite(COLOURS, ALPHAS, bg)).max() <= 1
    assert got[0, 0].tolist() == list(bg)  # alpha 0: exactly the background
    assert got[1, 2].tolist() == COLOURS[1, 2].tolist()  # alpha 255: exactly the colour


def test_la_composited_over_background(stimuli: Path) -> None:
    bg = (10, 200, 77)
    grey = np.repeat(COLOURS[..., :1], 3, axis=-1)
    got = _rgb(stimuli, "la.png", background=bg)
    assert np.abs(got - _composite(grey, ALPHAS, bg)).max() <= 1
    assert got[0, 0].tolist() == list(bg)
    assert got[1, 2].tolist() == [99, 99, 99]


def test_premultiplied_and_hsv_modes() -> None:
    # PIL cannot write "La", "RGBa" or "HSV" files, so the converter is tested in memory.
    bg = (0, 0, 0)
    rgba_premult = Image.new("RGBa", (1, 1), (50, 25, 10, 128))
    assert np.asarray(_to_rgb(rgba_premult, bg))[0, 0].tolist() == [50, 25, 10]
    la_premult = Image.merge("La", (Image.new("L", (1, 1), 60), Image.new("L", (1, 1), 128)))
    assert np.asarray(_to_rgb(la_premult, (255, 255, 255)))[0, 0].tolist() == [187] * 3
    assert np.asarray(_to_rgb(Image.new("HSV", (1, 1), (0, 255, 255)), bg))[0, 0].tolist() == [
        255, 0, 0,
    ]


def test_one_bit_image(stimuli: Path) -> None:
    assert _rgb(stimuli, "mono.png")[..., 0].tolist() == [[255, 0], [0, 255]]


def test_cmyk_jpeg(stimuli: Path) -> None:
    with Image.open(stimuli / "cmyk.jpg") as raw:
        assert raw.mode == "CMYK"
    got = _rgb(stimuli, "cmyk.jpg").astype(int)
    assert np.abs(got[8, 4] - [255, 0, 0]).max() <= 4
    assert np.abs(got[8, 28] - [0, 255, 255]).max() <= 4


def test_lab_tiff(stimuli: Path) -> None:
    assert _rgb(stimuli, "lab.tif").min() >= 250  # L=100, a=b=0 is white


def test_exif_orientation_png_exact(stimuli: Path) -> None:
    got = _rgb(stimuli, "exif.png")
    assert np.array_equal(got, np.rot90(CAT, k=-1))  # clockwise; shape (5, 6, 3)


def test_exif_orientation_jpeg(stimuli: Path) -> None:
    image = load_rgb(stimuli / "exif.jpg")
    assert image.size == (16, 32)  # stored as 32 x 16
    got = np.asarray(image).astype(int)
    assert np.abs(got[4, 8] - [255, 0, 0]).max() <= 8  # stored left half -> top
    assert np.abs(got[28, 8] - [0, 0, 255]).max() <= 8


def test_animated_gif_first_frame(stimuli: Path) -> None:
    got = _rgb(stimuli, "anim.gif")
    assert got.shape == (4, 4, 3)
    assert (got == [255, 0, 0]).all()


def test_returned_image_is_loaded_and_no_file_left_open(stimuli: Path) -> None:
    fd_dir = Path("/proc/self/fd")
    before = len(os.listdir(fd_dir)) if fd_dir.is_dir() else None
    images = [load_rgb(stimuli / rel) for rel in EXPECTED_LIST if not rel.startswith("broken/")]
    for rel in ("broken/empty.png", "broken/truncated.jpg", "broken/text.jpg"):
        with pytest.raises(StimulusError):
            load_rgb(stimuli / rel)
    if before is not None:
        assert len(os.listdir(fd_dir)) == before
    assert all(getattr(image, "fp", None) is None for image in images)


# --- load_rgb: errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("broken/empty.png", "file is empty"),
        ("broken/truncated.jpg", "image file is truncated"),
        ("broken/text.jpg", "not a recognised image format"),
        ("missing.png", "No such file or directory"),
        ("a", "Is a directory"),
    ],
)
def test_undecodable_files_raise_one_line(stimuli: Path, rel: str, reason: str) -> None:
    path = stimuli / rel
    with pytest.raises(StimulusError) as info:
        load_rgb(path)
    message = str(info.value)
    assert message.startswith(f"cannot decode stimulus {path}: ")
    assert reason in message
    assert "\n" not in message
    assert isinstance(info.value, OSError)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # global PIL state untouched


def test_truncated_png_raises(stimuli: Path, tmp_path: Path) -> None:
    data = (stimuli / "a/cat.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(StimulusError, match=r"^cannot decode stimulus .*cut\.png: "):
        load_rgb(tmp_path / "cut.png")


@pytest.mark.parametrize("bad", [(256, 0, 0), (1, 2), "white", (1.5, 0, 0), (-1, 0, 0)])
def test_bad_background(stimuli: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="background must be three integers"):
        load_rgb(stimuli / "a/cat.png", background=bad)  # type: ignore[arg-type]
