"""The MCP server as an assistant reaches it: a real server process driven by the MCP Python client, offline profile."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mcp.server.mcpserver", reason="ragedit mcp needs the MCP Python SDK 2.x")

from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402 - after the importorskip on purpose
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

CAT = Path(__file__).parent / "data" / "cat.png"
REPO = Path(__file__).resolve().parent.parent
TOOL_NAMES = ["edit_image", "plan_edit", "search_cases"]
# Seconds a single tool call may take. The first edit also loads the offline embedder.
CALL_TIMEOUT_S = 120


def server_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "mcp", "--profile", "offline", *map(str, args)]


def server_env(home: Path) -> dict[str, str]:
    return {"RAGEDIT_HOME": str(home), "HF_HUB_OFFLINE": "1", "RAGEDIT_PROFILE": "offline"}


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def image_of(result: Any) -> Image.Image:
    data = next(block.data for block in result.content if block.type == "image")
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def corner_mean(image: Image.Image, size: int = 40) -> float:
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    corners = [pixels[:size, :size], pixels[:size, -size:], pixels[-size:, :size], pixels[-size:, -size:]]
    return float(np.mean([corner.mean() for corner in corners]))


async def converse(params: StdioServerParameters, errlog: Any, photos: Path, outside: Path) -> dict[str, Any]:
    """Run one stdio session through every tool and record each result by name."""
    results: dict[str, Any] = {}
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT_S) as session:
            await session.initialize()

            async def call(name: str, **arguments: Any) -> Any:
                return await session.call_tool(name, arguments)

            results["tools"] = await session.list_tools()
            # A relative path is taken from the first --root.
            results["first"] = await call("edit_image", image_path="cat.png", instruction="make it black and white")
            thread_id = re.search(r"thread_id: (\S+)", text_of(results["first"])).group(1)
            results["thread_id"] = thread_id
            results["second"] = await call(
                "edit_image", image_path=str(photos / "cat.png"), instruction="add a vignette", thread_id=thread_id,
                output_path="out/vignette.png",
            )
            results["outside"] = await call(
                "edit_image", image_path=str(outside / "cat.png"), instruction="make it brighter"
            )
            results["symlink"] = await call("edit_image", image_path="link.png", instruction="make it brighter")
            results["output_outside"] = await call(
                "edit_image", image_path="cat.png", instruction="make it brighter",
                output_path=str(outside / "out.png"),
            )
            results["output_is_input"] = await call(
                "edit_image", image_path="cat.png", instruction="make it brighter", output_path="cat.png"
            )
            results["output_exists"] = await call(
                "edit_image", image_path="cat.png", instruction="make it brighter", output_path="taken.png"
            )
            results["unknown_thread"] = await call(
                "edit_image", image_path="cat.png", instruction="make it brighter", thread_id="no-such-thread"
            )
            results["bad_image"] = await call("edit_image", image_path="broken.png", instruction="make it brighter")
            results["bad_instruction"] = await call("edit_image", image_path="cat.png", instruction="   ")
            results["plan"] = await call("plan_edit", instruction="make it brighter and add a vignette")
            results["search"] = await call("search_cases", query="make it black and white", k=3)
            results["bad_k"] = await call("search_cases", query="make it black and white", k=0)
            results["other_photo"] = await call(
                "edit_image", image_path="taken.png", instruction="make it brighter", thread_id=thread_id
            )

            async def edit_at_once(name: str, instruction: str) -> None:
                results[name] = await call("edit_image", image_path="cat.png", instruction=instruction)

            # Two edits in flight at once share the server's graph, case library and embedder.
            async with anyio.create_task_group() as group:
                group.start_soon(edit_at_once, "brighter", "make it brighter")
                group.start_soon(edit_at_once, "darker", "make it darker")
    return results


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mcp")
    photos, outside = base / "photos", base / "outside"
    photos.mkdir()
    outside.mkdir()
    shutil.copy(CAT, photos / "cat.png")
    shutil.copy(CAT, photos / "taken.png")
    shutil.copy(CAT, outside / "cat.png")
    (photos / "link.png").symlink_to(outside / "cat.png")
    (photos / "broken.png").write_bytes(b"not a png")
    return {"base": base, "photos": photos, "outside": outside, "home": base / "home"}


@pytest.fixture(scope="module")
def results(folders: dict[str, Path]) -> dict[str, Any]:
    params = StdioServerParameters(
        command=server_command()[0], args=server_command("--root", folders["photos"], "--verbose")[1:],
        env=server_env(folders["home"]), cwd=str(folders["base"]),
    )
    log_path = folders["base"] / "server.log"
    with open(log_path, "w", encoding="utf-8") as errlog:
        recorded = anyio.run(converse, params, errlog, folders["photos"], folders["outside"])
    recorded["log"] = log_path.read_text(encoding="utf-8")
    return recorded


def test_tools_listed(results):
    assert sorted(tool.name for tool in results["tools"].tools) == TOOL_NAMES


def test_edit_returns_gray_image(results):
    first = results["first"]
    pixels = np.asarray(image_of(first), dtype=np.int16)

    assert not first.is_error, text_of(first)
    assert image_of(first).size == (451, 300)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 1], pixels[..., 2])


def test_edit_summary(results):
    text = text_of(results["first"])

    assert re.search(r"^thread_id: [0-9a-f]{32}$", text, re.MULTILINE)
    assert "make it black and white: accepted (adjust)" in text
    assert "451x300" in text
    assert "No file written" in text


def test_edit_writes_only_requested_files(folders, results):
    names = sorted(path.name for path in folders["photos"].iterdir())

    assert names == ["broken.png", "cat.png", "link.png", "out", "taken.png"]
    assert sorted(path.name for path in folders["outside"].iterdir()) == ["cat.png"]


def test_thread_continues_with_vignette(results):
    second = results["second"]
    first_image = image_of(results["first"])
    second_image = image_of(second)

    assert not second.is_error, text_of(second)
    assert f"thread_id: {results['thread_id']}" in text_of(second)
    assert "turn 2" in text_of(second)
    assert second_image.size == (451, 300)
    assert corner_mean(second_image) < corner_mean(first_image) - 5


def test_output_path_written(folders, results):
    written = folders["photos"] / "out" / "vignette.png"

    assert f"Wrote {written}" in text_of(results["second"])
    assert Image.open(written).size == (451, 300)
    assert np.array_equal(np.asarray(Image.open(written).convert("RGB")), np.asarray(image_of(results["second"])))


@pytest.mark.parametrize(
    "name, message",
    [
        ("outside", "is outside the allowed folders"),
        ("symlink", "is outside the allowed folders"),
        ("output_outside", "is outside the allowed folders"),
        ("output_is_input", "it is the input image"),
        ("output_exists", "exists; choose a new file name"),
        ("unknown_thread", "unknown thread_id 'no-such-thread'"),
        ("other_photo", "pass that photo, or use a new thread"),
        ("bad_image", "broken.png"),
        ("bad_instruction", "invalid instruction"),
        ("bad_k", "invalid k 0"),
    ],
)
def test_bad_call_is_tool_error(results, name, message):
    result = results[name]

    assert result.is_error
    assert message in text_of(result)
    assert len(text_of(result).splitlines()) == 1


def test_outside_error_names_path_and_root(folders, results):
    text = text_of(results["outside"])

    assert str(folders["outside"] / "cat.png") in text
    assert str(folders["photos"].resolve()) in text


def test_symlink_error_names_target(folders, results):
    assert f"link.png (resolves to {folders['outside'].resolve() / 'cat.png'})" in text_of(results["symlink"])


def test_concurrent_edits_both_run(results):
    brighter, darker = results["brighter"], results["darker"]
    thread_ids = {re.search(r"thread_id: (\S+)", text_of(result)).group(1) for result in (brighter, darker)}

    assert not brighter.is_error, text_of(brighter)
    assert not darker.is_error, text_of(darker)
    assert len(thread_ids) == 2
    assert corner_mean(image_of(brighter)) > corner_mean(image_of(darker)) + 10


def test_plan_has_two_subtasks(results):
    plan = json.loads(text_of(results["plan"]))

    assert not results["plan"].is_error
    assert [subtask["text"] for subtask in plan["subtasks"]] == ["make it brighter", "add a vignette"]
    assert [subtask["tool"] for subtask in plan["subtasks"]] == ["adjust", "adjust"]


def test_search_returns_cases(results):
    cases = json.loads(text_of(results["search"]))

    assert not results["search"].is_error
    assert len(cases) == 3
    assert cases[0]["instruction"] == "make it black and white"
    assert cases[0]["tool"] == "adjust"
    assert cases[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert cases[0]["score"] >= cases[1]["score"] >= cases[2]["score"]


def test_verbose_logs_go_to_stderr(results):
    # With --verbose the server logs every edit, so a log line on stdout would have broken the later calls.
    assert re.search(r"INFO agent.mcp_server: edited .*cat.png on thread", results["log"])
    assert not results["darker"].is_error
    assert "Traceback" not in results["log"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"server did not listen on 127.0.0.1:{port} within {timeout_s} s")


async def talk_over_http(url: str) -> tuple[list[str], Any]:
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT_S) as session:
            await session.initialize()
            names = sorted(tool.name for tool in (await session.list_tools()).tools)
            plan = await session.call_tool("plan_edit", {"instruction": "rotate it 90 degrees and sharpen it"})
            return names, plan


def test_http_lists_tools(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        server_command("--http", "--port", port, "--root", tmp_path),
        env={**os.environ, **server_env(tmp_path / "home")}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_port(port, process)
        names, plan = anyio.run(talk_over_http, f"http://127.0.0.1:{port}/mcp")
        foreign_host = httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, headers={"Host": "attacker.example"})
    finally:
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)

    assert names == TOOL_NAMES
    assert len(json.loads(text_of(plan))["subtasks"]) == 2
    assert foreign_host.status_code == 421
    assert f"serving MCP at http://127.0.0.1:{port}/mcp" in stderr
    assert stdout == ""
    # uvicorn shuts down cleanly on SIGTERM, then raises the signal again, so the status is 0 or -SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM)


def test_http_port_in_use_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            server_command("--http", "--port", port, "--root", tmp_path),
            env={**os.environ, **server_env(tmp_path / "home")}, cwd=REPO,
            capture_output=True, text=True, timeout=60,
        )

    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert result.stdout == ""


def test_missing_root_one_line(tmp_path):
    result = subprocess.run(
        server_command("--root", tmp_path / "missing"), env={**os.environ, **server_env(tmp_path / "home")},
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    assert f"invalid --root {tmp_path / 'missing'}: folder not found" in result.stderr
