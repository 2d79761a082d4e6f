"""Evaluation datasets: MagicBrush Parquet and test-set folders generated in tmp_path, read by load_eval_dataset."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from agent.eval_data import EvalDataError, EvalSession, EvalTurn, load_eval_dataset
from tests.magicbrush_fixture import make_sessions, write_magicbrush_folder, write_magicbrush_parquet

SESSION_IDS = ["101", "202", "303"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_magicbrush_folder(tmp_path / "test")


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    return write_magicbrush_parquet(tmp_path / "parquet" / "dev-00000-of-00001.parquet")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def rewrite_parquet(path: Path, **columns: list) -> Path:
    """Replace some columns of a generated Parquet file, keeping the others and the schema."""
    table = pq.read_table(path)
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))
    pq.write_table(table, path)
    return path


def turn_summary(sessions: list[EvalSession]) -> list[tuple[str, int, str]]:
    return [(turn.session_id, turn.turn, turn.instruction) for session in sessions for turn in session.turns]


# --- both layouts ---------------------------------------------------------------------------------------------------


def test_folder_sessions_in_file_order(folder: Path) -> None:
    sessions = load_eval_dataset(folder)
    assert [session.session_id for session in sessions] == SESSION_IDS
    assert [len(session.turns) for session in sessions] == [1, 2, 3]


def test_parquet_sessions_in_row_order(parquet_file: Path) -> None:
    sessions = load_eval_dataset(parquet_file)
    assert [session.session_id for session in sessions] == SESSION_IDS
    assert [len(session.turns) for session in sessions] == [1, 2, 3]


def test_layouts_give_same_turns(folder: Path, parquet_file: Path) -> None:
    from_folder = load_eval_dataset(folder)
    from_parquet = load_eval_dataset(parquet_file)
    assert turn_summary(from_folder) == turn_summary(from_parquet)


def test_layouts_give_same_pixels(folder: Path, parquet_file: Path) -> None:
    from_folder = [turn for session in load_eval_dataset(folder) for turn in session.turns]
    from_parquet = [turn for session in load_eval_dataset(parquet_file) for turn in session.turns]
    for folder_turn, parquet_turn in zip(from_folder, from_parquet, strict=True):
        label = f"session {folder_turn.session_id} turn {folder_turn.turn}"
        assert np.array_equal(pixels(folder_turn.load_source()), pixels(parquet_turn.load_source())), label
        assert np.array_equal(pixels(folder_turn.load_target()), pixels(parquet_turn.load_target())), label


def test_images_match_generated_sessions(parquet_file: Path) -> None:
    expected = [turn for session in make_sessions() for turn in session["turns"]]
    loaded = [turn for session in load_eval_dataset(parquet_file) for turn in session.turns]
    for generated, turn in zip(expected, loaded, strict=True):
        assert np.array_equal(pixels(turn.load_source()), pixels(generated["input"]))
        assert np.array_equal(pixels(turn.load_target()), pixels(generated["output"]))


def test_instructions_match_generated_sessions(folder: Path) -> None:
    expected = [turn["instruction"] for session in make_sessions() for turn in session["turns"]]
    assert [turn.instruction for session in load_eval_dataset(folder) for turn in session.turns] == expected


def test_turns_chain_outputs_to_inputs(folder: Path) -> None:
    session = load_eval_dataset(folder)[2]
    for previous, current in zip(session.turns, session.turns[1:]):
        assert np.array_equal(pixels(previous.load_target()), pixels(current.load_source()))


def test_loaded_images_are_rgb(parquet_file: Path) -> None:
    turn = load_eval_dataset(parquet_file)[0].turns[0]
    source = turn.load_source()
    assert source.mode == "RGB"
    assert source.size == (64, 48)


def test_source_decoded_on_each_call(folder: Path) -> None:
    turn = load_eval_dataset(folder)[0].turns[0]
    first = turn.load_source()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(folder / "images" / "101" / "101-input.png")
    second = turn.load_source()
    assert first is not second
    assert pixels(second)[0, 0].tolist() == [1, 2, 3]


def test_turns_compare_equal_across_layouts(tmp_path: Path, parquet_file: Path) -> None:
    uncaptioned = write_magicbrush_folder(tmp_path / "uncaptioned", captions=False)
    assert load_eval_dataset(uncaptioned) == load_eval_dataset(parquet_file)


def test_parquet_turns_sorted(tmp_path: Path) -> None:
    sessions = make_sessions()
    path = write_magicbrush_parquet(tmp_path / "shuffled.parquet", sessions)
    table = pq.read_table(path)
    pq.write_table(table.take([5, 4, 3, 0, 2, 1]), path)
    loaded = load_eval_dataset(path)
    assert [session.session_id for session in loaded] == ["303", "101", "202"]
    assert [turn.turn for turn in loaded[0].turns] == [1, 2, 3]
    assert loaded[0].turns[0].instruction == "place a black box on the table"


def test_parquet_folder_reads_all_files(tmp_path: Path) -> None:
    sessions = make_sessions()
    write_magicbrush_parquet(tmp_path / "dev" / "dev-00001.parquet", sessions[2:])
    write_magicbrush_parquet(tmp_path / "dev" / "dev-00000.parquet", sessions[:2])
    loaded = load_eval_dataset(tmp_path / "dev")
    assert [session.session_id for session in loaded] == SESSION_IDS


def test_session_split_across_files(tmp_path: Path) -> None:
    sessions = make_sessions()
    first = {"session_id": "303", "turns": sessions[2]["turns"][:1]}
    write_magicbrush_parquet(tmp_path / "dev" / "a.parquet", [first])
    path = write_magicbrush_parquet(tmp_path / "dev" / "b.parquet", [sessions[2]])
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    loaded = load_eval_dataset(tmp_path / "dev")
    assert [turn.turn for turn in loaded[0].turns] == [1, 2, 3]
    assert loaded[0].turns[2].instruction == "draw a purple stripe across the top"


def test_images_folder_accepted(folder: Path) -> None:
    sessions = load_eval_dataset(folder / "images")
    assert [session.session_id for session in sessions] == SESSION_IDS
    assert sessions[0].turns[0].target_caption == "a blue wall with a yellow sun"


def test_edit_sessions_file_accepted(folder: Path) -> None:
    sessions = load_eval_dataset(folder / "edit_sessions.json")
    assert [session.session_id for session in sessions] == SESSION_IDS


def test_path_given_as_string(folder: Path) -> None:
    assert len(load_eval_dataset(str(folder))) == 3


# --- captions -------------------------------------------------------------------------------------------------------


def test_folder_captions_match_generated(folder: Path) -> None:
    expected = [
        (turn["source_caption"], turn["target_caption"]) for session in make_sessions() for turn in session["turns"]
    ]
    loaded = [(turn.source_caption, turn.target_caption) for session in load_eval_dataset(folder)
              for turn in session.turns]
    assert loaded == expected


def test_parquet_has_no_captions(parquet_file: Path) -> None:
    turns = [turn for session in load_eval_dataset(parquet_file) for turn in session.turns]
    assert all(turn.source_caption is None for turn in turns)
    assert all(turn.target_caption is None for turn in turns)


def test_missing_caption_files_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_magicbrush_folder(tmp_path / "test", captions=False)
    with caplog.at_level(logging.WARNING, logger="agent.eval_data"):
        turn = load_eval_dataset(root)[0].turns[0]
    assert turn.source_caption is None
    assert turn.target_caption is None
    assert "no caption files" in caplog.text


def test_target_caption_prefers_local(folder: Path) -> None:
    write_json(folder / "local_descriptions.json", {"101": {"101-output1.png": "local sun"}})
    write_json(folder / "global_descriptions.json",
               {"101": {"101-input.png": "global wall", "101-output1.png": "global sun"}})
    turn = load_eval_dataset(folder)[0].turns[0]
    assert turn.target_caption == "local sun"


def test_source_caption_prefers_global(folder: Path) -> None:
    write_json(folder / "local_descriptions.json", {"101": {"101-input.png": "local wall"}})
    write_json(folder / "global_descriptions.json", {"101": {"101-input.png": "global wall"}})
    turn = load_eval_dataset(folder)[0].turns[0]
    assert turn.source_caption == "global wall"


def test_captions_fall_back_across_files(folder: Path) -> None:
    write_json(folder / "local_descriptions.json", {"101": {"101-input.png": "local wall"}})
    write_json(folder / "global_descriptions.json", {"101": {"101-output1.png": "global sun"}})
    turn = load_eval_dataset(folder)[0].turns[0]
    assert turn.source_caption == "local wall"
    assert turn.target_caption == "global sun"


def test_flat_caption_files_accepted(folder: Path) -> None:
    (folder / "local_descriptions.json").unlink()
    write_json(folder / "local_captions.json", {"202-output2.png": "flat cloud"})
    write_json(folder / "global_descriptions.json", {"202-output1.png": "flat barn"})
    turn = load_eval_dataset(folder)[1].turns[1]
    assert turn.source_caption == "flat barn"
    assert turn.target_caption == "flat cloud"


def test_uncaptioned_turn_gets_none(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_json(folder / "global_descriptions.json", {})
    write_json(folder / "local_descriptions.json", {"101": {"101-output1.png": "a sun"}})
    with caplog.at_level(logging.WARNING, logger="agent.eval_data"):
        sessions = load_eval_dataset(folder)
    assert sessions[0].turns[0].source_caption is None
    assert sessions[0].turns[0].target_caption == "a sun"
    assert sessions[1].turns[0].target_caption is None
    assert "6 of 6 turns" in caplog.text


# --- limit ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["folder", "parquet"])
def test_limit_keeps_first_sessions(layout: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue("folder" if layout == "folder" else "parquet_file")
    sessions = load_eval_dataset(path, limit=2)
    assert [session.session_id for session in sessions] == ["101", "202"]
    assert len(sessions[1].turns) == 2


def test_limit_above_count_keeps_all(parquet_file: Path) -> None:
    assert len(load_eval_dataset(parquet_file, limit=10)) == 3


def test_limit_skips_checks_of_dropped_sessions(parquet_file: Path) -> None:
    rewrite_parquet(parquet_file, instruction=["add a yellow sun", "a", "b", "", "", ""])
    assert [session.session_id for session in load_eval_dataset(parquet_file, limit=2)] == ["101", "202"]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_rejected(folder: Path, limit: int) -> None:
    with pytest.raises(EvalDataError, match=f"invalid limit {limit}"):
        load_eval_dataset(folder, limit=limit)


# --- errors ---------------------------------------------------------------------------------------------------------


def test_missing_path_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(EvalDataError, match="path not found") as caught:
        load_eval_dataset(missing)
    assert str(missing) in str(caught.value)


def test_unknown_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EvalDataError, match="neither MagicBrush layout") as caught:
        load_eval_dataset(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_unknown_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(EvalDataError, match="neither MagicBrush layout"):
        load_eval_dataset(path)


def test_invalid_sessions_json_rejected(folder: Path) -> None:
    (folder / "edit_sessions.json").write_text('{"101": [', encoding="utf-8")
    with pytest.raises(EvalDataError, match="invalid JSON in") as caught:
        load_eval_dataset(folder)
    assert "edit_sessions.json" in str(caught.value)


def test_invalid_caption_json_rejected(folder: Path) -> None:
    (folder / "global_descriptions.json").write_text("{", encoding="utf-8")
    with pytest.raises(EvalDataError, match="invalid JSON in .*global_descriptions.json"):
        load_eval_dataset(folder)


def test_caption_of_wrong_type_rejected(folder: Path) -> None:
    write_json(folder / "local_descriptions.json", {"101": {"101-output1.png": ["a", "sun"]}})
    with pytest.raises(EvalDataError, match="invalid caption of '101-output1.png'"):
        load_eval_dataset(folder)


def test_sessions_json_list_rejected(folder: Path) -> None:
    write_json(folder / "edit_sessions.json", [])
    with pytest.raises(EvalDataError, match="expected an object that maps each img_id"):
        load_eval_dataset(folder)


def test_empty_sessions_json_rejected(folder: Path) -> None:
    write_json(folder / "edit_sessions.json", {})
    with pytest.raises(EvalDataError, match="empty evaluation dataset .*edit_sessions.json"):
        load_eval_dataset(folder)


def test_empty_parquet_rejected(parquet_file: Path) -> None:
    pq.write_table(pq.read_table(parquet_file).slice(0, 0), parquet_file)
    with pytest.raises(EvalDataError, match="empty evaluation dataset") as caught:
        load_eval_dataset(parquet_file)
    assert parquet_file.name in str(caught.value)


def test_session_without_turns_rejected(folder: Path) -> None:
    sessions = read_json(folder / "edit_sessions.json")
    sessions["202"] = []
    write_json(folder / "edit_sessions.json", sessions)
    with pytest.raises(EvalDataError, match="invalid session 202 in .*edit_sessions.json"):
        load_eval_dataset(folder)


def test_turn_gap_rejected(parquet_file: Path) -> None:
    rewrite_parquet(parquet_file, turn_index=[1, 1, 2, 1, 2, 4])
    with pytest.raises(EvalDataError, match="invalid session 303 .*turn_index has gaps") as caught:
        load_eval_dataset(parquet_file)
    assert str(parquet_file) in str(caught.value)


def test_duplicate_turn_rejected(parquet_file: Path) -> None:
    rewrite_parquet(parquet_file, turn_index=[1, 1, 1, 1, 2, 3])
    with pytest.raises(EvalDataError, match="invalid session 202 .*turn_index 1 appears more than once"):
        load_eval_dataset(parquet_file)


def test_turns_starting_at_zero_rejected(parquet_file: Path) -> None:
    rewrite_parquet(parquet_file, turn_index=[0, 1, 2, 1, 2, 3])
    with pytest.raises(EvalDataError, match="invalid session 101 .*expected 1..1"):
        load_eval_dataset(parquet_file)


def test_null_turn_index_rejected(parquet_file: Path) -> None:
    rewrite_parquet(parquet_file, turn_index=[1, None, 2, 1, 2, 3])
    with pytest.raises(EvalDataError, match="invalid turn_index None in row 1 \\(session 202\\)"):
        load_eval_dataset(parquet_file)


def test_missing_image_file_rejected(folder: Path) -> None:
    missing = folder / "images" / "202" / "202-output2.png"
    missing.unlink()
    with pytest.raises(EvalDataError, match="missing image") as caught:
        load_eval_dataset(folder)
    assert str(missing) in str(caught.value)
    assert "turn 2 of session 202" in str(caught.value)


def test_missing_image_folder_rejected(folder: Path) -> None:
    shutil.rmtree(folder / "images" / "303")
    with pytest.raises(EvalDataError, match="missing image .*303-input.png"):
        load_eval_dataset(folder)


def test_image_path_in_name_rejected(folder: Path) -> None:
    sessions = read_json(folder / "edit_sessions.json")
    sessions["101"][0]["input"] = "../202/202-input.png"
    write_json(folder / "edit_sessions.json", sessions)
    with pytest.raises(EvalDataError, match="expected a file name"):
        load_eval_dataset(folder)


def test_missing_image_bytes_rejected(parquet_file: Path) -> None:
    table = pq.read_table(parquet_file)
    targets = table.column("target_img").to_pylist()
    targets[2] = {"bytes": None, "path": None}
    rewrite_parquet(parquet_file, target_img=targets)
    with pytest.raises(EvalDataError, match="missing target_img image in session 202 turn 2"):
        load_eval_dataset(parquet_file)


def test_empty_folder_instruction_rejected(folder: Path) -> None:
    sessions = read_json(folder / "edit_sessions.json")
    sessions["303"][1]["instruction"] = "  "
    write_json(folder / "edit_sessions.json", sessions)
    with pytest.raises(EvalDataError, match="turn 2 of session 303 .*instruction is empty"):
        load_eval_dataset(folder)


def test_empty_parquet_instruction_rejected(parquet_file: Path) -> None:
    rewrite_parquet(parquet_file, instruction=["add a yellow sun", "a", "", "b", "c", "d"])
    with pytest.raises(EvalDataError, match="row 2 \\(session 202\\) .*instruction is empty"):
        load_eval_dataset(parquet_file)


def test_parquet_without_columns_rejected(tmp_path: Path) -> None:
    path = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"img_id": ["1"], "instruction": ["add a hat"]}), path)
    with pytest.raises(EvalDataError, match="missing columns"):
        load_eval_dataset(path)


def test_damaged_parquet_rejected(tmp_path: Path) -> None:
    path = tmp_path / "damaged.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(EvalDataError, match="not a readable Parquet file"):
        load_eval_dataset(path)


def test_damaged_image_file_found_on_load(folder: Path) -> None:
    damaged = folder / "images" / "202" / "202-output1.png"
    turn = load_eval_dataset(folder)[1].turns[0]
    damaged.write_bytes(b"not a png")
    with pytest.raises(EvalDataError, match="target image of session 202 turn 1") as caught:
        turn.load_target()
    assert str(damaged) in str(caught.value)


def test_damaged_image_bytes_found_on_load(parquet_file: Path) -> None:
    sources = pq.read_table(parquet_file).column("source_img").to_pylist()
    sources[4] = {"bytes": b"\x89PNG broken", "path": None}
    rewrite_parquet(parquet_file, source_img=sources)
    turn = load_eval_dataset(parquet_file)[2].turns[1]
    with pytest.raises(EvalDataError, match="source image of session 303 turn 2") as caught:
        turn.load_source()
    assert str(parquet_file) in str(caught.value)
    assert "source_img" in str(caught.value)


def test_error_messages_are_one_line(folder: Path) -> None:
    (folder / "images" / "101" / "101-input.png").unlink()
    with pytest.raises(EvalDataError) as caught:
        load_eval_dataset(folder)
    assert "\n" not in str(caught.value)


def test_eval_types_are_frozen(parquet_file: Path) -> None:
    session = load_eval_dataset(parquet_file)[0]
    assert isinstance(session.turns[0], EvalTurn)
    with pytest.raises(AttributeError):
        session.turns[0].instruction = "changed"  # type: ignore[misc]


# --- turn order, JSON edge cases and Hugging Face splits -------------------------------------------------------------


def test_turns_out_of_order_sorted(folder: Path) -> None:
    sessions_file = folder / "edit_sessions.json"
    raw = read_json(sessions_file)
    raw["303"] = [raw["303"][2], raw["303"][0], raw["303"][1]]
    write_json(sessions_file, raw)
    session = load_eval_dataset(folder)[2]

    assert [turn.instruction for turn in session.turns] == [
        "place a black box on the table", "add an orange ball", "draw a purple stripe across the top",
    ]
    assert [turn.turn for turn in session.turns] == [1, 2, 3]


def test_broken_turn_chain_rejected(folder: Path) -> None:
    sessions_file = folder / "edit_sessions.json"
    raw = read_json(sessions_file)
    raw["303"][2]["input"] = "303-input.png"
    write_json(sessions_file, raw)

    with pytest.raises(EvalDataError, match="session 303 .* do not form one chain"):
        load_eval_dataset(folder)


def test_duplicate_session_key_rejected(folder: Path) -> None:
    sessions_file = folder / "edit_sessions.json"
    text = sessions_file.read_text()
    sessions_file.write_text(text.replace('"202":', '"101":', 1))

    with pytest.raises(EvalDataError, match="the key '101' appears twice"):
        load_eval_dataset(folder)


def test_byte_order_mark_accepted(folder: Path) -> None:
    sessions_file = folder / "edit_sessions.json"
    sessions_file.write_bytes(b"\xef\xbb\xbf" + sessions_file.read_bytes())

    assert len(load_eval_dataset(folder)) == 3


def test_deeply_nested_json_rejected(folder: Path) -> None:
    (folder / "edit_sessions.json").write_text("[" * 100000 + "]" * 100000)

    with pytest.raises(EvalDataError, match="nested too deeply"):
        load_eval_dataset(folder)


def test_instruction_not_text_rejected(folder: Path) -> None:
    sessions_file = folder / "edit_sessions.json"
    raw = read_json(sessions_file)
    raw["101"][0]["instruction"] = 42
    write_json(sessions_file, raw)

    with pytest.raises(EvalDataError, match="the instruction is a number, not text"):
        load_eval_dataset(folder)


def test_hub_snapshot_needs_split(tmp_path: Path) -> None:
    sessions = make_sessions()
    write_magicbrush_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", sessions[:2])
    write_magicbrush_parquet(tmp_path / "data" / "dev-00000-of-00001.parquet", sessions[2:])

    with pytest.raises(EvalDataError, match=r"several splits \(dev, train\); pass --split"):
        load_eval_dataset(tmp_path)
    assert [session.session_id for session in load_eval_dataset(tmp_path, split="dev")] == ["303"]
    assert len(load_eval_dataset(tmp_path / "data", split="train")) == 2
    with pytest.raises(EvalDataError, match="invalid split 'test'"):
        load_eval_dataset(tmp_path, split="test")
