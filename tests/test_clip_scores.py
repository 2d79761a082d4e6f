"""CLIP scores computed with a tiny open_clip model loaded through load_clip_embedder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.clip_scores import (
    clip_score_tool,
    directional_similarity,
    image_similarity,
    score_edit,
    text_similarity,
)
from tools.embeddings import ClipEmbedder, load_clip_embedder, load_offline_embedder


def make_photo(seed: int, width: int = 96, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> ClipEmbedder:
    return load_clip_embedder(str(tiny_clip_dir), device="cpu")


def test_identical_images_score_one(clip: ClipEmbedder) -> None:
    photo = make_photo(0)
    assert image_similarity(clip, photo, photo.copy()) == pytest.approx(1.0, abs=1e-5)


def test_different_images_below_one(clip: ClipEmbedder) -> None:
    assert image_similarity(clip, make_photo(0), make_photo(1)) < 0.9999


def test_unchanged_edit_directional_zero(clip: ClipEmbedder) -> None:
    photo = make_photo(0)
    scores = score_edit(clip, photo, photo.copy(), "a bridge", "a bridge under a stormy sky")
    assert scores["clip_directional"] == 0.0
    assert scores["clip_image"] == pytest.approx(1.0, abs=1e-5)


def test_same_captions_directional_zero(clip: ClipEmbedder) -> None:
    assert directional_similarity(clip, make_photo(0), make_photo(1), "a bridge", "a bridge") == 0.0


def test_scores_in_range(clip: ClipEmbedder) -> None:
    scores = score_edit(clip, make_photo(0), make_photo(1), "a bridge", "a bridge under a stormy sky")
    assert set(scores) == {"clip_image", "clip_text", "clip_directional"}
    for name, value in scores.items():
        assert isinstance(value, float), name
        assert -1.0 <= value <= 1.0, name
    assert scores["clip_directional"] != 0.0


def test_parts_match_score_edit(clip: ClipEmbedder) -> None:
    source, edited = make_photo(0), make_photo(1)
    scores = score_edit(clip, source, edited, "a bridge", "a stormy bridge")
    assert scores["clip_image"] == pytest.approx(image_similarity(clip, source, edited), abs=1e-5)
    assert scores["clip_text"] == pytest.approx(text_similarity(clip, edited, "a stormy bridge"), abs=1e-5)
    assert scores["clip_directional"] == pytest.approx(
        directional_similarity(clip, source, edited, "a bridge", "a stormy bridge"), abs=1e-5
    )


def test_reused_source_embedding(clip: ClipEmbedder) -> None:
    source, edited = make_photo(0), make_photo(1)
    source_embedding = clip.embed_images([source])[0]
    reused = score_edit(clip, source, edited, "a bridge", "a stormy bridge", source_embedding=source_embedding)
    fresh = score_edit(clip, source, edited, "a bridge", "a stormy bridge")
    for name in fresh:
        assert reused[name] == pytest.approx(fresh[name], abs=1e-5), name


def test_wrong_source_embedding_size(clip: ClipEmbedder) -> None:
    with pytest.raises(ValueError, match="invalid source_embedding"):
        score_edit(clip, make_photo(0), make_photo(1), "a", "b", source_embedding=np.ones(5, dtype=np.float32))


def test_text_only_embedder_rejected() -> None:
    with pytest.raises(ValueError, match="cannot embed images"):
        image_similarity(load_offline_embedder(), make_photo(0), make_photo(1))


def test_tool_returns_json(tiny_clip_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tools.image_io")
    source_path, edited_path = tmp_path / "source.png", tmp_path / "edited.png"
    make_photo(0).save(source_path)
    make_photo(1).save(edited_path)

    result = json.loads(clip_score_tool.invoke({
        "source_path": str(source_path),
        "edited_path": str(edited_path),
        "source_caption": "a bridge",
        "target_caption": "a bridge under a stormy sky",
        "clip_model": str(tiny_clip_dir),
    }))

    assert clip_score_tool.name == "clip_score"
    assert set(result) == {"clip_image", "clip_text", "clip_directional"}
    assert -1.0 <= result["clip_image"] <= 1.0
