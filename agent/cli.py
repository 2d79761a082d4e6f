"""The `ragedit` command line: edit a photo from an instruction, or show the plan of an instruction.

Exit status: 0 when every subtask was accepted; 3 when the output was written but a subtask was skipped or failed;
2 for bad input or usage; 1 for an unexpected internal error. Heavy modules (torch, diffusers, open_clip) are imported
only by the commands that need them, so `ragedit --help` and `ragedit plan` start fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from agent import cli_common
from agent.cli_common import (
    AttentionSlicingOption,
    CompileUnetOption,
    CpuOffloadOption,
    DtypeOption,
    EXIT_INCOMPLETE,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    OUTPUT_SUFFIXES,
    CheckpointsOption,
    HomeOption,
    LLMOption,
    ProfileName,
    ProfileOption,
    ThreadOption,
    UsageError,
    check_home,
    check_writable,
    configure_logging,
    fail,
    quiet_model_libraries,
    real_path,
    resolve_context,
    run_guarded,
)
from agent.cli_eval import evaluate_command
from agent.cli_index import index_app
from agent.cli_thread import history_command, undo_command
from agent.decompose import InstructionError, decompose
from agent.mcp_server import mcp_command
from tools.image_io import ImageInputError


app = typer.Typer(
    name="ragedit",
    help="Edit a photo from a plain-language instruction.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

@app.command()
def plan(
    instruction: Optional[str] = typer.Argument(None, help="The edit in plain language."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    eval_file: Optional[Path] = typer.Option(
        None, "--eval", help="Score the decomposer on a JSON Lines file of labelled instructions instead."
    ),
    llm: Optional[str] = LLMOption,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", "--debug",
        help="Log the chat model's failures in detail, and the traceback of an internal error.",
    ),
) -> None:
    """Decompose an instruction into subtasks and things to preserve, without editing."""
    configure_logging(verbose)
    try:
        planner = _planner(llm)
    except UsageError as error:
        fail(str(error))
    if eval_file is not None:
        if instruction is not None:
            fail("give either an INSTRUCTION or --eval FILE, not both")
        _evaluate_plans(eval_file, planner)
        return
    if instruction is None:
        fail("missing INSTRUCTION: give the edit in quotes, or --eval FILE to score labelled instructions")

    try:
        result = planner(instruction)
    except InstructionError as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_plan(result.subtasks, result.preserve)


def _planner(llm: str | None) -> Any:
    """Return the decompose function: the rules, or a chat model with the rules as fallback."""
    if not llm:
        return decompose
    from agent.llm_plan import LLMPlanError, decompose_with_llm
    from agent.resources import chat_model

    try:
        model = chat_model(llm)
    except LLMPlanError as error:
        raise UsageError(str(error)) from None
    return lambda instruction: decompose_with_llm(instruction, model)


def _evaluate_plans(path: Path, planner: Any) -> None:
    from agent.plan_eval import EvalFileError, evaluate, load_cases

    try:
        cases = load_cases(path)
    except EvalFileError as error:
        fail(str(error), EXIT_INTERNAL)
    outcomes = evaluate(cases, planner)
    for outcome in outcomes:
        if not outcome.passed:
            typer.echo(f"FAIL line {outcome.line}: {outcome.instruction}")
            typer.echo(f"  {outcome.reason}")
            typer.echo(f"  produced: {json.dumps(outcome.produced)}")
    passed = sum(outcome.passed for outcome in outcomes)
    typer.echo(f"decomposition: {passed} passed, {len(outcomes) - passed} failed")


@app.command()
def edit(
    image: Path = typer.Argument(..., help="The photo to edit (PNG, JPEG, WebP, BMP, TIFF or GIF)."),
    instruction: str = typer.Argument(..., help="The edit in plain language, in quotes."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the edited photo (.png, .jpg, .webp, ...)."),
    profile: Optional[ProfileName] = ProfileOption,
    seed: int = typer.Option(0, "--seed", help="Seed of the first attempt; retries derive new seeds from it."),
    steps: int = typer.Option(
        0, "--steps", help="InstructPix2Pix denoising steps; 0 takes them from retrieved cases, else 20."
    ),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Attempts per subtask before giving up."),
    candidates: int = typer.Option(
        1, "--candidates", help="Images InstructPix2Pix makes per attempt in one batched call; the critic keeps the "
        "best. Candidate i uses seed + i.",
    ),
    editor_model: Optional[str] = typer.Option(
        None, "--editor-model", help="InstructPix2Pix weights: a Hugging Face id or a local diffusers folder.",
        show_default="timbrooks/instruct-pix2pix",
    ),
    clip_model: Optional[str] = typer.Option(
        None, "--clip-model", help="open_clip model name or local folder.",
        show_default="ViT-B-32 with laion2b_s34b_b79k weights",
    ),
    max_side: int = typer.Option(512, "--max-side", help="Maximum side length in pixels that InstructPix2Pix works at."),
    device: str = typer.Option(
        "", "--device", help="Torch device: cpu, cuda, cuda:N or mps.", show_default="the fastest available"
    ),
    dtype: str = DtypeOption,
    attention_slicing: bool = AttentionSlicingOption,
    cpu_offload: bool = CpuOffloadOption,
    compile_unet: bool = CompileUnetOption,
    report: Optional[Path] = typer.Option(None, "--report", help="Write a JSON report of the plan and every attempt."),
    sheet: Optional[Path] = typer.Option(
        None, "--sheet", "--contact-sheet",
        help="Write a picture of the run: the input, then each subtask's kept output with its scores and verdict.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output or report file."),
    home: Optional[Path] = HomeOption,
    llm: Optional[str] = LLMOption,
    thread: Optional[str] = ThreadOption,
    from_step: Optional[int] = typer.Option(
        None, "--from", help="Branch the thread from this step of `ragedit history` instead of its current image."
    ),
    approve_plan: bool = typer.Option(
        False, "--approve-plan", help="Show the plan and ask to accept, edit or cancel it before editing."
    ),
    checkpoints: Optional[Path] = CheckpointsOption,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", "--debug",
        help="Log model loads, retries and timings to stderr, and the traceback of an internal error.",
    ),
) -> None:
    """Edit IMAGE following INSTRUCTION and write the result to OUTPUT."""
    configure_logging(verbose)
    quiet_model_libraries()
    code = run_guarded(
        lambda: _run_edit(
            image, instruction, output, profile=profile, seed=seed, steps=steps, max_attempts=max_attempts,
            candidates=candidates,
            editor_model=editor_model, clip_model=clip_model, max_side=max_side, device=device, dtype=dtype,
            attention_slicing=attention_slicing, cpu_offload=cpu_offload, compile_unet=compile_unet, report=report,
            sheet=sheet, overwrite=overwrite, home=home, llm=llm, thread=thread, from_step=from_step,
            approve_plan=approve_plan, checkpoints=checkpoints,
        ),
        verbose,
        input_errors=(ImageInputError,),
    )
    raise typer.Exit(code)


def _run_edit(image: Path, instruction: str, output: Path, **options: Any) -> int:
    decompose(instruction)  # rejects an empty or oversized instruction before anything loads
    if options["llm"]:
        _planner(options["llm"])  # rejects an unknown provider or a missing package before anything loads
    targets = {"output": output, "report": options["report"], "sheet": options["sheet"]}
    _check_paths(image, targets, options["overwrite"])
    check_home(options["home"])
    context = resolve_context(options)

    if options["thread"] is not None or options["approve_plan"] or options["from_step"] is not None:
        from agent.cli_thread import edit_on_thread

        final = edit_on_thread(image, instruction, output, context, options, ProgressPrinter())
        instruction = final.get("instruction", instruction)
        if final.get("cancelled"):
            typer.echo("Cancelled: nothing was edited or written.")
            return EXIT_INCOMPLETE
    else:
        state_input = {
            "image_path": str(image),
            "instruction": instruction,
            "output_path": str(output),
            "overwrite": options["overwrite"],
        }
        final = _stream_run(state_input, context)

    report_data = build_report(instruction, context, final)
    if options["report"]:
        from agent.report import write_json_atomic

        write_json_atomic(report_data, options["report"], overwrite=options["overwrite"])
    if options["sheet"]:
        from agent.report import write_run_sheet

        write_run_sheet(final, context.artifact_dir, options["sheet"], overwrite=options["overwrite"])
    _print_summary(report_data, options["report"], options["sheet"])
    return EXIT_OK if all(item["status"] == "accepted" for item in report_data["subtasks"]) else EXIT_INCOMPLETE


def _check_paths(image: Path, targets: dict[str, Path | None], overwrite: bool) -> None:
    """Reject output paths that would replace the input, each other, or an existing file, or cannot be written."""
    if not image.exists():
        raise UsageError(f"cannot read {image}: file not found")
    source = real_path(image)
    claimed: dict[Path, str] = {}
    for label, path in targets.items():
        if path is None:
            continue
        real = real_path(path)
        if real == source:
            raise UsageError(f"invalid {label} {path}: it is the input image; choose another path")
        if real in claimed:
            raise UsageError(f"invalid {label} {path}: it is also the {claimed[real]}; give each file its own path")
        claimed[real] = label
        if path.is_dir():
            raise UsageError(f"invalid {label} {path}: it is a directory; give a file name such as {path / 'out.png'}")
        if path.exists() and not overwrite:
            raise UsageError(f"{label} {path} exists; pass --overwrite to replace it")
        check_writable(label, path)

    for label in ("output", "sheet"):
        path = targets.get(label)
        if path is not None and path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise UsageError(
                f"invalid {label} {path}: unsupported suffix {path.suffix or '(none)'!r} "
                f"(use one of {', '.join(OUTPUT_SUFFIXES)})"
            )


def _stream_run(state_input: dict[str, Any], context: Any) -> dict[str, Any]:
    from graphs.edit import graph

    progress = ProgressPrinter()
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream(state_input, context=context, stream_mode=["custom", "values"]):
        if mode == "custom":
            progress.handle(chunk)
        else:
            final = chunk
    progress.close()
    return final


class ProgressPrinter:
    """Prints the plan, each attempt and verdict, and denoising progress as the graph streams them."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self.step_line = False

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "step":
            self._step(event)
            return
        self._end_step_line()
        if kind == "plan":
            _print_plan(event["subtasks"], event["preserve"])
        elif kind == "note":
            typer.echo(f"    note: {event['message']}")
        elif kind == "resumed":
            typer.echo(f"Finishing the stopped run of this instruction on thread {event['thread_id']}; the subtasks "
                       "it finished are kept.")
        elif kind == "attempt":
            batch = f"{event['candidates']} candidates, " if event.get("candidates", 1) > 1 else ""
            typer.echo(f"- {event['subtask']}: attempt {event['number']} ({batch}{_format_params(event['params'])})")
        elif kind == "critique":
            candidate = f"candidate {event['candidate']}/{event['candidates']}: " if event.get("candidates", 1) > 1 else ""
            typer.echo(f"    {candidate}{event['verdict']}: {event['reason']}")
        elif kind == "verdict" and event["status"] == "accepted":
            typer.echo(f"  => {event['subtask']}: ACCEPTED")
        elif kind == "verdict":
            typer.echo(f"  => {event['subtask']}: {event['status'].upper()}: {event['reason']}")

    def _step(self, event: dict[str, Any]) -> None:
        if not self.interactive:
            return
        sys.stderr.write(f"\r    denoising step {event['step']}/{event['total']}")
        sys.stderr.flush()
        self.step_line = True

    def _end_step_line(self) -> None:
        if self.step_line:
            sys.stderr.write("\n")
            self.step_line = False

    def close(self) -> None:
        self._end_step_line()


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items() if key != "prompt")


def _print_plan(subtasks: list[dict[str, Any]], preserve: list[str]) -> None:
    typer.echo(f"Plan ({len(subtasks)} subtask{'s' if len(subtasks) != 1 else ''}):")
    for number, subtask in enumerate(subtasks, start=1):
        operation = f" ({subtask['operation']})" if subtask.get("operation") else ""
        typer.echo(f"  {number}. {subtask['text']} -> {subtask['tool']}{operation}")
    if preserve:
        typer.echo(f"  preserve: {', '.join(preserve)}")


def build_report(instruction: str, context: Any, final: dict[str, Any]) -> dict[str, Any]:
    from agent.report import build_report as build

    return build(instruction, context, final)


def _print_summary(report_data: dict[str, Any], report_path: Path | None, sheet: Path | None) -> None:
    counts = {status: 0 for status in ("accepted", "failed", "skipped")}
    for item in report_data["subtasks"]:
        counts[item["status"]] += 1
    typer.echo(f"Result: {counts['accepted']} accepted, {counts['failed']} failed, {counts['skipped']} skipped")
    for item in report_data["subtasks"]:
        if item["status"] != "accepted":
            typer.echo(f"  {item['status']}: {item['text']}: {item['reason']}")
    output = report_data["output"]
    if output.get("path"):
        typer.echo(f"Wrote {output['path']} ({output['width']}x{output['height']})")
    if report_path:
        typer.echo(f"Report: {report_path}")
    if sheet:
        typer.echo(f"Sheet: {sheet}")




def _exit_on_interrupt(signal_number: int, frame: Any) -> None:
    """End the process at once on Ctrl-C.

    A KeyboardInterrupt would wait for the graph's worker thread to finish its node (a model load or a whole
    denoising run), because LangGraph joins its workers on the way out. Every file is written to a temporary file
    and renamed, so exiting without that wait cannot leave a half-written output.
    """
    sys.stdout.flush()
    sys.stderr.write(f"ragedit: error: {cli_common.interrupt_message}\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    """Entry point of the `ragedit` console script: usage errors become one line and exit status 2."""
    signal.signal(signal.SIGINT, _exit_on_interrupt)
    try:
        result = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("ragedit: error: interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as error:
        # Typer's usage errors (NoArgsIsHelpError, BadParameter, MissingParameter, NoSuchOption) share this base.
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help())
            sys.exit(EXIT_USAGE)
        command = context.command_path if context is not None else "ragedit"
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        typer.echo(f"ragedit: error: {message} (see '{command} --help')", err=True)
        sys.exit(getattr(error, "exit_code", EXIT_USAGE))
    sys.exit(result if isinstance(result, int) else EXIT_OK)


app.add_typer(index_app, name="index")
app.command(name="evaluate")(evaluate_command)
app.command(name="history")(history_command)
app.command(name="undo")(undo_command)
app.command(name="mcp")(mcp_command)


if __name__ == "__main__":
    main()
