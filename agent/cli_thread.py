"""Threads on the command line: `ragedit edit --thread`, plan approval, `ragedit history` and `ragedit undo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from agent.cli_common import (
    CheckpointsOption,
    HomeOption,
    UsageError,
    check_home,
    configure_logging,
    run_guarded,
)

APPROVAL_CHOICES = {
    "a": "accept", "accept": "accept", "y": "accept", "yes": "accept",
    "e": "edit", "edit": "edit",
    "c": "cancel", "cancel": "cancel", "n": "cancel", "no": "cancel",
}


def edit_on_thread(
    image: Path, instruction: str, output: Path, context: Any, options: dict[str, Any], progress: Any
) -> dict[str, Any]:
    """Run the edit on a thread with the progress display, asking for plan approval when the run stops for it."""
    from agent.runner import ThreadError, answer_plan, run_edit

    context.approve_plan = bool(options["approve_plan"])
    if options["from_step"] is not None and not options["thread"]:
        raise UsageError("--from needs --thread: name the thread whose step to branch from")
    try:
        run = run_edit(
            instruction, context=context, image_path=str(image), thread_id=options["thread"],
            output_path=str(output), overwrite=options["overwrite"], from_step=options["from_step"],
            checkpoints=options["checkpoints"], on_event=progress.handle,
        )
        while run.interrupt is not None:
            progress.close()
            run = answer_plan(run.thread_id, _ask_approval(), context=context, checkpoints=options["checkpoints"],
                              on_event=progress.handle)
    except ThreadError as error:
        raise UsageError(str(error)) from None
    progress.close()
    typer.echo(f"Thread: {run.thread_id} (continue with --thread {run.thread_id}; see ragedit history)")
    return run.final


def _ask_approval() -> Any:
    """Ask on the terminal whether to accept, edit or cancel the plan; end of input cancels."""
    while True:
        try:
            choice = input("Accept this plan? [a]ccept, [e]dit, [c]ancel: ").strip().lower()
        except EOFError:
            return "cancel"
        action = APPROVAL_CHOICES.get(choice)
        if action == "edit":
            try:
                instruction = input("New instruction: ").strip()
            except EOFError:
                return "cancel"
            if instruction:
                return {"action": "edit", "instruction": instruction}
        elif action is not None:
            return action


def history_command(
    thread: str = typer.Option(..., "--thread", help="The thread whose steps to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the steps as JSON."),
    home: Optional[Path] = HomeOption,
    checkpoints: Optional[Path] = CheckpointsOption,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", "--debug",
        help="Log details to stderr, and the traceback of an internal error.",
    ),
) -> None:
    """List the steps of a thread: the input photo and each image a subtask made, with their files."""
    configure_logging(verbose)
    raise typer.Exit(run_guarded(lambda: _print_history(thread, as_json, home, checkpoints), verbose))


def _print_history(thread: str, as_json: bool, home: Path | None, checkpoints: Path | None) -> int:
    from agent.runner import ThreadError, history, thread_state

    check_home(home)
    context = _thread_context(home)
    try:
        steps = history(thread, context=context, checkpoints=checkpoints)
        current = thread_state(thread, context=context, checkpoints=checkpoints).get("current")
    except ThreadError as error:
        raise UsageError(str(error)) from None
    if as_json:
        typer.echo(json.dumps({"thread": thread, "steps": steps, "current": current}, indent=2))
        return 0
    typer.echo(f"Thread {thread}:")
    for step in steps:
        marker = "*" if current and step["image"]["sha256"] == current["sha256"] else " "
        image = step["image"]
        typer.echo(f"{marker} step {step['step']}  turn {step['turn']}  {step['status']:<8}  {step['text']}  "
                   f"({image['width']}x{image['height']})  {image['path']}")
    typer.echo("(* marks the current image. ragedit edit --thread ID --from STEP branches from a step.)")
    return 0


def undo_command(
    thread: str = typer.Option(..., "--thread", help="The thread to take one step back."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the image it goes back to."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    home: Optional[Path] = HomeOption,
    checkpoints: Optional[Path] = CheckpointsOption,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", "--debug",
        help="Log details to stderr, and the traceback of an internal error.",
    ),
) -> None:
    """Go back to the image before the thread's last step; the next edit on the thread starts from it."""
    configure_logging(verbose)
    raise typer.Exit(run_guarded(lambda: _undo(thread, output, overwrite, home, checkpoints), verbose))


def _undo(thread: str, output: Path | None, overwrite: bool, home: Path | None, checkpoints: Path | None) -> int:
    from agent.runner import ThreadError, undo
    from tools.image_io import ArtifactStore, write_image_atomic

    check_home(home)
    if output is not None and output.exists() and not overwrite:
        raise UsageError(f"output {output} exists; pass --overwrite to replace it")
    context = _thread_context(home)
    try:
        step = undo(thread, context=context, checkpoints=checkpoints)
    except ThreadError as error:
        raise UsageError(str(error)) from None
    typer.echo(f"Thread {thread} is back at step {step['step']} ({step['text']}).")
    if output is not None:
        written = write_image_atomic(ArtifactStore(context.artifact_dir).get(step["image"]), output,
                                     overwrite=overwrite)
        typer.echo(f"Wrote {written} ({step['image']['width']}x{step['image']['height']})")
    return 0


def _thread_context(home: Path | None) -> Any:
    from agent.context import Context

    # Listing and undoing load no model, so the offline profile is enough to name the data folder.
    return Context(profile="offline", home=str(home or ""))
