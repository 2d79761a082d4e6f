"""Tests for tools.adjust on the real cat photo (451x300) in tests/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.adjust import (
    ADJUST_OPERATIONS,
    DEFAULT_AMOUNTS,
    AdjustArgs,
    AdjustError,
    adjust,
    adjust_tool,
    expected_direction,
    measure_property,
    output_size,
)
from tools.image_io import load_image

DATA = Path(__file__).resolve().parent / "data"
CAT = DATA / "cat.png"
GEOMETRIC = ("rotate", "flip_horizontal", "flip_vertical", "crop_square")


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return load_image(CAT)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def is_gray(image: Image.Image) -> bool:
    values = pixels(image)
    return bool(np.array_equal(values[..., 0], values[..., 1]) and np.array_equal(values[..., 0], values[..., 2]))


def test_operations_order() -> None:
    assert ADJUST_OPERATIONS == (
        "brightness",
        "contrast",
        "saturation",
        "warmth",
        "black_and_white",
        "sepia",
        "blur",
        "sharpen",
        "rotate",
        "flip_horizontal",
        "flip_vertical",
        "crop_square",
        "vignette",
    )
    assert set(DEFAULT_AMOUNTS) == set(ADJUST_OPERATIONS)


@pytest.mark.parametrize(
    ("operation", "amount", "direction"),
    [
        ("brightness", 0.3, 1),
        ("brightness", -0.3, -1),
        ("brightness", None, 1),
        ("contrast", 0.5, 1),
        ("contrast", -0.5, -1),
        ("saturation", 0.5, 1),
        ("saturation", -0.5, -1),
        ("saturation", -1.0, -1),
        ("warmth", 0.2, 1),
        ("warmth", -0.2, -1),
        ("black_and_white", None, -1),
        ("black_and_white", 0.5, -1),
        ("sepia", None, -1),
        ("sepia", 0.5, -1),
        ("blur", None, -1),
        ("blur", 0.5, -1),
        ("sharpen", None, 1),
        ("sharpen", 3.0, 1),
        ("vignette", None, -1),
        ("vignette", 1.0, -1),
    ],
)
def test_adjust_moves_property(cat: Image.Image, operation: str, amount: float | None, direction: int) -> None:
    before = measure_property(cat, operation)
    after = measure_property(adjust(cat, operation, amount), operation)

    assert expected_direction(operation, amount) == direction
    assert before is not None
    assert after is not None
    assert np.sign(after - before) == direction
    assert abs(after - before) > 0.01 * abs(before)


@pytest.mark.parametrize("operation", GEOMETRIC)
def test_geometric_has_no_measure(cat: Image.Image, operation: str) -> None:
    assert measure_property(cat, operation) is None
    assert expected_direction(operation) == 0


@pytest.mark.parametrize("operation", ["brightness", "contrast", "saturation", "warmth", "vignette", "sepia"])
def test_zero_amount_direction(operation: str) -> None:
    assert expected_direction(operation, 0.0) == 0


def test_brightness_multiplies(cat: Image.Image) -> None:
    brighter = pixels(adjust(cat, "brightness", 0.3))
    expected = np.clip(np.rint(pixels(cat) * 1.3), 0, 255)

    assert np.abs(brighter - expected).max() <= 1


@pytest.mark.parametrize("name", ["cat.png", "coffee_rgba.png"])
def test_sepia_measured_on_red_photo(name: str) -> None:
    photo = load_image(DATA / name)

    assert measure_property(adjust(photo, "sepia"), "sepia") < measure_property(photo, "sepia")


def test_black_and_white_luma(cat: Image.Image) -> None:
    gray = adjust(cat, "black_and_white")
    values = pixels(cat).astype(np.float64)
    luma = np.rint(values @ np.array([0.299, 0.587, 0.114]))

    assert is_gray(gray)
    assert np.abs(pixels(gray)[..., 0] - luma).max() <= 1
    assert measure_property(gray, "black_and_white") == 0.0


def test_saturation_minus_one_gray(cat: Image.Image) -> None:
    assert is_gray(adjust(cat, "saturation", -1.0))


@pytest.mark.parametrize(
    ("operation", "amount"),
    [
        ("contrast", 0.5),
        ("contrast", -0.4),
        ("brightness", 0.3),
        ("vignette", 0.8),
        ("blur", 3.0),
        ("sharpen", 2.0),
        ("rotate", 30.0),
        ("rotate", 90.0),
        ("crop_square", None),
    ],
)
def test_gray_stays_gray(cat: Image.Image, operation: str, amount: float | None) -> None:
    gray = adjust(cat, "black_and_white")

    assert is_gray(adjust(gray, operation, amount))


def test_vignette_centre_unchanged(cat: Image.Image) -> None:
    result = pixels(adjust(cat, "vignette", 1.0))
    original = pixels(cat)

    assert np.array_equal(result[120:180, 190:260], original[120:180, 190:260])
    assert result[0, 0].max() <= 2
    assert result[:20, :20].mean() < original[:20, :20].mean()


def test_rotate_90_size(cat: Image.Image) -> None:
    rotated = adjust(cat, "rotate", 90)

    assert rotated.size == (300, 451)
    assert output_size((451, 300), "rotate", 90) == (300, 451)


def test_rotate_clockwise(cat: Image.Image) -> None:
    marked = cat.copy()
    marked.paste((255, 0, 0), (0, 0, 10, 10))

    quarter = adjust(marked, "rotate", 90)
    nearly_quarter = adjust(marked, "rotate", 91)

    # Clockwise turns the top-left corner into the top-right corner.
    assert quarter.getpixel((quarter.width - 1, 0)) == (255, 0, 0)
    assert nearly_quarter.getpixel((nearly_quarter.width - 8, 8))[0] > 200
    assert nearly_quarter.getpixel((nearly_quarter.width - 8, 8))[2] < 60


@pytest.mark.parametrize("degrees", [-90, 270, 450, 180, 360, 0])
def test_rotate_right_angles_lossless(cat: Image.Image, degrees: float) -> None:
    transposes = {
        270: Image.Transpose.ROTATE_90,
        180: Image.Transpose.ROTATE_180,
        90: Image.Transpose.ROTATE_270,
    }
    clockwise = degrees % 360
    expected = cat.transpose(transposes[clockwise]) if clockwise else cat

    assert np.array_equal(pixels(adjust(cat, "rotate", degrees)), pixels(expected))


@pytest.mark.parametrize(("degrees", "size"), [(45, (532, 532)), (30, (541, 486)), (-10, (497, 374))])
def test_rotate_arbitrary_expands(cat: Image.Image, degrees: float, size: tuple[int, int]) -> None:
    rotated = adjust(cat, "rotate", degrees)

    assert rotated.size == size
    assert output_size(cat.size, "rotate", degrees) == size
    assert rotated.getpixel((0, 0)) == (255, 255, 255)


def test_crop_square_centre(cat: Image.Image) -> None:
    square = adjust(cat, "crop_square")

    assert square.size == (300, 300)
    assert output_size((451, 300), "crop_square") == (300, 300)
    assert output_size((200, 640), "crop_square") == (200, 200)
    assert np.array_equal(pixels(square), pixels(cat)[:, 75:375])


def test_flips(cat: Image.Image) -> None:
    horizontal = pixels(adjust(cat, "flip_horizontal"))
    vertical = pixels(adjust(cat, "flip_vertical", 5.0))

    assert np.array_equal(horizontal, pixels(cat)[:, ::-1])
    assert np.array_equal(vertical, pixels(cat)[::-1])


@pytest.mark.parametrize("operation", [name for name in ADJUST_OPERATIONS if name not in ("rotate", "crop_square")])
def test_size_preserved(cat: Image.Image, operation: str) -> None:
    assert adjust(cat, operation).size == (451, 300)
    assert output_size((451, 300), operation) == (451, 300)


def test_adjust_deterministic(cat: Image.Image) -> None:
    for operation in ADJUST_OPERATIONS:
        assert np.array_equal(pixels(adjust(cat, operation)), pixels(adjust(cat, operation)))


def test_adjust_accepts_rgba() -> None:
    rgba = Image.new("RGBA", (4, 4), (100, 100, 100, 255))

    result = adjust(rgba, "brightness", 0.5)

    assert result.mode == "RGB"
    assert result.getpixel((0, 0)) == (150, 150, 150)


def test_unknown_operation_message(cat: Image.Image) -> None:
    with pytest.raises(AdjustError) as caught:
        adjust(cat, "brighten")

    message = str(caught.value)
    assert message.startswith("unknown adjust operation 'brighten' (valid: brightness, contrast,")
    assert "vignette" in message


@pytest.mark.parametrize(
    ("operation", "amount", "message"),
    [
        ("brightness", -1.0, "invalid amount -1 for brightness: expected a value in (-1, 4]"),
        ("brightness", 4.5, "invalid amount 4.5 for brightness: expected a value in (-1, 4]"),
        ("saturation", -1.5, "invalid amount -1.5 for saturation: expected a value in [-1, 4]"),
        ("warmth", 2.0, "invalid amount 2 for warmth: expected a value in [-1, 1]"),
        ("black_and_white", 1.5, "invalid amount 1.5 for black_and_white: expected a value in [0, 1]"),
        ("blur", 0.0, "invalid amount 0 for blur: expected a value in (0, 100]"),
        ("sharpen", 6.0, "invalid amount 6 for sharpen: expected a value in (0, 5]"),
        ("vignette", -0.1, "invalid amount -0.1 for vignette: expected a value in [0, 1]"),
        ("rotate", float("nan"), "invalid amount nan for rotate: expected a finite number"),
    ],
)
def test_amount_out_of_range(cat: Image.Image, operation: str, amount: float, message: str) -> None:
    with pytest.raises(AdjustError) as caught:
        adjust(cat, operation, amount)

    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_validation_shared() -> None:
    with pytest.raises(AdjustError):
        output_size((10, 10), "blur", 0.0)
    with pytest.raises(AdjustError):
        expected_direction("warmth", 3.0)
    with pytest.raises(AdjustError):
        measure_property(Image.new("RGB", (4, 4)), "posterize")


def test_adjust_args_schema() -> None:
    schema = AdjustArgs.model_json_schema()

    assert schema["properties"]["operation"]["enum"] == list(ADJUST_OPERATIONS)
    assert "degrees clockwise" in schema["properties"]["amount"]["description"]
    assert schema["required"] == ["input_path", "output_path", "operation"]


def test_adjust_tool_writes_file(tmp_path: Path) -> None:
    output = tmp_path / "out.png"

    result = adjust_tool.invoke(
        {"input_path": str(CAT), "output_path": str(output), "operation": "brightness", "amount": 0.3}
    )

    assert adjust_tool.name == "adjust"
    assert result == "brightness +0.30: wrote out.png (451x300)"
    assert output.is_file()
    assert Image.open(output).size == (451, 300)
    assert measure_property(load_image(output), "brightness") > measure_property(load_image(CAT), "brightness")


def test_adjust_tool_grayscale_file(tmp_path: Path) -> None:
    output = tmp_path / "gray.jpg"

    result = adjust_tool.invoke(
        {"input_path": str(CAT), "output_path": str(output), "operation": "black_and_white"}
    )

    assert result == "black_and_white +1.00: wrote gray.jpg (451x300)"
    assert Image.open(output).mode == "L"


def test_adjust_tool_geometric_text(tmp_path: Path) -> None:
    result = adjust_tool.invoke(
        {"input_path": str(CAT), "output_path": str(tmp_path / "square.png"), "operation": "crop_square"}
    )

    assert result == "crop_square: wrote square.png (300x300)"


def test_adjust_tool_error_text(tmp_path: Path) -> None:
    output = tmp_path / "out.png"

    result = adjust_tool.invoke(
        {"input_path": str(CAT), "output_path": str(output), "operation": "blur", "amount": 500.0}
    )

    assert result.startswith("invalid amount 500 for blur: expected a value in (0, 100]")
    assert not output.exists()
