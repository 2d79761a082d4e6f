"""Embedders: a tiny open_clip model loaded from a local directory, the bundled MiniLM, and the rebuilt tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.tiny_models import CLIP_VOCAB_SIZE, build_clip_tokenizer
from tools.embeddings import (
    ClipEmbedder,
    Embedder,
    EmbedderUnavailableError,
    MiniLMEmbedder,
    load_clip_embedder,
    load_offline_embedder,
    normalize,
)

SENTENCES = [
    "a photo of a cat",
    "Make the sky STORMY, and keep the bridge!",
    "café naïve don't",
    "  several   spaces\nand a newline",
    "rotate 90 degrees, brightness +20%",
]


def make_photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> ClipEmbedder:
    return load_clip_embedder(str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return load_offline_embedder()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_clip_tokenizer()


@pytest.mark.parametrize("text", SENTENCES)
def test_tokenizer_matches_open_clip(tokenizer: Any, text: str) -> None:
    import open_clip

    reference = open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()
    end = reference.index(CLIP_VOCAB_SIZE - 1)
    assert tokenizer(text)["input_ids"] == reference[: end + 1]


def test_tokenizer_cat_ids(tokenizer: Any) -> None:
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == CLIP_VOCAB_SIZE
    assert tokenizer.model_max_length == 77


def test_tiny_ip2p_tokenizer_files(tiny_ip2p_dir: Path) -> None:
    vocab = json.loads((tiny_ip2p_dir / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    merges = (tiny_ip2p_dir / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == CLIP_VOCAB_SIZE
    assert vocab["<|startoftext|>"] == 49406
    assert vocab["<|endoftext|>"] == 49407
    assert merges[0] == "#version: 0.2"
    assert len(merges) == 1 + CLIP_VOCAB_SIZE - 512 - 2


def test_clip_text_shape(clip: ClipEmbedder) -> None:
    vectors = clip.embed_texts(["a red car", "a bowl of soup", "a stormy sky"])
    assert clip.dim == 32
    assert vectors.shape == (3, 32)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_clip_image_shape(clip: ClipEmbedder) -> None:
    vectors = clip.embed_images([make_photo(451, 300, 0), make_photo(64, 64, 1).convert("L")])
    assert vectors.shape == (2, 32)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_clip_deterministic(clip: ClipEmbedder) -> None:
    photo = make_photo(120, 80, 2)
    assert np.array_equal(clip.embed_images([photo]), clip.embed_images([photo]))
    assert np.array_equal(clip.embed_texts(["a cat"]), clip.embed_texts(["a cat"]))


def test_clip_distinguishes_inputs(clip: ClipEmbedder) -> None:
    texts = clip.embed_texts(["a red car", "a bowl of soup"])
    images = clip.embed_images([make_photo(64, 64, 3), Image.new("RGB", (64, 64), (250, 250, 250))])
    assert float(texts[0] @ texts[1]) < 0.999
    assert float(images[0] @ images[1]) < 0.999


def test_clip_same_weights_each_build(clip: ClipEmbedder, tmp_path: Path) -> None:
    from tests.tiny_models import build_tiny_clip

    rebuilt = load_clip_embedder(str(build_tiny_clip(tmp_path / "clip")), device="cpu")
    assert np.array_equal(rebuilt.embed_texts(["a cat"]), clip.embed_texts(["a cat"]))


def test_clip_empty_batch(clip: ClipEmbedder) -> None:
    assert clip.embed_texts([]).shape == (0, 32)
    assert clip.embed_images([]).shape == (0, 32)


def test_clip_id_and_protocol(clip: ClipEmbedder, tiny_clip_dir: Path) -> None:
    assert clip.id == f"open_clip:local-dir:{tiny_clip_dir.resolve()}"
    assert clip.supports_images is True
    assert isinstance(clip, Embedder)


def test_clip_loader_caches(clip: ClipEmbedder, tiny_clip_dir: Path) -> None:
    assert load_clip_embedder(str(tiny_clip_dir), device="cpu") is clip
    assert load_clip_embedder(f"local-dir:{tiny_clip_dir}", device="cpu") is clip


def test_clip_rejects_one_string(clip: ClipEmbedder) -> None:
    with pytest.raises(ValueError, match="not one string"):
        clip.embed_texts("a cat")


def test_clip_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-clip"
    with pytest.raises(EmbedderUnavailableError, match=str(missing)):
        load_clip_embedder(str(missing))


def test_clip_dir_without_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_clip_dir / "open_clip_config.json", tmp_path / "open_clip_config.json")
    with pytest.raises(EmbedderUnavailableError, match="no weights file"):
        load_clip_embedder(str(tmp_path))


def test_clip_unknown_name() -> None:
    with pytest.raises(EmbedderUnavailableError, match="unknown open_clip model 'ViT-Nope'"):
        load_clip_embedder("ViT-Nope")


def test_clip_weights_not_cached() -> None:
    # HF_HUB_OFFLINE is set by conftest.py, so a tag whose weights are not cached cannot be downloaded.
    with pytest.raises(EmbedderUnavailableError, match="'ViT-B-32' with weights 'laion2b_s34b_b79k'") as caught:
        load_clip_embedder("ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    assert "\n" not in str(caught.value)


def test_minilm_dim_and_norm(minilm: MiniLMEmbedder) -> None:
    vectors = minilm.embed_texts(["a red car", "a bowl of soup"])
    assert minilm.dim == 384
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_ranks_synonyms(minilm: MiniLMEmbedder) -> None:
    car, synonym, soup = minilm.embed_texts(["a red car", "a crimson automobile", "a bowl of soup"])
    assert float(car @ synonym) > float(car @ soup)


def test_minilm_text_only(minilm: MiniLMEmbedder) -> None:
    assert minilm.supports_images is False
    assert minilm.id == "sentence-transformers:all-MiniLM-L6-v2"
    with pytest.raises(NotImplementedError):
        minilm.embed_images([make_photo(8, 8, 0)])


def test_offline_loader_caches(minilm: MiniLMEmbedder) -> None:
    assert load_offline_embedder() is minilm


def test_normalize_rows() -> None:
    result = normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64))
    assert result.dtype == np.float32
    assert np.allclose(result[0], [0.6, 0.8])
    assert np.array_equal(result[1], [0.0, 0.0])


def test_embed_texts_tool_offline():
    import json

    from tools.embeddings import embed_texts_tool

    result = json.loads(embed_texts_tool.invoke({"texts": ["a red car", "a bowl of soup"]}))
    vectors = np.asarray(result["vectors"])

    assert result["dim"] == 384
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
