import json
from pathlib import Path

import pytest

from agent.decompose import MAX_INSTRUCTION_CHARS, InstructionError, decompose

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "decomposition.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[case["instruction"][:40] for case in CASES])
def test_labelled_instruction(case):
    plan = decompose(case["instruction"])
    texts = [subtask["text"].lower() for subtask in plan.subtasks]

    assert len(texts) == len(case["subtasks"]), texts
    for text, keywords in zip(texts, case["subtasks"]):
        for keyword in keywords:
            assert keyword.lower() in text, (keyword, text)
    assert len(plan.preserve) == len(case["preserve"]), plan.preserve
    for kept in case["preserve"]:
        assert any(kept in item for item in plan.preserve), (kept, plan.preserve)
    if "tools" in case:
        assert [subtask["tool"] for subtask in plan.subtasks] == case["tools"]


def test_acceptance_instruction_routes_to_adjust():
    plan = decompose("make it black and white, increase the contrast and add a vignette")

    assert [subtask["operation"] for subtask in plan.subtasks] == ["black_and_white", "contrast", "vignette"]
    assert {subtask["tool"] for subtask in plan.subtasks} == {"adjust"}


def test_amounts_carried_into_subtasks():
    plan = decompose("make it 30% brighter, then rotate 90 degrees counterclockwise and make it darker")

    assert [subtask["operation"] for subtask in plan.subtasks] == ["brightness", "rotate", "brightness"]
    assert plan.subtasks[0]["amount"] == pytest.approx(0.3)
    assert plan.subtasks[1]["amount"] == pytest.approx(-90.0)
    assert plan.subtasks[2]["amount"] < 0


def test_local_edit_goes_to_instruct_pix2pix():
    plan = decompose("blur the background")

    assert plan.subtasks[0]["tool"] == "instruct_pix2pix"


def test_semantic_subtask_has_captions():
    subtask = decompose("turn the river into lava").subtasks[0]

    assert subtask["before_caption"] == "a photo of the river"
    assert subtask["after_caption"] == "a photo of lava"


def test_negated_edit_preserves_object():
    plan = decompose("don't remove the tree, just make the sky blue")

    assert [subtask["text"] for subtask in plan.subtasks] == ["make the sky blue"]
    assert plan.preserve == ["tree"]


def test_unparsed_instruction_becomes_one_subtask():
    plan = decompose("Mach den Himmel blau")

    assert len(plan.subtasks) == 1
    assert plan.subtasks[0]["tool"] == "instruct_pix2pix"
    assert plan.subtasks[0]["text"] == "Mach den Himmel blau"


def test_plan_json_shape():
    data = decompose("add a rainbow and make it brighter, keep the bridge").to_json()

    assert data == {
        "subtasks": [{"text": "add a rainbow", "tool": "instruct_pix2pix"}, {"text": "make it brighter", "tool": "adjust"}],
        "preserve": ["bridge"],
    }


@pytest.mark.parametrize("instruction", ["", "   ", "\t\n"])
def test_empty_instruction_rejected(instruction):
    with pytest.raises(InstructionError, match="empty"):
        decompose(instruction)


def test_long_instruction_rejected():
    with pytest.raises(InstructionError, match=str(MAX_INSTRUCTION_CHARS)):
        decompose("make it brighter " * 200)


def test_control_characters_removed():
    plan = decompose("make it\x00 brighter\x1b")

    assert plan.subtasks[0]["text"] == "make it brighter"
