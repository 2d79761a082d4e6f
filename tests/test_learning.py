"""Accepted edits grow the case library, and repeats update the case they repeat."""

import json
from pathlib import Path

from agent.context import Context
from graphs.edit import graph

CAT = Path(__file__).parent / "data" / "cat.png"


def _cases(home):
    lines = (Path(home) / "cases" / "offline" / "cases.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_accepted_edit_becomes_case(tmp_path):
    context = Context(profile="offline", home=str(tmp_path))
    graph.invoke({"image_path": str(CAT), "instruction": "make the colours 35% more saturated"}, context=context)
    learned = [case for case in _cases(tmp_path) if case["source"] == "learned"]

    assert len(learned) == 1
    assert learned[0]["instruction"] == "make the colours 35% more saturated"
    assert learned[0]["params"] == {"operation": "saturation", "amount": 0.35}
    assert learned[0]["successes"] == 1


def test_repeated_edit_updates_case(tmp_path):
    context = Context(profile="offline", home=str(tmp_path))
    for _ in range(2):
        graph.invoke({"image_path": str(CAT), "instruction": "make the colours 35% more saturated"}, context=context)
    learned = [case for case in _cases(tmp_path) if case["source"] == "learned"]

    assert len(learned) == 1
    assert learned[0]["successes"] == 2


def test_learning_can_be_switched_off(tmp_path):
    context = Context(profile="offline", home=str(tmp_path), learn=False)
    graph.invoke({"image_path": str(CAT), "instruction": "make the colours 35% more saturated"}, context=context)

    assert not [case for case in _cases(tmp_path) if case["source"] == "learned"]
