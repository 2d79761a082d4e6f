"""Edit kinds inferred from instructions by word rules."""

import json
from pathlib import Path

import pytest

from agent.edit_kinds import EDIT_KINDS, infer_edit_kind

STARTER_CASES = Path(__file__).resolve().parent.parent / "agent" / "data" / "starter_cases.jsonl"

LABELLED = [
    # remove
    ("remove the dog", "remove"),
    ("erase the text on the wall", "remove"),
    ("get rid of the people in the background", "remove"),
    ("take out the car parked on the left", "remove"),
    ("remove the glasses from his face", "remove"),
    # add
    ("add a hot air balloon in the sky", "add"),
    ("put a cat on the sofa", "add"),
    ("place a vase on the table", "add"),
    ("insert a bird on the fence", "add"),
    ("let there be a boat in the water", "add"),
    ("the man should be holding a baseball bat", "add"),
    ("add a red balloon", "add"),
    # replace
    ("replace the dog with a cat", "replace"),
    ("swap the car for a horse", "replace"),
    ("turn the apples into oranges", "replace"),
    ("what if the dog was a cat", "replace"),
    ("make the clock a mirror", "replace"),
    ("turn the coffee into a glass of red wine", "replace"),
    # color
    ("make the car red", "color"),
    ("make the sky a deeper blue", "color"),
    ("change the color of the shirt to blue", "color"),
    ("give the sky a green tint", "color"),
    ("paint the front door bright yellow", "color"),
    # style
    ("make it look like a Van Gogh painting", "style"),
    ("turn it into a pencil sketch", "style"),
    ("watercolor painting", "style"),
    ("make it anime style", "style"),
    ("make it a stained glass window", "style"),
    # weather
    ("make it snow", "weather"),
    ("heavy rain with puddles on the ground", "weather"),
    ("add fog", "weather"),
    ("make the sky stormy", "weather"),
    # time of day
    ("make it night", "time_of_day"),
    ("turn it into sunset", "time_of_day"),
    ("make it dawn with soft pink light", "time_of_day"),
    # season
    ("make it autumn", "season"),
    ("cover everything in snow like deep winter", "season"),
    ("summer, lush and green", "season"),
    # material
    ("make the statue gold", "material"),
    ("make the chair out of wood", "material"),
    ("turn the table into marble", "material"),
    ("make the vase look like glass", "material"),
    # texture
    ("make the metal rusty", "texture"),
    ("cover the rocks with moss", "texture"),
    # background
    ("change the background to a beach", "background"),
    ("remove the background", "background"),
    ("blur the background like a portrait lens", "background"),
    ("set it in a forest", "background"),
    # expression
    ("make her smile", "expression"),
    ("make the man frown", "expression"),
    ("close his eyes", "expression"),
    # person
    ("give him a hat", "person"),
    ("add glasses", "person"),
    ("give him a beard", "person"),
    ("make her hair blonde", "person"),
    ("let the cat wear a hat", "person"),
    # adjust: global photo adjustments with no object
    ("make it brighter", "adjust"),
    ("increase the contrast", "adjust"),
    ("desaturate it a bit", "adjust"),
    ("make it warmer", "adjust"),
    ("make it black and white", "adjust"),
    ("add a sepia tone", "adjust"),
    ("blur the image slightly", "adjust"),
    ("sharpen the photo", "adjust"),
    ("rotate 90 degrees clockwise", "adjust"),
    ("flip horizontally", "adjust"),
    ("crop it to a square", "adjust"),
    ("add a vignette", "adjust"),
    ("icy blue cold tone", "adjust"),
    ("fix the blue cast, warm it up a little", "adjust"),
    # other
    ("do something nice", "other"),
    ("zzz", "other"),
]


@pytest.mark.parametrize(("instruction", "expected"), LABELLED)
def test_kind_of_instruction(instruction, expected):
    assert infer_edit_kind(instruction) == expected


def test_table_covers_every_kind():
    assert {kind for _, kind in LABELLED} == set(EDIT_KINDS)


@pytest.mark.parametrize("instruction", ["", "   ", "...", "\n\t"])
def test_blank_instruction_is_other(instruction):
    assert infer_edit_kind(instruction) == "other"


def test_case_and_punctuation_ignored():
    assert infer_edit_kind("  REMOVE the Dog!  ") == "remove"
    assert infer_edit_kind("Make it snow.") == "weather"
    assert infer_edit_kind("Make the car’s roof red") == "color"


def test_british_colour_spelling():
    assert infer_edit_kind("change the colour of the door to green") == "color"


def test_starter_labels_agree():
    cases = [json.loads(line) for line in STARTER_CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    disagreements = [
        (case["instruction"], case["edit_kind"], infer_edit_kind(case["instruction"]))
        for case in cases
        if infer_edit_kind(case["instruction"]) != case["edit_kind"]
    ]

    assert len(cases) > 100
    assert len(disagreements) <= len(cases) // 20, disagreements


def test_result_is_a_known_kind():
    for instruction in ("make the dog a little bigger", "zoom in on the cat", "what if it was on mars"):
        assert infer_edit_kind(instruction) in EDIT_KINDS
