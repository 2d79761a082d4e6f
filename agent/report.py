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
                    {
                        "case_id": case["case_id"],
                        "instruction": case["instruction"],
                        "tool": case["tool"],
                        "score": case["score"],
                        "text_score": case.get("text_score", case["score"]),
                        "image_score": case.get("image_score"),
                        "success_rate": case.get("success_rate"),
                    }
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
        "settings": {**asdict(context), "home": str(context.home_path)},
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
        # mkstemp creates the file readable by its owner only; a report is an ordinary file like the images.
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


CONTACT_SHEET_TILE_HEIGHT = 256
CONTACT_SHEET_LABEL_HEIGHT = 22


def write_contact_sheet(
    final: dict[str, Any], artifact_root: str | os.PathLike[str], path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the input and the image after each subtask side by side, each labelled, to one PNG or JPEG."""
    from PIL import Image, ImageDraw

    from tools.image_io import ArtifactStore, write_image_atomic

    store = ArtifactStore(artifact_root)
    tiles = [("input", final["source"])]
    for result in final.get("results", []):
        if result["image"] is not None:
            tiles.append((f"{result['subtask_index'] + 1}. {result['text']} ({result['status']})", result["image"]))

    images = [store.get(ref) for _, ref in tiles]
    scaled = [
        image.resize((max(1, round(image.width * CONTACT_SHEET_TILE_HEIGHT / image.height)), CONTACT_SHEET_TILE_HEIGHT))
        for image in images
    ]
    sheet = Image.new(
        "RGB",
        (sum(image.width for image in scaled), CONTACT_SHEET_TILE_HEIGHT + CONTACT_SHEET_LABEL_HEIGHT),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(sheet)
    left = 0
    for (label, _), image in zip(tiles, scaled):
        sheet.paste(image, (left, CONTACT_SHEET_LABEL_HEIGHT))
        draw.text((left + 4, 5), _fit_label(draw, label, image.width - 8), fill=(0, 0, 0))
        left += image.width
    return write_image_atomic(sheet, path, overwrite=overwrite)


def _fit_label(draw: Any, label: str, width: int) -> str:
    while label and draw.textlength(label) > width:
        label = label[:-2] + "…" if len(label) > 2 else ""
    return label
