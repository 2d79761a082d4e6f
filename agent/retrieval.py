"""Retrieval policy: turn similar past edits into the first attempt's tool and parameters.

Each close case (combined similarity at least MIN_CASE_SCORE) votes with the weight
(similarity - MIN_CASE_SCORE) * success rate, so a near-identical case that often worked outweighs a loose match
that was never tried. Parameters the instruction states itself ("30% brighter") always win; defaults fill the rest.
"""

from __future__ import annotations

from typing import Any

from agent.context import Context
from agent.learning import success_rate
from agent.state import RetrievedCase, Subtask
from tools.adjust import DEFAULT_AMOUNTS

DEFAULT_IP2P_PARAMS: dict[str, Any] = {"guidance_scale": 7.5, "image_guidance_scale": 1.5, "steps": 20}
# Cases less similar than this to the subtask are too far from it to shape its parameters.
MIN_CASE_SCORE = 0.5
# A subtask routed to InstructPix2Pix switches to an exact adjust operation only when an adjust case is this close
# to it (a paraphrase rather than a related edit) and beats the closest InstructPix2Pix case by TOOL_SWITCH_MARGIN.
# The margin guards against text embedders, CLIP among them, that score most short prompts as similar.
TOOL_SWITCH_SCORE = 0.9
TOOL_SWITCH_MARGIN = 0.1


def to_retrieved(matches: list[Any]) -> list[RetrievedCase]:
    """Convert case-store matches (CaseMatch objects) to the state's JSON form."""
    return [
        RetrievedCase(
            case_id=str(match.record.get("id", "")),
            instruction=str(match.record.get("instruction", "")),
            tool=str(match.record.get("tool", "")),
            params=dict(match.record.get("params", {})),
            score=round(float(match.score), 4),
            text_score=round(float(match.text_score), 4),
            image_score=None if match.image_score is None else round(float(match.image_score), 4),
            success_rate=round(success_rate(match.record), 4),
        )
        for match in matches
    ]


def first_params(subtask: Subtask, retrieved: list[RetrievedCase], context: Context) -> dict[str, Any]:
    """Choose the first attempt's parameters: the instruction's own values, then close cases, then defaults.

    Each parameter records its origin under "sources", and the report shows it.
    """
    switched = _switch_to_adjust(subtask, retrieved)
    if switched is not None:
        return switched

    close = [case for case in retrieved if case["score"] >= MIN_CASE_SCORE and case["tool"] == subtask["tool"]]
    if subtask["tool"] == "adjust":
        return _adjust_params(subtask, close)
    return _ip2p_params(subtask, close, context)


def _weight(case: RetrievedCase) -> float:
    return max(case["score"] - MIN_CASE_SCORE, 1e-3) * case["success_rate"]


def _switch_to_adjust(subtask: Subtask, retrieved: list[RetrievedCase]) -> dict[str, Any] | None:
    """Use an exact adjust operation when a near paraphrase of the subtask was an adjust case that worked."""
    if subtask["tool"] != "instruct_pix2pix" or not retrieved:
        return None
    best = retrieved[0]
    operation = best["params"].get("operation")
    if best["tool"] != "adjust" or best["text_score"] < TOOL_SWITCH_SCORE or operation is None:
        return None
    rival = max((case["text_score"] for case in retrieved if case["tool"] == "instruct_pix2pix"), default=-1.0)
    if best["text_score"] - rival < TOOL_SWITCH_MARGIN:
        return None
    return {
        "tool": "adjust",
        "operation": operation,
        "amount": best["params"].get("amount"),
        "sources": {"tool": f"case {best['case_id']}", "amount": f"case {best['case_id']}"},
    }


def _adjust_params(subtask: Subtask, close: list[RetrievedCase]) -> dict[str, Any]:
    operation = subtask["operation"]
    assert operation is not None
    if subtask["amount"] is not None or DEFAULT_AMOUNTS.get(operation) is None:
        return {"operation": operation, "amount": subtask["amount"], "sources": {"amount": "instruction"}}

    # Only cases of the same operation that move the same way (positive amounts) can size a bare "brighter".
    same = [
        case
        for case in close
        if case["params"].get("operation") == operation and isinstance(case["params"].get("amount"), (int, float))
        and case["params"]["amount"] > 0
    ]
    if same:
        amount = _weighted_mean([(case["params"]["amount"], _weight(case)) for case in same])
        source = "cases " + ", ".join(case["case_id"] for case in same)
        return {"operation": operation, "amount": round(amount, 4), "sources": {"amount": source}}
    return {"operation": operation, "amount": DEFAULT_AMOUNTS[operation], "sources": {"amount": "default"}}


def _ip2p_params(subtask: Subtask, close: list[RetrievedCase], context: Context) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": subtask["text"], "seed": context.seed}
    sources: dict[str, str] = {"prompt": "instruction", "seed": "context"}
    for name in ("guidance_scale", "image_guidance_scale", "steps"):
        voters = [case for case in close if isinstance(case["params"].get(name), (int, float))]
        if voters:
            params[name] = round(_weighted_mean([(case["params"][name], _weight(case)) for case in voters]), 3)
            sources[name] = "cases " + ", ".join(case["case_id"] for case in voters)
        else:
            params[name] = DEFAULT_IP2P_PARAMS[name]
            sources[name] = "default"
    params["steps"] = int(round(params["steps"]))
    if context.steps:
        params["steps"] = context.steps
        sources["steps"] = "context"
    params["sources"] = sources
    return params


def _weighted_mean(values: list[tuple[float, float]]) -> float:
    total = sum(weight for _, weight in values)
    return sum(value * weight for value, weight in values) / total
