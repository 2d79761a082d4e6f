"""Retrieval policy: turn similar past edits into the first attempt's parameters."""

from __future__ import annotations

from typing import Any

from agent.context import Context
from agent.state import RetrievedCase, Subtask
from tools.adjust import DEFAULT_AMOUNTS

DEFAULT_IP2P_PARAMS: dict[str, Any] = {"guidance_scale": 7.5, "image_guidance_scale": 1.5, "steps": 20}
# Cases less similar than this to the subtask are too far from it to shape its parameters.
MIN_CASE_SCORE = 0.5


def to_retrieved(matches: list[tuple[dict, float]]) -> list[RetrievedCase]:
    """Convert case-store matches to the state's JSON form."""
    return [
        RetrievedCase(
            case_id=str(record.get("id", "")),
            instruction=str(record.get("instruction", "")),
            tool=str(record.get("tool", "")),
            params=dict(record.get("params", {})),
            score=round(float(score), 4),
        )
        for record, score in matches
    ]


def first_params(subtask: Subtask, retrieved: list[RetrievedCase], context: Context) -> dict[str, Any]:
    """Choose the first attempt's parameters: the instruction's own values, then close cases, then defaults.

    Each parameter records its origin under "sources", and the report shows it.
    """
    close = [case for case in retrieved if case["score"] >= MIN_CASE_SCORE and case["tool"] == subtask["tool"]]
    if subtask["tool"] == "adjust":
        return _adjust_params(subtask, close)
    return _ip2p_params(subtask, close, context)


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
        amount = _weighted_mean([(case["params"]["amount"], case["score"]) for case in same])
        source = "cases " + ", ".join(case["case_id"] for case in same)
        return {"operation": operation, "amount": round(amount, 4), "sources": {"amount": source}}
    return {"operation": operation, "amount": DEFAULT_AMOUNTS[operation], "sources": {"amount": "default"}}


def _ip2p_params(subtask: Subtask, close: list[RetrievedCase], context: Context) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": subtask["text"], "seed": context.seed}
    sources: dict[str, str] = {"prompt": "instruction", "seed": "context"}
    for name in ("guidance_scale", "image_guidance_scale", "steps"):
        values = [(case["params"][name], case["score"]) for case in close if isinstance(case["params"].get(name), (int, float))]
        if values:
            params[name] = round(_weighted_mean(values), 3)
            sources[name] = "cases " + ", ".join(case["case_id"] for case in close)
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
