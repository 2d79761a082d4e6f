"""The JSON report of an edit run: the plan, retrieved cases, every attempt and the outcome of each subtask."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPORT_VERSION = 1


def build_report(instruction: str, context: Any, final: dict[str, Any]) -> dict[str, Any]:
    """Assemble the report from the graph's final state."""
    attempts = final.get("attempts", [])
    results = {result["subtask_index"]: result for result in final.get("results", [])}
    subtasks = []
    for subtask in final.get("plan", []):
        result = results.get(subtask["index"])
        subtasks.append(
            {
                "index": subtask["index"],
                "text": subtask["text"],
                "tool": subtask["tool"],
                "operation": subtask["operation"],
                "amount": subtask["amount"],
                "status": result["status"] if result else "failed",
                "reason": result["reason"] if result else "the run ended before this subtask",
                "retrieved": [
                    {"case_id": case["case_id"], "instruction": case["instruction"], "score": case["score"]}
                    for case in (result["retrieved"] if result else [])
                ],
                "attempts": [
                    {
                        "number": attempt["number"],
                        "params": attempt["params"],
                        "scores": attempt["scores"],
                        "verdict": attempt["verdict"],
                        "reason": attempt["reason"],
                        "image": attempt["image"]["path"] if attempt["image"] else None,
                    }
                    for attempt in attempts
                    if attempt["subtask_index"] == subtask["index"]
                ],
            }
        )

    output = final.get("output") or {}
    return {
        "version": REPORT_VERSION,
        "instruction": instruction,
        "profile": context.profile,
        "settings": asdict(context),
        "plan": [{"text": subtask["text"], "tool": subtask["tool"]} for subtask in final.get("plan", [])],
        "preserve": final.get("preserve", []),
        "subtasks": subtasks,
        "output": {
            "path": final.get("written_path", ""),
            "artifact": output.get("path", ""),
            "sha256": output.get("sha256", ""),
            "width": output.get("width"),
            "height": output.get("height"),
        },
        "learned_cases": final.get("learned_cases", 0),
    }


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write JSON to a temporary file in the target's folder and rename it into place."""
    target = Path(path).expanduser().resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"report {target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target
