"""Score an edit with CLIP: image similarity, text similarity and directional similarity.

Every score is a cosine similarity of L2-normalised embeddings, clamped to [-1, 1]. Directional similarity compares
the change in image embedding with the change in caption embedding.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from tools.embeddings import DEFAULT_CLIP_MODEL, Embedder, load_clip_embedder, normalize
from tools.lazy import lazy_attributes

if TYPE_CHECKING:
    from langchain_core.tools import StructuredTool

# Two embeddings of the same pixels differ only by float32 rounding, which stays far below this norm, so a smaller
# difference counts as no change instead of giving a direction made of rounding noise.
_MIN_DIFFERENCE_NORM = 1e-4


class ClipScores(TypedDict):
    """CLIP scores of one edit."""

    clip_image: float
    """Similarity of the edited image to the source image. A high value means the edit preserved the photo."""
    clip_text: float
    """Similarity of the edited image to the target caption."""
    clip_directional: float
    """Cosine of the image embedding change and the caption embedding change, or 0.0 when either is zero."""


def image_similarity(embedder: Embedder, a: Image.Image, b: Image.Image) -> float:
    """Compute the CLIP cosine similarity of two images."""
    check_supports_images(embedder)
    vectors = embedder.embed_images([a, b])
    return cosine_of_unit_vectors(vectors[0], vectors[1])


def text_similarity(embedder: Embedder, image: Image.Image, text: str) -> float:
    """Compute the CLIP cosine similarity of an image and a text."""
    check_supports_images(embedder)
    image_vector = embedder.embed_images([image])[0]
    text_vector = embedder.embed_texts([text])[0]
    return cosine_of_unit_vectors(image_vector, text_vector)


def directional_similarity(
    embedder: Embedder, source: Image.Image, edited: Image.Image, source_caption: str, target_caption: str
) -> float:
    """Compute the cosine of E(edited) - E(source) and E(target_caption) - E(source_caption)."""
    return score_edit(embedder, source, edited, source_caption, target_caption)["clip_directional"]


def score_edit(
    embedder: Embedder,
    source: Image.Image,
    edited: Image.Image,
    source_caption: str,
    target_caption: str,
    *,
    source_embedding: np.ndarray | None = None,
) -> ClipScores:
    """Compute the three CLIP scores of an edit, embedding each image and caption once.

    `source_embedding` is the source image's embedding from an earlier call (embed_images), so a critic that
    scores several attempts on the same source does not embed it again.
    """
    check_supports_images(embedder)
    if source_embedding is None:
        source_vector, edited_vector = embedder.embed_images([source, edited])
    else:
        source_vector = _check_source_embedding(source_embedding, embedder.dim)
        edited_vector = embedder.embed_images([edited])[0]
    source_text_vector, target_text_vector = embedder.embed_texts([source_caption, target_caption])
    return scores_from_vectors(source_vector, edited_vector, source_text_vector, target_text_vector)


def scores_from_vectors(
    source_vector: np.ndarray, edited_vector: np.ndarray, source_text_vector: np.ndarray, target_text_vector: np.ndarray
) -> ClipScores:
    """Compute the three CLIP scores from L2-normalised embeddings of the two images and the two captions."""
    return ClipScores(
        clip_image=cosine_of_unit_vectors(source_vector, edited_vector),
        clip_text=cosine_of_unit_vectors(edited_vector, target_text_vector),
        clip_directional=cosine_of_differences(
            edited_vector - source_vector, target_text_vector - source_text_vector
        ),
    )


def similarity_matrix(image_vectors: np.ndarray, text_vectors: np.ndarray) -> np.ndarray:
    """Return the (images, texts) cosine similarities of L2-normalised embeddings, clamped to [-1, 1]."""
    matrix = np.asarray(image_vectors, dtype=np.float32) @ np.asarray(text_vectors, dtype=np.float32).T
    if not np.all(np.isfinite(matrix)):
        raise ValueError("invalid CLIP similarity: the embeddings contain NaN or infinity")
    return np.clip(matrix, -1.0, 1.0)


def cosine_of_unit_vectors(a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine of two L2-normalised vectors, clamped to [-1, 1]."""
    return _clamp(float(np.dot(a, b)))


def cosine_of_differences(image_change: np.ndarray, text_change: np.ndarray) -> float:
    """Return the cosine of two difference vectors, or 0.0 when either is too short to have a direction."""
    image_norm = float(np.linalg.norm(image_change))
    text_norm = float(np.linalg.norm(text_change))
    if image_norm < _MIN_DIFFERENCE_NORM or text_norm < _MIN_DIFFERENCE_NORM:
        return 0.0
    return _clamp(float(np.dot(image_change, text_change)) / (image_norm * text_norm))


def _clamp(value: float) -> float:
    if not np.isfinite(value):
        raise ValueError(f"invalid CLIP similarity {value}: the embeddings contain NaN or infinity")
    return min(1.0, max(-1.0, value))


def check_supports_images(embedder: Embedder) -> None:
    """Raise ValueError for an embedder that cannot embed images."""
    if not embedder.supports_images:
        raise ValueError(f"embedder {embedder.id} cannot embed images: CLIP scores need a CLIP embedder")


def _check_source_embedding(source_embedding: np.ndarray, dim: int) -> np.ndarray:
    vector = np.asarray(source_embedding, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise ValueError(
            f"invalid source_embedding of shape {np.shape(source_embedding)}: expected {dim} values from the "
            f"same embedder"
        )
    return normalize(vector)


class ClipScoreArgs(BaseModel):
    """Arguments of the clip_score tool."""

    source_path: str = Field(description="Path of the image before the edit.")
    edited_path: str = Field(description="Path of the image after the edit.")
    source_caption: str = Field(description='Caption of the image before the edit, e.g. "a bridge under a blue sky".')
    target_caption: str = Field(description='Caption the edit aims for, e.g. "a bridge under a stormy sky".')
    clip_model: str = Field(
        default=DEFAULT_CLIP_MODEL,
        description="open_clip model name (with its default weights) or a local open_clip directory.",
    )


def _run_clip_score_tool(
    source_path: str,
    edited_path: str,
    source_caption: str,
    target_caption: str,
    clip_model: str = DEFAULT_CLIP_MODEL,
) -> str:
    """Score the edit from source_path to edited_path and return the scores as JSON."""
    from tools.image_io import load_image

    embedder = load_clip_embedder(clip_model)
    scores = score_edit(embedder, load_image(source_path), load_image(edited_path), source_caption, target_caption)
    return json.dumps(scores)


def _build_clip_score_tool() -> StructuredTool:
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(
        func=_run_clip_score_tool,
        name="clip_score",
        description=(
            "Score an image edit with CLIP. Returns JSON with clip_image (similarity to the source image), clip_text "
            "(similarity to the target caption) and clip_directional (image change against caption change), "
            "each from -1 to 1."
        ),
        args_schema=ClipScoreArgs,
    )


__getattr__ = lazy_attributes(__name__, {"clip_score_tool": _build_clip_score_tool})
