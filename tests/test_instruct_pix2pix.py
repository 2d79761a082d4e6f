"""InstructPix2Pix editor: a tiny random pipeline saved to disk and loaded through load_pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.instruct_pix2pix import (
    DEFAULT_MODEL_ID,
    EditorUnavailableError,
    edit_image,
    instruct_pix2pix_tool,
    load_pipeline,
    resolve_device_and_dtype,
    working_size,
)

FAST = {"steps": 2, "max_side": 64, "device": "cpu"}


def make_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Build a colour gradient with noise, so the VAE encodes structure rather than a flat field."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    pixels = np.clip(base * 200 + rng.normal(0, 20, (height, width, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def model(tiny_ip2p_dir: Path) -> str:
    return str(tiny_ip2p_dir)


@pytest.mark.parametrize("size", [(451, 300), (640, 427)])
def test_edit_keeps_input_size(model: str, size: tuple[int, int]) -> None:
    outputs = edit_image(make_photo(*size), "make it snowy", model=model, **FAST)
    assert len(outputs) == 1
    assert outputs[0].size == size
    assert outputs[0].mode == "RGB"


def test_edit_same_seed_repeats(model: str) -> None:
    photo = make_photo(451, 300)
    first = edit_image(photo, "make it snowy", model=model, seed=7, **FAST)[0]
    second = edit_image(photo, "make it snowy", model=model, seed=7, **FAST)[0]
    assert np.array_equal(pixels(first), pixels(second))


def test_edit_other_seed_differs(model: str) -> None:
    photo = make_photo(451, 300)
    first = edit_image(photo, "make it snowy", model=model, seed=7, **FAST)[0]
    other = edit_image(photo, "make it snowy", model=model, seed=8, **FAST)[0]
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_edit_three_images_one_call(model: str) -> None:
    pipeline = load_pipeline(model, device="cpu")
    calls: list[int] = []
    original_call = type(pipeline).__call__

    def counting_call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(kwargs["prompt"]))
        return original_call(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(pipeline), "__call__", counting_call)
        outputs = edit_image(make_photo(451, 300), "make it snowy", model=model, num_images=3, **FAST)

    assert calls == [3]
    assert len(outputs) == 3
    assert all(output.size == (451, 300) for output in outputs)
    assert np.abs(pixels(outputs[0]) - pixels(outputs[1])).mean() > 1.0


def test_edit_negative_prompt_accepted(model: str) -> None:
    outputs = edit_image(make_photo(300, 200), "make it snowy", model=model, num_images=2,
                         negative_prompt="blurry", **FAST)
    assert len(outputs) == 2


def test_edit_rgba_input(model: str) -> None:
    photo = make_photo(120, 90).convert("RGBA")
    outputs = edit_image(photo, "make it snowy", model=model, **FAST)
    assert outputs[0].size == (120, 90)
    assert outputs[0].mode == "RGB"


def test_step_callback_counts_steps(model: str) -> None:
    calls: list[tuple[int, int]] = []
    edit_image(make_photo(200, 150), "make it snowy", model=model, steps=3, max_side=64, device="cpu",
               step_callback=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_load_pipeline_reuses_instance(model: str) -> None:
    first = load_pipeline(model, device="cpu")
    second = load_pipeline(model, device="cpu", dtype="float32")
    assert first is second


def test_load_pipeline_progress_bar_off(model: str) -> None:
    pipeline = load_pipeline(model, device="cpu")
    assert pipeline._progress_bar_config.get("disable") is True


def test_load_pipeline_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EditorUnavailableError, match=str(missing)):
        load_pipeline(str(missing), device="cpu")


def test_load_pipeline_dir_without_index(tmp_path: Path) -> None:
    with pytest.raises(EditorUnavailableError, match="model_index.json"):
        load_pipeline(str(tmp_path), device="cpu")


def test_load_pipeline_hub_id_offline() -> None:
    with pytest.raises(EditorUnavailableError, match="not in the local Hugging Face cache") as caught:
        load_pipeline("ragedit-test/no-such-model", device="cpu")
    assert "ragedit-test/no-such-model" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("steps", 0),
        ("steps", 2.5),
        ("guidance_scale", 0.5),
        ("guidance_scale", float("nan")),
        ("image_guidance_scale", 0.9),
        ("num_images", 0),
        ("seed", -1),
        ("max_side", 16),
    ],
)
def test_edit_rejects_bad_argument(model: str, argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"invalid {argument} {value!r}"):
        edit_image(make_photo(64, 64), "make it snowy", model=model, device="cpu", **{argument: value})


def test_edit_rejects_empty_prompt(model: str) -> None:
    with pytest.raises(ValueError, match="invalid prompt"):
        edit_image(make_photo(64, 64), "  ", model=model, device="cpu")


@pytest.mark.parametrize(
    ("size", "max_side", "multiple", "expected"),
    [
        ((451, 300), 512, 8, (448, 304)),
        ((1024, 768), 512, 8, (512, 384)),
        ((640, 427), 64, 4, (64, 44)),
        ((4000, 10), 512, 64, (512, 64)),
        ((100, 100), 90, 64, (64, 64)),
        ((3, 2), 512, 8, (8, 8)),
    ],
)
def test_working_size_cases(size: tuple[int, int], max_side: int, multiple: int, expected: tuple[int, int]) -> None:
    assert working_size(*size, max_side=max_side, multiple=multiple) == expected


def test_working_size_never_above_max_side() -> None:
    for width in range(60, 700, 37):
        for height in range(60, 700, 41):
            result = working_size(width, height, max_side=100, multiple=8)
            assert max(result) <= 100, (width, height, result)


def test_resolve_cpu_defaults() -> None:
    assert resolve_device_and_dtype("cpu") == ("cpu", torch.float32)


def test_resolve_dtype_names() -> None:
    assert resolve_device_and_dtype("cpu", "bfloat16") == ("cpu", torch.bfloat16)
    assert resolve_device_and_dtype("cuda", None) == ("cuda", torch.float16)
    assert resolve_device_and_dtype("cpu", torch.float16) == ("cpu", torch.float16)


def test_resolve_rejects_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="invalid dtype 'float8'"):
        resolve_device_and_dtype("cpu", "float8")


def test_default_model_id() -> None:
    assert DEFAULT_MODEL_ID == "timbrooks/instruct-pix2pix"


def test_tool_writes_edited_image(model: str, tmp_path: Path) -> None:
    pytest.importorskip("tools.image_io")
    source_path = tmp_path / "source.png"
    output_path = tmp_path / "edited.png"
    # The tool edits at the default max_side of 512, so a small input keeps the working size and the test fast.
    make_photo(96, 64).save(source_path)

    result = json.loads(instruct_pix2pix_tool.invoke({
        "input_path": str(source_path),
        "output_path": str(output_path),
        "prompt": "make it snowy",
        "model": model,
        "steps": 2,
    }))

    assert instruct_pix2pix_tool.name == "instruct_pix2pix"
    assert Path(result["output_path"]) == output_path.resolve()
    assert (result["width"], result["height"]) == (96, 64)
    with Image.open(output_path) as written:
        assert written.size == (96, 64)


# --- awkward inputs: tiny images, long prompts, out of memory ----------------------------------------------------------


def test_too_small_image_rejected_with_minimum(model: str) -> None:
    from tools.instruct_pix2pix import MIN_INPUT_SIDE, EditorInputError

    with pytest.raises(EditorInputError, match=f"image 20x300 is too small .* at least {MIN_INPUT_SIDE} pixels"):
        edit_image(make_photo(20, 300), "make it snowy", model=model, device="cpu", steps=1)


def test_extreme_aspect_keeps_size(model: str) -> None:
    edited = edit_image(make_photo(400, 40), "make it snowy", model=model, device="cpu", steps=1, max_side=64)

    assert edited[0].size == (400, 40)


def test_long_prompt_shortened_to_whole_words() -> None:
    from tests.tiny_models import build_clip_tokenizer
    from tools.instruct_pix2pix import fit_prompt

    tokenizer = build_clip_tokenizer()
    core = "replace the old wooden fishing boat with a bright red sailing yacht"
    prompt = f"{core} (put a sailboat on the lake) " + " ".join(["and keep the tall pine trees"] * 12)
    shortened = fit_prompt(prompt, tokenizer)

    assert len(tokenizer(shortened)["input_ids"]) <= 77
    assert shortened.startswith(core)
    assert "(" not in shortened
    assert prompt.replace("(put a sailboat on the lake) ", "").startswith(shortened)
    assert fit_prompt(core, tokenizer) == core


def test_out_of_memory_retries_smaller(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.instruct_pix2pix as ip2p
    from diffusers import StableDiffusionInstructPix2PixPipeline

    sizes = []
    original = StableDiffusionInstructPix2PixPipeline.__call__

    def fail_when_large(self, *args, **kwargs):
        width = kwargs["image"][0].width
        sizes.append(width)
        if width > 48:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionInstructPix2PixPipeline, "__call__", fail_when_large)
    monkeypatch.setattr(ip2p, "MIN_RETRY_SIDE", 16)
    edited = edit_image(make_photo(96, 64), "make it snowy", model=model, device="cpu", steps=1, max_side=64)

    assert sizes == [64, 48]
    assert edited[0].size == (96, 64)


def test_out_of_memory_everywhere_names_sizes(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.instruct_pix2pix as ip2p
    from diffusers import StableDiffusionInstructPix2PixPipeline

    def always_fail(self, *args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(StableDiffusionInstructPix2PixPipeline, "__call__", always_fail)
    monkeypatch.setattr(ip2p, "MIN_RETRY_SIDE", 40)
    with pytest.raises(ip2p.EditorOutOfMemoryError, match=r"at 64x44, then 48x32 with 1 image"):
        edit_image(make_photo(96, 64), "make it snowy", model=model, device="cpu", steps=1, max_side=64)


def test_other_pipeline_errors_not_retried(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    calls = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(StableDiffusionInstructPix2PixPipeline, "__call__", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        edit_image(make_photo(96, 64), "make it snowy", model=model, device="cpu", steps=1, max_side=64)
    assert calls == [1]
