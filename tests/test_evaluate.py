"""`ragedit evaluate`: the runner on generated MagicBrush-format datasets, with tiny models and the offline profile."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.context import Context
from agent.eval_data import load_eval_dataset
from agent.evaluate import CONFIGURATIONS, run_evaluation
from agent.report import SHEET_LINE_HEIGHT, SHEET_PADDING
from tests.magicbrush_fixture import write_magicbrush_folder, write_magicbrush_parquet
from tools.adjust import adjust
from tools.embeddings import load_clip_embedder

REPO = Path(__file__).resolve().parent.parent
CAT = Image.open(REPO / "tests" / "data" / "cat.png").convert("RGB").resize((60, 40))


@pytest.fixture
def tiny_context(tiny_ip2p_dir, tiny_clip_dir, tmp_path):
    return Context(
        profile="full", home=str(tmp_path / "home"), editor_model=str(tiny_ip2p_dir), clip_model=str(tiny_clip_dir),
        max_side=64, steps=2,
    )


def _adjust_sessions():
    """Sessions whose ground truth is what the exact adjust edits produce, so their distances are known."""
    gray = adjust(CAT, "black_and_white", 1.0)
    rotated = adjust(gray, "rotate", 90.0)
    return [
        {"session_id": "1", "turns": [
            {"instruction": "make it black and white", "input": CAT, "output": gray,
             "source_caption": "a photo of a cat", "target_caption": "a black and white photo of a cat"},
            {"instruction": "rotate it 90 degrees", "input": gray, "output": rotated,
             "source_caption": "a black and white photo of a cat", "target_caption": "a rotated photo of a cat"},
        ]},
        # The ground truth is the unedited input, so the distance is that of the grayscale output to the colour photo.
        {"session_id": "2", "turns": [
            {"instruction": "make it black and white", "input": CAT, "output": CAT,
             "source_caption": "a photo of a cat", "target_caption": "a photo of a cat"},
        ]},
    ]


def test_metrics_match_hand_computed(tmp_path, tiny_clip_dir):
    dataset = write_magicbrush_folder(tmp_path / "data", _adjust_sessions())
    context = Context(profile="offline", home=str(tmp_path / "home"))
    metric_clip = load_clip_embedder(str(tiny_clip_dir))
    result = run_evaluation(load_eval_dataset(dataset), context, tmp_path / "out", ablation=False,
                            metric_embedder=metric_clip)
    by_key = {(outcome.session_id, outcome.turn, outcome.setting): outcome.metrics for outcome in result.outcomes}
    gray = np.asarray(adjust(CAT, "black_and_white", 1.0), dtype=np.float64) / 255
    colour = np.asarray(CAT, dtype=np.float64) / 255

    assert by_key[("1", 1, "single-turn")]["l1"] == 0.0
    assert by_key[("1", 2, "single-turn")]["l2"] == 0.0
    assert by_key[("1", 2, "multi-turn")]["l1"] == 0.0
    assert by_key[("1", 1, "single-turn")]["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert by_key[("2", 1, "single-turn")]["l1"] == pytest.approx(np.abs(gray - colour).mean(), abs=1e-9)
    assert by_key[("2", 1, "single-turn")]["l2"] == pytest.approx(np.square(gray - colour).mean(), abs=1e-9)
    assert result.means[("agent", "single-turn")]["l1"] == pytest.approx(np.abs(gray - colour).mean() / 3, abs=1e-9)


def test_metrics_without_clip_are_none(tmp_path):
    dataset = write_magicbrush_folder(tmp_path / "data", _adjust_sessions())
    context = Context(profile="offline", home=str(tmp_path / "home"))
    result = run_evaluation(load_eval_dataset(dataset), context, tmp_path / "out", ablation=False,
                            metric_embedder=None)

    assert result.means[("agent", "single-turn")]["clip_i"] is None
    assert "| full agent (+ critic) | 0.0" in result.table
    assert "n/a" in result.table


def test_ablation_writes_four_rows(tmp_path, tiny_context, tiny_clip_dir):
    dataset = write_magicbrush_folder(tmp_path / "data")
    sessions = load_eval_dataset(dataset)
    result = run_evaluation(sessions, tiny_context, tmp_path / "out", ablation=True,
                            metric_embedder=load_clip_embedder(str(tiny_clip_dir)))
    markdown = (tmp_path / "out" / "results.md").read_text()
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    edits = (tmp_path / "out" / "edits.jsonl").read_text().splitlines()

    for setting in ("Single-turn", "Multi-turn"):
        section = markdown.split(f"### {setting}")[1].split("###")[0]
        table_rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
        assert len(table_rows) == 1 + 4
    assert [row["configuration"] for row in rows] == [name for config in CONFIGURATIONS for name in [config.name] * 2]
    assert all(row["clip_t"] for row in rows)
    # Three sessions with 1, 2 and 3 turns: 6 single-turn edits and 3 scored multi-turn chains per configuration.
    assert len(edits) == 4 * (6 + 3)
    assert json.loads(edits[0])["configuration"] == "ip2p"


def test_contact_sheet_size(tmp_path, tiny_context):
    dataset = write_magicbrush_folder(tmp_path / "data")
    result = run_evaluation(load_eval_dataset(dataset), tiny_context, tmp_path / "out", ablation=True,
                            metric_embedder=None)
    sheet = Image.open(result.files["sheet"])
    # Tiles are 192 pixels high; 64x48 images are 256 wide; input, ground truth and four configurations per row.
    caption = 4 * SHEET_LINE_HEIGHT + 2 * SHEET_PADDING

    assert sheet.size == (6 * 256, 3 * (192 + caption))


def test_same_seed_for_every_configuration(tmp_path, tiny_context):
    dataset = write_magicbrush_folder(tmp_path / "data")
    sessions = load_eval_dataset(dataset, limit=1)
    result = run_evaluation(sessions, tiny_context, tmp_path / "out", ablation=True, metric_embedder=None)
    outputs = {outcome.configuration: Image.open(outcome.output_path) for outcome in result.outcomes
               if outcome.setting == "single-turn"}

    # "add a yellow sun" is one subtask, and without the critic every configuration makes one attempt with seed 0.
    assert np.array_equal(np.asarray(outputs["ip2p"]), np.asarray(outputs["decomposition"]))


def test_unreadable_image_leaves_out_session(tmp_path):
    dataset = write_magicbrush_folder(tmp_path / "data", _adjust_sessions())
    (dataset / "images" / "2" / "2-output1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    context = Context(profile="offline", home=str(tmp_path / "home"))
    result = run_evaluation(load_eval_dataset(dataset), context, tmp_path / "out", ablation=False,
                            metric_embedder=None)
    edits = (tmp_path / "out" / "edits.jsonl").read_text().splitlines()

    assert {outcome.session_id for outcome in result.outcomes} == {"1"}
    assert len(result.skipped) == 1
    assert "session 2 turn 1" in result.skipped[0]
    assert len(edits) == 3


def test_similar_session_ids_keep_own_outputs(tmp_path):
    sessions = _adjust_sessions()[1:]
    twins = [dict(sessions[0], session_id="a.b"), {**sessions[0], "session_id": "a_b", "turns": [
        {**sessions[0]["turns"][0], "instruction": "rotate it 90 degrees"}]}]
    dataset = write_magicbrush_folder(tmp_path / "data", twins)
    context = Context(profile="offline", home=str(tmp_path / "home"))
    result = run_evaluation(load_eval_dataset(dataset), context, tmp_path / "out", ablation=False,
                            metric_embedder=None)
    paths = {outcome.session_id: outcome.output_path for outcome in result.outcomes if outcome.setting == "single-turn"}

    assert paths["a.b"] != paths["a_b"]
    assert Image.open(paths["a.b"]).size == (60, 40)
    assert Image.open(paths["a_b"]).size == (40, 60)


def test_unchecked_configurations_show_no_acceptance(tmp_path, tiny_context):
    dataset = write_magicbrush_folder(tmp_path / "data")
    result = run_evaluation(load_eval_dataset(dataset, limit=1), tiny_context, tmp_path / "out", ablation=True,
                            metric_embedder=None)
    first_row = next(line for line in result.table.splitlines() if line.startswith("| InstructPix2Pix"))
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))

    assert first_row.split(" | ")[-2] == "n/a"
    assert rows[0]["label"] == "InstructPix2Pix on the whole instruction"
    assert rows[0]["accepted_by_critic"] == ""
    assert rows[-1]["accepted_by_critic"].endswith("%")


# --- the command ----------------------------------------------------------------------------------------------------


def ragedit(*args, home):
    # The test's folder is the working folder, so a run that ignores --out cannot write into the repository.
    env = dict(os.environ, RAGEDIT_HOME=str(home), HF_HUB_OFFLINE="1")
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=home.parent, timeout=300)


def test_command_on_parquet(tmp_path, tiny_clip_dir):
    dataset = write_magicbrush_parquet(tmp_path / "mb.parquet")
    out = tmp_path / "out"
    result = ragedit("evaluate", dataset, "--limit", "2", "--profile", "offline", "--out", out,
                     "--metric-clip", tiny_clip_dir, home=tmp_path / "home")

    assert result.returncode == 0, result.stderr
    assert "| full agent (+ critic) |" in result.stdout
    assert "Evaluating 2 sessions (3 turns)" in result.stderr
    assert sorted(path.name for path in out.iterdir() if path.is_file()) == [
        "edits.jsonl", "results.csv", "results.md", "sheet.png"
    ]


def test_command_needs_the_editor(tmp_path, tiny_clip_dir):
    dataset = write_magicbrush_parquet(tmp_path / "mb.parquet")
    result = ragedit("evaluate", dataset, "--profile", "full", "--clip-model", tiny_clip_dir,
                     "--editor-model", "nobody/no-such-model", "--out", tmp_path / "out", home=tmp_path / "home")

    assert result.returncode == 2
    assert "nobody/no-such-model" in result.stderr
    assert "pass --profile offline to score adjust edits only" in result.stderr
    assert not (tmp_path / "out" / "results.md").exists()


def test_command_refuses_to_replace_results(tmp_path):
    dataset = write_magicbrush_parquet(tmp_path / "mb.parquet")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("earlier results\n")
    result = ragedit("evaluate", dataset, "--profile", "offline", "--out", out, home=tmp_path / "home")

    assert result.returncode == 2
    assert "already contains results.md; pass --overwrite" in result.stderr
    assert (out / "results.md").read_text() == "earlier results\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing.parquet"], "missing.parquet"),
        (["{tmp}/mb.parquet", "--limit", "0"], "invalid --limit 0"),
        (["{tmp}/mb.parquet", "--candidates", "9"], "invalid --candidates 9"),
        (["{tmp}/mb.parquet", "--metric-clip", "ViT-B-32:"], "a model name and a weights tag are needed"),
        (["{tmp}/mb.parquet", "--metric-clip", "garbage"], "unknown open_clip model 'garbage'"),
        (["{tmp}/mb.parquet", "--metric-clip", "ViT-B-32:nonexistent"], "has no weights 'nonexistent'"),
        (["{tmp}/mb.parquet", "--metric-clip", "{tmp}/no-such-folder"], "folder not found"),
        (["{tmp}/mb.parquet", "--out", ""], "invalid --out ''"),
        (["{tmp}", "--out", "{tmp}/results"], "inside the dataset folder"),
    ],
)
def test_command_bad_input_one_line(tmp_path, args, message):
    write_magicbrush_parquet(tmp_path / "mb.parquet")
    filled = [arg.format(tmp=tmp_path) for arg in args]
    defaults = [] if "--profile" in filled else ["--profile", "offline"]
    defaults += [] if "--out" in filled else ["--out", tmp_path / "out"]
    result = ragedit("evaluate", *filled, *defaults, home=tmp_path / "home")

    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
