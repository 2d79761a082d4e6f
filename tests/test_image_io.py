"""Tests for tools.image_io on the sample photos and damaged files in tests/data."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.image_io import (
    SUPPORTED_FORMATS,
    ArtifactStore,
    ImageInputError,
    convert_image_tool,
    describe_image,
    image_info_tool,
    image_to_png_bytes,
    load_image,
    write_image_atomic,
)

DATA = Path(__file__).resolve().parent / "data"
BAD = DATA / "bad"
SUPPORTED_TEXT = "(supported: PNG, JPEG, WebP, BMP, TIFF, GIF)"


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def is_gray(image: Image.Image) -> bool:
    values = pixels(image)
    return bool(np.array_equal(values[..., 0], values[..., 1]) and np.array_equal(values[..., 0], values[..., 2]))


def temp_files(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]


def test_supported_formats_constant() -> None:
    assert SUPPORTED_FORMATS == ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


def test_load_rgb_photo() -> None:
    image = load_image(DATA / "cat.png")

    assert image.mode == "RGB"
    assert image.size == (451, 300)
    assert np.array_equal(pixels(image), pixels(Image.open(DATA / "cat.png").convert("RGB")))


def test_load_is_not_lazy(tmp_path: Path) -> None:
    copy = tmp_path / "cat.png"
    copy.write_bytes((DATA / "cat.png").read_bytes())

    image = load_image(copy)
    copy.unlink()

    assert image.getpixel((10, 10)) == Image.open(DATA / "cat.png").convert("RGB").getpixel((10, 10))


def test_load_exif_orientation_upright() -> None:
    stored = Image.open(DATA / "cat_exif_orientation6.jpg")
    image = load_image(DATA / "cat_exif_orientation6.jpg")
    reference = load_image(DATA / "cat.png")

    assert stored.size == (300, 451)
    assert image.size == (451, 300)
    assert image.width > image.height
    assert np.abs(pixels(image) - pixels(reference)).mean() < 5.0


def test_load_rgba_composited_on_white() -> None:
    raw = np.asarray(Image.open(DATA / "coffee_rgba.png"))
    image = pixels(load_image(DATA / "coffee_rgba.png"))
    transparent = np.argwhere(raw[..., 3] == 0)
    opaque = np.argwhere(raw[..., 3] == 255)
    row, column = transparent[0]
    opaque_row, opaque_column = opaque[0]

    assert len(transparent) > 0
    assert tuple(image[row, column]) == (255, 255, 255)
    assert np.all(image[raw[..., 3] == 0] == 255)
    assert tuple(image[opaque_row, opaque_column]) == tuple(raw[opaque_row, opaque_column, :3])


def test_load_16bit_scaled_not_clipped() -> None:
    raw = np.asarray(Image.open(BAD / "cat_16bit.png")).astype(np.float64)
    image = load_image(BAD / "cat_16bit.png")
    values = pixels(image)[..., 0]
    expected = np.rint(raw * 255.0 / 65535.0)

    assert image.mode == "RGB"
    assert is_gray(image)
    assert raw.max() == 49858
    assert values.max() == 194
    assert values.min() == 4
    assert np.array_equal(values, expected)


def test_load_cmyk_converted() -> None:
    image = load_image(DATA / "coffee_cmyk.jpg")
    luma = pixels(image) @ np.array([0.299, 0.587, 0.114])
    gray = np.asarray(Image.open(DATA / "coffee_gray.png"), dtype=np.float64)

    assert image.mode == "RGB"
    assert image.size == (600, 400)
    # An inverted CMYK decode would put the mean luminance near 255 - 103.6.
    assert abs(luma.mean() - gray.mean()) < 3.0
    assert np.abs(luma - gray).mean() < 5.0


def test_load_grayscale() -> None:
    image = load_image(DATA / "coffee_gray.png")
    raw = np.asarray(Image.open(DATA / "coffee_gray.png"))

    assert image.mode == "RGB"
    assert is_gray(image)
    assert np.array_equal(pixels(image)[..., 0], raw)


def test_load_palette_transparency(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    palette_image.putpixel((1, 1), 1)
    path = tmp_path / "palette.png"
    palette_image.save(path, transparency=0)

    image = load_image(path)

    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (200, 30, 30)


def test_load_gray_alpha(tmp_path: Path) -> None:
    gray_alpha = Image.new("LA", (2, 1), (40, 255))
    gray_alpha.putpixel((1, 0), (40, 0))
    path = tmp_path / "gray_alpha.png"
    gray_alpha.save(path)

    image = load_image(path)

    assert image.getpixel((0, 0)) == (40, 40, 40)
    assert image.getpixel((1, 0)) == (255, 255, 255)


def test_load_one_bit(tmp_path: Path) -> None:
    bitmap = Image.new("1", (3, 2), 0)
    bitmap.putpixel((2, 1), 1)
    path = tmp_path / "bitmap.bmp"
    bitmap.save(path)

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((2, 1)) == (255, 255, 255)


def test_load_animated_gif_first_frame(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tools.image_io"):
        image = load_image(BAD / "animated.gif")
    first = Image.open(BAD / "animated.gif").convert("RGB")

    assert image.size == (14, 25)
    assert np.array_equal(pixels(image), pixels(first))
    assert "only the first frame is edited" in caplog.text
    assert "animated.gif" in caplog.text


def test_load_multipage_tiff_first_page(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pages.tif"
    red = Image.new("RGB", (5, 5), (255, 0, 0))
    blue = Image.new("RGB", (5, 5), (0, 0, 255))
    red.save(path, save_all=True, append_images=[blue])

    with caplog.at_level(logging.WARNING, logger="tools.image_io"):
        image = load_image(path)

    assert image.getpixel((2, 2)) == (255, 0, 0)
    assert "2 frames" in caplog.text


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.png", "cannot read empty.png: the file is empty"),
        ("not_an_image.jpg", f"cannot read not_an_image.jpg: not an image file {SUPPORTED_TEXT}"),
        ("truncated.jpg", "cannot read truncated.jpg: the image data is truncated or corrupt"),
        ("missing.png", "cannot read missing.png: file not found"),
    ],
)
def test_load_bad_file_message(name: str, message: str) -> None:
    with pytest.raises(ImageInputError) as caught:
        load_image(BAD / name)

    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_load_directory_message(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()

    with pytest.raises(ImageInputError) as caught:
        load_image(folder)

    assert str(caught.value) == "cannot read photos: is a directory"


@pytest.mark.parametrize(("suffix", "pillow_format"), [(".ico", "ICO"), (".ppm", "PPM")])
def test_load_unsupported_format(tmp_path: Path, suffix: str, pillow_format: str) -> None:
    path = tmp_path / f"cat{suffix}"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path)

    with pytest.raises(ImageInputError) as caught:
        load_image(path)

    expected = f"cannot read cat{suffix}: unsupported image format {pillow_format} {SUPPORTED_TEXT}"
    assert str(caught.value) == expected


@pytest.mark.parametrize("limit", [100_000, 50_000])
def test_load_decompression_bomb(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    # cat.png has 135,300 pixels: above 100,000 Pillow warns, above 2 x 50,000 it raises.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)

    with pytest.raises(ImageInputError) as caught:
        load_image(DATA / "cat.png")

    message = str(caught.value)
    assert message.startswith("cannot read cat.png: ")
    assert "135,300 pixels" in message
    assert "decompression bomb" in message
    assert "\n" not in message


def test_png_bytes_deterministic() -> None:
    image = load_image(DATA / "cat.png")

    assert image_to_png_bytes(image) == image_to_png_bytes(image.copy())


def test_png_bytes_without_metadata() -> None:
    image = load_image(DATA / "cat.png")
    tagged = image.copy()
    # Pillow writes an ICC profile found in image.info into an iCCP chunk unless it is removed.
    tagged.info = {"icc_profile": b"profile bytes"}

    data = image_to_png_bytes(tagged)

    assert data == image_to_png_bytes(image)
    assert b"iCCP" not in data


def test_store_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    image = load_image(DATA / "cat.png")

    ref = store.put(image)
    restored = store.get(ref)

    assert ref["width"] == 451
    assert ref["height"] == 300
    assert Path(ref["path"]).is_absolute()
    assert Path(ref["path"]) == store.path_for(ref["sha256"])
    assert Path(ref["path"]).name == f"{ref['sha256']}.png"
    assert hashlib.sha256(Path(ref["path"]).read_bytes()).hexdigest() == ref["sha256"]
    assert restored.mode == "RGB"
    assert np.array_equal(pixels(restored), pixels(image))


def test_store_identical_content_same_sha(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.put(load_image(DATA / "cat.png"))
    second = store.put(load_image(DATA / "cat.png"))
    flipped = store.put(load_image(DATA / "cat.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT))

    assert first == second
    assert flipped["sha256"] != first["sha256"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"{first['sha256']}.png", f"{flipped['sha256']}.png"]
    )


def test_store_get_by_sha(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put(Image.new("RGB", (3, 2), (1, 2, 3)))

    image = store.get(ref["sha256"])

    assert image.size == (3, 2)
    assert image.getpixel((0, 0)) == (1, 2, 3)


def test_store_put_converts_to_rgb(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    gray_ref = store.put(Image.new("L", (2, 2), 90))
    rgb_ref = store.put(Image.new("RGB", (2, 2), (90, 90, 90)))

    assert gray_ref == rgb_ref
    assert Image.open(gray_ref["path"]).mode == "RGB"


def test_store_get_missing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    sha = "0" * 64

    with pytest.raises(FileNotFoundError) as caught:
        store.get(sha)

    assert sha in str(caught.value)
    assert str(tmp_path.resolve()) in str(caught.value)


def test_store_rejects_bad_sha(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)

    with pytest.raises(ValueError, match="invalid artifact id '../secret'"):
        store.get("../secret")


def test_store_detects_corrupt_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put(Image.new("RGB", (2, 2), (5, 5, 5)))
    Path(ref["path"]).write_bytes(image_to_png_bytes(Image.new("RGB", (2, 2), (6, 6, 6))))

    with pytest.raises(ValueError, match="is corrupt"):
        store.get(ref)


def test_write_png_no_temp_files(tmp_path: Path) -> None:
    image = load_image(DATA / "cat.png")

    written = write_image_atomic(image, tmp_path / "out.png")

    assert written == (tmp_path / "out.png").resolve()
    assert temp_files(tmp_path) == []
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]
    assert np.array_equal(pixels(Image.open(written).convert("RGB")), pixels(image))


def test_write_existing_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")

    with pytest.raises(FileExistsError) as caught:
        write_image_atomic(load_image(DATA / "cat.png"), target)

    assert target.read_bytes() == b"keep me"
    assert "pass --overwrite to replace it" in str(caught.value)
    assert str(target) in str(caught.value)
    assert temp_files(tmp_path) == []


def test_write_overwrite_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    write_image_atomic(load_image(DATA / "cat.png"), target, overwrite=True)

    assert Image.open(target).size == (451, 300)
    assert temp_files(tmp_path) == []


def test_write_grayscale_as_l(tmp_path: Path) -> None:
    gray_rgb = load_image(DATA / "coffee_gray.png")

    written = write_image_atomic(gray_rgb, tmp_path / "gray.png")

    assert Image.open(written).mode == "L"
    assert np.array_equal(np.asarray(Image.open(written)), pixels(gray_rgb)[..., 0])


def test_write_colour_as_rgb(tmp_path: Path) -> None:
    written = write_image_atomic(load_image(DATA / "cat.png"), tmp_path / "colour.png")

    assert Image.open(written).mode == "RGB"


@pytest.mark.parametrize(
    ("suffix", "pillow_format"),
    [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF"), (".TIFF", "TIFF")],
)
def test_write_format_from_suffix(tmp_path: Path, suffix: str, pillow_format: str) -> None:
    written = write_image_atomic(load_image(DATA / "cat.png"), tmp_path / f"out{suffix}")

    with Image.open(written) as reopened:
        assert reopened.format == pillow_format
        assert reopened.size == (451, 300)


def test_write_jpeg_quality(tmp_path: Path) -> None:
    image = load_image(DATA / "cat.png")

    written = write_image_atomic(image, tmp_path / "out.jpg")

    # On cat.png quality 95 gives a mean error of about 1.5 levels, and Pillow's default quality 75 about 2.8.
    assert np.abs(pixels(Image.open(written).convert("RGB")) - pixels(image)).mean() < 2.0


def test_write_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError) as caught:
        write_image_atomic(load_image(DATA / "cat.png"), tmp_path / "out.heic")

    assert str(caught.value) == (
        "cannot write out.heic: unsupported file suffix .heic (supported: .png .jpg .jpeg .webp .bmp .tif .tiff)"
    )
    assert list(tmp_path.iterdir()) == []


def test_write_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"

    written = write_image_atomic(load_image(DATA / "cat.png"), target)

    assert written.is_file()


def test_describe_image_header() -> None:
    info = describe_image(DATA / "cat_exif_orientation6.jpg")

    assert info == {
        "path": str((DATA / "cat_exif_orientation6.jpg").resolve()),
        "format": "JPEG",
        "width": 300,
        "height": 451,
        "mode": "RGB",
        "frames": 1,
    }


def test_describe_image_frames() -> None:
    info = describe_image(BAD / "animated.gif")

    assert info["format"] == "GIF"
    assert info["frames"] == 24
    assert info["mode"] == "P"


def test_describe_image_errors() -> None:
    with pytest.raises(ImageInputError, match="cannot read empty.png: the file is empty"):
        describe_image(BAD / "empty.png")


def test_image_info_tool_invoke() -> None:
    result = image_info_tool.invoke({"path": str(DATA / "coffee_cmyk.jpg")})

    assert image_info_tool.name == "image_info"
    assert result["mode"] == "CMYK"
    assert result["width"] == 600
    assert result["height"] == 400


def test_image_info_tool_error_text() -> None:
    result = image_info_tool.invoke({"path": str(BAD / "not_an_image.jpg")})

    assert result == f"cannot read not_an_image.jpg: not an image file {SUPPORTED_TEXT}"


def test_convert_image_tool_invoke(tmp_path: Path) -> None:
    output = tmp_path / "cat.jpg"

    result = convert_image_tool.invoke(
        {"input_path": str(DATA / "cat_exif_orientation6.jpg"), "output_path": str(output)}
    )

    assert convert_image_tool.name == "convert_image"
    assert result == f"converted cat_exif_orientation6.jpg: wrote {output} (451x300 JPEG)"
    assert Image.open(output).size == (451, 300)


def test_convert_image_tool_existing(tmp_path: Path) -> None:
    output = tmp_path / "cat.png"
    output.write_bytes(b"keep me")

    result = convert_image_tool.invoke({"input_path": str(DATA / "cat.png"), "output_path": str(output)})
    replaced = convert_image_tool.invoke(
        {"input_path": str(DATA / "cat.png"), "output_path": str(output), "overwrite": True}
    )

    assert result == f"{output.resolve()} exists; pass --overwrite to replace it"
    assert replaced.startswith("converted cat.png")
    assert Image.open(output).size == (451, 300)
