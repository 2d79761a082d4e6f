"""The `ragedit mcp` command: an MCP server that lets chat assistants edit photos, plan edits and search past edits.

It serves three tools over stdio (for desktop assistants) or streamable HTTP on 127.0.0.1: edit_image, which runs
an edit on a durable thread and returns the edited image, plan_edit and search_cases. The tools read and write only
inside the folders given with --root. Tool functions are synchronous, and the SDK runs each call in a worker thread.
Concurrent calls share one graph, case library and embedder, which lock their own state. Calls on the same thread
are serialised here, because two runs on one thread at once would interleave its checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from pydantic import Field

from agent.cli_common import (
    OUTPUT_SUFFIXES,
    CheckpointsOption,
    HomeOption,
    ProfileName,
    ProfileOption,
    UsageError,
    case_library_message,
    check_home,
    configure_logging,
    quiet_model_libraries,
    resolve_context,
    run_guarded,
)

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from agent.context import Context

logger = logging.getLogger(__name__)

SERVER_NAME = "ragedit"
HTTP_HOST = "127.0.0.1"
HTTP_PATH = "/mcp"
DEFAULT_PORT = 8765
MAX_SEARCH_RESULTS = 100

Result = TypeVar("Result")


class ToolInputError(ValueError):
    """A tool argument that cannot be served: a path outside the allowed folders, an existing output, a bad k."""


ImagePathArg = Annotated[
    str, Field(description="Photo to edit (PNG, JPEG, WebP, BMP, TIFF or GIF), inside an allowed folder. A relative "
               "path is taken from the first allowed folder. To continue a thread, pass the thread's original photo.")
]
InstructionArg = Annotated[
    str, Field(description="The edit in plain language, such as \"make it black and white and add a vignette\".")
]
ThreadArg = Annotated[
    Optional[str], Field(description="thread_id returned by an earlier edit_image call, to edit its result further; "
                         "omit it to start a new thread.")
]
OutputPathArg = Annotated[
    Optional[str], Field(description="Also write the edited photo to this new file inside an allowed folder (.png, "
                         ".jpg, .webp, ...); an existing file is never replaced. Omit it to write no file.")
]
QueryArg = Annotated[str, Field(description="Edit instruction to find similar past edits for.")]
CountArg = Annotated[int, Field(description=f"Number of cases to return, 1 to {MAX_SEARCH_RESULTS}.")]


class EditTools:
    """The MCP tools over one resolved runtime context and a set of allowed folders."""

    def __init__(self, context: Context, roots: list[Path], checkpoints: Path | None = None) -> None:
        """Serve tools that edit with `context`, touch files only under `roots` and keep threads in `checkpoints`.

        `roots` must be real paths (symlinks resolved), as resolve_roots returns them.
        """
        self.context = context
        self.roots = roots
        self.checkpoints = checkpoints
        self._thread_locks: dict[str, threading.Lock] = {}
        self._thread_locks_guard = threading.Lock()

    def edit_image(
        self,
        image_path: ImagePathArg,
        instruction: InstructionArg,
        thread_id: ThreadArg = None,
        output_path: OutputPathArg = None,
    ) -> list[Any]:
        """Edit a photo from an instruction and return the edited image with a summary of each subtask."""
        return guard_tool("edit_image", lambda: self._edit(image_path, instruction, thread_id, output_path))

    def plan_edit(self, instruction: InstructionArg) -> str:
        """Return the plan of an instruction as JSON text: its subtasks with their tools, and what to preserve."""
        return guard_tool("plan_edit", lambda: _plan_json(instruction))

    def search_cases(self, query: QueryArg, k: CountArg = 5) -> str:
        """Return the past edits closest to `query` as JSON text, best first."""
        return guard_tool("search_cases", lambda: self._search(query, k))

    def _edit(self, image_path: str, instruction: str, thread_id: str | None, output_path: str | None) -> list[Any]:
        from mcp.server.mcpserver import Image

        from agent.decompose import decompose
        from agent.runner import run_edit
        from tools.image_io import load_image

        decompose(instruction)  # rejects an empty or oversized instruction before anything loads
        source = resolve_in_roots("image_path", image_path, self.roots)
        target = self._check_output(output_path, source) if output_path else None
        load_image(source)  # rejects a missing, damaged or unsupported photo with a one-line message

        started = time.perf_counter()
        with self._thread_lock(thread_id):
            if thread_id:
                self._check_thread(thread_id)
            run = run_edit(
                instruction, context=self.context, image_path=str(source), thread_id=thread_id or None,
                output_path=str(target) if target else None, overwrite=False, checkpoints=self.checkpoints,
            )
        logger.info("edited %s on thread %s in %.1f s: %r", source, run.thread_id, time.perf_counter() - started,
                    instruction)

        output = run.final.get("output")
        if not output:
            raise RuntimeError(f"the run on thread {run.thread_id} ended without an output image")
        # NOTE: the reply carries the whole PNG, base64-encoded to 4/3 of the file size, so a large photo makes a
        # reply of many megabytes. Some clients may reject one that large, but the summary still names the artifact.
        image = Image(data=Path(output["path"]).read_bytes(), format="png")
        return [image, summarize_run(run.thread_id, source, run.final)]

    def _check_output(self, output_path: str, source: Path) -> Path:
        """Return the real path of a new output file inside the roots.

        Raises ToolInputError for the input image, an existing file, an unsupported suffix, or a path whose folder
        is a file.
        """
        target = resolve_in_roots("output_path", output_path, self.roots)
        if target == source:
            raise ToolInputError(f"invalid output_path {output_path}: it is the input image; choose another file name")
        # lexists also catches a dangling symlink, which a write would follow to its target.
        if os.path.lexists(target) or os.path.lexists(_absolute(output_path, self.roots)):
            raise ToolInputError(
                f"output_path {output_path} exists; choose a new file name (this server never replaces files)"
            )
        if target.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ToolInputError(
                f"invalid output_path {output_path}: unsupported suffix {target.suffix or '(none)'!r} "
                f"(use one of {', '.join(OUTPUT_SUFFIXES)})"
            )
        folder = next(parent for parent in target.parents if parent.exists())
        if not folder.is_dir():
            raise ToolInputError(f"invalid output_path {output_path}: {folder} is a file, not a folder")
        return target

    def _check_thread(self, thread_id: str) -> None:
        from agent.runner import ThreadError, thread_state

        # run_edit would start a new thread under an unknown id, because this tool always passes an image.
        try:
            thread_state(thread_id, context=self.context, checkpoints=self.checkpoints)
        except ThreadError:
            raise ToolInputError(
                f"unknown thread_id {thread_id[:80]!r}: no such thread on this server; omit thread_id to start a new "
                f"thread"
            ) from None

    def _thread_lock(self, thread_id: str | None) -> threading.Lock:
        """Return the lock of a thread. A call without thread_id starts a new thread, so it gets a lock of its own."""
        if not thread_id:
            return threading.Lock()
        with self._thread_locks_guard:
            return self._thread_locks.setdefault(thread_id, threading.Lock())

    def _search(self, query: str, k: int) -> str:
        from agent.resources import case_store, embedder_for

        if not query.strip():
            raise ToolInputError("missing query: give an edit instruction, such as \"remove the dog\"")
        if not 1 <= k <= MAX_SEARCH_RESULTS:
            raise ToolInputError(f"invalid k {k}: use 1 to {MAX_SEARCH_RESULTS}")
        embedder = embedder_for(self.context)
        store = case_store(self.context, embedder)
        matches = store.search(embedder.embed_texts([query])[0], k)
        cases = [
            {
                "id": match.record.get("id"),
                "instruction": match.record.get("instruction"),
                "tool": match.record.get("tool"),
                "params": match.record.get("params", {}),
                "score": round(match.score, 4),
            }
            for match in matches
        ]
        return json.dumps(cases, indent=2, ensure_ascii=False)


def _plan_json(instruction: str) -> str:
    from agent.decompose import decompose

    return json.dumps(decompose(instruction).to_json(), indent=2, ensure_ascii=False)


def guard_tool(name: str, call: Callable[[], Result]) -> Result:
    """Run a tool's work, turning each error into an MCP tool error with a one-line message.

    The server keeps running after any error. An unexpected one is logged with its traceback on stderr.
    """
    from mcp.server.mcpserver.exceptions import ToolError

    from agent.decompose import InstructionError
    from agent.runner import ThreadError
    from tools.case_store import CaseStoreError
    from tools.embeddings import EmbedderUnavailableError
    from tools.image_io import ImageInputError

    try:
        return call()
    except CaseStoreError as error:
        raise ToolError(case_library_message(error)) from None
    except (ToolInputError, ImageInputError, InstructionError, ThreadError, EmbedderUnavailableError,
            FileExistsError) as error:
        raise ToolError(str(error)) from None
    except OSError as error:
        if error.filename is None:
            logger.exception("%s failed", name)
            raise ToolError(f"internal error in {name}: {error}; see the server's log on stderr") from None
        raise ToolError(f"{error.strerror or 'input/output error'}: {error.filename}") from None
    except Exception as error:  # noqa: BLE001 - a tool error keeps the server running; the log keeps the traceback
        logger.exception("%s failed", name)
        raise ToolError(
            f"internal error in {name}: {type(error).__name__}: {error}; see the server's log on stderr"
        ) from None


def resolve_in_roots(label: str, path: str, roots: list[Path]) -> Path:
    """Return the real path of `path`, which must lie inside one of `roots` once symlinks are resolved.

    A relative path is taken from the first root. Raises ToolInputError naming the path and the roots otherwise.
    """
    if not path.strip():
        raise ToolInputError(f"missing {label}: give a file inside {_describe_roots(roots)}")
    if "\0" in path:
        raise ToolInputError(f"invalid {label} {path!r}: it contains a NUL character")
    real = Path(os.path.realpath(_absolute(path, roots)))
    if not any(real.is_relative_to(root) for root in roots):
        described_path = path if str(real) == path else f"{path} (resolves to {real})"
        raise ToolInputError(
            f"{label} {described_path} is outside the allowed folders ({_describe_roots(roots)}); pass a file "
            "inside one, or restart ragedit mcp with --root for its folder"
        )
    return real


def _absolute(path: str, roots: list[Path]) -> Path:
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else roots[0] / expanded


def _describe_roots(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def summarize_run(thread_id: str, source: Path, final: dict[str, Any]) -> str:
    """Describe an edit run for the assistant: the thread, each subtask's status and reason, and the output."""
    from agent.report import this_turn

    output = final["output"]
    lines = [
        f"thread_id: {thread_id}",
        f"Edited {source} (turn {final.get('turn', 1)} of this thread).",
        "Subtasks:",
    ]
    for number, result in enumerate(this_turn(final, "results"), start=1):
        lines.append(f"  {number}. {result['text']}: {result['status']} ({result['tool']}): {result['reason']}")
    lines.append(f"Output: {output['width']}x{output['height']} PNG, artifact {output['path']}")
    written = final.get("written_path")
    lines.append(f"Wrote {written}" if written else "No file written: pass output_path to save a copy.")
    lines.append(f"To edit this result further, call edit_image with the same image_path and thread_id {thread_id}.")
    return "\n".join(lines)


def build_server(context: Context, roots: list[Path], checkpoints: Path | None = None,
                 log_level: str = "WARNING") -> MCPServer:
    """Build the MCP server with the edit_image, plan_edit and search_cases tools."""
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ToolAnnotations

    tools = EditTools(context, roots, checkpoints)
    folders = _describe_roots(roots)
    server = MCPServer(
        SERVER_NAME,
        instructions=(
            f"ragedit edits photos from plain-language instructions. It reads and writes files only inside "
            f"{folders}. edit_image returns a thread_id; pass it back with the same image_path to edit the result "
            "further."
        ),
        log_level=log_level,  # type: ignore[arg-type]
    )
    server.add_tool(
        tools.edit_image, name="edit_image", structured_output=False,
        description=(
            "Edit a photo from a plain-language instruction and return the edited image, with the thread_id and "
            f"each subtask's status and reason. Files must be inside {folders}. The profile "
            f"'{context.profile}' is active" + (": it makes global adjustments only (brightness, contrast, black and "
            "white, vignette, rotate, ...) and skips edits that need a generative model." if context.profile ==
            "offline" else ".")
        ),
        annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False, open_world_hint=False),
    )
    server.add_tool(
        tools.plan_edit, name="plan_edit", structured_output=False,
        description="Split an instruction into the subtasks ragedit would run, each with its tool, and the things "
        "to preserve, without editing. Returns JSON.",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    server.add_tool(
        tools.search_cases, name="search_cases", structured_output=False,
        description="Search ragedit's case library for the past edits closest to an instruction. Returns a JSON "
        "list of {id, instruction, tool, params, score}, best first; score is the cosine similarity.",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    return server


def resolve_roots(folders: list[Path]) -> list[Path]:
    """Return the real paths of the allowed folders, raising UsageError for one that is missing or a file."""
    roots: list[Path] = []
    for folder in folders:
        real = Path(os.path.realpath(folder.expanduser()))
        if not real.is_dir():
            reason = "it is a file" if real.exists() else "folder not found"
            raise UsageError(f"invalid --root {folder}: {reason}; pass an existing folder")
        if real not in roots:
            roots.append(real)
    return roots


def check_port_free(port: int) -> None:
    """Raise UsageError when the port cannot be bound on 127.0.0.1, before the server starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HTTP_HOST, port))
        except OSError as error:
            raise UsageError(
                f"cannot listen on {HTTP_HOST}:{port}: {error.strerror}; pass --port with a free port"
            ) from None


def mcp_command(
    root: Optional[list[Path]] = typer.Option(
        None, "--root", help="Folder whose photos the tools may read and write, with its subfolders; repeat for "
        "several. Relative paths in tool calls are taken from the first.", show_default="the current folder",
    ),
    http: bool = typer.Option(
        False, "--http", help=f"Serve streamable HTTP at http://{HTTP_HOST}:PORT{HTTP_PATH} instead of stdio."
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=1, max=65535, help="TCP port on 127.0.0.1 for --http."),
    profile: Optional[ProfileName] = ProfileOption,
    home: Optional[Path] = HomeOption,
    checkpoints: Optional[Path] = CheckpointsOption,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", "--debug",
        help="Log tool calls, model loads and retries to stderr, and the traceback of an internal error.",
    ),
) -> None:
    """Serve edit_image, plan_edit and search_cases to chat assistants over MCP: stdio, or HTTP with --http."""
    # stdout is the protocol channel in stdio mode, so everything else goes to stderr.
    configure_logging(verbose)
    quiet_model_libraries()
    options = {"root": root, "http": http, "port": port, "profile": profile, "home": home,
               "checkpoints": checkpoints, "verbose": verbose}
    raise typer.Exit(run_guarded(lambda: serve(options), verbose))


def serve(options: dict[str, Any]) -> int:
    """Check the options, resolve the profile, and serve until the client disconnects or the process is stopped."""
    from agent import cli_common

    import importlib.util

    # Checked here so that a missing or 1.x SDK is one line, not a traceback.
    if importlib.util.find_spec("mcp") is None or importlib.util.find_spec("mcp.server.mcpserver") is None:
        raise UsageError("ragedit mcp needs the MCP Python SDK 2.x: pip install 'mcp>=2.3'")

    if options["port"] != DEFAULT_PORT and not options["http"]:
        raise UsageError("--port applies only to --http; add --http, or drop --port for stdio")
    check_home(options["home"])
    if options["checkpoints"] is not None and options["checkpoints"].is_dir():
        raise UsageError(f"invalid --checkpoints {options['checkpoints']}: it is a folder; pass a SQLite file name")
    roots = resolve_roots(options["root"] or [Path.cwd()])
    context = resolve_context({
        "profile": options["profile"], "home": options["home"], "clip_model": None, "editor_model": None,
        "llm": None, "seed": 0, "steps": 0, "max_attempts": 3, "candidates": 1, "max_side": 512, "device": "",
    })
    if options["http"]:
        check_port_free(options["port"])

    server = build_server(context, roots, options["checkpoints"], "INFO" if options["verbose"] else "WARNING")
    cli_common.interrupt_message = (
        "interrupted; the MCP server stopped (an edit it was running finishes when called again)"
    )
    if options["http"]:
        typer.echo(f"ragedit: serving MCP at http://{HTTP_HOST}:{options['port']}{HTTP_PATH} with the "
                   f"{context.profile} profile; allowed folders: {_describe_roots(roots)}", err=True)
        run_http(server, options["port"], options["verbose"])
    else:
        logger.info("serving MCP over stdio with the %s profile; allowed folders: %s", context.profile,
                    _describe_roots(roots))
        server.run()
    return 0


def run_http(server: MCPServer, port: int, verbose: bool) -> None:
    """Serve streamable HTTP on 127.0.0.1 until the process is stopped, logging through the root logger."""
    import anyio
    import uvicorn

    app = server.streamable_http_app(streamable_http_path=HTTP_PATH, host=HTTP_HOST)
    # log_config=None keeps uvicorn from installing its own handlers, one of which writes access lines to stdout.
    config = uvicorn.Config(app, host=HTTP_HOST, port=port, log_level="info" if verbose else "warning",
                            log_config=None)
    anyio.run(uvicorn.Server(config).serve)


if __name__ == "__main__":
    # Run the imported module rather than this __main__ copy, so agent.cli and this command share one module.
    from agent.mcp_server import mcp_command as command

    typer.run(command)
