"""Score an edited image against a ground-truth image with the metrics of the MagicBrush benchmark.

The definitions follow MagicBrush's evaluation/image_eval.py (OSU-NLP-Group/MagicBrush):

- l1 and l2: both images in RGB, the output resized to the ground truth's size with bicubic resampling, pixels scaled
  to 0..1; l1 is the mean absolute difference and l2 the mean squared difference (not its root).
- clip_i: cosine of the CLIP image embeddings of the output and the ground truth.
- clip_t: cosine of the output's image embedding and the text embedding of the ground truth's caption.

clip_dir is the directional CLIP similarity of the InstructPix2Pix paper, which MagicBrush does not report: the cosine
of E(output) - E(source) and T(target caption) - T(source caption).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from tools.clip_scores import check_supports_images, cosine_of_differences, cosine_of_unit_vectors
from tools.embeddings import Embedder

METRIC_KEYS: tuple[str, ...] = ("l1", "l2", "clip_i", "clip_t", "clip_dir")


def pixel_distances(output: Image.Image, target: Image.Image) -> tuple[float, float]:
    """Compute MagicBrush's L1 and L2 distances of output to target and return them as (l1, l2).

    The output is first resized to the target's size with bicubic resampling, the default of Image.resize since
    Pillow 7.0, so an output of another resolution is scored against the ground truth's pixels.
    """
    output_rgb = output.convert("RGB")
    target_rgb = target.convert("RGB")
    if output_rgb.size != target_rgb.size:
        output_rgb = output_rgb.resize(target_rgb.size, Image.Resampling.BICUBIC)

    difference = _to_unit_array(output_rgb) - _to_unit_array(target_rgb)
    return float(np.mean(np.abs(difference))), float(np.mean(np.square(difference)))


def score_against_target(
    embedder: Embedder | None,
    source: Image.Image,
    output: Image.Image,
    target: Image.Image,
    source_caption: str | None,
    target_caption: str | None,
) -> dict[str, float | None]:
    """Score one edited image against its ground truth and return the metrics keyed by METRIC_KEYS.

    Args:
        embedder: a CLIP embedder for clip_i, clip_t and clip_dir; None computes only l1 and l2.
        source: the image the edit started from, needed only for clip_dir.
        output: the edited image.
        target: the ground-truth image of the edit.
        source_caption: caption of the source image; clip_dir is None without it.
        target_caption: caption of the ground-truth image; clip_t and clip_dir are None without it.
            An empty or blank caption counts as missing.

    Raises:
        ValueError: the embedder cannot embed images.
    """
    l1, l2 = pixel_distances(output, target)
    scores: dict[str, float | None] = {"l1": l1, "l2": l2, "clip_i": None, "clip_t": None, "clip_dir": None}
    if embedder is None:
        return scores

    check_supports_images(embedder)
    source_text = _present(source_caption)
    target_text = _present(target_caption)
    needs_direction = source_text is not None and target_text is not None

    # The source image only matters for clip_dir, so it is embedded only when both captions exist.
    images = [output, target, source] if needs_direction else [output, target]
    image_vectors = embedder.embed_images(images)
    output_vector, target_vector = image_vectors[0], image_vectors[1]
    scores["clip_i"] = cosine_of_unit_vectors(output_vector, target_vector)

    if target_text is None:
        return scores
    texts = [target_text, source_text] if needs_direction else [target_text]
    text_vectors = embedder.embed_texts(texts)
    scores["clip_t"] = cosine_of_unit_vectors(output_vector, text_vectors[0])

    if needs_direction:
        scores["clip_dir"] = cosine_of_differences(output_vector - image_vectors[2], text_vectors[0] - text_vectors[1])
    return scores


def mean_metrics(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Average each metric over the rows that have a value for it.

    The result has every key of METRIC_KEYS, then any other key found in the rows. A key is None when no row has a
    value for it, so a dataset without captions reports clip_t as None instead of 0.
    """
    keys = list(METRIC_KEYS)
    for row in rows:
        keys.extend(key for key in row if key not in keys)

    means: dict[str, float | None] = {}
    for key in keys:
        values = [float(value) for row in rows if (value := row.get(key)) is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


def _to_unit_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _present(caption: str | None) -> str | None:
    if caption is None or not caption.strip():
        return None
    return caption
