"""Small generated MagicBrush datasets, written in both formats from the same content.

make_sessions returns three editing sessions ("101" with 1 turn, "202" with 2, "303" with 3). Every turn draws one
more colored shape onto its input, so each output differs visibly from its input, and turn k+1 starts from turn k's
output, as in MagicBrush. write_magicbrush_folder writes MagicBrush's test-set layout (edit_sessions.json, images/ and
caption files) and write_magicbrush_parquet writes the Hugging Face osunlp/MagicBrush Parquet layout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

IMAGE_SIZE = (64, 48)
# Hugging Face datasets stores an Image feature in Parquet as this struct.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

_SESSION_PLANS: dict[str, dict] = {
    "101": {
        "background": (40, 90, 160),
        "caption": "a plain blue wall",
        "turns": [("add a yellow sun", "ellipse", (250, 210, 40), (6, 6, 26, 26), "a blue wall with a yellow sun")],
    },
    "202": {
        "background": (70, 140, 60),
        "caption": "a green field",
        "turns": [
            ("put a red barn on the field", "rectangle", (200, 40, 40), (20, 14, 44, 40),
             "a green field with a red barn"),
            ("add a white cloud", "ellipse", (245, 245, 245), (4, 2, 30, 12),
             "a green field with a red barn and a white cloud"),
        ],
    },
    "303": {
        "background": (230, 220, 200),
        "caption": "an empty beige table",
        "turns": [
            ("place a black box on the table", "rectangle", (20, 20, 20), (8, 20, 28, 40),
             "a beige table with a black box"),
            ("add an orange ball", "ellipse", (240, 130, 30), (36, 24, 52, 40),
             "a beige table with a black box and an orange ball"),
            ("draw a purple stripe across the top", "rectangle", (120, 50, 150), (0, 0, 63, 8),
             "a beige table with a black box, an orange ball and a purple stripe"),
        ],
    },
}


def make_sessions() -> list[dict]:
    """Build the three sessions as dicts {"session_id", "turns"}.

    Each turn is a dict with "instruction", "input" and "output" (64x48 RGB PIL images), "source_caption" (the
    caption of the input) and "target_caption" (the caption of the output). Turn k+1's input has the pixels of
    turn k's output, and its source caption is turn k's target caption.
    """
    return [_make_session(session_id, plan) for session_id, plan in _SESSION_PLANS.items()]


def write_magicbrush_folder(root: Path, sessions: list[dict] | None = None, *, captions: bool = True) -> Path:
    """Write sessions in MagicBrush's test-set layout under root and return root.

    root gets edit_sessions.json and images/<id>/<id>-input.png, <id>-output<k>.png and <id>-mask<k>.png. With
    captions, it also gets global_descriptions.json (every image's caption) and local_descriptions.json (each
    output's caption), both shaped {img_id: {image_name: caption}}.
    """
    root = Path(root)
    sessions = make_sessions() if sessions is None else sessions
    edit_sessions: dict[str, list[dict]] = {}
    global_captions: dict[str, dict[str, str]] = {}
    local_captions: dict[str, dict[str, str]] = {}

    for session in sessions:
        session_id = session["session_id"]
        folder = root / "images" / session_id
        folder.mkdir(parents=True, exist_ok=True)
        first = session["turns"][0]
        input_name = f"{session_id}-input.png"
        first["input"].save(folder / input_name)
        global_captions[session_id] = {input_name: first["source_caption"]}
        local_captions[session_id] = {}
        edit_sessions[session_id] = []

        for number, turn in enumerate(session["turns"], start=1):
            output_name = f"{session_id}-output{number}.png"
            mask_name = f"{session_id}-mask{number}.png"
            turn["output"].save(folder / output_name)
            _make_mask(turn["input"], turn["output"]).save(folder / mask_name)
            edit_sessions[session_id].append(
                {"input": input_name, "mask": mask_name, "output": output_name, "instruction": turn["instruction"]}
            )
            global_captions[session_id][output_name] = turn["target_caption"]
            local_captions[session_id][output_name] = turn["target_caption"]
            input_name = output_name

    _write_json(root / "edit_sessions.json", edit_sessions)
    if captions:
        _write_json(root / "global_descriptions.json", global_captions)
        _write_json(root / "local_descriptions.json", local_captions)
    return root


def write_magicbrush_parquet(path: Path, sessions: list[dict] | None = None) -> Path:
    """Write sessions as one Parquet file with osunlp/MagicBrush's columns and return its path.

    Columns: img_id (string), turn_index (int32, 1-based), source_img, mask_img, instruction (string) and target_img.
    Image columns are Hugging Face Image structs {"bytes": PNG bytes, "path": null}. Captions are not written
    because the format has none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sessions = make_sessions() if sessions is None else sessions
    rows = [
        (session["session_id"], number, turn)
        for session in sessions
        for number, turn in enumerate(session["turns"], start=1)
    ]

    table = pa.table({
        "img_id": pa.array([session_id for session_id, _, _ in rows], pa.string()),
        "turn_index": pa.array([number for _, number, _ in rows], pa.int32()),
        "source_img": pa.array([_image_struct(turn["input"]) for _, _, turn in rows], IMAGE_STRUCT),
        "mask_img": pa.array(
            [_image_struct(_make_mask(turn["input"], turn["output"])) for _, _, turn in rows], IMAGE_STRUCT
        ),
        "instruction": pa.array([turn["instruction"] for _, _, turn in rows], pa.string()),
        "target_img": pa.array([_image_struct(turn["output"]) for _, _, turn in rows], IMAGE_STRUCT),
    })
    pq.write_table(table, path, row_group_size=2)
    return path


def _make_session(session_id: str, plan: dict) -> dict:
    image = Image.new("RGB", IMAGE_SIZE, plan["background"])
    caption = plan["caption"]
    turns = []
    for instruction, shape, color, box, target_caption in plan["turns"]:
        output = image.copy()
        draw = ImageDraw.Draw(output)
        if shape == "ellipse":
            draw.ellipse(box, fill=color)
        else:
            draw.rectangle(box, fill=color)
        turns.append({
            "instruction": instruction,
            "input": image.copy(),
            "output": output,
            "source_caption": caption,
            "target_caption": target_caption,
        })
        image, caption = output, target_caption
    return {"session_id": session_id, "turns": turns}


def _make_mask(before: Image.Image, after: Image.Image) -> Image.Image:
    """Mark the pixels that the edit changed in white on black, as an L-mode image; all white when the size changed."""
    if before.size != after.size:
        return Image.new("L", after.size, 255)
    changed = np.any(np.asarray(before) != np.asarray(after), axis=2)
    return Image.fromarray(np.where(changed, 255, 0).astype(np.uint8), "L")


def _image_struct(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
