"""Count and time what a run does: node durations, checkpoint writes, editor calls, model loads and embeddings."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler

NODES = ("decompose", "approve", "next_subtask", "retrieve", "edit", "critique", "finish")


class NodeTimer(BaseCallbackHandler):
    """Time each graph node run from the callbacks that LangGraph sends for it."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._started: dict[Any, tuple[str, float]] = {}

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: Any, metadata: Any = None, **kwargs: Any) -> None:
        node = (metadata or {}).get("langgraph_node")
        # Routing functions run as child chains of their node; only the node's own run is timed.
        if node in NODES and kwargs.get("name") == node:
            self._started[run_id] = (node, time.perf_counter())

    def on_chain_end(self, outputs: Any, *, run_id: Any, **kwargs: Any) -> None:
        self._stop(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
        self._stop(run_id)

    def _stop(self, run_id: Any) -> None:
        started = self._started.pop(run_id, None)
        if started is not None:
            node, start = started
            self.seconds[node] += time.perf_counter() - start
            self.calls[node] += 1


@dataclass
class Counts:
    """Counts of one run: model loads, embedded texts and images (with repeats), editor and checkpoint time."""

    loads: Counter = field(default_factory=Counter)
    texts: Counter = field(default_factory=Counter)
    images: Counter = field(default_factory=Counter)
    editor_seconds: float = 0.0
    editor_calls: int = 0
    checkpoint_seconds: float = 0.0
    checkpoint_writes: int = 0

    def repeated_texts(self) -> list[str]:
        return [text for text, count in self.texts.items() if count > 1]

    def repeated_images(self) -> int:
        return sum(1 for count in self.images.values() if count > 1)


@contextlib.contextmanager
def counting(checkpointer: Any | None = None) -> Iterator[Counts]:
    """Patch the loaders, embedders, editors and the checkpointer to count and time them while the block runs."""
    import agent.nodes
    import agent.resources
    import tools.embeddings
    import tools.instruct_pix2pix

    counts = Counts()
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        original = getattr(owner, name)
        patches.append((owner, name, original))
        setattr(owner, name, wrapper(original))

    def counted_load(label: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def load(*args: Any, **kwargs: Any) -> Any:
                counts.loads[label] += 1
                return original(*args, **kwargs)
            return load
        return wrap

    def timed_editor(original: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                counts.editor_seconds += time.perf_counter() - started
                counts.editor_calls += 1
        return run

    def timed_write(original: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                counts.checkpoint_seconds += time.perf_counter() - started
                counts.checkpoint_writes += 1
        return write

    def counted_texts(original: Callable[..., Any]) -> Callable[..., Any]:
        def embed(self: Any, texts: Any) -> Any:
            counts.texts.update(list(texts))
            return original(self, texts)
        return embed

    def counted_images(original: Callable[..., Any]) -> Callable[..., Any]:
        def embed(self: Any, images: Any) -> Any:
            counts.images.update(hashlib.sha256(image.tobytes()).hexdigest() for image in images)
            return original(self, images)
        return embed

    patch(tools.instruct_pix2pix, "_from_pretrained", counted_load("InstructPix2Pix"))
    patch(tools.embeddings, "_create_clip_embedder", counted_load("CLIP"))
    patch(tools.embeddings, "_create_minilm_model", counted_load("MiniLM"))
    patch(agent.resources, "_open_or_seed", counted_load("case library"))
    patch(agent.nodes, "adjust", timed_editor)
    patch(agent.nodes, "edit_image", timed_editor)
    for embedder_class in (tools.embeddings.ClipEmbedder, tools.embeddings.MiniLMEmbedder):
        patch(embedder_class, "embed_texts", counted_texts)
        patch(embedder_class, "embed_images", counted_images)
    if checkpointer is not None:
        patch(checkpointer, "put", timed_write)
        patch(checkpointer, "put_writes", timed_write)
    try:
        yield counts
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)
