"""The ragedit command line as a user runs it: a real process, real photos, the offline profile."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).parent / "data"
CAT = DATA / "cat.png"
REPO = Path(__file__).resolve().parent.parent


def ragedit(*args, home, cwd=None):
    env = dict(os.environ, RAGEDIT_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd or REPO, timeout=300,
    )


def luminance(image):
    return np.asarray(image.convert("L"), dtype=np.float64).mean() / 255.0


def saturation(image):
    return np.asarray(image.convert("HSV"), dtype=np.float64)[..., 1].mean() / 255.0


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


def test_three_subtasks_move_pixels(tmp_path, home):
    output = tmp_path / "out.png"
    report = tmp_path / "report.json"
    result = ragedit(
        "edit", CAT, "make it brighter, reduce the saturation and sharpen it, but keep the cat unchanged",
        "-o", output, "--profile", "offline", "--report", report, home=home,
    )
    data = json.loads(report.read_text())
    before = Image.open(CAT)
    after = Image.open(output)

    assert result.returncode == 0, result.stderr
    assert [item["status"] for item in data["subtasks"]] == ["accepted"] * 3
    assert data["preserve"] == ["cat"]
    assert after.size == before.size
    assert luminance(after) > luminance(before) + 0.02
    assert saturation(after) < saturation(before) - 0.02


def test_black_and_white_acceptance(tmp_path, home):
    output = tmp_path / "out.png"
    report = tmp_path / "r.json"
    result = ragedit(
        "edit", CAT, "make it black and white, increase the contrast and add a vignette", "-o", output,
        "--profile", "offline", "--report", report, home=home,
    )
    data = json.loads(report.read_text())
    pixels = np.asarray(Image.open(output).convert("RGB"), dtype=np.int16)

    assert result.returncode == 0, result.stderr
    assert Image.open(output).size == (451, 300)
    assert Image.open(output).mode == "L"
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert [item["tool"] for item in data["subtasks"]] == ["adjust"] * 3
    assert [item["status"] for item in data["subtasks"]] == ["accepted"] * 3
    assert data["subtasks"][0]["retrieved"], "each subtask reports its retrieved cases"
    assert data["subtasks"][0]["attempts"][0]["verdict"] == "accept"
    assert data["output"]["path"] == str(output.resolve())
    assert (data["output"]["width"], data["output"]["height"]) == (451, 300)


def test_semantic_subtask_skipped_offline(tmp_path, home):
    output = tmp_path / "out2.png"
    result = ragedit("edit", CAT, "add a party hat to the cat and make it brighter", "-o", output,
                     "--profile", "offline", home=home)

    assert result.returncode == 3
    assert "instruct_pix2pix editor" in result.stdout
    assert "--profile full" in result.stdout
    assert luminance(Image.open(output)) > luminance(Image.open(CAT)) + 0.02


def test_exif_photo_edited_upright(tmp_path, home):
    output = tmp_path / "out3.png"
    result = ragedit("edit", DATA / "cat_exif_orientation6.jpg", "make it warmer", "-o", output,
                     "--profile", "offline", home=home)

    assert result.returncode == 0, result.stderr
    assert Image.open(output).size == (451, 300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["edit", DATA / "bad" / "empty.png", "make it brighter", "-o", "{tmp}/o.png"], "empty.png"),
        (["edit", DATA / "bad" / "not_an_image.jpg", "make it brighter", "-o", "{tmp}/o.png"], "not an image"),
        (["edit", DATA / "missing.png", "make it brighter", "-o", "{tmp}/o.png"], "not found"),
        (["edit", CAT, "   ", "-o", "{tmp}/o.png"], "empty"),
        (["edit", CAT, "make it brighter", "-o", CAT], "input image"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.xyz"], "unsupported suffix"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--profile", "cloud"], "'cloud' is not one of"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--max-attempts", "0"], "invalid --max-attempts 0"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--report", CAT], "report"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--contact-sheet", "{tmp}/o.png"], "also the output"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/missing/../cat.png"], "input image"),
        (["edit", CAT, "make it brighter", "-o", f"{CAT}/out.png"], "is a file, not a folder"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--seed", "-1"], "invalid --seed -1"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--seed", "abc"], "Invalid value for '--seed'"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--device", "quantum"], "invalid --device"),
        (["edit", CAT, "make it brighter", "-o", "{tmp}/o.png", "--contact-sheet", "{tmp}/r.json"], "'.json'"),
        (["edit", CAT, "keep the cat", "-o", "{tmp}/o.png"], "not what to change"),
        (["edit", CAT], "Missing argument"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, home, args, message):
    # The input photo is copied, so a check that failed to reject an output path could only harm the copy.
    photo = tmp_path / "cat.png"
    photo.write_bytes(CAT.read_bytes())
    args = [str(arg).replace(str(CAT), str(photo)).replace("{tmp}", str(tmp_path)) for arg in args]
    result = ragedit(*args, "--profile", "offline", home=home) if "--profile" not in args else ragedit(*args, home=home)
    lines = result.stderr.strip().splitlines()

    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert photo.read_bytes() == CAT.read_bytes()


def test_existing_output_kept_without_overwrite(tmp_path, home):
    output = tmp_path / "out.png"
    output.write_bytes(b"keep me")
    result = ragedit("edit", CAT, "make it brighter", "-o", output, "--profile", "offline", home=home)

    assert result.returncode == 2
    assert "--overwrite" in result.stderr
    assert output.read_bytes() == b"keep me"


def test_plan_json(home):
    result = ragedit("plan", "add a rainbow, make it 30% brighter and keep the bridge", "--json", home=home)

    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "subtasks": [{"text": "add a rainbow", "tool": "instruct_pix2pix"}, {"text": "make it 30% brighter", "tool": "adjust"}],
        "preserve": ["bridge"],
    }


@pytest.mark.parametrize("module", ["torch", "diffusers", "open_clip", "faiss", "langchain_core", "langgraph"])
def test_cli_start_skips_heavy_module(module):
    # `ragedit --help` and `ragedit plan` start in a fraction of a second only while these stay out of the import.
    code = f"import sys; from agent.cli import app; import agent.decompose; print({module!r} in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)

    assert result.stdout.strip() == "False"


def test_full_profile_with_tiny_models(tmp_path, tiny_ip2p_dir, tiny_clip_dir):
    output = tmp_path / "out.png"
    report = tmp_path / "r.json"
    result = ragedit(
        "edit", CAT, "add a rainbow and make it brighter", "-o", output, "--editor-model", tiny_ip2p_dir,
        "--clip-model", tiny_clip_dir, "--steps", "2", "--max-side", "64", "--max-attempts", "2",
        "--report", report, home=tmp_path / "home",
    )
    data = json.loads(report.read_text())

    # Random-weight CLIP scores rarely pass the real thresholds, so the semantic subtask may fail; either way the
    # output is written, and the exit status is 0 only when every subtask was accepted.
    statuses = [item["status"] for item in data["subtasks"]]
    assert result.returncode == (0 if statuses == ["accepted", "accepted"] else 3), result.stderr
    assert statuses[1] == "accepted"
    assert "clip_directional" in data["subtasks"][0]["attempts"][0]["scores"]
    assert Image.open(output).size == (451, 300)


def test_out_of_range_amount_fails_subtask(tmp_path, home):
    output = tmp_path / "out.png"
    result = ragedit("edit", CAT, "make it 900% brighter and add a vignette", "-o", output, "--profile", "offline",
                     home=home)

    assert result.returncode == 3
    assert "failed: make it 900% brighter: invalid amount 9" in result.stdout
    assert Image.open(output).size == (451, 300)


def test_home_file_rejected(tmp_path):
    home_file = tmp_path / "home"
    home_file.write_text("not a folder")
    result = ragedit("edit", CAT, "make it brighter", "-o", tmp_path / "o.png", "--profile", "offline",
                     "--home", home_file, home=tmp_path)

    assert result.returncode == 2
    assert "invalid --home" in result.stderr


@pytest.mark.parametrize(
    "instruction, operation, direction",
    [("make it less bright", "brightness", -1), ("reduce the warmth", "warmth", -1), ("-20% contrast", "contrast", -1),
     ("make it warmer and brighter", "warmth", 1)],
)
def test_decrease_phrasing_moves_down(tmp_path, home, instruction, operation, direction):
    report = tmp_path / "r.json"
    # Options go before "--", so an instruction that starts with "-" is not read as an option.
    result = ragedit("edit", "-o", tmp_path / "o.png", "--profile", "offline", "--report", report, CAT, "--",
                     instruction, home=home)
    first = json.loads(report.read_text())["subtasks"][0]
    scores = first["attempts"][0]["scores"]

    assert result.returncode == 0, result.stderr
    assert first["operation"] == operation
    assert (scores["measured_after"] - scores["measured_before"]) * direction > 0


def test_uniform_image_can_be_brightened(tmp_path, home):
    gray = tmp_path / "gray.png"
    Image.new("RGB", (64, 48), (100, 100, 100)).save(gray)
    output = tmp_path / "o.png"
    result = ragedit("edit", gray, "make it brighter", "-o", output, "--profile", "offline", home=home)

    assert result.returncode == 0, result.stdout
    assert Image.open(output).convert("RGB").getpixel((0, 0))[0] > 100


def test_report_readable_by_others(tmp_path, home):
    report = tmp_path / "r.json"
    ragedit("edit", CAT, "make it brighter", "-o", tmp_path / "o.png", "--profile", "offline", "--report", report,
            home=home)

    assert report.stat().st_mode & 0o777 == 0o644


def test_interrupt_stops_run(tmp_path, tiny_ip2p_dir, tiny_clip_dir):
    import signal

    output = tmp_path / "out.png"
    env = dict(os.environ, RAGEDIT_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "edit", str(CAT), "add a party hat", "-o", str(output),
         "--editor-model", str(tiny_ip2p_dir), "--clip-model", str(tiny_clip_dir), "--steps", "5000",
         "--max-side", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    for line in process.stdout:
        if "attempt 1" in line:
            break
    process.send_signal(signal.SIGINT)
    returncode = process.wait(timeout=60)

    assert returncode == 130
    assert "interrupted" in process.stderr.read()
    assert not output.exists()


def test_default_profile_falls_back_offline(tmp_path):
    # HF_HUB_OFFLINE is set by ragedit() and the CLIP weights are not cached here, so the full profile cannot load.
    output = tmp_path / "out.png"
    env_home = tmp_path / "home"
    result = ragedit("edit", CAT, "make it warmer", "-o", output, home=env_home)

    assert result.returncode == 0, result.stderr
    assert "using the offline profile" in result.stderr
    assert (env_home / "cases" / "offline" / "manifest.json").exists()


def test_explicit_full_profile_does_not_fall_back(tmp_path):
    result = ragedit("edit", CAT, "make it warmer", "-o", tmp_path / "out.png", "--profile", "full",
                     "--clip-model", tmp_path / "no-such-clip", home=tmp_path / "home")

    assert result.returncode == 2
    assert "no-such-clip" in result.stderr
    assert "using the offline profile" not in result.stderr


def test_missing_manifest_keeps_library(tmp_path):
    home = tmp_path / "home"
    ragedit("edit", CAT, "make the colours 35% more saturated", "-o", tmp_path / "a.png", "--profile", "offline",
            home=home)
    library = home / "cases" / "offline"
    cases_before = (library / "cases.jsonl").read_text()
    (library / "manifest.json").unlink()
    result = ragedit("index", "stats", "--profile", "offline", home=home)

    assert result.returncode == 2
    assert "manifest.json is missing" in result.stderr
    assert (library / "cases.jsonl").read_text() == cases_before


def test_sheet_shows_each_subtask(tmp_path, home):
    sheet = tmp_path / "sheet.png"
    result = ragedit(
        "edit", CAT, "make it black and white, increase the contrast and add a vignette", "-o", tmp_path / "out.png",
        "--profile", "offline", "--sheet", sheet, home=home,
    )
    picture = Image.open(sheet)
    # Four tiles (the input and three subtasks) 256 pixels high, and three caption lines of 17 pixels under each.
    tile_width = round(451 * 256 / 300)

    assert result.returncode == 0, result.stderr
    assert f"Sheet: {sheet}" in result.stdout
    assert picture.size == (4 * tile_width, 256 + 3 * 17 + 12)
    # Grayscale tiles after the first subtask: the right half of the sheet has no colour.
    right = np.asarray(picture.convert("RGB"))[:256, 2 * tile_width:].astype(np.int16)
    assert np.abs(right[..., 0] - right[..., 2]).max() == 0
