"""Learning from outcomes: the case library as the agent's experience.

At the end of a run every subtask that was attempted leaves a trace in the case library. An accepted attempt becomes
a case with its tool, parameters, critic scores and embeddings. A repeat of an existing case (a near-duplicate with
the same tool and operation) updates that case instead: its success count and the running mean of each numeric
parameter. Rejected attempts are counted as failures of the case, with their parameters, so retrieval can weigh each
case by how often it worked.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from agent import resources
from agent.context import Context
from agent.edit_kinds import infer_edit_kind
from agent.state import Attempt, EditState

logger = logging.getLogger(__name__)

# A case this similar to a subtask, with the same tool and operation, is a repeat of it rather than a new case.
NEAR_DUPLICATE_SCORE = 0.98
# Failed parameter sets kept on a case; older ones are dropped, their count stays in "failure_count".
MAX_FAILURES_KEPT = 10
# Parameters that describe one attempt rather than the edit, so they are not learned.
UNLEARNED_PARAMS = ("seed", "prompt", "prompt_shortened_from", "sources", "retry")


def success_rate(record: dict[str, Any]) -> float:
    """Return the Laplace-smoothed success rate of a case: 0.5 for an untried case, near 1 for a reliable one."""
    successes = int(record.get("successes", 0))
    failures = int(record.get("failure_count", 0))
    return (successes + 1) / (successes + failures + 2)


def learnable_params(params: dict[str, Any]) -> dict[str, Any]:
    """Return the parameters of an attempt that describe the edit, leaving out seeds and prompts."""
    return {key: value for key, value in params.items() if key not in UNLEARNED_PARAMS}


def learn_from_run(state: EditState, context: Context) -> int:
    """Record the run's accepted and failed attempts in the case library; return the number of new cases."""
    outcomes = _outcomes_by_subtask(state)
    if not outcomes:
        return 0

    embedder = resources.embedder_for(context)
    store = resources.case_store(context, embedder)
    indexes = sorted(outcomes)
    texts = [state["plan"][index]["text"] for index in indexes]
    vectors = resources.text_embeddings(embedder, texts)
    image_vectors = _input_image_vectors(state, context, indexes)

    added = 0
    for position, index in enumerate(indexes):
        accepted, failed = outcomes[index]
        subtask = state["plan"][index]
        image_vector = image_vectors[position] if image_vectors is not None else None
        matches = store.search(vectors[position], 1)
        duplicate = matches[0].record if matches and _is_near_duplicate(matches[0], subtask) else None
        if duplicate is not None:
            store.update(duplicate["id"], _updated_counts(duplicate, accepted, failed))
            continue

        record = _new_case(subtask, accepted, failed)
        store.add([record], vectors[position : position + 1], _as_batch(image_vector))
        added += 1
    logger.info("learned from %d subtasks: %d new cases", len(indexes), added)
    return added


def _outcomes_by_subtask(state: EditState) -> dict[int, tuple[Attempt | None, list[Attempt]]]:
    """Group attempts that produced an image into (accepted attempt or None, rejected attempts) per subtask."""
    outcomes: dict[int, tuple[Attempt | None, list[Attempt]]] = {}
    turn = state.get("turn", 1)
    for attempt in state.get("attempts", []):
        if attempt.get("turn", 1) != turn:
            # Earlier turns of a thread were learned when they finished.
            continue
        if attempt["image"] is None or attempt["verdict"] == "outscored":
            # An outscored candidate passed the critic, so it is no failure; the accepted one is the success.
            continue
        accepted, failed = outcomes.get(attempt["subtask_index"], (None, []))
        if attempt["verdict"] == "accept":
            accepted = attempt
        else:
            failed = failed + [attempt]
        outcomes[attempt["subtask_index"]] = (accepted, failed)
    return outcomes


def _input_image_vectors(state: EditState, context: Context, indexes: list[int]) -> np.ndarray | None:
    """Embed the image each subtask started from, in the full profile; None offline, where there is no CLIP."""
    clip = resources.clip_for(context)
    if clip is None:
        return None
    turn = state.get("turn", 1)
    results = {result["subtask_index"]: result for result in state.get("results", []) if result.get("turn", 1) == turn}
    artifacts = resources.artifact_store(context)
    rows = []
    for index in indexes:
        reference = results.get(index, {}).get("input_image")
        if reference is None:
            rows.append(np.zeros(clip.dim, dtype=np.float32))
            continue
        rows.append(resources.image_embedding(clip, reference, lambda: artifacts.get(reference)))
    return np.stack(rows)


def _as_batch(vector: np.ndarray | None) -> np.ndarray | None:
    return None if vector is None else vector[None, :]


def _is_near_duplicate(match: Any, subtask: dict[str, Any]) -> bool:
    record = match.record
    same_tool = record.get("tool") == subtask["tool"]
    same_operation = record.get("params", {}).get("operation") == subtask.get("operation")
    return match.text_score >= NEAR_DUPLICATE_SCORE and same_tool and same_operation


def _new_case(subtask: dict[str, Any], accepted: Attempt | None, failed: list[Attempt]) -> dict[str, Any]:
    params = learnable_params(accepted["params"]) if accepted else {}
    return {
        "instruction": subtask["text"],
        "tool": subtask["tool"],
        "params": params,
        "param_stats": {key: {"mean": value, "count": 1} for key, value in params.items() if _is_number(value)},
        "edit_kind": infer_edit_kind(subtask["text"]),
        "scores": accepted["scores"] if accepted else {},
        "successes": 1 if accepted else 0,
        "failure_count": len(failed),
        "failures": [_failure(attempt) for attempt in failed][-MAX_FAILURES_KEPT:],
        "source": "learned",
    }


def _updated_counts(record: dict[str, Any], accepted: Attempt | None, failed: list[Attempt]) -> dict[str, Any]:
    changes: dict[str, Any] = {
        "failure_count": int(record.get("failure_count", 0)) + len(failed),
        "failures": (list(record.get("failures", [])) + [_failure(attempt) for attempt in failed])[-MAX_FAILURES_KEPT:],
    }
    if accepted is None:
        return changes

    params = dict(record.get("params", {}))
    stats = {key: dict(value) for key, value in record.get("param_stats", {}).items()}
    for key, value in learnable_params(accepted["params"]).items():
        if not _is_number(value):
            params[key] = value
            continue
        # Without statistics (a starter case), the stored value counts as one earlier success.
        previous = stats.get(key) or {"mean": params.get(key, value), "count": 1}
        count = previous["count"] + 1
        mean = previous["mean"] + (value - previous["mean"]) / count
        stats[key] = {"mean": round(mean, 4), "count": count}
        params[key] = int(round(mean)) if key == "steps" else round(mean, 4)
    changes.update(successes=int(record.get("successes", 0)) + 1, params=params, param_stats=stats)
    return changes


def _failure(attempt: Attempt) -> dict[str, Any]:
    return {"params": learnable_params(attempt["params"]), "reason": attempt["reason"]}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
