"""Per-process resources of a profile: the embedder, the case library and the artifact store.

Models and indexes are loaded once per process and reused across runs and threads. The graph state contains only
names and paths.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from importlib import resources as package_resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from agent.context import Context
from tools.case_store import CASES_FILE, INDEX_FILE, VECTORS_FILE, CaseStore, CaseStoreError
from tools.embeddings import Embedder, load_clip_embedder, load_offline_embedder
from tools.image_io import ArtifactStore, ImageCache, ImageRef

logger = logging.getLogger(__name__)

LIBRARY_FILES = (CASES_FILE, VECTORS_FILE, INDEX_FILE)

_lock = threading.Lock()
# The embedding caches have their own lock: seeding a case library embeds through them while _lock is held.
_embeddings_lock = threading.Lock()
_case_stores: dict[tuple[str, str], CaseStore] = {}
_chat_models: dict[str, Any] = {}
# Decoded artifacts shared by the nodes of every run in this process: each node reads the image the previous one stored.
_image_cache = ImageCache()
# Image embeddings by (embedder id, artifact sha256): the critic embeds a subtask's input image once, not per attempt.
_image_embeddings: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
MAX_CACHED_IMAGE_EMBEDDINGS = 256
# Text embeddings by (embedder id, text): captions and things to keep are embedded once per process.
_text_embeddings: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
MAX_CACHED_TEXT_EMBEDDINGS = 1024


def embedder_for(context: Context) -> Embedder:
    """Return the profile's embedder: CLIP in the full profile, MiniLM offline."""
    if context.profile == "offline":
        return load_offline_embedder()
    return load_clip_embedder(context.clip_model, device=context.device or None)


def clip_for(context: Context) -> Embedder | None:
    """Return the CLIP embedder used by the critic, or None in the offline profile."""
    if context.profile == "offline":
        return None
    return load_clip_embedder(context.clip_model, device=context.device or None)


def artifact_store(context: Context) -> ArtifactStore:
    """Return the profile's artifact store, with the process's cache of decoded images."""
    return ArtifactStore(context.artifact_dir, cache=_image_cache)


def starter_cases() -> list[dict]:
    """Load the starter case library shipped with the package."""
    text = package_resources.files("agent").joinpath("data/starter_cases.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def case_store(context: Context, embedder: Embedder) -> CaseStore:
    """Open the profile's case library, creating it from the starter cases on first use."""
    directory = context.case_library_dir
    key = (str(directory), embedder.id)
    with _lock:
        store = _case_stores.get(key)
        if store is None:
            store = _open_or_seed(directory, embedder)
            _case_stores[key] = store
        return store


def _open_or_seed(directory: Path, embedder: Embedder) -> CaseStore:
    if CaseStore.exists(directory):
        return CaseStore.open(directory, embedder.id, embedder.dim)
    leftovers = [name for name in LIBRARY_FILES if (directory / name).exists()]
    if leftovers:
        # Seeding here would overwrite cases that were learned or ingested; only the user can decide to drop them.
        raise CaseStoreError(
            f"case library {directory} is incomplete: manifest.json is missing but {', '.join(leftovers)} exist; "
            "restore manifest.json, or move the folder away to start a new library"
        )

    started = time.perf_counter()
    cases = starter_cases()
    store = CaseStore.create(directory, embedder.id, embedder.dim)
    # Through the text cache, so a subtask worded like a starter case is not embedded a second time in this run.
    vectors = text_embeddings(embedder, [case["instruction"] for case in cases])
    store.add(cases, vectors)
    logger.info(
        "indexed %d starter cases with %s in %.1f s at %s", len(cases), embedder.id, time.perf_counter() - started, directory
    )
    return store


def image_embedding(
    embedder: Embedder, ref: ImageRef, image: Image.Image | Callable[[], Image.Image]
) -> np.ndarray:
    """Return the embedding of an artifact image, computing it only the first time it is requested.

    `image` may be a function that loads the image, so a cached embedding costs no decode.
    """
    return image_embeddings(embedder, [ref], lambda: [image() if callable(image) else image])[0]


def image_embeddings(
    embedder: Embedder, refs: list[ImageRef], images: list[Image.Image] | Callable[[], list[Image.Image]]
) -> np.ndarray:
    """Return the embeddings of artifact images as an (n, dim) array, embedding the ones not seen before in one batch.

    The critic embeds each candidate, and the next subtask's retrieval then finds the accepted one here.
    """
    keys = [(embedder.id, ref["sha256"]) for ref in refs]
    with _embeddings_lock:
        found = {key: _image_embeddings[key] for key in keys if key in _image_embeddings}
        for key in found:
            _image_embeddings.move_to_end(key)
    missing = [index for index, key in enumerate(keys) if key not in found]
    if missing:
        loaded = images() if callable(images) else images
        vectors = embedder.embed_images([loaded[index] for index in missing])
        with _embeddings_lock:
            for index, vector in zip(missing, vectors):
                found[keys[index]] = vector
                _image_embeddings[keys[index]] = vector
            while len(_image_embeddings) > MAX_CACHED_IMAGE_EMBEDDINGS:
                _image_embeddings.popitem(last=False)
    return np.stack([found[key] for key in keys])


def text_embeddings(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Return the embeddings of texts as an (n, dim) array, embedding only those not embedded before."""
    with _embeddings_lock:
        missing = [text for text in dict.fromkeys(texts) if (embedder.id, text) not in _text_embeddings]
    if missing:
        vectors = embedder.embed_texts(missing)
        with _embeddings_lock:
            for text, vector in zip(missing, vectors):
                _text_embeddings[(embedder.id, text)] = vector
            while len(_text_embeddings) > MAX_CACHED_TEXT_EMBEDDINGS:
                _text_embeddings.popitem(last=False)
    with _embeddings_lock:
        rows = []
        for text in texts:
            # A text evicted between the two locked sections is embedded again rather than failing.
            vector = _text_embeddings.get((embedder.id, text))
            rows.append(vector if vector is not None else embedder.embed_texts([text])[0])
    return np.stack(rows) if rows else np.zeros((0, embedder.dim), dtype=np.float32)


def chat_model(spec: str) -> Any:
    """Return the chat model named by "PROVIDER:MODEL", created once per process."""
    from agent.llm_plan import load_chat_model

    with _lock:
        model = _chat_models.get(spec)
        if model is None:
            model = load_chat_model(spec)
            _chat_models[spec] = model
        return model
