"""The `edit_image` LangChain tool: a chat assistant edits a photo, and continues the edit on a later call.

The tool returns content and an artifact: a short summary for the model, which names the thread to continue, and
the paths, sizes, statuses and scores for the program around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, Field

from agent.context import Context


class EditImageArgs(BaseModel):
    """Arguments of the edit_image tool."""

    instruction: str = Field(description='The edit in plain language, e.g. "remove the car and make the sky stormy".')
    image_path: str | None = Field(
        default=None,
        description="Path of the photo to edit. Needed to start; leave it out to continue a thread.",
    )
    thread_id: str | None = Field(
        default=None,
        description="The thread_id an earlier edit_image call returned, to edit its result further. "
        "Leave it out to start a new edit.",
    )
    output_path: str | None = Field(
        default=None,
        description="Where to write the edited photo (.png, .jpg, .webp); it must not exist yet. "
        "Leave it out to keep the result as an artifact only.",
    )


def make_edit_image_tool(context: Context | None = None, *, checkpoints: str | Path | None = None) -> StructuredTool:
    """Create the edit_image tool with the settings of `context` (default: the full profile's defaults).

    The threads live in the SQLite file `checkpoints`, by default threads.sqlite in the context's data folder.
    """
    settings = context or Context()

    def edit_image(
        instruction: str, image_path: str | None = None, thread_id: str | None = None, output_path: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        return _edit(settings, checkpoints, instruction, image_path, thread_id, output_path)

    return StructuredTool.from_function(
        func=edit_image,
        name="edit_image",
        description=(
            "Edit a photo from a plain-language instruction: the instruction is split into steps, each done with an "
            "image editor and checked. Returns a summary with a thread_id; pass that thread_id with a new "
            "instruction to keep editing the same image (\"now make it brighter\")."
        ),
        args_schema=EditImageArgs,
        response_format="content_and_artifact",
        handle_tool_error=True,
    )


def _edit(
    context: Context,
    checkpoints: str | Path | None,
    instruction: str,
    image_path: str | None,
    thread_id: str | None,
    output_path: str | None,
) -> tuple[str, dict[str, Any]]:
    from agent.decompose import InstructionError
    from agent.report import this_turn
    from agent.runner import ThreadError, run_edit
    from tools.image_io import ImageInputError

    if output_path and Path(output_path).exists():
        raise ToolException(f"output {output_path} exists; choose a new file name")
    if not image_path and not thread_id:
        raise ToolException("missing image_path: pass the photo to edit, or the thread_id of an earlier edit")
    try:
        run = run_edit(instruction, context=context, image_path=image_path, thread_id=thread_id,
                       output_path=output_path, checkpoints=checkpoints)
    except (ThreadError, InstructionError, ImageInputError, FileExistsError) as error:
        raise ToolException(str(error)) from None

    final = run.final
    results = this_turn(final, "results")
    attempts = this_turn(final, "attempts")
    output = final["output"]
    artifact = {
        "thread_id": run.thread_id,
        "turn": final.get("turn", 1),
        "output_path": final.get("written_path") or output["path"],
        "artifact_path": output["path"],
        "width": output["width"],
        "height": output["height"],
        "subtasks": [_subtask_record(result, attempts) for result in results],
    }
    return _summary(artifact), artifact


def _subtask_record(result: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    kept = [attempt for attempt in attempts
            if attempt["subtask_index"] == result["subtask_index"] and attempt["image"] == result["image"]]
    return {
        "text": result["text"],
        "tool": result["tool"],
        "status": result["status"],
        "reason": result["reason"],
        "attempts": result["attempts"],
        "scores": kept[-1]["scores"] if kept else {},
    }


def _summary(artifact: dict[str, Any]) -> str:
    lines = [
        f"Edited image: {artifact['output_path']} ({artifact['width']}x{artifact['height']}), "
        f"thread_id {artifact['thread_id']}, turn {artifact['turn']}."
    ]
    for number, subtask in enumerate(artifact["subtasks"], start=1):
        detail = "" if subtask["status"] == "accepted" else f": {subtask['reason']}"
        lines.append(f"{number}. {subtask['text']} ({subtask['tool']}): {subtask['status']}{detail}")
    lines.append(f"To edit this result further, call edit_image with thread_id {artifact['thread_id']}.")
    return "\n".join(lines)
