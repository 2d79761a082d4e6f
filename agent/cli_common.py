"""Options and helpers that every `ragedit` command shares: profiles, the data folder, error handling, the context.

Exit status: 0 when every subtask was accepted; 3 when the output was written but a subtask was skipped or failed;
2 for bad input or usage; 1 for an unexpected internal error.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import typer

from agent.decompose import InstructionError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
# Output formats that tools.image_io.write_image_atomic writes, by file suffix.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Message printed on Ctrl-C about the files the run left. Commands whose files differ from edit's set their own.
interrupt_message = "interrupted; no output was written unless a 'Wrote' line above names it"


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


ThreadOption = typer.Option(
    None, "--thread", help="Keep the edit on this thread: a later edit with the same ID continues from its result, "
    "and a run that was stopped finishes when run again.", show_default="no thread",
)


CheckpointsOption = typer.Option(
    None, "--checkpoints", help="SQLite file of the threads.", show_default="threads.sqlite in the data folder",
)


DtypeOption = typer.Option(
    "", "--dtype", help="Torch dtype of InstructPix2Pix: float16, bfloat16 or float32.",
    show_default="float16 on cuda and mps, float32 on cpu",
)
AttentionSlicingOption = typer.Option(
    False, "--attention-slicing", help="Compute InstructPix2Pix attention in slices to lower GPU memory. It is "
    "slower than the default scaled-dot-product attention, so use it only when an edit runs out of memory.",
)
CpuOffloadOption = typer.Option(
    False, "--cpu-offload", help="Keep the InstructPix2Pix models in CPU memory and move each to the GPU only "
    "while it runs, for GPUs too small for the whole model. It needs cuda or mps, and each edit is slower.",
)
CompileUnetOption = typer.Option(
    False, "--compile-unet", help="Compile the InstructPix2Pix UNet with torch.compile. The first edit at each "
    "working size waits for the compilation (seconds to minutes), and later edits at that size in the same "
    "process run faster.",
)
LLMOption = typer.Option(
    None, "--llm", help="Decompose with a chat model, PROVIDER:MODEL (openai:gpt-4o-mini, ollama:llama3, ...) or "
    "llamacpp:/path/model.gguf; falls back to the rules on any model failure.", show_default="the rules decomposer",
)


def run_guarded(command: Callable[[], Any], verbose: bool, input_errors: tuple[type[Exception], ...] = ()) -> Any:
    """Run a command's work, turning each error into one line: exit 2 for bad input, 1 for an internal error."""
    from tools.case_store import CaseStoreError
    from tools.embeddings import EmbedderUnavailableError
    from tools.image_io import ArtifactCorruptError, ArtifactNotFoundError

    try:
        return command()
    except typer.Exit:
        raise
    except (ArtifactCorruptError, ArtifactNotFoundError) as error:
        # A damaged data folder is the user's to repair, not a bug, so it gets the input-error exit code.
        fail(str(error))
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
    fail(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", EXIT_INTERNAL)


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
    for field in ("max_attempts", "max_side", "candidates", "steps", "seed", "device", "dtype"):
        message = message.replace(f"invalid {field} ", f"invalid --{field.replace('_', '-')} ")
    # These names never occur in plain words, so every occurrence, including the fix the message suggests, is the flag.
    for field in ("attention_slicing", "cpu_offload", "compile_unet"):
        message = message.replace(field, f"--{field.replace('_', '-')}")
    return message


def make_context(options: dict[str, Any]) -> Any:
    """Build the run's Context from command-line options; raises ValueError for an invalid setting.

    With cpu_offload, the device is checked here (the one that would be picked when --device is empty), so a machine
    without a GPU fails before any model loads.
    """
    from agent.context import Context

    context = Context(
        profile=ProfileName(options["profile"]).value,
        home=str(options["home"] or ""),
        seed=options["seed"],
        steps=options["steps"],
        max_attempts=options["max_attempts"],
        candidates=options["candidates"],
        max_side=options["max_side"],
        device=options["device"],
        dtype=options.get("dtype") or "",
        # Commands without the GPU flags leave them out of `options`, which means off.
        **{key: bool(options.get(key)) for key in ("attention_slicing", "cpu_offload", "compile_unet")},
        **{key: options[key] for key in ("editor_model", "clip_model", "llm") if options[key]},
    )
    if context.cpu_offload:
        from tools.instruct_pix2pix import EditorOptionsError, check_editor_options

        try:
            check_editor_options(context.editor_options, context.device or None)
        except EditorOptionsError as error:
            raise ValueError(str(error)) from None
    return context


def real_path(path: Path) -> Path:
    # realpath also resolves "missing/../photo.png", which Path.exists() and resolve() comparisons can miss.
    return Path(os.path.realpath(path))


def check_writable(label: str, path: Path) -> None:
    folder = real_path(path).parent
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
    check_writable("--home", home / "artifacts")
