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


def test_black_output_rejected_as_blackout():
    subtask = _subtask("make the sky stormy")
    # A NaN latent from half precision decodes to zeros, the same black frame as the safety checker's.
    nan_decoded = np.nan_to_num(np.full((CAT.height, CAT.width, 3), np.nan, dtype=np.float32)).astype(np.uint8)
    judgement = critic.judge_image(subtask, {}, CAT, Image.fromarray(nan_decoded), Context())

    assert not judgement.valid
    assert judgement.reason == critic.BLANK_REASON
    assert judgement.quality == -1.0


def test_stated_amount_matched():
    subtask = _subtask("make it 30% brighter")
    params = {"operation": "brightness", "amount": 0.3}
    judgement = critic.judge_image(subtask, params, CAT, adjust(CAT, "brightness", 0.3), Context(profile="offline"))

    assert subtask["amount"] == pytest.approx(0.3)
    assert judgement.passed
    assert judgement.scores["amount_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("applied, word", [(0.05, "too little"), (1.2, "too much")])
def test_stated_amount_missed(applied, word):
    subtask = _subtask("make it 30% brighter")
    params = {"operation": "brightness", "amount": 0.3}
    judgement = critic.judge_image(subtask, params, CAT, adjust(CAT, "brightness", applied), Context(profile="offline"))

    assert judgement.valid
    assert not judgement.passed
    assert f"moved {word}" in judgement.reason
    assert "requested 0.3" in judgement.reason


def test_local_edit_repainting_everything_rejected():
    subtask = _subtask("add a party hat to the cat")
    inverted = Image.fromarray(255 - np.asarray(CAT))
    judgement = critic.judge_image(subtask, {}, CAT, inverted, Context())

    assert judgement.valid
    assert not judgement.passed
    assert judgement.scores["changed_fraction"] > 0.8
    assert "of the pixels, above 80%" in judgement.reason


def test_local_edit_changing_a_patch_accepted():
    subtask = _subtask("add a party hat to the cat")
    edited = np.asarray(CAT).copy()
    edited[20:120, 150:300] = (255, 0, 0)
    judgement = critic.judge_image(subtask, {}, CAT, Image.fromarray(edited), Context())

    assert judgement.passed
    assert judgement.scores["changed_fraction"] == pytest.approx(100 * 150 / (451 * 300), abs=0.01)


def test_global_edit_may_change_everything():
    subtask = _subtask("make it look like a watercolor painting")
    inverted = Image.fromarray(255 - np.asarray(CAT))
    judgement = critic.judge_image(subtask, {}, CAT, inverted, Context())

    assert judgement.passed
    assert "changed_fraction" not in judgement.scores


def test_preserved_thing_lost_rejected():
    subtask = _subtask("make the sky stormy")
    edited = Image.fromarray(np.clip(np.asarray(CAT, dtype=np.int16) - 40, 0, 255).astype(np.uint8))
    clip_scores = {"clip_image": 0.9, "clip_text": 0.3, "clip_directional": 0.12}
    preserve = {"the bridge": (0.30, 0.22)}
    judgement = critic.judge_image(subtask, {}, CAT, edited, Context(), clip_scores, preserve)

    assert not judgement.passed
    assert judgement.reason.startswith("similarity to 'the bridge' fell 0.080 (0.300 -> 0.220), more than 0.030")
    assert judgement.scores["preserve_drop:the bridge"] == pytest.approx(0.08)


def test_preserved_thing_kept_accepted():
    subtask = _subtask("make the sky stormy")
    edited = Image.fromarray(np.clip(np.asarray(CAT, dtype=np.int16) - 40, 0, 255).astype(np.uint8))
    clip_scores = {"clip_image": 0.9, "clip_text": 0.3, "clip_directional": 0.12}
    judgement = critic.judge_image(subtask, {}, CAT, edited, Context(), clip_scores, {"the bridge": (0.30, 0.29)})

    assert judgement.passed


def test_preserved_for_skips_things_the_subtask_names():
    subtask = _subtask("make the bridge red")

    assert critic.preserved_for(subtask, ["the bridge", "the people"]) == ["the people"]


def test_rank_candidates_prefers_passing_then_quality():
    judgements = [
        critic.Judgement(True, False, "", {}, 0.9),
        critic.Judgement(True, True, "", {}, 0.2),
        critic.Judgement(False, False, "", {}, 5.0),
        critic.Judgement(True, True, "", {}, 0.4),
    ]

    assert critic.rank_candidates(judgements) == [3, 1, 0, 2]


def test_preserved_for_keeps_part_of_a_named_object():
    subtask = _subtask("add a party hat to the cat")

    assert critic.preserved_for(subtask, ["the cat's face", "the cats"]) == ["the cat's face"]
