"""Accepted edits grow the case library, repeats update their case, and the next run starts from what worked."""

import json
from pathlib import Path

import pytest

from agent.context import Context
from graphs.edit import graph

CAT = Path(__file__).parent / "data" / "cat.png"


def _cases(home, profile="offline"):
    lines = (Path(home) / "cases" / profile / "cases.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _learned(home, profile="offline"):
    return [case for case in _cases(home, profile) if case["source"] == "learned"]


def _run(instruction, context):
    return graph.invoke({"image_path": str(CAT), "instruction": instruction}, context=context)


def test_accepted_edit_becomes_case(tmp_path):
    _run("make the colours 35% more saturated", Context(profile="offline", home=str(tmp_path)))
    learned = _learned(tmp_path)

    assert len(learned) == 1
    assert learned[0]["instruction"] == "make the colours 35% more saturated"
    assert learned[0]["params"] == {"operation": "saturation", "amount": 0.35}
    assert learned[0]["successes"] == 1
    assert learned[0]["failure_count"] == 0
    assert learned[0]["edit_kind"] == "adjust"


def test_repeated_edit_updates_case(tmp_path):
    context = Context(profile="offline", home=str(tmp_path))
    _run("make the colours 35% more saturated", context)
    _run("make the colours 35% more saturated", context)
    learned = _learned(tmp_path)

    assert len(learned) == 1
    assert learned[0]["successes"] == 2
    assert learned[0]["param_stats"]["amount"] == {"mean": 0.35, "count": 2}


def test_repeat_moves_parameter_mean():
    from agent.learning import _updated_counts

    record = {"params": {"operation": "saturation", "amount": 0.3}, "successes": 1,
              "param_stats": {"amount": {"mean": 0.3, "count": 1}}}
    accepted = {"params": {"operation": "saturation", "amount": 0.5, "sources": {}}, "reason": ""}
    failed = [{"params": {"operation": "saturation", "amount": 0.1}, "reason": "did not move up enough"}]
    changes = _updated_counts(record, accepted, failed)

    assert changes["successes"] == 2
    assert changes["params"]["amount"] == pytest.approx(0.4)
    assert changes["param_stats"]["amount"] == {"mean": 0.4, "count": 2}
    assert changes["failure_count"] == 1
    assert changes["failures"] == [{"params": {"operation": "saturation", "amount": 0.1},
                                    "reason": "did not move up enough"}]


def test_learning_can_be_switched_off(tmp_path):
    _run("make the colours 35% more saturated", Context(profile="offline", home=str(tmp_path), learn=False))

    assert not _learned(tmp_path)


def test_learned_amount_starts_next_run(tmp_path):
    fresh = _run("make the colours more vivid", Context(profile="offline", home=str(tmp_path / "fresh"), learn=False))
    context = Context(profile="offline", home=str(tmp_path / "taught"))
    for _ in range(3):
        _run("make the colours 90% more vivid", context)
    taught = _run("make the colours more vivid", context)
    case_id = _learned(tmp_path / "taught")[0]["id"]
    fresh_amount = fresh["attempts"][0]["params"]["amount"]
    taught_params = taught["attempts"][0]["params"]

    assert taught_params["amount"] > fresh_amount + 0.1
    assert case_id in taught_params["sources"]["amount"]


def test_failures_recorded_with_params(tiny_ip2p_dir, tiny_clip_dir, tmp_path):
    context = Context(
        profile="full", home=str(tmp_path), editor_model=str(tiny_ip2p_dir), clip_model=str(tiny_clip_dir),
        max_side=64, steps=2, max_attempts=2, min_clip_directional=1.01,
    )
    _run("wrap the statue in a purple scarf", context)
    # With random-weight CLIP, any case may count as a near-duplicate, so look for the failures wherever they landed.
    failed = [case for case in _cases(tmp_path, "full") if case.get("failure_count")]

    assert len(failed) == 1
    assert failed[0]["failure_count"] == 2
    assert failed[0]["failures"][0]["params"]["steps"] == 2
    assert "directional similarity" in failed[0]["failures"][0]["reason"]


def test_learned_steps_start_next_run(tiny_ip2p_dir, tiny_clip_dir, tmp_path):
    def context(home, steps):
        return Context(
            profile="full", home=str(tmp_path / home), editor_model=str(tiny_ip2p_dir), clip_model=str(tiny_clip_dir),
            max_side=64, steps=steps, min_clip_image=-1.0, min_clip_text=-1.0, min_clip_directional=-1.0,
        )

    fresh = _run("give the cat a tiny crown", context("fresh", 0))
    for _ in range(2):
        _run("give the cat a tiny crown", context("taught", 3))
    taught = _run("give the cat a tiny crown", context("taught", 0))

    assert fresh["attempts"][0]["params"]["steps"] >= 20
    assert taught["attempts"][0]["params"]["steps"] < fresh["attempts"][0]["params"]["steps"]
    assert _learned(tmp_path / "taught", "full")[0]["id"] in taught["attempts"][0]["params"]["sources"]["steps"]
