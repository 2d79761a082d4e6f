"""Warm in-process edits: the same edit run several times in one process, timed by node, with loads and embeddings
counted.

Run alone as `python -m benchmarks.warm_edit --profile offline IMAGE INSTRUCTION`; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.instrument import NODES, NodeTimer, counting

# One cold run, then warm runs. The harness reports the warm run with the median time, because one busy moment can
# move a single run but not the median.
RUNS = 6


def measure(profile: str, image: Path, instruction: str, home: Path, models: dict[str, str] | None = None) -> dict:
    """Run the edit RUNS times on new threads in this process and return each run's timings and counts."""
    from agent import runner
    from agent.context import Context

    settings: dict[str, Any] = {"profile": profile, "home": str(home), "learn": False}
    if models:
        # The editor's time is left out of the overhead, so the tiny model runs small and short to keep the bench quick.
        settings.update(editor_model=models["ip2p"], clip_model=models["clip"], steps=2, max_side=128, max_attempts=2)
    context = Context(**settings)
    graph = runner.thread_graph(runner.checkpoints_path(context))

    results = []
    for run in range(RUNS):
        timer = NodeTimer()
        with counting(graph.checkpointer) as counts:
            started = time.perf_counter()
            edit = runner.run_edit(instruction, context=context, image_path=str(image), callbacks=[timer])
            total = time.perf_counter() - started
        results.append(_summary(run + 1, total, timer, counts, edit.final))
    return {"profile": profile, "image": str(image), "instruction": instruction, "runs": results}


def _summary(run: int, total: float, timer: NodeTimer, counts: Any, final: dict[str, Any]) -> dict[str, Any]:
    subtasks = len(final.get("plan", []))
    attempts = len(final.get("attempts", []))
    overhead = total - counts.editor_seconds
    return {
        "run": run,
        "total_ms": total * 1000,
        "nodes_ms": {node: timer.seconds.get(node, 0.0) * 1000 for node in NODES},
        "node_calls": dict(timer.calls),
        "editor_ms": counts.editor_seconds * 1000,
        "editor_calls": counts.editor_calls,
        "checkpoint_ms": counts.checkpoint_seconds * 1000,
        "checkpoint_writes": counts.checkpoint_writes,
        "subtasks": subtasks,
        "attempts": attempts,
        "statuses": [result["status"] for result in final.get("results", [])],
        "overhead_ms_per_subtask": overhead * 1000 / max(subtasks, 1),
        "loads": dict(counts.loads),
        "texts_embedded": sum(counts.texts.values()),
        "texts_repeated": counts.repeated_texts(),
        "images_embedded": sum(counts.images.values()),
        "images_repeated": counts.repeated_images(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", type=Path)
    parser.add_argument("instruction")
    parser.add_argument("--profile", choices=("offline", "full"), default="offline")
    parser.add_argument("--tiny-models", type=Path, help="folder with ip2p/ and clip/ from tests.tiny_models")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    models = None
    if args.tiny_models:
        models = {"ip2p": str(args.tiny_models / "ip2p"), "clip": str(args.tiny_models / "clip")}
    with tempfile.TemporaryDirectory(prefix="ragedit-bench-") as home:
        print(json.dumps(measure(args.profile, args.image.resolve(), args.instruction, Path(home), models)))


if __name__ == "__main__":
    main()
