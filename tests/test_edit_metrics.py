"""MagicBrush metrics: pixel distances on constructed images, CLIP metrics with a tiny open_clip model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.edit_metrics import METRIC_KEYS, mean_metrics, pixel_distances, score_against_target
from tools.embeddings import ClipEmbedder, load_clip_embedder, load_offline_embedder

SOURCE_CAPTION = "a bridge under a blue sky"
TARGET_CAPTION = "a bridge under a stormy sky"


def uniform(value: int, size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def gradient(size: tuple[int, int]) -> Image.Image:
    width, height = size
    row = np.linspace(0, 255, width, dtype=np.float64)
    red = np.tile(row, (height, 1))
    green = np.tile(np.linspace(255, 0, height)[:, None], (1, width))
    blue = np.full((height, width), 90.0)
    return Image.fromarray(np.stack([red, green, blue], axis=2).round().astype(np.uint8), "RGB")


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class CountingEmbedder:
    """Real embedder that records each embed call, to check how often a score embeds its inputs."""

    def __init__(self, embedder: ClipEmbedder) -> None:
        self._embedder = embedder
        self.id = embedder.id
        self.dim = embedder.dim
        self.supports_images = embedder.supports_images
        self.image_calls: list[int] = []
        self.text_calls: list[int] = []

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.image_calls.append(len(images))
        return self._embedder.embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_calls.append(len(texts))
        return self._embedder.embed_texts(texts)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> ClipEmbedder:
    return load_clip_embedder(str(tiny_clip_dir), device="cpu")


# --- pixel distances ------------------------------------------------------------------------------------------------


def test_uniform_images_distances() -> None:
    l1, l2 = pixel_distances(uniform(51), uniform(102))
    assert l1 == pytest.approx(0.2, abs=1e-6)
    assert l2 == pytest.approx(0.04, abs=1e-6)


def test_identical_images_distance_zero() -> None:
    image = photo(0)
    assert pixel_distances(image, image.copy()) == (0.0, 0.0)


def test_one_changed_pixel_exact_mean() -> None:
    target = uniform(0, (5, 4))
    output = target.copy()
    output.putpixel((2, 1), (102, 0, 0))
    l1, l2 = pixel_distances(output, target)
    # 20 pixels with 3 channels: one channel differs by 102 / 255 = 0.4.
    assert l1 == pytest.approx(0.4 / 60, abs=1e-9)
    assert l2 == pytest.approx(0.16 / 60, abs=1e-9)


def test_distances_symmetric_for_same_size() -> None:
    assert pixel_distances(photo(1), photo(2)) == pytest.approx(pixel_distances(photo(2), photo(1)))


def test_smaller_output_resized_first() -> None:
    l1, l2 = pixel_distances(uniform(51, (10, 10)), uniform(102, (20, 20)))
    assert l1 == pytest.approx(0.2, abs=1e-6)
    assert l2 == pytest.approx(0.04, abs=1e-6)


def test_output_resized_bicubic() -> None:
    output = gradient((10, 10))
    target = gradient((20, 20))
    resized = np.asarray(output.resize((20, 20), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    difference = resized - np.asarray(target, dtype=np.float64) / 255
    l1, l2 = pixel_distances(output, target)
    assert l1 == pytest.approx(float(np.mean(np.abs(difference))), abs=1e-12)
    assert l2 == pytest.approx(float(np.mean(difference**2)), abs=1e-12)


def test_bicubic_differs_from_nearest() -> None:
    output = gradient((10, 10))
    target = gradient((20, 20))
    nearest = np.asarray(output.resize((20, 20), Image.Resampling.NEAREST), dtype=np.float64) / 255
    nearest_l1 = float(np.mean(np.abs(nearest - np.asarray(target, dtype=np.float64) / 255)))
    assert pixel_distances(output, target)[0] != pytest.approx(nearest_l1, abs=1e-6)


def test_larger_output_resized_to_target() -> None:
    output = gradient((40, 30))
    target = gradient((20, 15))
    resized = np.asarray(output.resize((20, 15), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    expected = float(np.mean(np.abs(resized - np.asarray(target, dtype=np.float64) / 255)))
    assert pixel_distances(output, target)[0] == pytest.approx(expected, abs=1e-12)


def test_modes_converted_to_rgb() -> None:
    gray = Image.new("L", (8, 6), 51)
    transparent = Image.new("RGBA", (8, 6), (51, 51, 51, 0))
    assert pixel_distances(gray, uniform(51)) == (0.0, 0.0)
    assert pixel_distances(transparent, uniform(51)) == (0.0, 0.0)


# --- score_against_target -------------------------------------------------------------------------------------------


def test_scores_without_embedder() -> None:
    scores = score_against_target(None, uniform(0), uniform(51), uniform(102), SOURCE_CAPTION, TARGET_CAPTION)
    assert tuple(scores) == METRIC_KEYS
    assert scores["l1"] == pytest.approx(0.2, abs=1e-6)
    assert scores["l2"] == pytest.approx(0.04, abs=1e-6)
    assert scores["clip_i"] is None
    assert scores["clip_t"] is None
    assert scores["clip_dir"] is None


def test_clip_scores_match_numpy(clip: ClipEmbedder) -> None:
    source, output, target = photo(0), photo(1), photo(2)
    scores = score_against_target(clip, source, output, target, SOURCE_CAPTION, TARGET_CAPTION)

    source_vector, output_vector, target_vector = clip.embed_images([source, output, target])
    source_text, target_text = clip.embed_texts([SOURCE_CAPTION, TARGET_CAPTION])
    assert scores["clip_i"] == pytest.approx(cosine(output_vector, target_vector), abs=1e-5)
    assert scores["clip_t"] == pytest.approx(cosine(output_vector, target_text), abs=1e-5)
    assert scores["clip_dir"] == pytest.approx(
        cosine(output_vector - source_vector, target_text - source_text), abs=1e-4
    )


def test_clip_scores_keep_pixel_distances(clip: ClipEmbedder) -> None:
    scores = score_against_target(clip, uniform(0), uniform(51), uniform(102), SOURCE_CAPTION, TARGET_CAPTION)
    assert scores["l1"] == pytest.approx(0.2, abs=1e-6)
    assert scores["l2"] == pytest.approx(0.04, abs=1e-6)


def test_clip_scores_in_range(clip: ClipEmbedder) -> None:
    scores = score_against_target(clip, photo(3), photo(4), photo(5), SOURCE_CAPTION, TARGET_CAPTION)
    for key in ("clip_i", "clip_t", "clip_dir"):
        value = scores[key]
        assert isinstance(value, float), key
        assert -1.0 <= value <= 1.0, key


def test_output_equal_to_target_clip_i_one(clip: ClipEmbedder) -> None:
    target = photo(6)
    scores = score_against_target(clip, photo(7), target.copy(), target, SOURCE_CAPTION, TARGET_CAPTION)
    assert scores["clip_i"] == pytest.approx(1.0, abs=1e-5)


def test_unchanged_output_directional_zero(clip: ClipEmbedder) -> None:
    source = photo(8)
    scores = score_against_target(clip, source, source.copy(), photo(9), SOURCE_CAPTION, TARGET_CAPTION)
    assert scores["clip_dir"] == 0.0


def test_missing_target_caption_none(clip: ClipEmbedder) -> None:
    scores = score_against_target(clip, photo(0), photo(1), photo(2), SOURCE_CAPTION, None)
    assert isinstance(scores["clip_i"], float)
    assert scores["clip_t"] is None
    assert scores["clip_dir"] is None


def test_missing_source_caption_none(clip: ClipEmbedder) -> None:
    scores = score_against_target(clip, photo(0), photo(1), photo(2), None, TARGET_CAPTION)
    assert isinstance(scores["clip_i"], float)
    assert isinstance(scores["clip_t"], float)
    assert scores["clip_dir"] is None


def test_blank_caption_counts_missing(clip: ClipEmbedder) -> None:
    scores = score_against_target(clip, photo(0), photo(1), photo(2), SOURCE_CAPTION, "  ")
    assert scores["clip_t"] is None
    assert scores["clip_dir"] is None


def test_inputs_embedded_once(clip: ClipEmbedder) -> None:
    counting = CountingEmbedder(clip)
    score_against_target(counting, photo(0), photo(1), photo(2), SOURCE_CAPTION, TARGET_CAPTION)
    assert counting.image_calls == [3]
    assert counting.text_calls == [2]


def test_source_not_embedded_without_captions(clip: ClipEmbedder) -> None:
    counting = CountingEmbedder(clip)
    score_against_target(counting, photo(0), photo(1), photo(2), None, None)
    assert counting.image_calls == [2]
    assert counting.text_calls == []


def test_text_only_embedder_rejected() -> None:
    with pytest.raises(ValueError, match="cannot embed images"):
        score_against_target(load_offline_embedder(), photo(0), photo(1), photo(2), SOURCE_CAPTION, TARGET_CAPTION)


# --- mean_metrics ---------------------------------------------------------------------------------------------------


def test_mean_skips_none() -> None:
    rows = [
        {"l1": 0.1, "l2": 0.01, "clip_i": 0.8, "clip_t": None, "clip_dir": None},
        {"l1": 0.3, "l2": 0.03, "clip_i": 0.6, "clip_t": 0.25, "clip_dir": None},
    ]
    means = mean_metrics(rows)
    assert means["l1"] == pytest.approx(0.2)
    assert means["l2"] == pytest.approx(0.02)
    assert means["clip_i"] == pytest.approx(0.7)
    assert means["clip_t"] == pytest.approx(0.25)
    assert means["clip_dir"] is None


def test_mean_of_no_rows_all_none() -> None:
    assert mean_metrics([]) == {key: None for key in METRIC_KEYS}


def test_mean_keeps_extra_keys() -> None:
    means = mean_metrics([{"l1": 0.5, "seconds": 2.0}, {"l1": 0.25, "seconds": 4.0}])
    assert list(means) == [*METRIC_KEYS, "seconds"]
    assert means["seconds"] == pytest.approx(3.0)
    assert means["l2"] is None


def test_mean_of_scored_rows(clip: ClipEmbedder) -> None:
    rows = [
        score_against_target(clip, photo(0), photo(1), photo(2), SOURCE_CAPTION, TARGET_CAPTION),
        score_against_target(None, photo(0), photo(3), photo(2), None, None),
    ]
    means = mean_metrics(rows)
    assert means["l1"] == pytest.approx((rows[0]["l1"] + rows[1]["l1"]) / 2)
    assert means["clip_i"] == pytest.approx(rows[0]["clip_i"])
