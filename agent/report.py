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
    attempts = this_turn(final, "attempts")
    results = {result["subtask_index"]: result for result in this_turn(final, "results")}
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
                        "candidate": attempt.get("candidate", 1),
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
        "turn": final.get("turn", 1),
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


def this_turn(final: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Return the attempts or results of the state's last turn; a thread keeps those of every turn."""
    turn = final.get("turn", 1)
    return [item for item in final.get(key, []) if item.get("turn", 1) == turn]


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write JSON to a temporary file in the target's folder and rename it into place."""
    target = Path(path).expanduser().resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"report {target} exists; pass --overwrite to replace it")
    return write_text_atomic(json.dumps(data, indent=2) + "\n", target)


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """Write text to a temporary file in the target's folder and rename it into place, replacing any old file."""
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; a report is an ordinary file like the images.
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


SHEET_TILE_HEIGHT = 256
SHEET_FONT_SIZE = 13
SHEET_LINE_HEIGHT = 17
SHEET_PADDING = 6


def write_run_sheet(
    final: dict[str, Any], artifact_root: str | os.PathLike[str], path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a picture of a run: the input, then each subtask's kept output with its verdict and scores under it."""
    from tools.image_io import ArtifactStore, write_image_atomic

    store = ArtifactStore(artifact_root)
    source = final.get("turn_input") or final["source"]
    tiles = [(store.get(source), ["input", f"{source['width']}x{source['height']}"])]
    attempts = this_turn(final, "attempts")
    for result in this_turn(final, "results"):
        # A skipped subtask, or a failed one without a usable image, leaves its input unchanged, so that is shown.
        shown = result["image"] or result.get("input_image")
        if shown is not None:
            tiles.append((store.get(shown), _subtask_caption(result, attempts)))
    return write_image_atomic(compose_sheet([tiles]), path, overwrite=overwrite)


def _subtask_caption(result: dict[str, Any], attempts: list[dict[str, Any]]) -> list[str]:
    kept = next(
        (
            attempt for attempt in attempts
            if attempt["subtask_index"] == result["subtask_index"] and attempt["image"] == result["image"]
        ),
        None,
    )
    tries = result["attempts"]
    lines = [
        f"{result['subtask_index'] + 1}. {result['text']}",
        f"{result['status']} after {tries} attempt{'s' if tries != 1 else ''} ({result['tool']})",
    ]
    if kept is not None and result["image"] is not None:
        lines.append(format_scores(kept["scores"]))
    if result["status"] != "accepted":
        lines.append(result["reason"])
    return [line for line in lines if line]


def format_scores(scores: dict[str, float]) -> str:
    """Format an attempt's main scores in a few words: the CLIP scores, else the measured adjust property."""
    if "clip_image" in scores:
        return (
            f"CLIP-I {scores['clip_image']:.2f}  CLIP-T {scores['clip_text']:.2f}  "
            f"dir {scores['clip_directional']:.3f}"
        )
    if "measured_before" in scores:
        return f"measured {scores['measured_before']:.3f} -> {scores['measured_after']:.3f}"
    if "mean_change" in scores:
        return f"mean change {scores['mean_change']:.3f}"
    return ""


def compose_sheet(rows: list[list[tuple[Any, list[str]]]], *, tile_height: int = SHEET_TILE_HEIGHT) -> Any:
    """Lay out rows of (image, caption lines) as tiles of one height, each caption under its image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=SHEET_FONT_SIZE)
    caption_lines = max(len(lines) for row in rows for _, lines in row)
    caption_height = caption_lines * SHEET_LINE_HEIGHT + 2 * SHEET_PADDING
    row_height = tile_height + caption_height
    scaled_rows = [[(_fit_tile(image, tile_height), lines) for image, lines in row] for row in rows]
    width = max(sum(image.width for image, _ in row) for row in scaled_rows)

    sheet = Image.new("RGB", (width, row_height * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row_index, row in enumerate(scaled_rows):
        top = row_index * row_height
        left = 0
        for image, lines in row:
            sheet.paste(image, (left, top))
            for line_index, line in enumerate(lines):
                position = (left + SHEET_PADDING, top + tile_height + SHEET_PADDING + line_index * SHEET_LINE_HEIGHT)
                draw.text(position, _fit_label(draw, line, image.width - 2 * SHEET_PADDING, font), fill=(0, 0, 0),
                          font=font)
            left += image.width
    return sheet


def _fit_tile(image: Any, height: int) -> Any:
    """Scale an image into a tile of the given height, at most MAX_TILE_ASPECT times as wide, on a white ground."""
    from PIL import Image

    rgb = image.convert("RGB")
    scale = min(height / rgb.height, MAX_TILE_ASPECT * height / rgb.width)
    width = max(1, round(rgb.width * scale))
    scaled = rgb.resize((width, max(1, round(rgb.height * scale))))
    if scaled.size == (width, height) and width >= MIN_TILE_WIDTH:
        return scaled
    # A very wide image is shrunk to fit and a very tall one gets white space beside it, so that every tile keeps
    # room for its caption and the sheet stays small.
    tile = Image.new("RGB", (max(width, MIN_TILE_WIDTH), height), (255, 255, 255))
    tile.paste(scaled, ((tile.width - scaled.width) // 2, (height - scaled.height) // 2))
    return tile


MIN_TILE_WIDTH = 160
MAX_TILE_ASPECT = 4


def _fit_label(draw: Any, label: str, width: int, font: Any) -> str:
    if draw.textlength(label, font=font) <= width:
        return label
    while label and draw.textlength(label + "…", font=font) > width:
        label = label[:-1]
    return label + "…" if label else ""
