"""Run edits on durable threads: the graph with a SQLite checkpointer, shared by the CLI, the MCP server and the
LangChain tool.

A thread is one photo and the instructions given on it. Each run of the graph on a thread is a turn that starts from
the thread's current image, so "now make it brighter" continues the previous edit. Every step is a checkpoint, so a
run that was killed finishes when it is run again, and any earlier image can be branched from or gone back to.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.context import Context

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks, so two processes on one thread are not detected there.
    fcntl = None

logger = logging.getLogger(__name__)

CHECKPOINTS_FILE = "threads.sqlite"

_graphs: dict[str, Any] = {}
_graphs_lock = threading.Lock()


class ThreadError(ValueError):
    """A thread request that cannot be served: an unknown thread, another photo, a step that does not exist."""


@dataclass
class EditRun:
    """The outcome of one run on a thread."""

    thread_id: str
    final: dict[str, Any]
    """The thread's full state after the run."""
    interrupt: dict[str, Any] | None = None
    """The plan awaiting approval when the run stopped at the approval step, else None."""
    resumed: bool = False
    """True when the run finished an earlier run of the same instruction that had stopped midway."""


def checkpoints_path(context: Context, path: str | Path | None = None) -> Path:
    """Return the SQLite file of the threads: `path` when given, else threads.sqlite in the data folder."""
    return Path(path).expanduser().resolve() if path else context.home_path / CHECKPOINTS_FILE


def thread_graph(path: Path) -> Any:
    """Return the edit graph compiled with a SQLite checkpointer on `path`, one per file and process.

    Raises ThreadError when path is a folder or not a SQLite file.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    from graphs.edit import builder

    key = str(path)
    with _graphs_lock:
        graph = _graphs.get(key)
        if graph is None:
            if path.is_dir():
                raise ThreadError(f"invalid threads file {path}: it is a folder; pass a SQLite file name")
            path.parent.mkdir(parents=True, exist_ok=True)
            # One connection serves every thread of this process; SqliteSaver serialises its use with a lock.
            connection = sqlite3.connect(key, check_same_thread=False)
            saver = SqliteSaver(connection)
            try:
                saver.setup()
            except sqlite3.DatabaseError as error:
                connection.close()
                raise _damaged(path, error) from None
            graph = builder.compile(checkpointer=saver, name="ragedit")
            _graphs[key] = graph
    return graph


def _damaged(path: Path, error: Exception) -> ThreadError:
    return ThreadError(f"cannot use the threads file {path}: {error}; move it away to start a new one, or pass "
                       f"--checkpoints with another file")


def _existing_graph(context: Context, checkpoints: str | Path | None, thread_id: str) -> Any:
    """Return the thread graph for a command that only reads or rewinds, without creating the threads file."""
    path = checkpoints_path(context, checkpoints)
    if not path.exists():
        raise ThreadError(f"thread {thread_id} does not exist: there is no threads file {path} yet")
    return thread_graph(path)


MAX_THREAD_ID_CHARS = 200


def check_thread_id(thread_id: str) -> str:
    """Return a valid thread id; raises ThreadError for an empty, blank or overlong one."""
    if not thread_id.strip():
        raise ThreadError(f"invalid thread id {thread_id!r}: it is empty; give a name such as cat-edits")
    if len(thread_id) > MAX_THREAD_ID_CHARS:
        raise ThreadError(f"invalid thread id {thread_id[:40]!r}...: {len(thread_id)} characters is over the limit of "
                          f"{MAX_THREAD_ID_CHARS}")
    return thread_id


@contextlib.contextmanager
def _thread_in_use(path: Path, thread_id: str) -> Iterator[None]:
    """Hold a file lock for the thread, so a second process cannot run on it at the same time."""
    if fcntl is None:
        yield
        return
    folder = path.with_name(path.name + ".locks")
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(thread_id.encode("utf-8")).hexdigest()[:32]
    with open(folder / name, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ThreadError(
                f"thread {thread_id} is in use by another edit; wait for it to finish, or use another thread"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def run_edit(
    instruction: str,
    *,
    context: Context,
    image_path: str | None = None,
    thread_id: str | None = None,
    output_path: str | None = None,
    overwrite: bool = False,
    from_step: int | None = None,
    checkpoints: str | Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    callbacks: list[Any] | None = None,
) -> EditRun:
    """Run one instruction on a thread: a new thread when thread_id is None, else the next turn of that thread.

    When the thread's last run of the same instruction stopped midway (the process was killed), it is finished
    instead, without redoing the subtasks it completed. `from_step` first goes back to that step of the thread's
    history, so the turn branches from an earlier image. `on_event` receives the graph's progress events, and
`callbacks` (LangChain callback handlers, for tracing or timing) see every node run.

    Raises:
        ThreadError: the thread does not exist and no image was given, the image is not the thread's photo, or
            from_step is not a step of the thread.
    """
    path = checkpoints_path(context, checkpoints)
    graph = thread_graph(path)
    thread_id = uuid.uuid4().hex if thread_id is None else check_thread_id(thread_id)
    with _thread_in_use(path, thread_id), _sqlite_errors(path):
        return _run(graph, instruction, context, thread_id, image_path, output_path, overwrite, from_step, on_event,
                    callbacks)


def _run(
    graph: Any,
    instruction: str,
    context: Context,
    thread_id: str,
    image_path: str | None,
    output_path: str | None,
    overwrite: bool,
    from_step: int | None,
    on_event: Callable[[dict[str, Any]], None] | None,
    callbacks: list[Any] | None = None,
) -> EditRun:
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    snapshot = graph.get_state(config)
    values = snapshot.values or {}
    _check_image(thread_id, values, image_path)

    state_input: dict[str, Any] | None = {
        "instruction": instruction,
        "image_path": image_path or "",
        "output_path": output_path or "",
        "overwrite": overwrite,
    }
    resumed = False
    if from_step is not None:
        config = step_config(graph, thread_id, from_step)
    elif snapshot.next and not snapshot.interrupts and values.get("instruction") == instruction:
        logger.info("finishing the stopped run of %r on thread %s", instruction, thread_id)
        if on_event is not None:
            on_event({"event": "resumed", "thread_id": thread_id, "next": list(snapshot.next)})
        state_input, resumed = None, True
    if callbacks:
        config = {**config, "callbacks": callbacks}
    return _stream(graph, state_input, config, context, thread_id, on_event, resumed)


@contextlib.contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as error:
        raise _damaged(path, error) from None


def answer_plan(
    thread_id: str,
    answer: Any,
    *,
    context: Context,
    checkpoints: str | Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> EditRun:
    """Resume a run that stopped at plan approval with the answer: "accept", "cancel" or {"action": "edit", ...}."""
    from langgraph.types import Command

    path = checkpoints_path(context, checkpoints)
    graph = _existing_graph(context, checkpoints, thread_id)
    config = {"configurable": {"thread_id": thread_id}}
    with _thread_in_use(path, thread_id), _sqlite_errors(path):
        if not graph.get_state(config).interrupts:
            raise ThreadError(f"thread {thread_id} has no plan awaiting approval; start an edit with approve_plan set")
        return _stream(graph, Command(resume=answer), config, context, thread_id, on_event, False)


def _stream(
    graph: Any,
    state_input: Any,
    config: dict[str, Any],
    context: Context,
    thread_id: str,
    on_event: Callable[[dict[str, Any]], None] | None,
    resumed: bool,
) -> EditRun:
    # Sync durability writes each checkpoint before the next step starts, so a killed run loses at most the step
    # that was running.
    for mode, chunk in graph.stream(
        state_input, config, context=context, stream_mode=["custom"], durability="sync"
    ):
        if mode == "custom" and on_event is not None:
            on_event(chunk)
    snapshot = graph.get_state({"configurable": {"thread_id": thread_id}})
    interrupt = snapshot.interrupts[0].value if snapshot.interrupts else None
    return EditRun(thread_id=thread_id, final=dict(snapshot.values), interrupt=interrupt, resumed=resumed)


def _check_image(thread_id: str, values: dict[str, Any], image_path: str | None) -> None:
    if not values.get("source_path"):
        if not image_path:
            raise ThreadError(f"thread {thread_id} does not exist; pass an image to start it")
        return
    if image_path and str(Path(image_path).expanduser().resolve()) != values["source_path"]:
        raise ThreadError(
            f"thread {thread_id} edits {values['source_path']}, not {image_path}; pass that photo, or use a new "
            f"thread for this one"
        )


def thread_state(thread_id: str, *, context: Context, checkpoints: str | Path | None = None) -> dict[str, Any]:
    """Return the thread's current state; raises ThreadError for a thread that does not exist."""
    graph = _existing_graph(context, checkpoints, check_thread_id(thread_id))
    with _sqlite_errors(checkpoints_path(context, checkpoints)):
        values = graph.get_state({"configurable": {"thread_id": thread_id}}).values
    if not values:
        raise ThreadError(f"thread {thread_id} does not exist in {checkpoints_path(context, checkpoints)}")
    return dict(values)


def history(thread_id: str, *, context: Context, checkpoints: str | Path | None = None) -> list[dict[str, Any]]:
    """Return the thread's steps: the input photo, then each image a subtask made, in order."""
    return list(thread_state(thread_id, context=context, checkpoints=checkpoints).get("steps", []))


def step_config(graph: Any, thread_id: str, step: int) -> dict[str, Any]:
    """Return the config of the newest checkpoint at which `step` was the thread's last step.

    Running the graph with new input from that checkpoint branches the thread there; the later steps stay in the
    checkpoint history.
    """
    config = {"configurable": {"thread_id": thread_id}}
    steps = graph.get_state(config).values.get("steps", [])
    if not steps:
        raise ThreadError(f"thread {thread_id} does not exist; start it with an image before branching from a step")
    if not 0 <= step < len(steps):
        raise ThreadError(
            f"invalid step {step} for thread {thread_id}: it has steps 0 to {len(steps) - 1}; see ragedit history"
        )
    for snapshot in graph.get_state_history(config):
        snapshot_steps = snapshot.values.get("steps", [])
        if len(snapshot_steps) == step + 1 and snapshot.values.get("current") == snapshot_steps[-1]["image"]:
            return snapshot.config
    raise ThreadError(f"cannot find step {step} of thread {thread_id} in its checkpoints; see ragedit history")


def undo(thread_id: str, *, context: Context, checkpoints: str | Path | None = None) -> dict[str, Any]:
    """Go back to the image before the thread's last step and return that step."""
    steps = history(thread_id, context=context, checkpoints=checkpoints)
    if len(steps) < 2:
        raise ThreadError(f"thread {thread_id} has nothing to undo: it is at its input photo")
    path = checkpoints_path(context, checkpoints)
    graph = thread_graph(path)
    target = steps[-2]
    with _thread_in_use(path, thread_id), _sqlite_errors(path):
        config = step_config(graph, thread_id, target["step"])
        # A checkpoint made from the older one becomes the thread's newest, so the next turn starts from its image.
        graph.update_state(config, {"current": target["image"], "output": target["image"]}, as_node="finish")
    return target
