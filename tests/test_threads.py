"""Durable threads on a real SQLite checkpointer: continuing, history, branching, undo, resume, plan approval, and the
edit_image LangChain tool."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.context import Context
from agent.langchain_tool import make_edit_image_tool
from agent.runner import ThreadError, answer_plan, history, run_edit, thread_graph, undo

DATA = Path(__file__).parent / "data"
CAT = str(DATA / "cat.png")


@pytest.fixture
def context(tmp_path):
    return Context(profile="offline", home=str(tmp_path / "home"))


def _pixels(ref):
    return np.asarray(Image.open(ref["path"]).convert("RGB"), dtype=np.int16)


def _corner_mean(ref):
    return _pixels(ref)[:40, :40].mean()


def test_second_instruction_continues(context):
    first = run_edit("make it black and white, but keep the cat", context=context, image_path=CAT, thread_id="t")
    second = run_edit("now add a vignette", context=context, thread_id="t")
    final = second.final

    assert final["turn"] == 2
    assert final["turn_input"] == first.final["output"]
    assert final["preserve"] == ["cat"]
    assert final["memory"]["changed"] == ["make it black and white", "add a vignette"]
    assert _corner_mean(final["output"]) < _corner_mean(first.final["output"]) - 5
    # The vignette was applied to the grayscale result, so the output has no colour.
    assert np.ptp(_pixels(final["output"]), axis=2).max() == 0


def test_history_lists_every_step(context):
    run_edit("make it black and white and add a vignette", context=context, image_path=CAT, thread_id="t")
    run_edit("make it brighter", context=context, image_path=CAT, thread_id="t")
    steps = history("t", context=context)

    assert [step["step"] for step in steps] == [0, 1, 2, 3]
    assert [step["turn"] for step in steps] == [1, 1, 1, 2]
    assert [step["text"] for step in steps] == ["input", "make it black and white", "add a vignette", "make it brighter"]
    assert all(Path(step["image"]["path"]).is_file() for step in steps)


def test_undo_returns_previous_image(context):
    run_edit("make it black and white", context=context, image_path=CAT, thread_id="t")
    run_edit("add a vignette", context=context, thread_id="t")
    target = undo("t", context=context)
    after = run_edit("make it brighter", context=context, thread_id="t")

    assert target["step"] == 1
    assert after.final["turn_input"] == target["image"]
    assert [step["text"] for step in history("t", context=context)] == [
        "input", "make it black and white", "make it brighter",
    ]


def test_undo_at_input_rejected(context):
    run_edit("make it black and white", context=context, image_path=CAT, thread_id="t")
    undo("t", context=context)

    with pytest.raises(ThreadError, match="nothing to undo"):
        undo("t", context=context)


def test_branch_from_earlier_step(context):
    run_edit("make it black and white", context=context, image_path=CAT, thread_id="t")
    run_edit("add a vignette", context=context, thread_id="t")
    branched = run_edit("make it warmer", context=context, thread_id="t", from_step=0)
    steps = history("t", context=context)

    assert branched.final["turn_input"] == steps[0]["image"]
    assert [step["text"] for step in steps] == ["input", "make it warmer"]
    # Warmer from the colour photo: red above blue, which a grayscale input could not give.
    pixels = _pixels(branched.final["output"])
    assert pixels[..., 0].mean() > pixels[..., 2].mean() + 10


def test_unknown_step_rejected(context):
    run_edit("make it black and white", context=context, image_path=CAT, thread_id="t")

    with pytest.raises(ThreadError, match="invalid step 5 for thread t: it has steps 0 to 1"):
        run_edit("make it warmer", context=context, thread_id="t", from_step=5)


def test_thread_rejects_other_photo(context):
    run_edit("make it black and white", context=context, image_path=CAT, thread_id="t")

    with pytest.raises(ThreadError, match="rocket.jpg"):
        run_edit("make it warmer", context=context, image_path=str(DATA / "rocket.jpg"), thread_id="t")


def test_unknown_thread_needs_image(context):
    with pytest.raises(ThreadError, match="thread nope does not exist"):
        run_edit("make it warmer", context=context, thread_id="nope")


def test_stopped_run_resumes_without_redoing(context, tmp_path):
    instruction = "make it black and white, increase the contrast and add a vignette"
    graph = thread_graph(tmp_path / "home" / "threads.sqlite")
    config = {"configurable": {"thread_id": "t"}}
    # Stop after the first subtask's critique, as a killed process would after that checkpoint.
    graph.invoke({"image_path": CAT, "instruction": instruction}, config, context=context,
                 interrupt_after=["critique"], durability="sync")
    stopped = graph.get_state(config)
    resumed = run_edit(instruction, context=context, image_path=CAT, thread_id="t")
    clean_context = Context(profile="offline", home=str(tmp_path / "other"))
    uninterrupted = run_edit(instruction, context=clean_context, image_path=CAT, thread_id="u")

    assert stopped.next == ("next_subtask",)
    assert resumed.resumed
    assert [attempt["subtask_index"] for attempt in resumed.final["attempts"]] == [0, 1, 2]
    assert resumed.final["output"]["sha256"] == uninterrupted.final["output"]["sha256"]


def test_killed_process_resumes(tiny_ip2p_dir, tiny_clip_dir, tmp_path):
    instruction = "make it black and white, turn the cat into a tiger and add a vignette"
    common = [CAT, instruction, "--profile", "full", "--editor-model", tiny_ip2p_dir, "--clip-model", tiny_clip_dir,
              "--steps", "80", "--max-side", "64", "--max-attempts", "1"]
    env = dict(os.environ, RAGEDIT_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "agent.cli", "edit", *map(str, common), "--thread", "k"]
    process = subprocess.Popen([*command, "-o", str(tmp_path / "out.png")], stdout=subprocess.PIPE, text=True,
                               env=env)
    for line in process.stdout:
        # The editor's denoising of the second subtask has started (80 steps leave time for the signal), so the
        # first subtask's checkpoint is stored.
        if "turn the cat into a tiger: attempt 1" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    rerun = subprocess.run([*command, "-o", str(tmp_path / "out.png")], capture_output=True, text=True, env=env,
                           timeout=300)
    clean = subprocess.run(
        [sys.executable, "-m", "agent.cli", "edit", *map(str, common), "--thread", "c", "-o", str(tmp_path / "c.png")],
        capture_output=True, text=True, env=dict(env, RAGEDIT_HOME=str(tmp_path / "clean")), timeout=300,
    )

    assert process.returncode == -signal.SIGKILL
    assert rerun.returncode in (0, 3), rerun.stderr
    assert "Finishing the stopped run" in rerun.stdout
    assert "make it black and white: attempt" not in rerun.stdout
    assert clean.returncode in (0, 3), clean.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(Image.open(tmp_path / "c.png")))


def test_plan_approval_interrupts_with_plan(context, tmp_path):
    context.approve_plan = True
    run = run_edit("make it brighter and sharpen it", context=context, image_path=CAT, thread_id="t",
                   output_path=str(tmp_path / "out.png"))

    assert [subtask["text"] for subtask in run.interrupt["plan"]] == ["make it brighter", "sharpen it"]
    assert not (tmp_path / "out.png").exists()

    edited = answer_plan("t", {"action": "edit", "instruction": "make it black and white"}, context=context)
    assert [subtask["text"] for subtask in edited.interrupt["plan"]] == ["make it black and white"]

    done = answer_plan("t", "accept", context=context)
    assert done.interrupt is None
    assert [result["text"] for result in done.final["results"]] == ["make it black and white"]
    assert Image.open(tmp_path / "out.png").size == (451, 300)


def test_plan_cancel_writes_nothing(context, tmp_path):
    context.approve_plan = True
    run_edit("make it brighter", context=context, image_path=CAT, thread_id="t", output_path=str(tmp_path / "o.png"))
    cancelled = answer_plan("t", "cancel", context=context)

    assert cancelled.final["cancelled"]
    assert cancelled.final.get("results", []) == []
    assert not (tmp_path / "o.png").exists()


# --- the command line -------------------------------------------------------------------------------------------------


def ragedit(*args, home, stdin=""):
    env = dict(os.environ, RAGEDIT_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=env, cwd=home.parent, timeout=300)


def test_cli_thread_history_undo(tmp_path):
    home = tmp_path / "home"
    first = ragedit("edit", CAT, "make it black and white", "-o", tmp_path / "1.png", "--profile", "offline",
                    "--thread", "cli", home=home)
    second = ragedit("edit", CAT, "add a vignette", "-o", tmp_path / "2.png", "--profile", "offline",
                     "--thread", "cli", home=home)
    listed = ragedit("history", "--thread", "cli", home=home)
    undone = ragedit("undo", "--thread", "cli", "-o", tmp_path / "u.png", home=home)

    assert first.returncode == 0, first.stderr
    assert "Thread: cli" in first.stdout
    assert second.returncode == 0, second.stderr
    assert listed.returncode == 0
    assert "* step 2  turn 2  accepted  add a vignette" in listed.stdout
    assert undone.returncode == 0
    assert "back at step 1 (make it black and white)" in undone.stdout
    assert np.array_equal(np.asarray(Image.open(tmp_path / "u.png")), np.asarray(Image.open(tmp_path / "1.png")))


def test_cli_approve_plan_from_input(tmp_path):
    result = ragedit("edit", CAT, "make it brighter and sharpen it", "-o", tmp_path / "o.png", "--profile", "offline",
                     "--approve-plan", home=tmp_path / "home", stdin="e\nmake it black and white\na\n")

    assert result.returncode == 0, result.stderr
    assert "2. sharpen it -> adjust" in result.stdout
    assert "make it black and white: ACCEPTED" in result.stdout
    assert "sharpen it: attempt" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["history", "--thread", "nope"], "thread nope does not exist"),
        (["undo", "--thread", "nope"], "thread nope does not exist"),
        (["edit", CAT, "make it warmer", "-o", "{tmp}/o.png", "--from", "1"], "--from needs --thread"),
        (["edit", CAT, "make it warmer", "-o", "{tmp}/o.png", "--thread", ""], "invalid thread id ''"),
        (["edit", CAT, "make it warmer", "-o", "{tmp}/o.png", "--thread", "new", "--from", "0"], "does not exist"),
    ],
)
def test_cli_thread_errors_one_line(tmp_path, args, message):
    filled = [str(arg).format(tmp=tmp_path) for arg in args]
    result = ragedit(*filled, "--profile", "offline", home=tmp_path / "home") if filled[0] == "edit" else \
        ragedit(*filled, home=tmp_path / "home")

    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- the LangChain tool -----------------------------------------------------------------------------------------------


def test_edit_image_tool_continues_thread(context, tmp_path):
    tool = make_edit_image_tool(context)
    first = tool.invoke({"type": "tool_call", "id": "1", "name": "edit_image",
                         "args": {"image_path": CAT, "instruction": "make it black and white",
                                  "output_path": str(tmp_path / "first.png")}})
    thread_id = first.artifact["thread_id"]
    second = tool.invoke({"type": "tool_call", "id": "2", "name": "edit_image",
                          "args": {"thread_id": thread_id, "instruction": "now add a vignette"}})

    assert f"thread_id {thread_id}" in first.content
    assert first.artifact["output_path"] == str(tmp_path / "first.png")
    assert first.artifact["subtasks"][0]["status"] == "accepted"
    assert second.artifact["turn"] == 2
    assert second.artifact["thread_id"] == thread_id
    assert Image.open(second.artifact["artifact_path"]).size == (451, 300)


def test_edit_image_tool_error_message(context):
    tool = make_edit_image_tool(context)
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "edit_image",
                           "args": {"instruction": "make it warmer", "thread_id": "missing"}})

    assert message.status == "error"
    assert "thread missing does not exist" in message.content


def test_agent_loop_calls_tool_twice(context):
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class ToolCallingFake(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    calls = [
        {"name": "edit_image", "id": "a", "args": {"image_path": CAT, "instruction": "make it black and white",
                                                   "thread_id": "chat"}},
        {"name": "edit_image", "id": "b", "args": {"instruction": "now make it brighter", "thread_id": "chat"}},
    ]
    model = ToolCallingFake(messages=iter([
        AIMessage(content="", tool_calls=[calls[0]]), AIMessage(content="", tool_calls=[calls[1]]),
        AIMessage(content="Done."),
    ]))
    agent = create_agent(model, tools=[make_edit_image_tool(context)])
    messages = agent.invoke({"messages": [("user", "make my cat photo black and white, then brighter")]})["messages"]
    tool_messages = [message for message in messages if message.type == "tool"]

    assert [message.artifact["turn"] for message in tool_messages] == [1, 2]
    assert messages[-1].content == "Done."


# --- misuse ------------------------------------------------------------------------------------------------------------


def test_output_equal_to_input_rejected(context, tmp_path):
    photo = tmp_path / "cat.png"
    photo.write_bytes(Path(CAT).read_bytes())
    before = photo.read_bytes()

    with pytest.raises(ValueError, match="it is the input image"):
        run_edit("make it brighter", context=context, image_path=str(photo), thread_id="t",
                 output_path=str(tmp_path / "sub" / ".." / "cat.png"), overwrite=True)
    assert photo.read_bytes() == before


def test_later_turn_writes_no_old_output(context, tmp_path):
    first = run_edit("make it black and white", context=context, image_path=CAT, thread_id="t",
                     output_path=str(tmp_path / "a.png"))
    written = (tmp_path / "a.png").read_bytes()
    second = run_edit("add a vignette", context=context, thread_id="t")

    assert first.final["written_path"] == str(tmp_path / "a.png")
    assert second.final["written_path"] == ""
    assert (tmp_path / "a.png").read_bytes() == written


def test_unreadable_approval_asks_again(context):
    context.approve_plan = True
    run_edit("make it brighter", context=context, image_path=CAT, thread_id="t")
    again = answer_plan("t", "bogus", context=context)

    assert again.interrupt is not None
    assert again.interrupt["error"].startswith("unreadable answer 'bogus'")
    assert not again.final.get("cancelled")
    assert answer_plan("t", "accept", context=context).final["results"][0]["status"] == "accepted"


@pytest.mark.parametrize("thread_id", ["", "   ", "x" * 201])
def test_invalid_thread_id_rejected(context, thread_id):
    with pytest.raises(ThreadError, match="invalid thread id"):
        run_edit("make it brighter", context=context, image_path=CAT, thread_id=thread_id)


def test_damaged_threads_file_named(context, tmp_path):
    damaged = tmp_path / "threads.sqlite"
    damaged.write_bytes(b"this is not a database" * 100)

    with pytest.raises(ThreadError, match=f"cannot use the threads file {damaged}"):
        run_edit("make it brighter", context=context, image_path=CAT, checkpoints=damaged)


def test_thread_in_use_rejected(context, tmp_path):
    import fcntl
    import hashlib

    run_edit("make it brighter", context=context, image_path=CAT, thread_id="busy")
    lock = tmp_path / "home" / "threads.sqlite.locks" / hashlib.sha256(b"busy").hexdigest()[:32]
    with open(lock, "a+b") as handle:
        # Another process holding the thread's lock looks the same: a second open file description.
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ThreadError, match="thread busy is in use by another edit"):
            run_edit("make it warmer", context=context, thread_id="busy")


def test_history_creates_no_threads_file(context, tmp_path):
    with pytest.raises(ThreadError, match="there is no threads file"):
        history("missing", context=context)
    assert not (tmp_path / "home" / "threads.sqlite").exists()


@pytest.mark.parametrize("damage, message", [("delete", "not found in"), ("corrupt", "is corrupt")])
def test_cli_damaged_artifact_one_line(tmp_path, damage, message):
    home = tmp_path / "home"
    first = ragedit("edit", CAT, "make it black and white", "-o", tmp_path / "1.png", "--profile", "offline",
                    "--thread", "d", home=home)
    written = np.asarray(Image.open(tmp_path / "1.png"))
    current = next(path for path in (home / "artifacts").iterdir()
                   if np.array_equal(np.asarray(Image.open(path).convert("L")), written))
    if damage == "delete":
        current.unlink()
    else:
        current.write_bytes(b"not a png")
    second = ragedit("edit", CAT, "add a vignette", "-o", tmp_path / "2.png", "--profile", "offline",
                     "--thread", "d", home=home)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 2
    assert message in second.stderr
    assert "start a new thread" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert "Traceback" not in second.stderr
