"""Exact, deterministic global adjustments of RGB images (numpy and Pillow only).

Each operation takes one optional amount:

| operation        | amount                                                        | range      | default |
| ---------------- | ------------------------------------------------------------- | ---------- | ------- |
| brightness       | relative change: +0.3 multiplies every channel by 1.3          | (-1, 4]    | 0.25    |
| contrast         | relative change: factor 1 + amount around the mean luminance  | (-1, 4]    | 0.3     |
| saturation       | relative change: factor 1 + amount; -1 removes all colour     | [-1, 4]    | 0.3     |
| warmth           | positive is warmer (more red and yellow, less blue)           | [-1, 1]    | 0.2     |
| black_and_white  | strength; 1 is fully gray (ITU-R 601 luma, R = G = B)         | [0, 1]     | 1.0     |
| sepia            | strength; 1 is luma tinted brown (R:G:B about 1.25:0.94:0.63) | [0, 1]     | 1.0     |
| blur             | Gaussian standard deviation in pixels                         | (0, 100]   | 2.0     |
| sharpen          | unsharp-mask strength: 1 adds 100% of the detail (radius 2)   | (0, 5]     | 1.0     |
| rotate           | degrees clockwise; other than 90/180/270 expands, white fill  | any real   | 90      |
| flip_horizontal  | ignored                                                       | -          | -       |
| flip_vertical    | ignored                                                       | -          | -       |
| crop_square      | ignored; centre crop to the shorter side                      | -          | -       |
| vignette         | strength; corners are scaled by 1 - amount, centre unchanged  | [0, 1]     | 0.5     |

Colour operations apply the same arithmetic to the three channels of a gray pixel, so a grayscale image stays
R = G = B exactly under contrast, brightness, blur, sharpen, vignette and the geometric operations.
`measure_property` and `expected_direction` let a critic check that an edit moved the property it should move.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from PIL import Image, ImageFilter
from pydantic import BaseModel, Field

from tools.image_io import ImageInputError, load_image, write_image_atomic
from tools.lazy import lazy_attributes

if TYPE_CHECKING:
    from langchain_core.tools import StructuredTool

AdjustOperation = Literal[
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
]
ADJUST_OPERATIONS: tuple[str, ...] = get_args(AdjustOperation)

DEFAULT_AMOUNTS: dict[str, float | None] = {
    "brightness": 0.25,
    "contrast": 0.3,
    "saturation": 0.3,
    "warmth": 0.2,
    "black_and_white": 1.0,
    "sepia": 1.0,
    "blur": 2.0,
    "sharpen": 1.0,
    "rotate": 90.0,
    "flip_horizontal": None,
    "flip_vertical": None,
    "crop_square": None,
    "vignette": 0.5,
}

_GEOMETRIC_OPERATIONS = ("rotate", "flip_horizontal", "flip_vertical", "crop_square")

# ITU-R BT.601 luma weights.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Sepia tone: luma times the halfway mix of white and the colour sepia (#704214), scaled to luma 1, so the
# toned image keeps the original's luminance where it does not clip.
_SEPIA_COLOUR = np.array([112, 66, 20], dtype=np.float32) / 255.0
_SEPIA_TONE = (_SEPIA_COLOUR / (_SEPIA_COLOUR @ _LUMA_WEIGHTS) + 1.0) / 2.0

# Per-channel gains at warmth +1: red up, green slightly up (toward yellow), blue down.
_WARMTH_GAINS = np.array([0.25, 0.05, -0.25], dtype=np.float32)

_SHARPEN_RADIUS = 2.0

# Vignette: no darkening inside this normalised radius (0 at the centre, 1 at the corners).
_VIGNETTE_INNER_RADIUS = 0.35

# Corner and centre boxes used to measure a vignette, as a fraction of each side.
_VIGNETTE_BOX_FRACTION = 0.2

_WHITE = (255, 255, 255)
_ANGLE_TOLERANCE = 1e-9


class AdjustError(ValueError):
    """Invalid adjust request: an unknown operation or an amount outside the operation's range."""


@dataclass(frozen=True)
class _AmountRange:
    """Valid amounts of one operation and what they mean, used for validation and messages."""

    low: float
    high: float
    low_inclusive: bool
    high_inclusive: bool
    meaning: str

    def contains(self, amount: float) -> bool:
        above = amount >= self.low if self.low_inclusive else amount > self.low
        below = amount <= self.high if self.high_inclusive else amount < self.high
        return above and below

    def describe(self) -> str:
        opening = "[" if self.low_inclusive else "("
        closing = "]" if self.high_inclusive else ")"
        return f"{opening}{self.low:g}, {self.high:g}{closing}"


_AMOUNT_RANGES: dict[str, _AmountRange] = {
    "brightness": _AmountRange(-1, 4, False, True, "relative change, +0.3 is 30% brighter"),
    "contrast": _AmountRange(-1, 4, False, True, "relative change, +0.3 is 30% more contrast"),
    "saturation": _AmountRange(-1, 4, True, True, "relative change, -1 removes all colour"),
    "warmth": _AmountRange(-1, 1, True, True, "positive is warmer, negative is cooler"),
    "black_and_white": _AmountRange(0, 1, True, True, "strength, 1 is fully gray"),
    "sepia": _AmountRange(0, 1, True, True, "strength, 1 is full sepia"),
    "blur": _AmountRange(0, 100, False, True, "Gaussian standard deviation in pixels"),
    "sharpen": _AmountRange(0, 5, False, True, "unsharp-mask strength, 1 adds 100% of the detail"),
    "vignette": _AmountRange(0, 1, True, True, "strength, 1 turns the corners black"),
}


def adjust(image: Image.Image, operation: str, amount: float | None = None) -> Image.Image:
    """Apply one global adjustment and return a new RGB image. An `amount` of None uses DEFAULT_AMOUNTS.

    Raises:
        AdjustError: unknown operation, or an amount outside the operation's range (see the module table).
    """
    resolved = _resolve_amount(operation, amount)
    rgb = image if image.mode == "RGB" else image.convert("RGB")

    if operation in _GEOMETRIC_OPERATIONS:
        return _apply_geometric(rgb, operation, resolved)
    if operation == "blur":
        return rgb.filter(ImageFilter.GaussianBlur(radius=resolved))
    if operation == "sharpen":
        return _sharpen(rgb, resolved)

    pixels = np.asarray(rgb, dtype=np.float32)
    adjusted = _COLOUR_OPERATIONS[operation](pixels, resolved)
    return _to_image(adjusted)


def output_size(size: tuple[int, int], operation: str, amount: float | None = None) -> tuple[int, int]:
    """Return the (width, height) that `adjust` produces for an input of this size."""
    resolved = _resolve_amount(operation, amount)
    width, height = size

    if operation == "crop_square":
        side = min(width, height)
        return (side, side)
    if operation == "rotate":
        return _rotated_size(size, resolved)
    return (width, height)


def measure_property(image: Image.Image, operation: str) -> float | None:
    """Measure the property an operation changes, or None for geometric operations.

    brightness: mean luminance (0..1). contrast: standard deviation of luminance. saturation and black_and_white:
    mean HSV saturation (0..1). warmth: mean(R) - mean(B) on a 0..1 scale. sepia: mean
    absolute difference from the image's own full-strength sepia toning (0 once fully toned). blur and sharpen: mean absolute
    4-neighbour Laplacian of luminance. vignette: mean luminance of the four corner boxes divided by that of the
    centre box (each box 20% of the width and height), with the centre floored at 1e-6.
    """
    _check_operation(operation)
    if operation in _GEOMETRIC_OPERATIONS:
        return None

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    return float(_MEASURES[operation](pixels))


def expected_direction(operation: str, amount: float | None = None) -> int:
    """Return how the operation moves its measured property: +1 up, -1 down, 0 no measured check.

    An amount of 0 changes nothing, so it also returns 0.
    """
    resolved = _resolve_amount(operation, amount)
    if operation in _GEOMETRIC_OPERATIONS:
        return 0
    if operation == "blur":
        return -1
    if operation == "sharpen":
        return 1

    sign = int(np.sign(resolved))
    if operation in ("black_and_white", "sepia", "vignette"):
        return -sign
    return sign


def _check_operation(operation: str) -> None:
    """Raise AdjustError for an operation name that is not in ADJUST_OPERATIONS."""
    if operation not in ADJUST_OPERATIONS:
        valid = ", ".join(ADJUST_OPERATIONS)
        raise AdjustError(f"unknown adjust operation {operation!r} (valid: {valid})")


def _resolve_amount(operation: str, amount: float | None) -> float | None:
    """Return the amount to use, applying the default and checking the operation's range."""
    _check_operation(operation)
    default = DEFAULT_AMOUNTS[operation]
    if default is None:
        return None
    if amount is None:
        return default

    value = float(amount)
    if not math.isfinite(value):
        raise AdjustError(f"invalid amount {amount} for {operation}: expected a finite number")
    if operation == "rotate":
        return value

    amount_range = _AMOUNT_RANGES[operation]
    if not amount_range.contains(value):
        raise AdjustError(
            f"invalid amount {value:g} for {operation}: expected a value in {amount_range.describe()} "
            f"({amount_range.meaning})"
        )
    return value


def _to_image(pixels: np.ndarray) -> Image.Image:
    """Round float pixels on the 0..255 scale to an 8-bit RGB image."""
    clipped = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(clipped, mode="RGB")


def _luminance(pixels: np.ndarray) -> np.ndarray:
    """Return the ITU-R 601 luma of an (H, W, 3) array, in the array's scale."""
    return pixels @ _LUMA_WEIGHTS


def _brightness(pixels: np.ndarray, amount: float) -> np.ndarray:
    return pixels * np.float32(1.0 + amount)


def _contrast(pixels: np.ndarray, amount: float) -> np.ndarray:
    # One scalar pivot for all channels keeps gray pixels gray.
    pivot = np.float32(_luminance(pixels).mean())
    return pivot + (pixels - pivot) * np.float32(1.0 + amount)


def _saturation(pixels: np.ndarray, amount: float) -> np.ndarray:
    luma = _luminance(pixels)[..., None]
    return luma + (pixels - luma) * np.float32(1.0 + amount)


def _warmth(pixels: np.ndarray, amount: float) -> np.ndarray:
    gains = np.float32(1.0) + _WARMTH_GAINS * np.float32(amount)
    return pixels * gains


def _black_and_white(pixels: np.ndarray, amount: float) -> np.ndarray:
    luma = _luminance(pixels)[..., None]
    if amount >= 1.0:
        # Broadcasting one luma value to three channels makes R = G = B exact after rounding.
        return np.broadcast_to(luma, pixels.shape)
    return pixels + (luma - pixels) * np.float32(amount)


def _sepia(pixels: np.ndarray, amount: float) -> np.ndarray:
    toned = _luminance(pixels)[..., None] * _SEPIA_TONE
    return pixels + (toned - pixels) * np.float32(amount)


def _vignette(pixels: np.ndarray, amount: float) -> np.ndarray:
    height, width = pixels.shape[:2]
    factor = 1.0 - np.float32(amount) * _vignette_falloff(width, height)
    # The same factor for the three channels keeps gray pixels gray.
    return pixels * factor[..., None]


def _vignette_falloff(width: int, height: int) -> np.ndarray:
    """Return the darkening profile: 0 inside the inner radius, rising smoothly to 1 at the corners."""
    x = (np.arange(width, dtype=np.float32) + 0.5) / (width / 2.0) - 1.0
    y = (np.arange(height, dtype=np.float32) + 0.5) / (height / 2.0) - 1.0
    radius = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2) / np.float32(math.sqrt(2.0))

    ramp = np.clip((radius - _VIGNETTE_INNER_RADIUS) / (1.0 - _VIGNETTE_INNER_RADIUS), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


_COLOUR_OPERATIONS = {
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "warmth": _warmth,
    "black_and_white": _black_and_white,
    "sepia": _sepia,
    "vignette": _vignette,
}


def _sharpen(image: Image.Image, amount: float) -> Image.Image:
    percent = max(1, round(amount * 100))
    return image.filter(ImageFilter.UnsharpMask(radius=_SHARPEN_RADIUS, percent=percent, threshold=0))


def _apply_geometric(image: Image.Image, operation: str, amount: float | None) -> Image.Image:
    """Rotate, flip or crop. Right-angle rotations and flips are lossless transposes."""
    if operation == "flip_horizontal":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if operation == "flip_vertical":
        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if operation == "crop_square":
        return _crop_square(image)
    return _rotate_clockwise(image, float(amount if amount is not None else 0.0))


def _crop_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _right_angle(degrees: float) -> int | None:
    """Return 0, 90, 180 or 270 when the clockwise angle is a right-angle multiple, else None."""
    angle = degrees % 360.0
    for candidate in (0, 90, 180, 270, 360):
        if abs(angle - candidate) <= _ANGLE_TOLERANCE:
            return candidate % 360
    return None


# Pillow names transposes counterclockwise.
_CLOCKWISE_TRANSPOSES = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def _rotate_clockwise(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate clockwise; an arbitrary angle expands the canvas to hold the whole image and fills with white."""
    right_angle = _right_angle(degrees)
    if right_angle == 0:
        return image.copy()
    if right_angle is not None:
        return image.transpose(_CLOCKWISE_TRANSPOSES[right_angle])

    new_width, new_height = _rotated_size(image.size, degrees)
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)

    # Pillow's affine data maps each output coordinate back to the input: rotate by -theta about the centres.
    out_cx, out_cy = new_width / 2.0, new_height / 2.0
    in_cx, in_cy = image.width / 2.0, image.height / 2.0
    inverse = (
        cos, sin, in_cx - cos * out_cx - sin * out_cy,
        -sin, cos, in_cy + sin * out_cx - cos * out_cy,
    )
    return image.transform(
        (new_width, new_height),
        Image.Transform.AFFINE,
        inverse,
        resample=Image.Resampling.BICUBIC,
        fillcolor=_WHITE,
    )


def _rotated_size(size: tuple[int, int], degrees: float | None) -> tuple[int, int]:
    """Return the bounding size of an image rotated by `degrees`, matching `_rotate_clockwise`."""
    width, height = size
    right_angle = _right_angle(degrees if degrees is not None else 0.0)
    if right_angle in (0, 180):
        return (width, height)
    if right_angle in (90, 270):
        return (height, width)

    theta = math.radians(degrees)
    cos, sin = abs(math.cos(theta)), abs(math.sin(theta))
    # The small slack keeps float noise (e.g. 300.0000000001) from adding a blank row.
    new_width = math.ceil(width * cos + height * sin - 1e-6)
    new_height = math.ceil(width * sin + height * cos - 1e-6)
    return (max(1, new_width), max(1, new_height))


def _mean_luminance(pixels: np.ndarray) -> float:
    return float(_luminance(pixels).mean())


def _luminance_std(pixels: np.ndarray) -> float:
    return float(_luminance(pixels).std())


def _mean_hsv_saturation(pixels: np.ndarray) -> float:
    high = pixels.max(axis=2)
    low = pixels.min(axis=2)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return float(saturation.mean())


def _red_minus_blue(pixels: np.ndarray) -> float:
    return float(pixels[..., 0].mean() - pixels[..., 2].mean())


def _sharpness(pixels: np.ndarray) -> float:
    """Return the mean absolute 4-neighbour Laplacian of luminance over interior pixels."""
    luma = _luminance(pixels)
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    laplacian = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
    )
    return float(np.abs(laplacian).mean())


def _corner_to_centre_ratio(pixels: np.ndarray) -> float:
    luma = _luminance(pixels)
    height, width = luma.shape
    box_h = max(1, round(height * _VIGNETTE_BOX_FRACTION))
    box_w = max(1, round(width * _VIGNETTE_BOX_FRACTION))

    corners = np.concatenate(
        [
            luma[:box_h, :box_w].ravel(),
            luma[:box_h, width - box_w :].ravel(),
            luma[height - box_h :, :box_w].ravel(),
            luma[height - box_h :, width - box_w :].ravel(),
        ]
    )
    top = (height - box_h) // 2
    left = (width - box_w) // 2
    centre = luma[top : top + box_h, left : left + box_w]
    return float(corners.mean() / max(float(centre.mean()), 1e-6))


def _distance_from_sepia(pixels: np.ndarray) -> float:
    """Mean absolute difference (0..1) between the image and its own full-strength sepia toning."""
    toned = np.clip(_luminance(pixels)[..., None] * _SEPIA_TONE, 0.0, 1.0)
    return float(np.abs(pixels - toned).mean())


_MEASURES = {
    "brightness": _mean_luminance,
    "contrast": _luminance_std,
    "saturation": _mean_hsv_saturation,
    "black_and_white": _mean_hsv_saturation,
    "warmth": _red_minus_blue,
    "sepia": _distance_from_sepia,
    "blur": _sharpness,
    "sharpen": _sharpness,
    "vignette": _corner_to_centre_ratio,
}


class AdjustArgs(BaseModel):
    """Arguments of the adjust tool."""

    input_path: str = Field(description="Path of the image to edit (PNG, JPEG, WebP, BMP, TIFF or GIF).")
    output_path: str = Field(
        description="Path to write the result; the suffix (.png .jpg .jpeg .webp .bmp .tif .tiff) selects the format."
    )
    operation: AdjustOperation = Field(description="The global adjustment to apply.")
    amount: float | None = Field(
        default=None,
        description=(
            "Amount of the operation; omit for the default. "
            "brightness, contrast: relative change in (-1, 4], +0.3 = 30% more (default 0.25, 0.3). "
            "saturation: relative change in [-1, 4], -1 removes colour (default 0.3). "
            "warmth: [-1, 1], positive warmer, negative cooler (default 0.2). "
            "black_and_white, sepia: strength in [0, 1] (default 1). "
            "blur: Gaussian standard deviation in pixels, (0, 100] (default 2). "
            "sharpen: unsharp-mask strength in (0, 5] (default 1). "
            "rotate: degrees clockwise (default 90). "
            "vignette: strength in [0, 1], corner darkening (default 0.5). "
            "flip_horizontal, flip_vertical, crop_square: ignored."
        ),
    )
    overwrite: bool = Field(default=False, description="Replace output_path if it already exists.")


def _run_adjust(
    input_path: str,
    output_path: str,
    operation: str,
    amount: float | None = None,
    overwrite: bool = False,
) -> str:
    """Load an image, apply one adjustment, write the result and describe it in one line."""
    try:
        image = load_image(input_path)
        result = adjust(image, operation, amount)
        write_image_atomic(result, output_path, overwrite=overwrite)
    except (ImageInputError, AdjustError, FileExistsError) as err:
        from langchain_core.tools import ToolException

        raise ToolException(str(err)) from None

    resolved = _resolve_amount(operation, amount)
    label = operation if resolved is None else f"{operation} {resolved:+.2f}"
    name = pathlib.Path(output_path).name
    return f"{label}: wrote {name} ({result.width}x{result.height})"


def _build_adjust_tool() -> StructuredTool:
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(
        func=_run_adjust,
        name="adjust",
        description=(
            "Apply one exact global adjustment to an image file and write the result: brightness, contrast, "
            "saturation, warmth, black_and_white, sepia, blur, sharpen, rotate, flip_horizontal, flip_vertical, "
            "crop_square or vignette."
        ),
        args_schema=AdjustArgs,
        handle_tool_error=True,
    )


__getattr__ = lazy_attributes(__name__, {"adjust_tool": _build_adjust_tool})
