"""The `ragedit` command line: edit a photo from an instruction, or show the plan of an instruction.

Exit status: 0 when every subtask was accepted; 3 when the output was written but a subtask was skipped or failed;
2 for bad input or usage; 1 for an unexpected internal error. Heavy modules (torch, diffusers, open_clip) are imported
only by the commands that need them, so `ragedit --help` and `ragedit plan` start fast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from enum import Enum
from typing import Any, Callable, Optional

import typer

from agent.decompose import InstructionError, decompose
from tools.image_io import ImageInputError

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

class ProfileName(str, Enum):
    """Profiles a command can run with."""

    full = "full"
    offline = "offline"


HomeOption = typer.Option(
    None, "--home", help="Data folder for artifacts and case libraries.",
    show_default="$RAGEDIT_HOME, else the user data folder",
)
ProfileOption = typer.Option(
    None, "--profile",
    help="full: InstructPix2Pix and CLIP (weights downloaded once); offline: adjust edits only, no network.",
    show_default="$RAGEDIT_PROFILE, else full when its CLIP model loads, else offline",
)


def resolve_profile(requested: "ProfileName | None", clip_model: str | None) -> str:
    """Return the profile to run: the one requested, else $RAGEDIT_PROFILE, else full when CLIP loads, else offline.

    Falling back to offline keeps a first command working on a machine without the weights or a network. A note on
    stderr reports the fallback, and --profile full turns it into an error.
    """
    if requested is not None:
        return ProfileName(requested).value
    configured = os.environ.get("RAGEDIT_PROFILE", "").strip()
    if configured:
        if configured not in ProfileName.__members__:
            raise UsageError(f"invalid RAGEDIT_PROFILE {configured!r}: use full or offline")
        return configured

    from tools.embeddings import DEFAULT_CLIP_MODEL, EmbedderUnavailableError, load_clip_embedder

    if not _hub_reachable():
        # Without this, huggingface_hub retries each weights file for about half a minute before giving up.
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        load_clip_embedder(clip_model or DEFAULT_CLIP_MODEL)
    except EmbedderUnavailableError:
        typer.echo(
            "ragedit: note: using the offline profile, because the full profile's CLIP model is not available here "
            "(pass --profile full to see why, or --profile offline to skip this check)",
            err=True,
        )
        return ProfileName.offline.value
    return ProfileName.full.value


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Tell whether the Hugging Face Hub (or the mirror in $HF_ENDPOINT) accepts a connection."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


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


def case_library_message(error: Exception) -> str:
    """Return a case-library error, warning that deleting the library also deletes what it learned."""
    message = str(error)
    if "delete" in message:
        message += " (deleting it also deletes the cases learned from accepted edits and ingested datasets)"
    return message


def quiet_model_libraries() -> None:
    """Stop model libraries from drawing progress bars and logging retries; the CLI reports progress and errors."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # huggingface_hub logs every retry of an unreachable Hub, and the one-line error that follows reports it.
    # It reads HF_HUB_VERBOSITY when first imported, so the variable works where a logger level set now would not.
    if logging.getLogger().level > logging.INFO:
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


def _drop_library_errors(record: logging.LogRecord) -> bool:
    # open_clip logs a failed download on the root logger before it raises. The CLI reports the raised error as one
    # line, so the logged copy is shown only with --verbose.
    return not (record.name == "root" and "open_clip" in record.pathname)


LLMOption = typer.Option(
    None, "--llm", help="Decompose with a chat model, PROVIDER:MODEL (openai:gpt-4o-mini, ollama:llama3, ...) or "
    "llamacpp:/path/model.gguf; falls back to the rules on any model failure.", show_default="the rules decomposer",
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
    report: Optional[Path] = typer.Option(None, "--report", help="Write a JSON report of the plan and every attempt."),
    sheet: Optional[Path] = typer.Option(
        None, "--sheet", "--contact-sheet",
        help="Write a picture of the run: the input, then each subtask's kept output with its scores and verdict.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output or report file."),
    home: Optional[Path] = HomeOption,
    llm: Optional[str] = LLMOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log model loads, retries and timings to stderr."),
) -> None:
    """Edit IMAGE following INSTRUCTION and write the result to OUTPUT."""
    configure_logging(verbose)
    quiet_model_libraries()
    code = run_guarded(
        lambda: _run_edit(
            image, instruction, output, profile=profile, seed=seed, steps=steps, max_attempts=max_attempts,
            candidates=candidates,
            editor_model=editor_model, clip_model=clip_model, max_side=max_side, device=device, report=report,
            sheet=sheet, overwrite=overwrite, home=home, llm=llm,
        ),
        verbose,
        input_errors=(ImageInputError,),
    )
    raise typer.Exit(code)


def run_guarded(command: Callable[[], Any], verbose: bool, input_errors: tuple[type[Exception], ...] = ()) -> Any:
    """Run a command's work, turning each error into one line: exit 2 for bad input, 1 for an internal error."""
    from tools.case_store import CaseStoreError
    from tools.embeddings import EmbedderUnavailableError

    try:
        return command()
    except typer.Exit:
        raise
    except CaseStoreError as error:
        fail(case_library_message(error))
    except EmbedderUnavailableError as error:
        fail(f"{error}; or run with --profile offline, which downloads nothing")
    except (UsageError, InstructionError, FileExistsError, *input_errors) as error:
        fail(str(error))
    except OSError as error:
        if error.filename is None:
            report_internal_error(error, verbose)
        fail(f"{error.strerror or 'input/output error'}: {error.filename}; check the path and its permissions")
    except Exception as error:  # noqa: BLE001 - the CLI must never show a traceback unless asked to
        report_internal_error(error, verbose)


def report_internal_error(error: Exception, verbose: bool) -> None:
    if isinstance(error, BrokenPipeError):
        # The reader of the output has exited (`ragedit ... | head`), so there is no one to report to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_INTERNAL)
    if verbose:
        logging.getLogger(__name__).exception("edit failed")
    fail(f"internal error: {type(error).__name__}: {error} (rerun with --verbose for the traceback)", EXIT_INTERNAL)


def _run_edit(image: Path, instruction: str, output: Path, **options: Any) -> int:
    decompose(instruction)  # rejects an empty or oversized instruction before anything loads
    if options["llm"]:
        _planner(options["llm"])  # rejects an unknown provider or a missing package before anything loads
    targets = {"output": output, "report": options["report"], "sheet": options["sheet"]}
    _check_paths(image, targets, options["overwrite"])
    check_home(options["home"])
    context = resolve_context(options)

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


def resolve_context(options: dict[str, Any]) -> Any:
    """Resolve the profile, check the editor model and build the run's Context from command-line options."""
    options["profile"] = resolve_profile(options["profile"], options["clip_model"])
    check_editor_model(options["editor_model"], options["profile"])
    try:
        context = make_context(options)
    except ValueError as error:
        raise UsageError(_flag_names(str(error))) from None
    if context.profile == "offline":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return context


def _flag_names(message: str) -> str:
    """Name the command-line options in a Context error ("invalid max_side 0" becomes "invalid --max-side 0")."""
    for field in ("max_attempts", "max_side", "candidates", "steps", "seed", "device"):
        message = message.replace(f"invalid {field} ", f"invalid --{field.replace('_', '-')} ")
    return message


def make_context(options: dict[str, Any]) -> Any:
    """Build the run's Context from command-line options; raises ValueError for an invalid setting."""
    from agent.context import Context

    return Context(
        profile=ProfileName(options["profile"]).value,
        home=str(options["home"] or ""),
        seed=options["seed"],
        steps=options["steps"],
        max_attempts=options["max_attempts"],
        candidates=options["candidates"],
        max_side=options["max_side"],
        device=options["device"],
        **{key: options[key] for key in ("editor_model", "clip_model", "llm") if options[key]},
    )


def _check_paths(image: Path, targets: dict[str, Path | None], overwrite: bool) -> None:
    """Reject output paths that would replace the input, each other, or an existing file, or cannot be written."""
    if not image.exists():
        raise UsageError(f"cannot read {image}: file not found")
    source = _real_path(image)
    claimed: dict[Path, str] = {}
    for label, path in targets.items():
        if path is None:
            continue
        real = _real_path(path)
        if real == source:
            raise UsageError(f"invalid {label} {path}: it is the input image; choose another path")
        if real in claimed:
            raise UsageError(f"invalid {label} {path}: it is also the {claimed[real]}; give each file its own path")
        claimed[real] = label
        if path.is_dir():
            raise UsageError(f"invalid {label} {path}: it is a directory; give a file name such as {path / 'out.png'}")
        if path.exists() and not overwrite:
            raise UsageError(f"{label} {path} exists; pass --overwrite to replace it")
        _check_writable(label, path)

    for label in ("output", "sheet"):
        path = targets.get(label)
        if path is not None and path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise UsageError(
                f"invalid {label} {path}: unsupported suffix {path.suffix or '(none)'!r} "
                f"(use one of {', '.join(OUTPUT_SUFFIXES)})"
            )


def _real_path(path: Path) -> Path:
    # realpath also resolves "missing/../photo.png", which Path.exists() and resolve() comparisons can miss.
    return Path(os.path.realpath(path))


def _check_writable(label: str, path: Path) -> None:
    folder = _real_path(path).parent
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise UsageError(f"invalid {label} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {label} {path}: no permission to write in {existing}")


def check_editor_model(editor_model: str | None, profile: str) -> None:
    """Reject an --editor-model folder that does not exist; note that the offline profile ignores the option."""
    if not editor_model:
        return
    if ProfileName(profile) is ProfileName.offline:
        typer.echo("ragedit: note: --editor-model is not used in the offline profile; add --profile full", err=True)
        return
    # A Hugging Face id is "name" or "owner/name"; anything else is a folder, which must exist.
    looks_like_path = editor_model.startswith((".", "~", "/")) or editor_model.count("/") > 1
    if looks_like_path and not Path(editor_model).expanduser().exists():
        raise UsageError(f"invalid --editor-model {editor_model}: folder not found; pass a local diffusers folder "
                         "or a Hugging Face model id such as timbrooks/instruct-pix2pix")


def check_home(home: Path | None) -> None:
    if home is None:
        return
    if home.exists() and not home.is_dir():
        raise UsageError(f"invalid --home {home}: it is a file; pass a folder (it is created when missing)")
    _check_writable("--home", home / "artifacts")


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




# Message printed on Ctrl-C about the files the run left. Commands whose files differ from edit's set their own.
interrupt_message = "interrupted; no output was written unless a 'Wrote' line above names it"


def _exit_on_interrupt(signal_number: int, frame: Any) -> None:
    """End the process at once on Ctrl-C.

    A KeyboardInterrupt would wait for the graph's worker thread to finish its node (a model load or a whole
    denoising run), because LangGraph joins its workers on the way out. Every file is written to a temporary file
    and renamed, so exiting without that wait cannot leave a half-written output.
    """
    sys.stdout.flush()
    sys.stderr.write(f"ragedit: error: {interrupt_message}\n")
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


if __name__ == "__main__":
    # Run the imported module rather than this __main__ copy, so agent.cli_index finds one agent.cli to import from.
    from agent.cli import main as run

    run()
else:
    from agent.cli_eval import evaluate_command  # noqa: E402 - these modules import shared options from this one
    from agent.cli_index import index_app  # noqa: E402

    app.add_typer(index_app, name="index")
    app.command(name="evaluate")(evaluate_command)
