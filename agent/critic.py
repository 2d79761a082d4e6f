"""Critic policy: judge an attempt, and choose the next attempt's parameters when it is rejected.

Hard checks (the expected size, not blank) mark an output invalid, and an invalid output is never kept. Soft checks
(changed enough, the adjust property moved the requested way, CLIP scores above their thresholds) decide between
accept and retry. When every attempt fails them, the best valid attempt is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from agent.context import Context
from agent.state import Attempt, RetrievedCase, Subtask, Verdict
from tools.adjust import adjust, expected_direction, measure_property, output_size

# Standard deviation of luminance (0 to 1) under which an output counts as constant: the safety checker's black
# frame, or a NaN output from half precision decoded to zeros.
BLANK_STD = 0.01
# Minimum relative movement of a measured adjust property, so rounding noise never passes as an edit.
MIN_RELATIVE_MOVE = 0.01


@dataclass(frozen=True)
class Judgement:
    """The critic's reading of one attempt."""

    valid: bool
    passed: bool
    reason: str
    scores: dict[str, float]
    quality: float


def judge_image(
    subtask: Subtask,
    params: dict[str, Any],
    before: Image.Image,
    after: Image.Image,
    context: Context,
    clip_scores: dict[str, float] | None = None,
    preserve_scores: dict[str, tuple[float, float]] | None = None,
) -> Judgement:
    """Run the image checks, and the CLIP checks when `clip_scores` is given, on one attempt's output.

    `preserve_scores` maps each thing to keep to its CLIP similarity with the image before and after the edit.
    """
    expected = _expected_size(subtask, params, before.size)
    if after.size != expected:
        return Judgement(False, False, f"output is {_size(after.size)}, expected {_size(expected)}", {}, -1.0)

    after_pixels = np.asarray(after.convert("RGB"), dtype=np.float32) / 255.0
    before_pixels = np.asarray(before.convert("RGB"), dtype=np.float32) / 255.0
    scores: dict[str, float] = {"luminance_std": float(after_pixels.mean(axis=2).std())}
    # A uniform input (a solid colour, a 1x1 image) gives a uniform output under any global edit, so only an input
    # with some structure can reveal a blank output.
    input_has_structure = float(before_pixels.mean(axis=2).std()) >= BLANK_STD
    if input_has_structure and scores["luminance_std"] < BLANK_STD:
        return Judgement(False, False, BLANK_REASON, scores, -1.0)

    failures: list[str] = []
    if after.size == before.size:
        change = np.abs(after_pixels - before_pixels).mean(axis=2)
        scores["mean_change"] = float(change.mean())
        if scores["mean_change"] < context.min_change and not _is_identity_allowed(subtask, params):
            reason = f"mean pixel change {scores['mean_change']:.4f} below {context.min_change}: the edit did nothing"
            return Judgement(True, False, reason, scores, scores["mean_change"])
        if is_local_edit(subtask):
            scores["changed_fraction"] = float((change > LOCAL_PIXEL_CHANGE).mean())
            failures += _check_local_change(scores["changed_fraction"], context)

    if subtask["tool"] == "adjust":
        judgement = _judge_adjust(subtask, params, before, after, scores, context)
    else:
        judgement = _judge_semantic(context, scores, clip_scores)
        failures += _check_preserved(preserve_scores or {}, scores, context)
    if judgement.passed and failures:
        return Judgement(True, False, failures[0], judgement.scores, judgement.quality)
    return judgement


BLANK_REASON = "output is blank or nearly constant (a safety-checker blackout or a NaN output)"
# Per-pixel change (0 to 1, mean over channels) above which a pixel counts as visibly changed. The VAE's round trip
# alone moves most pixels of an InstructPix2Pix output by a few hundredths, which stays below it.
LOCAL_PIXEL_CHANGE = 0.15
# Edit kinds that touch one object, person or region; the rest (styles, weather, time of day, seasons) may repaint
# everything.
LOCAL_EDIT_KINDS = ("remove", "add", "replace", "color", "expression", "person", "material", "texture")


def is_local_edit(subtask: Subtask) -> bool:
    """Tell whether a subtask should change one object or region rather than the whole photo."""
    from agent.edit_kinds import infer_edit_kind

    return subtask["tool"] == "instruct_pix2pix" and infer_edit_kind(subtask["text"]) in LOCAL_EDIT_KINDS


def _check_local_change(fraction: float, context: Context) -> list[str]:
    if fraction <= context.max_local_change:
        return []
    return [
        f"changed {fraction:.0%} of the pixels, above {context.max_local_change:.0%}: a local edit should leave "
        "most of the photo alone"
    ]


def preserved_for(subtask: Subtask, preserve: list[str]) -> list[str]:
    """Return the things to keep that this subtask may not change: those whose head noun its text does not name.

    "make the bridge red" may change "the bridge", but "add a hat to the cat" must still keep "the cat's face".
    """
    words = {_singular(word) for word in re.findall(r"[a-z]+", subtask["text"].lower())}
    kept = []
    for item in preserve:
        nouns = [word for word in re.findall(r"[a-z]+", item.lower().replace("'s", "")) if word not in ARTICLES]
        if not nouns or _singular(nouns[-1]) not in words:
            kept.append(item)
    return kept


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


ARTICLES = {"the", "a", "an", "his", "her", "their", "its", "my", "our", "your", "of", "and"}


def _check_preserved(
    preserve_scores: dict[str, tuple[float, float]], scores: dict[str, float], context: Context
) -> list[str]:
    failures = []
    for item, (before, after) in preserve_scores.items():
        drop = before - after
        scores[f"preserve_drop:{item}"] = drop
        if drop > context.max_preserve_drop:
            failures.append(
                f"similarity to '{item}' fell {drop:.3f} ({before:.3f} -> {after:.3f}), more than "
                f"{context.max_preserve_drop:.3f}: the edit changed something you asked to keep"
            )
    return failures


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _expected_size(subtask: Subtask, params: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    if subtask["tool"] != "adjust":
        return size
    return output_size(size, params["operation"], params.get("amount"))


def _is_identity_allowed(subtask: Subtask, params: dict[str, Any]) -> bool:
    # Cropping an already square photo, rotating by 360 degrees or an amount of 0 ("0% brighter") legitimately
    # leaves the pixels unchanged.
    if subtask["tool"] != "adjust":
        return False
    return subtask["operation"] in ("crop_square", "rotate") or params.get("amount") == 0


def _judge_adjust(
    subtask: Subtask,
    params: dict[str, Any],
    before: Image.Image,
    after: Image.Image,
    scores: dict[str, float],
    context: Context,
) -> Judgement:
    operation = params["operation"]
    direction = expected_direction(operation, params.get("amount"))
    if direction == 0:
        return Judgement(True, True, f"{operation} applied exactly", scores, 1.0)

    measured_before = measure_property(before, operation)
    measured_after = measure_property(after, operation)
    assert measured_before is not None and measured_after is not None
    scores["measured_before"] = measured_before
    scores["measured_after"] = measured_after
    move = (measured_after - measured_before) * direction
    scale = max(abs(measured_before), 1e-3)
    word = "up" if direction > 0 else "down"
    measured = f"{operation} measured {measured_before:.3f} -> {measured_after:.3f}"
    if move / scale < MIN_RELATIVE_MOVE:
        return Judgement(True, False, f"{measured}: did not move {word} enough", scores, move / scale)

    failure = _check_amount(subtask, before, measured_before, move, direction, scores, context)
    if failure:
        return Judgement(True, False, f"{measured}, {failure}", scores, move / scale)
    return Judgement(True, True, f"{measured} ({word} as requested)", scores, move / scale)


def _check_amount(
    subtask: Subtask,
    before: Image.Image,
    measured_before: float,
    move: float,
    direction: int,
    scores: dict[str, float],
    context: Context,
) -> str:
    """Compare the measured move with the move the requested amount gives; return a failure or ""."""
    requested = subtask.get("amount")
    operation = subtask.get("operation")
    if requested is None or operation is None or expected_direction(operation, requested) != direction:
        return ""
    expected_value = measure_property(adjust(before, operation, requested), operation)
    assert expected_value is not None
    expected_move = (expected_value - measured_before) * direction
    if expected_move <= MIN_RELATIVE_MOVE * max(abs(measured_before), 1e-3):
        # The image is already at the limit (brightening white), so no amount can be measured.
        return ""
    ratio = move / expected_move
    scores["amount_ratio"] = ratio
    if abs(ratio - 1.0) <= context.max_amount_error:
        return ""
    size = "too little" if ratio < 1.0 else "too much"
    return f"but the requested {requested:g} should give about {expected_value:.3f}: moved {size}"


def _judge_semantic(context: Context, scores: dict[str, float], clip_scores: dict[str, float] | None) -> Judgement:
    if clip_scores is None:
        quality = scores.get("mean_change", 0.0)
        return Judgement(True, True, "image checks passed (no CLIP model, so no semantic check)", scores, quality)

    scores.update(clip_scores)
    quality = clip_scores["clip_directional"] + clip_scores["clip_text"] + 0.5 * clip_scores["clip_image"]
    if clip_scores["clip_image"] < context.min_clip_image:
        reason = (
            f"image similarity {clip_scores['clip_image']:.2f} below {context.min_clip_image:.2f}: "
            "the edit changed too much"
        )
        return Judgement(True, False, reason, scores, quality)
    if clip_scores["clip_directional"] < context.min_clip_directional:
        reason = (
            f"directional similarity {clip_scores['clip_directional']:.3f} below {context.min_clip_directional:.3f}: "
            "the change does not follow the instruction"
        )
        return Judgement(True, False, reason, scores, quality)
    if clip_scores["clip_text"] < context.min_clip_text:
        reason = (
            f"text similarity {clip_scores['clip_text']:.2f} below {context.min_clip_text:.2f}: "
            "the result does not match the requested caption"
        )
        return Judgement(True, False, reason, scores, quality)
    return Judgement(True, True, "image and CLIP checks passed", scores, quality)


def rank_candidates(judgements: list[Judgement]) -> list[int]:
    """Order candidate indexes best first: passing before failing, valid before invalid, then by quality."""
    return sorted(
        range(len(judgements)),
        key=lambda index: (judgements[index].passed, judgements[index].valid, judgements[index].quality),
        reverse=True,
    )


def verdict_for(judgement: Judgement, attempt_number: int, max_attempts: int) -> Verdict:
    """Accept a passing attempt, retry a failing one while attempts remain, else give up."""
    if judgement.passed:
        return "accept"
    if attempt_number < max_attempts:
        return "retry"
    return "give_up"


def best_attempt(attempts: list[Attempt]) -> Attempt | None:
    """Return the valid attempt with the highest quality, or None when no attempt produced a usable image."""
    valid = [attempt for attempt in attempts if attempt["valid"] and attempt["image"] is not None]
    if not valid:
        return None
    return max(valid, key=lambda attempt: attempt["quality"])


# --- retry ladder -------------------------------------------------------------------------------------------------

SEED_STRIDE = 7919
GUIDANCE_STEP = 1.5
IMAGE_GUIDANCE_STEP = 0.2
MIN_IMAGE_GUIDANCE = 1.0
MAX_GUIDANCE = 15.0


def retry_params(
    subtask: Subtask,
    previous: list[dict[str, Any]],
    retrieved: list[RetrievedCase],
) -> dict[str, Any]:
    """Choose the parameters of the next attempt; they always differ from every earlier attempt's.

    The InstructPix2Pix ladder: first a new seed, then more text guidance and less image guidance, then the wording
    of the best retrieved case with the same tool, and after that new seeds with the last guidance. Adjust edits are
    exact, so a retry scales the amount up by half.
    """
    last = dict(previous[-1])
    retry_number = len(previous)  # 1 for the first retry

    if subtask["tool"] == "adjust":
        amount = last.get("amount")
        if isinstance(amount, (int, float)) and amount != 0 and last["operation"] not in ("rotate",):
            last["amount"] = round(amount * 1.5, 4)
        return _ensure_new(last, previous)

    if retry_number == 1:
        last["seed"] = last["seed"] + SEED_STRIDE
    elif retry_number == 2:
        last["guidance_scale"] = min(MAX_GUIDANCE, round(last["guidance_scale"] + GUIDANCE_STEP, 3))
        last["image_guidance_scale"] = max(MIN_IMAGE_GUIDANCE, round(last["image_guidance_scale"] - IMAGE_GUIDANCE_STEP, 3))
        last["seed"] = last["seed"] + SEED_STRIDE
    elif retry_number == 3:
        rephrased = _rephrasing(subtask, retrieved)
        if rephrased:
            last["prompt"] = rephrased
        last["seed"] = last["seed"] + SEED_STRIDE
    else:
        last["seed"] = last["seed"] + SEED_STRIDE
    return _ensure_new(last, previous)


def _rephrasing(subtask: Subtask, retrieved: list[RetrievedCase]) -> str | None:
    for case in retrieved:
        if case["tool"] == subtask["tool"] and case["instruction"].lower() != subtask["text"].lower():
            return f"{subtask['text']} ({case['instruction']})"
    return None


def _ensure_new(params: dict[str, Any], previous: list[dict[str, Any]]) -> dict[str, Any]:
    while params in previous:
        if "seed" in params:
            params["seed"] += SEED_STRIDE
        elif isinstance(params.get("amount"), (int, float)):
            params["amount"] = round(params["amount"] * 1.25 + 0.01, 4)
        else:
            params["retry"] = params.get("retry", 0) + 1
    return params
