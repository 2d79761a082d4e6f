import numpy as np
import pytest
from PIL import Image

from agent import critic
from agent.context import Context
from agent.decompose import decompose
from tools.adjust import adjust

CAT = Image.open("tests/data/cat.png").convert("RGB")


def _subtask(instruction):
    return decompose(instruction).subtasks[0]


def test_adjust_brightness_accepted():
    subtask = _subtask("make it brighter")
    params = {"operation": "brightness", "amount": 0.3}
    judgement = critic.judge_image(subtask, params, CAT, adjust(CAT, "brightness", 0.3), Context(profile="offline"))

    assert judgement.valid
    assert judgement.passed
    assert judgement.scores["measured_after"] > judgement.scores["measured_before"]


def test_adjust_wrong_direction_rejected():
    subtask = _subtask("make it brighter")
    params = {"operation": "brightness", "amount": 0.3}
    judgement = critic.judge_image(subtask, params, CAT, adjust(CAT, "brightness", -0.3), Context(profile="offline"))

    assert judgement.valid
    assert not judgement.passed
    assert "did not move up" in judgement.reason


def test_blank_output_invalid():
    subtask = _subtask("add a rainbow")
    black = Image.new("RGB", CAT.size)
    judgement = critic.judge_image(subtask, {}, CAT, black, Context())

    assert not judgement.valid
    assert "blank" in judgement.reason


def test_wrong_size_invalid():
    subtask = _subtask("add a rainbow")
    judgement = critic.judge_image(subtask, {}, CAT, CAT.resize((448, 296)), Context())

    assert not judgement.valid
    assert "448x296" in judgement.reason
    assert "451x300" in judgement.reason


def test_unchanged_output_rejected():
    subtask = _subtask("add a rainbow")
    judgement = critic.judge_image(subtask, {}, CAT, CAT.copy(), Context())

    assert judgement.valid
    assert not judgement.passed
    assert "did nothing" in judgement.reason


def test_rotation_size_expected():
    subtask = _subtask("rotate it 90 degrees")
    params = {"operation": "rotate", "amount": 90.0}
    judgement = critic.judge_image(subtask, params, CAT, adjust(CAT, "rotate", 90.0), Context(profile="offline"))

    assert judgement.passed


def test_clip_thresholds_reject_with_reason():
    subtask = _subtask("add a rainbow")
    edited = Image.fromarray(np.clip(np.asarray(CAT, dtype=np.int16) + 30, 0, 255).astype(np.uint8))
    scores = {"clip_image": 0.61, "clip_text": 0.3, "clip_directional": 0.2}
    judgement = critic.judge_image(subtask, {}, CAT, edited, Context(), scores)

    assert not judgement.passed
    assert judgement.reason == "image similarity 0.61 below 0.70: the edit changed too much"


def test_verdict_ladder():
    passing = critic.Judgement(True, True, "", {}, 1.0)
    failing = critic.Judgement(True, False, "", {}, 0.0)

    assert critic.verdict_for(passing, 3, 3) == "accept"
    assert critic.verdict_for(failing, 1, 3) == "retry"
    assert critic.verdict_for(failing, 3, 3) == "give_up"


def test_retry_params_never_repeat():
    subtask = _subtask("add a rainbow")
    retrieved = [{"case_id": "c1", "instruction": "put a rainbow in the sky", "tool": "instruct_pix2pix",
                  "params": {}, "score": 0.9}]
    history = [{"prompt": "add a rainbow", "seed": 0, "guidance_scale": 7.5, "image_guidance_scale": 1.5, "steps": 20}]
    for _ in range(6):
        history.append(critic.retry_params(subtask, history, retrieved))

    assert len({tuple(sorted(params.items())) for params in history}) == len(history)
    assert history[1]["seed"] != history[0]["seed"]
    assert history[2]["guidance_scale"] > history[1]["guidance_scale"]
    assert history[2]["image_guidance_scale"] < history[1]["image_guidance_scale"]
    assert "put a rainbow in the sky" in history[3]["prompt"]


def test_adjust_retry_increases_amount():
    subtask = _subtask("make it brighter")
    params = critic.retry_params(subtask, [{"operation": "brightness", "amount": 0.2}], [])

    assert params["amount"] == pytest.approx(0.3)


def test_best_attempt_skips_invalid():
    attempts = [
        {"valid": False, "image": {"sha256": "a"}, "quality": 9.0, "number": 1},
        {"valid": True, "image": {"sha256": "b"}, "quality": 0.2, "number": 2},
        {"valid": True, "image": {"sha256": "c"}, "quality": 0.5, "number": 3},
    ]

    assert critic.best_attempt(attempts)["number"] == 3
