"""Edit an image from a written instruction with InstructPix2Pix (diffusers' StableDiffusionInstructPix2PixPipeline).

The pipeline is loaded once per process for each (model, device, dtype, EditorOptions) and reused. torch and diffusers
are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import BaseModel, Field

from tools.lazy import lazy_attributes

if TYPE_CHECKING:
    import torch
    from langchain_core.tools import StructuredTool
    from diffusers import StableDiffusionInstructPix2PixPipeline

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "timbrooks/instruct-pix2pix"

# Names of the torch dtypes the editor loads, as `dtype` accepts them.
DTYPE_NAMES = ("float16", "bfloat16", "float32")
_TRUE_VALUES = ("1", "true", "yes", "on")


class EditorUnavailableError(RuntimeError):
    """Error raised when the InstructPix2Pix weights cannot be loaded. The message names the model and the fix."""


class EditorInputError(ValueError):
    """Error raised for an image the editor cannot work on, such as one smaller than MIN_INPUT_SIDE."""


class EditorOutOfMemoryError(RuntimeError):
    """Error raised when the device ran out of memory at every working size tried. The message names the sizes."""


class EditorOptionsError(EditorUnavailableError):
    """Error raised when the editor options cannot work on the device, such as cpu_offload on a cpu device."""


@dataclass(frozen=True)
class EditorOptions:
    """Memory and speed options of a loaded pipeline. Each set of options loads its own pipeline.

    Attributes:
        attention_slicing: compute attention in slices (diffusers' SlicedAttnProcessor) to lower peak memory. It
            replaces the UNet's scaled-dot-product attention, so each step is slower.
        cpu_offload: keep the models in CPU memory and move each one to the accelerator only while it runs
            (pipeline.enable_model_cpu_offload). It needs a cuda or mps device.
        compile_unet: compile the UNet with torch.compile. The first edit at each working size compiles, which takes
            seconds to minutes; later edits at that size run faster.
    """

    attention_slicing: bool = False
    cpu_offload: bool = False
    compile_unet: bool = False


# Shortest side the generative editor accepts. Smaller images would be scaled up from a few pixels to the model's
# minimum of 64, so the edit could not keep anything of them.
MIN_INPUT_SIDE = 32
# After running out of memory, the editor retries with the longest working side scaled by this factor, down to
# MIN_RETRY_SIDE.
OOM_SHRINK = 0.75
MIN_RETRY_SIDE = 256


@dataclass
class _LoadedPipeline:
    pipeline: StableDiffusionInstructPix2PixPipeline
    # A diffusers pipeline keeps per-call state (scheduler timesteps, guidance settings), so calls must not overlap.
    lock: threading.Lock = field(default_factory=threading.Lock)


_pipelines: dict[tuple[str, str, str, EditorOptions], _LoadedPipeline] = {}
_pipelines_lock = threading.Lock()


def resolve_device_and_dtype(
    device: str | None = None, dtype: str | torch.dtype | None = None
) -> tuple[str, torch.dtype]:
    """Pick the torch device and dtype: cuda or mps with float16 when present, else cpu with float32.

    `dtype` accepts a torch.dtype or one of the names "float16", "bfloat16" and "float32".
    """
    import torch

    if not device:
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"

    if dtype is None:
        device_type = torch.device(device).type
        resolved = torch.float16 if device_type in ("cuda", "mps") else torch.float32
    elif isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype in DTYPE_NAMES:
        resolved = getattr(torch, dtype)
    else:
        raise ValueError(f"invalid dtype {dtype!r}: use one of {', '.join(DTYPE_NAMES)}")
    return device, resolved


def load_pipeline(
    model: str = DEFAULT_MODEL_ID,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    options: EditorOptions | None = None,
) -> StableDiffusionInstructPix2PixPipeline:
    """Load the InstructPix2Pix pipeline from a hub id or a local directory, or return the one already loaded.

    `options` (None means EditorOptions()) sets attention slicing, CPU offload and UNet compilation. A pipeline is
    reused only by calls with the same model, device, dtype and options.

    Raises EditorUnavailableError when the weights are neither a valid local directory, nor in the local Hugging Face
    cache, nor downloadable, and its subclass EditorOptionsError when the options cannot work on the device.
    """
    return _load_entry(model, device=device, dtype=dtype, options=options).pipeline


def check_editor_options(options: EditorOptions, device: str | None = None) -> None:
    """Raise EditorOptionsError when `options` cannot work on `device` (None checks the device that would be picked)."""
    resolved_device, _ = resolve_device_and_dtype(device)
    _check_options_for_device(options, resolved_device)


def working_size(width: int, height: int, *, max_side: int = 512, multiple: int = 8) -> tuple[int, int]:
    """Compute the size the editor works at: the aspect ratio kept, the longer side scaled down to at most `max_side`.

    Each side is rounded to the nearest multiple of `multiple`, and to at least `multiple`. A side that rounding would
    push above `max_side` is rounded down instead. Images smaller than `max_side` are not scaled up.
    """
    if width < 1 or height < 1:
        raise ValueError(f"invalid image size {width}x{height}: both sides must be at least 1 pixel")
    if multiple < 1:
        raise ValueError(f"invalid multiple {multiple}: use 1 or more")
    if max_side < multiple:
        raise ValueError(f"invalid max_side {max_side}: use at least the multiple {multiple}")

    scale = min(1.0, max_side / max(width, height))
    return _round_side(width * scale, multiple, max_side), _round_side(height * scale, multiple, max_side)


def edit_image(
    image: Image.Image,
    prompt: str,
    *,
    model: str = DEFAULT_MODEL_ID,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 7.5,
    image_guidance_scale: float = 1.5,
    num_images: int = 1,
    negative_prompt: str | None = None,
    max_side: int = 512,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    options: EditorOptions | None = None,
    step_callback: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """Edit `image` as `prompt` instructs and return `num_images` results, each the size of the input.

    Args:
        image: the photo to edit; it is converted to RGB (transparent areas become white).
        prompt: the edit instruction, e.g. "make the sky stormy".
        model: a Hugging Face model id or a local diffusers directory.
        seed: seed of the first output's CPU random generator. Output i uses seed + i, so a single call with that
            seed makes it again. The same seed, settings and device give the same output.
        steps: denoising steps (default 20); more steps are slower and usually cleaner.
        guidance_scale: text guidance (default 7.5); higher follows the instruction more strongly.
        image_guidance_scale: image guidance (default 1.5); higher stays closer to the input image.
        num_images: outputs generated in one batched call, each from its own noise (seed + i).
        negative_prompt: what the edit should avoid, or None.
        max_side: maximum length in pixels of the longer side of the image the model works on. The outputs are
            resized back to the input size.
        device: torch device; None picks cuda, then mps, then cpu.
        dtype: torch dtype or its name; None picks float16 on cuda and mps, float32 on cpu.
        options: attention slicing, CPU offload and UNet compilation of the loaded pipeline (see EditorOptions);
            None means all off.
        step_callback: called as step_callback(step, total) after each denoising step, with step counting from 1.

    Raises:
        EditorInputError: a side of the image is shorter than MIN_INPUT_SIDE.
        EditorOutOfMemoryError: the device ran out of memory at every working size down to MIN_RETRY_SIDE.
        EditorUnavailableError: the weights cannot be loaded.
        EditorOptionsError: the options cannot work on the device (cpu_offload on cpu).
    """
    _check_edit_arguments(image, prompt, seed, steps, guidance_scale, image_guidance_scale, num_images,
                          negative_prompt, max_side)
    entry = _load_entry(model, device=device, dtype=dtype, options=options)
    pipeline = entry.pipeline

    source = _to_rgb(image)
    if min(source.size) < MIN_INPUT_SIDE:
        raise EditorInputError(
            f"image {source.width}x{source.height} is too small for InstructPix2Pix: both sides must be at least "
            f"{MIN_INPUT_SIDE} pixels; adjust edits (brightness, contrast, colour, rotation) still work on it"
        )

    tried: list[str] = []
    side = max_side
    while True:
        work_size = working_size(*source.size, max_side=side, multiple=_size_multiple(pipeline))
        try:
            images = _run_pipeline(entry, source.resize(work_size, Image.Resampling.LANCZOS), prompt, seed, steps,
                                   guidance_scale, image_guidance_scale, num_images, negative_prompt, step_callback)
            break
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are retried, the rest re-raised
            if not _is_out_of_memory(error):
                raise
            tried.append(f"{work_size[0]}x{work_size[1]}")
            _free_device_memory()
            side = int(side * OOM_SHRINK)
            if side < MIN_RETRY_SIDE:
                raise EditorOutOfMemoryError(
                    f"out of memory running InstructPix2Pix at {', then '.join(tried)} with {num_images} image(s); "
                    f"lower --max-side or --candidates, or use another device"
                ) from None
            logger.warning("out of memory at %s; retrying at a longest side of %d pixels", tried[-1], side)

    logger.info("InstructPix2Pix edited %dx%d at %dx%d with %d steps, %d image(s)",
                source.width, source.height, *work_size, steps, num_images)
    return [output.resize(source.size, Image.Resampling.LANCZOS) for output in images]


def _run_pipeline(
    entry: _LoadedPipeline,
    work_image: Image.Image,
    prompt: str,
    seed: int,
    steps: int,
    guidance_scale: float,
    image_guidance_scale: float,
    num_images: int,
    negative_prompt: str | None,
    step_callback: Callable[[int, int], None] | None,
) -> list[Image.Image]:
    import torch

    # diffusers 0.42 deprecates repeating one input image for num_images_per_prompt, so the batch lists the prompt
    # and the image once per output. It is still one pipeline call, and each output gets its own noise.
    negative_prompts = None if negative_prompt is None else [negative_prompt] * num_images
    with entry.lock:
        started = time.perf_counter()
        result = entry.pipeline(
            prompt=[prompt] * num_images,
            image=[work_image] * num_images,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            negative_prompt=negative_prompts,
            num_images_per_prompt=1,
            generator=[torch.Generator("cpu").manual_seed(seed + index) for index in range(num_images)],
            callback_on_step_end=_make_step_end_callback(step_callback, steps),
            output_type="pil",
        )
        logger.info("pipeline call at %dx%d took %.1f s", *work_image.size, time.perf_counter() - started)
    return list(result.images)


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(error, out_of_memory) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fit_prompt(prompt: str, tokenizer: Any) -> str:
    """Shorten a prompt to the text encoder's token limit on purpose, keeping its start and whole words.

    A rephrasing in parentheses goes first, then words from the end, so the subtask's core stays. The prompt is
    returned unchanged when it fits.
    """
    limit = int(getattr(tokenizer, "model_max_length", 77))
    if _token_count(prompt, tokenizer) <= limit:
        return prompt
    shortened = re.sub(r"\s*\([^()]*\)", "", prompt).strip() or prompt
    words = shortened.split()
    while len(words) > 1 and _token_count(" ".join(words), tokenizer) > limit:
        words.pop()
    return " ".join(words).rstrip(",;:")


def _token_count(text: str, tokenizer: Any) -> int:
    return len(tokenizer(text, truncation=False)["input_ids"])


def prompt_for_editor(
    prompt: str,
    *,
    model: str = DEFAULT_MODEL_ID,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    options: EditorOptions | None = None,
) -> str:
    """Return the prompt the loaded pipeline's text encoder can take whole (see fit_prompt).

    It loads the pipeline for this device, dtype and options, and edit_image with the same arguments reuses it.
    """
    return fit_prompt(prompt, _load_entry(model, device=device, dtype=dtype, options=options).pipeline.tokenizer)


def _load_entry(
    model: str, *, device: str | None, dtype: str | torch.dtype | None, options: EditorOptions | None
) -> _LoadedPipeline:
    options = options or EditorOptions()
    resolved_device, resolved_dtype = resolve_device_and_dtype(device, dtype)
    _check_options_for_device(options, resolved_device)
    source = _resolve_model_source(model)
    key = (source, resolved_device, str(resolved_dtype), options)

    with _pipelines_lock:
        entry = _pipelines.get(key)
        if entry is None:
            started = time.perf_counter()
            pipeline = _from_pretrained(source, resolved_dtype)
            _apply_options(pipeline, resolved_device, options)
            pipeline.set_progress_bar_config(disable=True)
            logger.info("loaded InstructPix2Pix %s on %s (%s, %s) in %.1f s", source, resolved_device,
                        resolved_dtype, options, time.perf_counter() - started)
            logger.info("InstructPix2Pix attention: %s", describe_attention(pipeline))
            entry = _LoadedPipeline(pipeline)
            _pipelines[key] = entry
    return entry


def _check_options_for_device(options: EditorOptions, device: str) -> None:
    import torch

    if options.cpu_offload and torch.device(device).type == "cpu":
        raise EditorOptionsError(
            f"cannot use cpu_offload on device {device!r}: CPU offload needs a cuda or mps device to move each model "
            "to while it runs; turn cpu_offload off, or select a cuda or mps device"
        )


def _apply_options(pipeline: StableDiffusionInstructPix2PixPipeline, device: str, options: EditorOptions) -> None:
    """Set the attention processors, then place the pipeline on `device` or offload it, then compile the UNet."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    # diffusers 0.42 already picks AttnProcessor2_0 (torch's scaled_dot_product_attention) when torch provides it.
    # Setting it here keeps the editor on SDPA even if that default changes.
    pipeline.unet.set_attn_processor(AttnProcessor2_0())
    pipeline.vae.set_attn_processor(AttnProcessor2_0())
    if options.attention_slicing:
        # This replaces the UNet's processors with SlicedAttnProcessor. The VAE keeps SDPA because AutoencoderKL has
        # no set_attention_slice.
        pipeline.enable_attention_slicing()

    if options.cpu_offload:
        # The offload hooks move each model to `device` when it runs. Moving the whole pipeline there as well would
        # keep every model on the device and undo the memory saving, which diffusers warns about.
        pipeline.enable_model_cpu_offload(device=device)
    else:
        pipeline.to(device)

    if options.compile_unet:
        _compile_unet(pipeline, offloaded=options.cpu_offload)


def _compile_unet(pipeline: StableDiffusionInstructPix2PixPipeline, *, offloaded: bool) -> None:
    import torch

    if offloaded:
        # accelerate's offload hook runs with torch.compiler.disable, which breaks the graph, so fullgraph=True
        # raises. The default mode is what diffusers' compile-and-offload guide uses.
        # NOTE: this path has run only on a cpu, with the offload hooks pointed at the cpu, not yet on a GPU.
        pipeline.unet = torch.compile(pipeline.unet)
        return
    # diffusers' "Accelerate inference" guide compiles the UNet with fullgraph=True, which raises on a graph break
    # instead of running a slower, split graph. Its regional-compilation example uses mode="reduce-overhead": CUDA
    # graphs cut the launch overhead of each denoising step without max-autotune's long kernel search.
    pipeline.unet = torch.compile(pipeline.unet, mode="reduce-overhead", fullgraph=True)


def describe_attention(pipeline: StableDiffusionInstructPix2PixPipeline) -> str:
    """Summarise the attention processors in use, e.g. "UNet AttnProcessor2_0 x12, VAE AttnProcessor2_0 x2"."""
    parts = []
    for label, model in (("UNet", pipeline.unet), ("VAE", pipeline.vae)):
        counts = Counter(type(processor).__name__ for processor in model.attn_processors.values())
        parts.extend(f"{label} {name} x{count}" for name, count in sorted(counts.items()))
    return ", ".join(parts)


def _resolve_model_source(model: str) -> str:
    """Return the absolute path of a local model directory, or the hub id unchanged."""
    if not model or not model.strip():
        raise EditorUnavailableError("invalid InstructPix2Pix model '': pass a Hugging Face model id or a directory")

    path = Path(model).expanduser()
    if not _looks_like_path(model, path):
        return model
    if not path.is_dir():
        raise EditorUnavailableError(
            f"cannot load the InstructPix2Pix weights from {path}: directory not found; "
            f"pass a diffusers directory that contains model_index.json, or a Hugging Face model id"
        )
    if not (path / "model_index.json").is_file():
        raise EditorUnavailableError(
            f"cannot load the InstructPix2Pix weights from {path}: model_index.json is missing; "
            f"pass a directory written by the pipeline's save_pretrained()"
        )
    return str(path.resolve())


def _looks_like_path(model: str, path: Path) -> bool:
    # A hub id is "name" or "owner/name". So an existing path cannot be a hub id, and neither can a string that
    # starts with ".", "~" or "/", or that contains a backslash or two or more slashes.
    if path.exists() or path.is_absolute() or model.startswith((".", "~")):
        return True
    return model.count("/") > 1 or "\\" in model


def _from_pretrained(source: str, dtype: torch.dtype) -> StableDiffusionInstructPix2PixPipeline:
    # diffusers 0.42 renames torch_dtype to dtype and warns, but older releases that pyproject.toml allows know only
    # torch_dtype, so it stays and the rename warning is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`torch_dtype` is deprecated", category=FutureWarning)
        return _from_directory_or_hub(source, dtype)


def _from_directory_or_hub(source: str, dtype: torch.dtype) -> StableDiffusionInstructPix2PixPipeline:
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffusers.utils import logging as diffusers_logging

    # The loader's own progress bar would interleave with the caller's output; load times are logged instead.
    diffusers_logging.disable_progress_bar()

    if Path(source).is_dir():
        try:
            return StableDiffusionInstructPix2PixPipeline.from_pretrained(source, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as error:
            raise EditorUnavailableError(
                f"cannot load the InstructPix2Pix weights from {source}: {_first_line(error)}; "
                f"check that the directory holds a complete diffusers pipeline"
            ) from error

    try:
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(source, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as error:
        cache_error = error
    logger.info("InstructPix2Pix weights %r are not in the local Hugging Face cache: %s",
                source, _first_line(cache_error))

    if _hub_offline():
        raise EditorUnavailableError(
            f"cannot load the InstructPix2Pix weights {source!r}: not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE and connect to the network once to download them "
            f"(several GB), or pass a local directory"
        ) from cache_error
    try:
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(source, torch_dtype=dtype)
    except Exception as error:  # noqa: BLE001 - hub, network and file errors all mean the same to the caller
        raise EditorUnavailableError(
            f"cannot load the InstructPix2Pix weights {source!r}: not in the local Hugging Face cache and the "
            f"download failed ({_first_line(error)}); connect to the network once to download them (several GB), "
            f"or pass a local directory"
        ) from error


def _hub_offline() -> bool:
    import huggingface_hub.constants

    from_env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES
    return from_env or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _round_side(length: float, multiple: int, max_side: int) -> int:
    rounded = max(multiple, round(length / multiple) * multiple)
    if rounded > max_side:
        rounded = max(multiple, int(length // multiple) * multiple)
    return rounded


def _size_multiple(pipeline: StableDiffusionInstructPix2PixPipeline) -> int:
    """Return the pixel multiple that keeps the latents divisible by every UNet downsampling."""
    downsamplings = sum(1 for block in pipeline.unet.down_blocks if getattr(block, "downsamplers", None))
    return pipeline.vae_scale_factor * 2**downsamplings


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _make_step_end_callback(
    step_callback: Callable[[int, int], None] | None, steps: int
) -> Callable[..., dict[str, Any]] | None:
    if step_callback is None:
        return None

    def on_step_end(pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        # PNDM runs one more timestep than requested, so the total is the count the pipeline really runs.
        total = getattr(pipeline, "num_timesteps", None) or steps
        step_callback(step_index + 1, total)
        return callback_kwargs

    return on_step_end


def _check_edit_arguments(
    image: Any,
    prompt: Any,
    seed: Any,
    steps: Any,
    guidance_scale: Any,
    image_guidance_scale: Any,
    num_images: Any,
    negative_prompt: Any,
    max_side: Any,
) -> None:
    if not isinstance(image, Image.Image):
        raise ValueError(f"invalid image {type(image).__name__}: pass a PIL.Image.Image")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"invalid image size {image.width}x{image.height}: both sides must be at least 1 pixel")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"invalid prompt {prompt!r}: pass a non-empty instruction")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError(f"invalid negative_prompt {negative_prompt!r}: pass a string or None")
    _check_int("seed", seed, minimum=0)
    _check_int("steps", steps, minimum=1)
    _check_int("num_images", num_images, minimum=1)
    _check_int("max_side", max_side, minimum=64)
    # The pipeline applies classifier-free guidance only when guidance_scale > 1 and image_guidance_scale >= 1.
    _check_float("guidance_scale", guidance_scale, minimum=1.0)
    _check_float("image_guidance_scale", image_guidance_scale, minimum=1.0)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"invalid {name} {value!r}: use an integer of at least {minimum}")


def _check_float(name: str, value: Any, *, minimum: float) -> None:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not valid or value < minimum or value == float("inf"):
        raise ValueError(f"invalid {name} {value!r}: use a finite number of at least {minimum}")


class InstructPix2PixArgs(BaseModel):
    """Arguments of the instruct_pix2pix tool."""

    input_path: str = Field(description="Path of the image to edit (PNG, JPEG, WebP, BMP, TIFF or GIF).")
    output_path: str = Field(
        description="Path of the image to write; its suffix picks the format (.png, .jpg, .webp, ...)."
    )
    prompt: str = Field(description='The edit instruction, e.g. "make the sky stormy".')
    model: str = Field(default=DEFAULT_MODEL_ID, description="Hugging Face model id or local diffusers directory.")
    seed: int = Field(default=0, ge=0, description="Random seed. The same seed and settings repeat the output.")
    steps: int = Field(default=20, ge=1, description="Denoising steps.")
    guidance_scale: float = Field(default=7.5, ge=1.0, description="Text guidance. Higher follows the prompt more.")
    image_guidance_scale: float = Field(
        default=1.5, ge=1.0, description="Image guidance. Higher stays closer to the input image."
    )
    overwrite: bool = Field(default=False, description="Replace output_path if it already exists.")


def _run_instruct_pix2pix_tool(
    input_path: str,
    output_path: str,
    prompt: str,
    model: str = DEFAULT_MODEL_ID,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 7.5,
    image_guidance_scale: float = 1.5,
    overwrite: bool = False,
) -> str:
    """Edit the image at input_path, write the result to output_path and return a JSON summary."""
    from tools.image_io import load_image, write_image_atomic

    source = load_image(input_path)
    edited = edit_image(source, prompt, model=model, seed=seed, steps=steps, guidance_scale=guidance_scale,
                        image_guidance_scale=image_guidance_scale)[0]
    written = write_image_atomic(edited, output_path, overwrite=overwrite)
    return json.dumps({
        "output_path": str(written),
        "width": edited.width,
        "height": edited.height,
        "prompt": prompt,
        "seed": seed,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "image_guidance_scale": image_guidance_scale,
    })


def _build_instruct_pix2pix_tool() -> StructuredTool:
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(
        func=_run_instruct_pix2pix_tool,
        name="instruct_pix2pix",
        description=(
            "Edit a photo from a plain-language instruction with InstructPix2Pix and write the result, the same size as "
            "the input, to output_path. Returns JSON with the output path, size and the parameters used."
        ),
        args_schema=InstructPix2PixArgs,
    )


__getattr__ = lazy_attributes(__name__, {"instruct_pix2pix_tool": _build_instruct_pix2pix_tool})
