"""Two edits at the same time in one process: the full profile with tiny random-weight models, run on two threads.

The edits share the process's one InstructPix2Pix pipeline, whose calls must not overlap, and each must give the
output it gives when the two run one after the other. Accepted edits are not learned (learn=False), because a case
learned by the first edit would change the second one's retrieved parameters only in the sequential order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent.context import Context
from agent.runner import run_edit
from graphs.edit import graph

DATA = Path(__file__).parent / "data"
CAT = DATA / "cat.png"
INSTRUCTIONS = ("add a rainbow in the sky", "turn the cat into a tiger")


class PipelineCalls:
    """Record of InstructPix2Pix pipeline calls: which pipeline object ran, and how many calls ran at once."""

    def __init__(self) -> None:
        self.pipelines: list[int] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def enter(self, pipeline: Any) -> None:
        with self._lock:
            self.pipelines.append(id(pipeline))
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> PipelineCalls:
    """Wrap the real pipeline's __call__ to record each call."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    calls = PipelineCalls()
    original = StableDiffusionInstructPix2PixPipeline.__call__

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.enter(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            calls.leave()

    monkeypatch.setattr(StableDiffusionInstructPix2PixPipeline, "__call__", recording)
    return calls


@pytest.fixture
def make_context(tiny_ip2p_dir: Path, tiny_clip_dir: Path) -> Callable[[Path], Context]:
    """Return a function that builds, for a home folder, a full-profile context on the tiny models whose critic
    accepts any output."""

    def make(home: Path) -> Context:
        return Context(
            profile="full",
            home=str(home),
            editor_model=str(tiny_ip2p_dir),
            clip_model=str(tiny_clip_dir),
            max_side=64,
            steps=2,
            seed=7,
            min_clip_image=-1.0,
            min_clip_text=-1.0,
            min_clip_directional=-1.0,
            # The random-weight editor repaints every pixel, which a local edit's check would reject.
            max_local_change=1.0,
            learn=False,
        )

    return make


def run_timed(edit: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float, float]:
    """Run one edit and return its final state with its start and end times."""
    started = time.perf_counter()
    final = edit()
    return final, started, time.perf_counter()


def run_concurrently(edits: list[Callable[[], dict[str, Any]]]) -> list[tuple[dict[str, Any], float, float]]:
    """Run the edits at the same time, one thread each, and return their timed results in order."""
    with ThreadPoolExecutor(max_workers=len(edits)) as pool:
        futures = [pool.submit(run_timed, edit) for edit in edits]
        return [future.result(timeout=300) for future in futures]


def overlapped(first: tuple[Any, float, float], second: tuple[Any, float, float]) -> bool:
    """Return whether two timed runs were in flight at the same moment."""
    return first[1] < second[2] and second[1] < first[2]


def invoke_edit(instruction: str, context: Context, output: Path) -> Callable[[], dict[str, Any]]:
    return lambda: graph.invoke(
        {"image_path": str(CAT), "instruction": instruction, "output_path": str(output)}, context=context
    )


def thread_edit(instruction: str, context: Context, thread_id: str, output: Path) -> Callable[[], dict[str, Any]]:
    return lambda: run_edit(
        instruction, context=context, image_path=str(CAT), thread_id=thread_id, output_path=str(output)
    ).final


def test_graph_concurrent_matches_sequential(make_context, pipeline_calls, tmp_path):
    concurrent_context = make_context(tmp_path / "concurrent")
    edits = [invoke_edit(text, concurrent_context, tmp_path / f"concurrent-{index}.png")
             for index, text in enumerate(INSTRUCTIONS)]
    concurrent = run_concurrently(edits)

    sequential_context = make_context(tmp_path / "sequential")
    sequential = [run_timed(invoke_edit(text, sequential_context, tmp_path / f"sequential-{index}.png"))
                  for index, text in enumerate(INSTRUCTIONS)]

    assert overlapped(concurrent[0], concurrent[1]), "the two graph runs did not run at the same time"
    assert [final["results"][0]["tool"] for final, _, _ in concurrent] == ["instruct_pix2pix"] * 2
    assert [final["results"][0]["status"] for final, _, _ in concurrent] == ["accepted"] * 2
    assert concurrent[0][0]["output"]["sha256"] == sequential[0][0]["output"]["sha256"]
    assert concurrent[1][0]["output"]["sha256"] == sequential[1][0]["output"]["sha256"]
    assert concurrent[0][0]["output"]["sha256"] != concurrent[1][0]["output"]["sha256"]
    assert len(pipeline_calls.pipelines) == 4
    assert len(set(pipeline_calls.pipelines)) == 1, "the edits loaded more than one pipeline"
    assert pipeline_calls.max_active == 1, "two pipeline calls overlapped"


def test_threads_concurrent_match_sequential(make_context, pipeline_calls, tmp_path):
    concurrent_context = make_context(tmp_path / "concurrent")
    edits = [thread_edit(text, concurrent_context, f"thread-{index}", tmp_path / f"concurrent-{index}.png")
             for index, text in enumerate(INSTRUCTIONS)]
    concurrent = run_concurrently(edits)

    sequential_context = make_context(tmp_path / "sequential")
    sequential = [
        run_timed(thread_edit(text, sequential_context, f"thread-{index}", tmp_path / f"sequential-{index}.png"))
        for index, text in enumerate(INSTRUCTIONS)
    ]

    assert overlapped(concurrent[0], concurrent[1]), "the two thread runs did not run at the same time"
    assert [final["results"][0]["status"] for final, _, _ in concurrent] == ["accepted"] * 2
    assert [final["instruction"] for final, _, _ in concurrent] == list(INSTRUCTIONS)
    assert concurrent[0][0]["output"]["sha256"] == sequential[0][0]["output"]["sha256"]
    assert concurrent[1][0]["output"]["sha256"] == sequential[1][0]["output"]["sha256"]
    assert concurrent[0][0]["output"]["sha256"] != concurrent[1][0]["output"]["sha256"]
    assert (tmp_path / "concurrent-0.png").read_bytes() == (tmp_path / "sequential-0.png").read_bytes()
    assert (tmp_path / "concurrent-1.png").read_bytes() == (tmp_path / "sequential-1.png").read_bytes()
    assert len(pipeline_calls.pipelines) == 4
    assert len(set(pipeline_calls.pipelines)) == 1, "the edits loaded more than one pipeline"
    assert pipeline_calls.max_active == 1, "two pipeline calls overlapped"
