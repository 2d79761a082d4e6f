"""Read, write and store images; input files enter ragedit through `load_image`.

`load_image` turns any supported file into a fully loaded RGB image (EXIF orientation applied, alpha composited on
white, 16-bit scaled to 8-bit) or raises `ImageInputError` with a one-line message for the user. `ArtifactStore`
keeps images as content-addressed PNG files, so the graph state holds only small `ImageRef` records.
`write_image_atomic` writes results without ever leaving a half-written file at the target path.

NOTE: ICC colour profiles are dropped on load, so pixels are treated as sRGB. A wide-gamut photo (Display P3, Adobe
RGB) therefore looks less saturated in the output than in a colour-managed viewer.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
import re
import struct
import tempfile
import threading
import warnings
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from tools.lazy import lazy_attributes

if TYPE_CHECKING:
    from langchain_core.tools import StructuredTool

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

# Pillow opens multi-picture JPEG files (many phone photos) as "MPO", but to a user they are ordinary JPEG files.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_FORMAT_NAMES = {"WEBP": "WebP"}
_SUPPORTED_LIST = ", ".join(_FORMAT_NAMES.get(name, name) for name in SUPPORTED_FORMATS)

_SUFFIX_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "PNG": {"compress_level": 6},
    "JPEG": {"quality": 95},
    "WEBP": {"quality": 95},
    "BMP": {},
    "TIFF": {"compression": "tiff_lzw"},
}

# A fixed zlib level and no metadata make equal pixels give equal PNG bytes, and so equal artifact names. Artifacts
# are written on every step, so the level is 1: it encoded a 451x300 photo in 8 ms (30 ms at level 6), 6% larger.
_PNG_COMPRESS_LEVEL = 1
# Decoded images an ImageCache keeps, counted in pixel bytes: about 50 photos of 1280x1024.
DEFAULT_IMAGE_CACHE_BYTES = 192 * 2**20
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_BOMB_PIXELS_PATTERN = re.compile(r"\((\d+) pixels\)")
_WHITE = (255, 255, 255, 255)

# Errors that Pillow's decoders raise on damaged data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


class ArtifactNotFoundError(FileNotFoundError):
    """Error raised when an artifact that a reference names is missing from the store's folder."""


class ArtifactCorruptError(ValueError):
    """Error raised when an artifact file's content no longer matches its sha256."""


class ImageInputError(ValueError):
    """One-line, user-facing error about an input image (the CLI prints str(err) and exits 2)."""


class ImageRef(TypedDict):
    """Reference to a PNG artifact in an `ArtifactStore`: JSON-native, so it can live in the graph state."""

    sha256: str
    """Hex digest of the PNG artifact's bytes."""
    path: str
    """Absolute path of the artifact file."""
    width: int
    """Width in pixels."""
    height: int
    """Height in pixels."""


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file into a fully loaded, upright RGB image.

    EXIF orientation is applied. Alpha (RGBA, LA, PA, palette or RGB with a transparent colour) is composited on
    white. 16-bit grayscale is scaled from 0..65535 to 0..255, and CMYK and 1-bit images are converted by Pillow.
    Only the first frame of an animated GIF or a multi-page TIFF is returned, with a warning.

    Raises:
        ImageInputError: the file is missing, empty, not an image, in an unsupported format, too large
            (decompression bomb) or truncated.
    """
    file_path = pathlib.Path(path)
    with _open_checked(file_path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            logger.warning(
                "%s has %d frames; only the first frame is edited", file_path.name, frames
            )
        _decode_pixels(image, file_path)
        upright = _apply_exif_orientation(image, file_path.name)

    return _to_rgb(upright, file_path.name)


def image_to_png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG deterministically: fixed compression level, no metadata chunks."""
    clean = image.copy()
    clean.info = {}

    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


class ImageCache:
    """Decoded artifact images of one process, least recently used dropped first once they pass `max_bytes`.

    Graph nodes read the image that the previous node stored; the cache saves that read, its hash check and its decode.
    Images go in and come out as copies, so a caller that changes one cannot change the cached pixels.
    """

    def __init__(self, max_bytes: int = DEFAULT_IMAGE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[tuple[str, str], Image.Image] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, root: pathlib.Path, sha256: str) -> Image.Image | None:
        with self._lock:
            image = self._images.get((str(root), sha256))
            if image is None:
                return None
            self._images.move_to_end((str(root), sha256))
            return image.copy()

    def put(self, root: pathlib.Path, sha256: str, image: Image.Image) -> None:
        size = _pixel_bytes(image)
        if size > self.max_bytes:
            return
        key = (str(root), sha256)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return
            self._images[key] = image.copy()
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= _pixel_bytes(dropped)


def _pixel_bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


class ArtifactStore:
    """Content-addressed PNG artifacts: <root>/<sha256>.png.

    Images are stored in RGB, so an artifact's name depends only on its pixels and size. With a `cache`, images this
    process stored or read are served from memory; without one, every get reads and checks the file.
    """

    def __init__(self, root: str | os.PathLike[str], cache: ImageCache | None = None) -> None:
        self.root: pathlib.Path = pathlib.Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = cache

    def put(self, image: Image.Image) -> ImageRef:
        """Store an image (converted to RGB) and return its reference. Storing the same pixels twice is a no-op."""
        rgb = _to_rgb(image, "image")
        data = image_to_png_bytes(rgb)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha256)

        if not path.exists():
            _write_bytes_atomic(data, path, overwrite=True)
            logger.debug("stored artifact %s (%dx%d)", sha256, rgb.width, rgb.height)
        if self.cache is not None:
            self.cache.put(self.root, sha256, rgb)

        return ImageRef(sha256=sha256, path=str(path), width=rgb.width, height=rgb.height)

    def get(self, ref: ImageRef | str) -> Image.Image:
        """Load an artifact by reference or by sha256 as a fully loaded RGB image.

        Raises:
            ArtifactNotFoundError: no artifact with that sha256 exists under this store's root.
            ArtifactCorruptError: the file's content no longer matches its sha256.
            ValueError: the sha256 is malformed.
        """
        sha256 = ref if isinstance(ref, str) else ref["sha256"]
        path = self.path_for(sha256)
        if self.cache is not None:
            cached = self.cache.get(self.root, sha256)
            if cached is not None:
                return cached

        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(
                f"artifact {sha256} not found in {self.root}: restore the file, check that --home is the folder that "
                f"stored it, or start a new thread for this photo"
            ) from None

        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactCorruptError(
                f"artifact {path} is corrupt: its content hashes to {actual}; restore the file, or start a new thread "
                f"for this photo"
            )

        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
        if self.cache is not None:
            self.cache.put(self.root, sha256, rgb)
        return rgb

    def path_for(self, sha256: str) -> pathlib.Path:
        """Return the artifact path for a sha256 hex digest (the file may not exist yet)."""
        if not _SHA256_PATTERN.match(sha256):
            raise ValueError(
                f"invalid artifact id {sha256!r}: expected a 64-character lowercase sha256 hex digest"
            )
        return self.root / f"{sha256}.png"


def write_image_atomic(
    image: Image.Image, path: str | os.PathLike[str], *, overwrite: bool = False
) -> pathlib.Path:
    """Write an image in the format its suffix names, through a temporary file and an atomic rename.

    An RGB image whose three channels are equal everywhere is saved as grayscale ("L"), so a black-and-white
    result stays a grayscale file. JPEG and WebP use quality 95. Missing parent folders are created.

    Raises:
        ImageInputError: the suffix is not one of .png .jpg .jpeg .webp .bmp .tif .tiff, or the path is a folder.
        FileExistsError: the file exists and `overwrite` is false.
    """
    target = pathlib.Path(path).expanduser().resolve()
    image_format = _format_for_suffix(target)
    if target.is_dir():
        raise ImageInputError(f"cannot write {target}: is a directory")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")

    encoded = _encode(_to_file_mode(image), image_format)
    _write_bytes_atomic(encoded, target, overwrite=overwrite)
    logger.debug("wrote %s (%s, %dx%d)", target, image_format, image.width, image.height)
    return target


def describe_image(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an image file's header: path, format, width, height, mode and frames, without decoding pixels.

    Width and height are those of the stored pixels, before EXIF orientation is applied.

    Raises:
        ImageInputError: the same header errors as `load_image`.
    """
    file_path = pathlib.Path(path)
    with _open_checked(file_path) as image:
        return {
            "path": str(file_path.expanduser().resolve()),
            "format": _canonical_format(image.format),
            "width": image.width,
            "height": image.height,
            "mode": image.mode,
            "frames": getattr(image, "n_frames", 1),
        }


def _open_checked(path: pathlib.Path) -> Image.Image:
    """Open an image lazily and check that it exists, is a supported format and is not a decompression bomb."""
    name = path.name
    _check_file(path)

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that, but such an image is rejected as well.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(_bomb_message(name, err)) from None
    except UnidentifiedImageError:
        raise ImageInputError(
            f"cannot read {name}: not an image file (supported: {_SUPPORTED_LIST})"
        ) from None
    except PermissionError:
        raise ImageInputError(f"cannot read {name}: permission denied") from None
    except _DECODE_ERRORS:
        raise ImageInputError(
            f"cannot read {name}: the image data is truncated or corrupt"
        ) from None

    image_format = _canonical_format(image.format)
    if image_format not in SUPPORTED_FORMATS:
        image.close()
        raise ImageInputError(
            f"cannot read {name}: unsupported image format {image_format} (supported: {_SUPPORTED_LIST})"
        )
    return image


def _check_file(path: pathlib.Path) -> None:
    """Raise ImageInputError when the path is missing, a folder or an empty file."""
    name = path.name
    if not path.exists():
        raise ImageInputError(f"cannot read {name}: file not found")
    if path.is_dir():
        raise ImageInputError(f"cannot read {name}: is a directory")
    if path.stat().st_size == 0:
        raise ImageInputError(f"cannot read {name}: the file is empty")


def _decode_pixels(image: Image.Image, path: pathlib.Path) -> None:
    """Decode the current frame's pixels, turning decoder failures into ImageInputError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(_bomb_message(path.name, err)) from None
    except _DECODE_ERRORS:
        raise ImageInputError(
            f"cannot read {path.name}: the image data is truncated or corrupt"
        ) from None


def _apply_exif_orientation(image: Image.Image, name: str) -> Image.Image:
    """Rotate or flip the image to the orientation in its EXIF tag, or copy it as stored when the EXIF is damaged."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as err:
        logger.warning("ignoring the unreadable EXIF orientation of %s: %s", name, err)
        return image.copy()


def _bomb_message(name: str, err: Exception) -> str:
    """Build the message for an image whose pixel count exceeds Pillow's decompression-bomb limit."""
    match = _BOMB_PIXELS_PATTERN.search(str(err))
    pixels = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
    return (
        f"cannot read {name}: the image has {pixels}, more than the limit of "
        f"{Image.MAX_IMAGE_PIXELS:,}; it may be a decompression bomb, so resize it before editing"
    )


def _canonical_format(image_format: str | None) -> str:
    """Map Pillow's format name to the name used in SUPPORTED_FORMATS."""
    if image_format is None:
        return "unknown"
    return _FORMAT_ALIASES.get(image_format, image_format)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert any Pillow mode to RGB: scale high bit depths, composite transparency on white."""
    if image.mode == "RGB":
        return image.copy()

    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        image = _scale_16bit_to_l(image)
    elif image.mode == "F":
        # NOTE: floating-point TIFFs have no standard range, so values are taken as 0..255 and clipped.
        image = image.convert("L")

    if _has_transparency(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")

    try:
        return image.convert("RGB")
    except ValueError:
        raise ImageInputError(
            f"cannot read {name}: unsupported pixel mode {image.mode}; convert it to RGB first"
        ) from None


def _scale_16bit_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit (or 32-bit integer) grayscale image from 0..65535 to 0..255 instead of clipping at 255.

    A 32-bit integer ("I") image whose values all fit in 0..255 contains 8-bit data, so it is kept as it is.
    NOTE: this guess can brighten a very dark 16-bit image that some decoder opened as "I" instead of "I;16".
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode == "I" and values.size and values.min() >= 0 and values.max() <= 255:
        return Image.fromarray(values.astype(np.uint8))
    scaled = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    gray = Image.fromarray(scaled)
    if "transparency" in image.info:
        logger.debug("ignoring the transparent colour of a 16-bit grayscale image")
    return gray


def _has_transparency(image: Image.Image) -> bool:
    """Return whether the image has an alpha channel or a transparent colour."""
    return "A" in image.getbands() or "transparency" in image.info


def _to_file_mode(image: Image.Image) -> Image.Image:
    """Convert to RGB, then to "L" when all three channels are equal, so grayscale results stay grayscale files."""
    rgb = _to_rgb(image, "image")
    rgb.info = {}
    pixels = np.asarray(rgb)
    if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
        return rgb.getchannel(0)
    return rgb


def _format_for_suffix(path: pathlib.Path) -> str:
    """Return the Pillow format for an output suffix, or raise ImageInputError naming the supported ones."""
    suffix = path.suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]

    supported = " ".join(_SUFFIX_FORMATS)
    suffix_text = suffix or "(none)"
    raise ImageInputError(
        f"cannot write {path.name}: unsupported file suffix {suffix_text} (supported: {supported})"
    )


def _encode(image: Image.Image, image_format: str) -> bytes:
    """Encode an image in memory, so a failed encoding never creates a file."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **_SAVE_OPTIONS[image_format])
    return buffer.getvalue()


def _write_bytes_atomic(data: bytes, target: pathlib.Path, *, overwrite: bool) -> None:
    """Write bytes to a temporary file in the target's folder, fsync it, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp_path = pathlib.Path(temp_name)

    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_path, 0o644)
        _move_into_place(temp_path, target, overwrite=overwrite)
    finally:
        temp_path.unlink(missing_ok=True)

    _fsync_folder(target.parent)


def _move_into_place(temp_path: pathlib.Path, target: pathlib.Path, *, overwrite: bool) -> None:
    """Rename the temporary file onto the target; without overwrite, fail if the target appeared meanwhile."""
    if overwrite:
        os.replace(temp_path, target)
        return

    # A hard link fails when the target exists, which closes the gap between the exists check and the rename.
    try:
        os.link(temp_path, target)
    except FileExistsError:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it") from None
    except OSError:
        # Some file systems (FAT, several network mounts) have no hard links.
        if target.exists():
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it") from None
        os.replace(temp_path, target)


def _fsync_folder(folder: pathlib.Path) -> None:
    """Flush the folder entry of a renamed file to disk, where the platform allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        logger.debug("cannot fsync folder %s", folder)
    finally:
        os.close(descriptor)


class ImageInfoArgs(BaseModel):
    """Arguments of the image_info tool."""

    path: str = Field(description="Path of the image file to describe.")


class ConvertImageArgs(BaseModel):
    """Arguments of the convert_image tool."""

    input_path: str = Field(description="Path of the image to read (PNG, JPEG, WebP, BMP, TIFF or GIF).")
    output_path: str = Field(
        description="Path to write; the suffix (.png .jpg .jpeg .webp .bmp .tif .tiff) selects the format."
    )
    overwrite: bool = Field(default=False, description="Replace output_path if it already exists.")


def _image_info(path: str) -> dict[str, Any]:
    """Describe an image file, reporting input errors to the caller as a tool error."""
    try:
        return describe_image(path)
    except ImageInputError as err:
        from langchain_core.tools import ToolException

        raise ToolException(str(err)) from None


def _convert_image(input_path: str, output_path: str, overwrite: bool = False) -> str:
    """Load an image as upright RGB and write it in the format the output suffix names."""
    try:
        image = load_image(input_path)
        written = write_image_atomic(image, output_path, overwrite=overwrite)
    except (ImageInputError, FileExistsError) as err:
        from langchain_core.tools import ToolException

        raise ToolException(str(err)) from None

    file_format = _SUFFIX_FORMATS[written.suffix.lower()]
    input_name = pathlib.Path(input_path).name
    return f"converted {input_name}: wrote {output_path} ({image.width}x{image.height} {file_format})"


def _build_image_info_tool() -> StructuredTool:
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(
        func=_image_info,
        name="image_info",
        description=(
            "Read an image file's header without decoding it. Returns path, format, width, height, mode "
            "(Pillow pixel mode such as RGB, RGBA, L, CMYK) and frames."
        ),
        args_schema=ImageInfoArgs,
        handle_tool_error=True,
    )


def _build_convert_image_tool() -> StructuredTool:
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(
        func=_convert_image,
        name="convert_image",
        description=(
            "Convert an image file to another format (chosen by the output suffix). The output is upright "
            "(EXIF orientation applied), with transparency flattened on white."
        ),
        args_schema=ConvertImageArgs,
        handle_tool_error=True,
    )


__getattr__ = lazy_attributes(__name__, {
    "image_info_tool": _build_image_info_tool,
    "convert_image_tool": _build_convert_image_tool,
})
