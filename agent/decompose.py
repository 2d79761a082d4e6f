"""Rules decomposer: split an instruction into ordered subtasks and things to preserve.

`agent.clauses` splits the instruction into clauses. Each edit clause becomes a subtask. A clause that requests a global
photometric or geometric change and names no object other than the image goes to `adjust`, and every other clause to
`instruct_pix2pix`. An instruction the rules cannot split becomes one instruct_pix2pix subtask with the
whole text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from agent.clauses import EDIT_VERBS, split_clauses
from agent.state import Subtask
from tools.adjust import DEFAULT_AMOUNTS

MAX_INSTRUCTION_CHARS = 2000
# Terminal escape sequences ("\x1b[2J") that a pasted instruction may carry; removed with their parameters.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
# Words that ask to undo an effect; an effect adjust cannot undo ("remove the vignette") needs InstructPix2Pix.
UNDO_WORDS = re.compile(r"\b(remove|undo|get rid of|take away|take out|delete|erase|fix|no more|without)\b")

# Words that refer to the whole image: an adjust operation applies only when the clause names no other object.
IMAGE_WORDS = frozenset(
    """it them image photo photograph picture pic shot scene thing everything whole entire overall colors colours color
    colour tones tone exposure""".split()
)
# Words that qualify an adjust operation without naming an object ("a soft vignette", "about 20% brighter").
FILLER_WORDS = frozenset(
    """the a an this that to of by and with please can you could would me more less much very really bit little
    slightly slight touch lot some little way make look looks looking be is are so too quite tad up down degrees
    degree percent clockwise counterclockwise anticlockwise counter left right horizontally vertically horizontal
    vertical upside around over just overall also all somewhat lightly heavily strongly strong gently subtly subtle
    mild mildly stronger higher lower level amount effect filter tint tone photo soft softer dark darker light nice
    small big large heavy gentle fine about roughly approximately maybe kind sort old fashioned classic again
    nothing fancy""".split()
)
# A closing purpose ("for my Instagram", "so I'm on the left") gives a reason, not an edit, so routing ignores it.
PURPOSE_TAIL = re.compile(
    r"\s+(?:for (?:my|our|your|a|an|the)\s+\w+(?:\s+\w+)?|so (?:that )?(?:i|i'm|we|we're|it|it's|they|you|he|she)\b.*)$"
)
DECREASE_WORDS = re.compile(
    r"\b(reduce\w*|decrease\w*|lower\w*|lessen\w*|drop\w*|cut|less|tone (?:it |them )?down|dial (?:it )?down|"
    r"turn (?:it )?down|knock (?:it )?down|pull (?:it )?down|minus)\b"
)

ADJUST_PATTERNS: tuple[tuple[str, str, int], ...] = (
    # (regular expression, operation, sign of the amount)
    (r"\b(black[- ]and[- ]white|b&w|gr[ae]y ?scale|monochrome)\b", "black_and_white", 1),
    (r"\bsepia\b", "sepia", 1),
    (r"\bvignett?e\b", "vignette", 1),
    (r"\b(crop|cut)\b.*\bsquare\b|\bsquare crop\b", "crop_square", 1),
    (r"\b(flip|mirror)\b.*\b(vertical(ly)?|upside)\b", "flip_vertical", 1),
    (r"\b(flip|mirror)\b", "flip_horizontal", 1),
    (r"\b(rotate|turn)\b.*\b(\d+(\.\d+)?) ?(°|deg|degrees?)\b|\brotate\b|\bupside down\b", "rotate", 1),
    (r"\b(desaturate\w*|muted)\b", "saturation", -1),
    (r"\b(saturat\w*|vibran\w*|vivid|colou?rful|punchier)\b", "saturation", 1),
    (r"\b(flatter)\b", "contrast", -1),
    (r"\bcontrast\w*\b", "contrast", 1),
    (r"\b(darker|darken\w*|dimmer|dim|underexpose\w*)\b", "brightness", -1),
    (r"\b(bright\w*|lighter|lighten\w*|exposure)\b", "brightness", 1),
    (r"\b(cooler|cool(er)? (it )?down|colder|cool tones?|bluer)\b", "warmth", -1),
    (r"\b(warm\w*)\b", "warmth", 1),
    (r"\b(blur\w*|soften|out of focus)\b", "blur", 1),
    (r"\b(sharpen\w*|sharper|crisper|crisp)\b", "sharpen", 1),
)

# Operations whose amount has a sign that words such as "reduce" or "drop" turn negative.
SIGNED_OPERATIONS = ("saturation", "contrast", "brightness", "warmth")

ADJUST_CAPTIONS: dict[tuple[str, int], str] = {
    ("black_and_white", 1): "a black and white photo",
    ("sepia", 1): "a sepia photo",
    ("vignette", 1): "a photo with a dark vignette",
    ("crop_square", 1): "a square photo",
    ("flip_vertical", 1): "an upside-down photo",
    ("flip_horizontal", 1): "a mirrored photo",
    ("rotate", 1): "a rotated photo",
    ("saturation", -1): "a muted, desaturated photo",
    ("saturation", 1): "a vivid, saturated photo",
    ("contrast", -1): "a flat, low-contrast photo",
    ("contrast", 1): "a high-contrast photo",
    ("brightness", -1): "a darker photo",
    ("brightness", 1): "a brighter photo",
    ("warmth", -1): "a photo with cool, blue tones",
    ("warmth", 1): "a photo with warm, golden tones",
    ("blur", 1): "a blurry photo",
    ("sharpen", 1): "a sharp, crisp photo",
}

SMALL_WORDS = re.compile(r"\b(slight(ly)?|a (little )?bit|a little|a touch|a tad|subtl[ey]|gentl[ey]|mild(ly)?|lightly)\b")
LARGE_WORDS = re.compile(r"\b(much|a lot|very|strong(ly)?|heav(y|ily)|dramatic(ally)?|significantly|way)\b")


@dataclass(frozen=True)
class Plan:
    """A decomposed instruction."""

    subtasks: list[Subtask]
    preserve: list[str]

    def to_json(self) -> dict:
        return {
            "subtasks": [{"text": subtask["text"], "tool": subtask["tool"]} for subtask in self.subtasks],
            "preserve": list(self.preserve),
        }


class InstructionError(ValueError):
    """An instruction that cannot be edited from (empty or too long)."""


def clean_instruction(instruction: str) -> str:
    """Remove control characters and collapse whitespace; raise InstructionError when nothing usable is left.

    Line breaks end a sentence, and list bullets at line starts are dropped, so a bulleted list reads as sentences.
    """
    if re.match(r"^\s*\(?1[.)]\s", instruction):
        # A numbered list on one line, "1. remove the car 2. add birds": each number starts a line.
        instruction = re.sub(r"\s\(?\d{1,2}[.)]\s+(?=[A-Za-z])", "\n", instruction)
    lines = [_strip_bullet(line) for line in instruction.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 1:
        lines = [line if re.search(r"[.;!?,:]$", line) else f"{line}." for line in lines]
    text = " ".join(lines)
    text = ANSI_ESCAPE.sub(" ", text)
    text = "".join(" " if unicodedata.category(char).startswith("C") else char for char in text)
    text = re.sub(r"\s+", " ", text).strip()
    # Letters, digits or symbols such as emoji ("☀️🌈") carry meaning; punctuation and spaces alone do not.
    if not re.search(r"\w", text) and not any(unicodedata.category(char).startswith("S") for char in text):
        raise InstructionError("invalid instruction: it is empty; describe the edit, for example \"make it brighter\"")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(
            f"invalid instruction: {len(text)} characters is over the limit of {MAX_INSTRUCTION_CHARS}; shorten it"
        )
    return text


def _strip_bullet(line: str) -> str:
    return re.sub(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+", "", line).strip()


def decompose(instruction: str) -> Plan:
    """Split an instruction into routed subtasks and a preserve list."""
    text = clean_instruction(instruction)
    subtasks: list[Subtask] = []
    preserve: list[str] = []

    clauses = split_clauses(text)
    for clause in clauses:
        if clause.kind == "preserve":
            _append_unique(preserve, clause.preserved)
        elif clause.kind == "edit":
            subtasks.append(_make_subtask(len(subtasks), clause.text))

    if not subtasks and any(clause.kind in ("preserve", "constraint") for clause in clauses):
        kept = f" ({', '.join(preserve)})" if preserve else ""
        raise InstructionError(
            f"invalid instruction {text!r}: it names what to keep or avoid{kept} but not what to change; "
            "add the edit, for example \"make the sky blue\""
        )

    if not subtasks:
        subtasks.append(_make_subtask(0, text))
    return Plan(subtasks=subtasks, preserve=preserve)


def whole_instruction_plan(instruction: str) -> Plan:
    """Return a plan of one InstructPix2Pix subtask that contains the whole instruction, for a single editor call."""
    text = clean_instruction(instruction)
    before_caption, after_caption = captions_for(text)
    subtask = Subtask(
        index=0, text=text, tool="instruct_pix2pix", operation=None, amount=None,
        before_caption=before_caption, after_caption=after_caption,
    )
    return Plan(subtasks=[subtask], preserve=[])


def _append_unique(items: list[str], item: str) -> None:
    if item and item not in items:
        items.append(item)


# --- routing ------------------------------------------------------------------------------------------------------


def match_adjust(clause: str) -> tuple[str, int] | None:
    """Return the adjust operation that a clause requests and the sign of its amount, or None."""
    lowered = _target_phrase(clause.lower())
    for pattern, operation, sign in ADJUST_PATTERNS:
        if re.search(pattern, lowered):
            if operation in SIGNED_OPERATIONS and sign > 0 and DECREASE_WORDS.search(lowered):
                sign = -1
            return operation, sign
    return None


def _target_phrase(lowered: str) -> str:
    # In "turn the black and white photo into a colour photo" the result, not the source, names the operation.
    match = re.match(r"^(?:turn|convert|change|transform|make)\s+(?:.+?\s+)?(?:into|to)\s+(?P<target>.+)$", lowered)
    return match.group("target") if match else lowered


def content_words(clause: str) -> list[str]:
    """Return the words of a clause that name something other than the image, an adjust operation or a filler."""
    lowered = PURPOSE_TAIL.sub("", clause.lower())
    lowered = DECREASE_WORDS.sub(" ", lowered)
    for pattern, _, _ in ADJUST_PATTERNS:
        lowered = re.sub(pattern, " ", lowered)
    words = re.findall(r"[a-z]+", lowered)
    return [
        word
        for word in words
        if word not in FILLER_WORDS and word not in IMAGE_WORDS and word not in EDIT_VERBS and len(word) > 1
    ]


def _adjust_amount(clause: str, operation: str, sign: int) -> float | None:
    lowered = clause.lower()
    default = DEFAULT_AMOUNTS.get(operation)
    if operation == "rotate":
        return _rotation_degrees(lowered)
    if default is None:
        return None

    percent = re.search(r"([+-]?\d+(?:\.\d+)?)\s*(%|percent)", lowered)
    if percent and operation in ("brightness", "contrast", "saturation", "warmth", "vignette", "black_and_white",
                                 "sepia"):
        value = float(percent.group(1)) / 100.0
        return -abs(value) if value < 0 or sign < 0 else value
    plain = re.search(r"\bby\s+[+-]?(\d*\.?\d+)\b(?!\s*(?:%|percent|°|deg))", lowered)
    if plain and operation in SIGNED_OPERATIONS:
        return sign * _plain_amount(float(plain.group(1)), operation, lowered)
    if operation in ("black_and_white", "sepia"):
        # "make it black and white" means fully gray; only a stated strength ("slightly sepia") weakens it.
        return round(default * 0.5, 4) if SMALL_WORDS.search(lowered) else default
    if SMALL_WORDS.search(lowered):
        return round(sign * default * 0.5, 4)
    if LARGE_WORDS.search(lowered):
        return round(sign * default * 2.0, 4)
    return -default if sign < 0 else None


def _plain_amount(value: float, operation: str, lowered: str) -> float:
    """Read "by 0.5" or "by 15" as a relative change; exposure is in photographic stops."""
    if operation == "brightness" and "exposure" in lowered and value <= 3:
        return round(2.0**value - 1.0, 4)
    return value if value <= 1 else value / 100.0


def _rotation_degrees(lowered: str) -> float:
    if "upside down" in lowered:
        return 180.0
    match = re.search(r"(-?\d+(?:\.\d+)?)\s*(°|deg|degrees?)?", lowered)
    degrees = float(match.group(1)) if match else 90.0
    if re.search(r"\b(counter[- ]?clockwise|anti[- ]?clockwise|to the left|left)\b", lowered):
        degrees = -degrees
    return degrees


def _make_subtask(index: int, clause: str) -> Subtask:
    text = clause.strip(" ,.")
    adjust_match = match_adjust(text)
    undoes_effect = adjust_match is not None and adjust_match[0] not in SIGNED_OPERATIONS and UNDO_WORDS.search(text.lower())
    if adjust_match and not content_words(text) and not undoes_effect:
        operation, sign = adjust_match
        return Subtask(
            index=index,
            text=text,
            tool="adjust",
            operation=operation,
            amount=_adjust_amount(text, operation, sign),
            before_caption="a photo",
            after_caption=ADJUST_CAPTIONS[(operation, sign)],
        )
    before_caption, after_caption = captions_for(text)
    return Subtask(
        index=index,
        text=text,
        tool="instruct_pix2pix",
        operation=None,
        amount=None,
        before_caption=before_caption,
        after_caption=after_caption,
    )


# --- captions -----------------------------------------------------------------------------------------------------

CAPTION_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"^(?:replace|swap)\s+(?P<a>.+?)\s+(?:with|for|by)\s+(?P<b>.+)$", re.I), "a photo of {a}", "a photo of {b}"),
    (re.compile(r"^(?:turn|change|convert|transform)\s+(?P<a>.+?)\s+(?:into|to)\s+(?P<b>.+)$", re.I),
     "a photo of {a}", "a photo of {b}"),
    (re.compile(r"^make\s+(?P<a>.+?)\s+look like\s+(?P<b>.+)$", re.I), "a photo of {a}", "{b}"),
    (re.compile(r"^(?:remove|delete|erase|take out|get rid of)\s+(?P<a>.+)$", re.I), "a photo with {a}",
     "a photo without {a}"),
    (re.compile(r"^(?:add|put|place|insert|give)\s+(?P<b>.+)$", re.I), "a photo", "a photo with {b}"),
    (re.compile(r"^(?:make|paint|color|colour)\s+(?P<a>(?:the|a|an|his|her|their|its)\s+\S+(?:\s+\S+)?)\s+(?P<b>.+)$",
                re.I), "a photo of {a}", "a photo of {a}, {b}"),
)


def captions_for(text: str) -> tuple[str, str]:
    """Return (before, after) captions of a semantic edit, for the directional CLIP check."""
    for pattern, before, after in CAPTION_RULES:
        match = pattern.match(text)
        if match:
            groups = {key: value.strip() for key, value in match.groupdict().items()}
            return before.format(**groups), after.format(**groups)
    return "a photo", f"a photo, edited: {text}"
