"""The `ragedit` command line: edit a photo from an instruction, or show the plan of an instruction.

Exit status: 0 when every subtask was accepted; 3 when the output was written but a subtask was skipped or failed;
2 for bad input or usage; 1 for an unexpected internal error. Heavy modules (torch, diffusers, open_clip) are imported
only by the commands that need them, so `ragedit --help` and `ragedit plan` start fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from agent.decompose import InstructionError, decompose

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
# Output formats that tools.image_io.write_image_atomic writes, by file suffix.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

app = typer.Typer(
    name="ragedit",
    help="Edit a photo from a plain-language instruction.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

HomeOption = typer.Option(
    None, "--home", help="Data folder for artifacts and case libraries [default: $RAGEDIT_HOME, else the user data folder]."
)
ProfileOption = typer.Option(
    "full", "--profile", help="full: InstructPix2Pix and CLIP (weights downloaded once); offline: adjust edits only, no network."
)


class UsageError(Exception):
    """Bad input or usage: printed as one line, exit status 2."""


def fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"ragedit: error: {message}", err=True)
    raise typer.Exit(code)


def configure_logging(verbose: bool) -> None:
    """Log to stderr: warnings by default, and everything from INFO up with --verbose."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_drop_library_errors)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def _drop_library_errors(record: logging.LogRecord) -> bool:
    # open_clip logs a failed download on the root logger before raising; the CLI reports the raised error as one
    # line, so the duplicate is shown only with --verbose.
    return not (record.name == "root" and "open_clip" in record.pathname)


LLMOption = typer.Option(
    None, "--llm", help="Decompose with a chat model, PROVIDER:MODEL (openai:gpt-4o-mini, ollama:llama3, ...) or "
    "llamacpp:/path/model.gguf; falls back to the rules on any model failure [default: the rules decomposer]."
)


@app.command()
def plan(
    instruction: Optional[str] = typer.Argument(None, help="The edit in plain language."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    eval_file: Optional[Path] = typer.Option(
        None, "--eval", help="Score the decomposer on a JSON Lines file of labelled instructions instead."
    ),
    llm: Optional[str] = LLMOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log the chat model's failures in detail."),
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
    profile: str = ProfileOption,
    seed: int = typer.Option(0, "--seed", help="Seed of the first attempt; retries derive new seeds from it."),
    steps: int = typer.Option(0, "--steps", help="InstructPix2Pix denoising steps [default: from retrieved cases, else 20]."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Attempts per subtask before giving up."),
    editor_model: Optional[str] = typer.Option(
        None, "--editor-model", help="InstructPix2Pix weights: a Hugging Face id or a local diffusers folder "
        "[default: timbrooks/instruct-pix2pix]."
    ),
    clip_model: Optional[str] = typer.Option(
        None, "--clip-model", help="open_clip model name or local folder [default: ViT-B-32, laion2b_s34b_b79k weights]."
    ),
    max_side: int = typer.Option(512, "--max-side", help="Longest side in pixels that InstructPix2Pix works at."),
    device: str = typer.Option("", "--device", help="Torch device (cuda, mps, cpu) [default: the fastest available]."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a JSON report of the plan and every attempt."),
    contact_sheet: Optional[Path] = typer.Option(
        None, "--contact-sheet", help="Write an image of the input and the result of each subtask side by side."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output or report file."),
    home: Optional[Path] = HomeOption,
    llm: Optional[str] = LLMOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log model loads, retries and timings to stderr."),
) -> None:
    """Edit IMAGE following INSTRUCTION and write the result to OUTPUT."""
    configure_logging(verbose)
    # Model libraries draw their own progress bars on stderr; the CLI shows its own progress instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        code = _run_edit(
            image, instruction, output, profile=profile, seed=seed, steps=steps, max_attempts=max_attempts,
            editor_model=editor_model, clip_model=clip_model, max_side=max_side, device=device, report=report,
            contact_sheet=contact_sheet, overwrite=overwrite, home=home, llm=llm,
        )
    except (UsageError, InstructionError, FileExistsError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; no output was written unless it says so above", 130)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - the CLI must never show a traceback unless asked to
        if verbose:
            logging.getLogger(__name__).exception("edit failed")
        fail(f"internal error: {type(error).__name__}: {error} (rerun with --verbose for the traceback)", EXIT_INTERNAL)
    raise typer.Exit(code)


def _run_edit(image: Path, instruction: str, output: Path, **options: Any) -> int:
    from tools.image_io import ImageInputError
    from tools.case_store import CaseStoreError
    from tools.embeddings import EmbedderUnavailableError

    decompose(instruction)  # rejects an empty or oversized instruction before anything loads
    if options["llm"]:
        _planner(options["llm"])  # rejects an unknown provider or a missing package before anything loads
    _check_paths(image, output, options["report"], options["overwrite"])
    if options["contact_sheet"] is not None and options["contact_sheet"].exists() and not options["overwrite"]:
        raise UsageError(f"contact sheet {options['contact_sheet']} exists; pass --overwrite to replace it")

    try:
        context = _make_context(options)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if context.profile == "offline":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    state_input = {
        "image_path": str(image),
        "instruction": instruction,
        "output_path": str(output),
        "overwrite": options["overwrite"],
    }
    try:
        final = _stream_run(state_input, context)
    except (ImageInputError, CaseStoreError) as error:
        raise UsageError(str(error)) from None
    except EmbedderUnavailableError as error:
        raise UsageError(f"{error}; or run with --profile offline, which downloads nothing") from None

    report_data = build_report(instruction, context, final)
    if options["report"]:
        from agent.report import write_json_atomic

        write_json_atomic(report_data, options["report"], overwrite=options["overwrite"])
    if options["contact_sheet"]:
        from agent.report import write_contact_sheet

        write_contact_sheet(final, context.artifact_dir, options["contact_sheet"], overwrite=options["overwrite"])
    _print_summary(report_data, options["report"], options["contact_sheet"])
    return EXIT_OK if all(item["status"] == "accepted" for item in report_data["subtasks"]) else EXIT_INCOMPLETE


def _make_context(options: dict[str, Any]) -> Any:
    from agent.context import Context

    return Context(
        profile=options["profile"],
        home=str(options["home"] or ""),
        seed=options["seed"],
        steps=options["steps"],
        max_attempts=options["max_attempts"],
        max_side=options["max_side"],
        device=options["device"],
        **{key: options[key] for key in ("editor_model", "clip_model", "llm") if options[key]},
    )


def _check_paths(image: Path, output: Path, report: Path | None, overwrite: bool) -> None:
    if not image.exists():
        raise UsageError(f"cannot read {image}: file not found")
    if output.exists() and output.resolve() == image.resolve():
        raise UsageError(f"invalid output {output}: it is the input image; choose another output path")
    if output.is_dir():
        raise UsageError(f"invalid output {output}: it is a directory; give a file name such as {output / 'out.png'}")
    if output.exists() and not overwrite:
        raise UsageError(f"output {output} exists; pass --overwrite to replace it")
    if report is not None and report.exists() and not overwrite:
        raise UsageError(f"report {report} exists; pass --overwrite to replace it")
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(
            f"invalid output {output}: unsupported suffix {output.suffix or '(none)'!r} "
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
        elif kind == "attempt":
            typer.echo(f"- {event['subtask']}: attempt {event['number']} ({_format_params(event['params'])})")
        elif kind == "critique":
            typer.echo(f"    {event['verdict']}: {event['reason']}")
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


def _print_summary(report_data: dict[str, Any], report_path: Path | None, contact_sheet: Path | None) -> None:
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
    if contact_sheet:
        typer.echo(f"Steps: {contact_sheet}")


def main() -> None:
    """Entry point of the `ragedit` console script."""
    app()


if __name__ == "__main__":
    main()
