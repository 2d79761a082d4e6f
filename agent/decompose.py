"""Rules decomposer: split an instruction into ordered subtasks and things to preserve.

The rules work on clauses. Sentences split at . ; ! ?; clauses split at commas, sequence words (first, then, next,
finally) and at "and" where it joins two edits rather than two nouns ("fish and chips" stays whole). Each clause is
then a preserve clause ("keep the bridge"), a negated edit ("don't remove the tree", which preserves the tree), or an
edit routed to `adjust` (global photometric and geometric changes of the whole image) or to `instruct_pix2pix`.
An instruction the rules cannot split becomes one instruct_pix2pix subtask with the whole text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from agent.state import Subtask
from tools.adjust import DEFAULT_AMOUNTS

MAX_INSTRUCTION_CHARS = 2000

SEQUENCE_WORDS = ("first", "firstly", "then", "next", "after that", "afterwards", "finally", "lastly", "also")

EDIT_VERBS = frozenset(
    """add put place insert include give remove delete erase take drop get replace swap change turn convert make
    transform paint color colour recolor recolour increase decrease boost raise lower reduce enhance brighten darken
    lighten dim blur sharpen rotate flip mirror crop desaturate saturate warm cool apply set fill cover draw show
    create let render restyle stylize stylise"""
    .split()
)
PRESERVE_VERBS = ("keep", "preserve", "retain", "maintain", "protect")
NEGATIONS = ("don't", "do not", "dont", "never", "without")

# Noun pairs joined by "and" that name one thing; the decomposer never splits them.
AND_COMPOUNDS = (
    "black and white",
    "fish and chips",
    "salt and pepper",
    "bread and butter",
    "rock and roll",
    "cheese and crackers",
    "bacon and eggs",
    "peanut butter and jelly",
    "macaroni and cheese",
    "pen and ink",
    "arts and crafts",
)

PREPOSITIONS = frozenset("on in onto into to at under over above below behind beside near next with from of".split())
DETERMINERS = frozenset("a an the some this that these those his her their its my your our".split())

# Words that refer to the whole image: an adjust operation applies only when the clause names no other object.
IMAGE_WORDS = frozenset(
    """it image photo photograph picture pic shot everything whole entire overall colors colours color colour tones
    tone exposure""".split()
)
FILLER_WORDS = frozenset(
    """the a an this that to of by and with please can you could would me more less much very really bit little
    slightly slight touch lot some little way make look looks looking be is are so too quite tad up down degrees
    degree percent clockwise counterclockwise anticlockwise counter left right horizontally vertically horizontal
    vertical upside around over just overall also all somewhat lightly heavily strongly strong gently subtly subtle
    mild mildly stronger higher lower level amount effect filter tint tone photo""".split()
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
    (r"\b(desaturate|less saturat\w*|(reduce|decrease|lower|lessen)\w* (the )?saturation|muted)\b", "saturation", -1),
    (r"\b(saturat\w*|vibran\w*|vivid|colou?rful|punchier)\b", "saturation", 1),
    (r"\b(less contrast|(reduce|decrease|lower|soften)\w* (the )?contrast|flatter)\b", "contrast", -1),
    (r"\bcontrast\w*\b", "contrast", 1),
    (r"\b(darker|darken\w*|dimmer|dim|(reduce|decrease|lower)\w* (the )?(brightness|exposure)|underexpose\w*)\b",
     "brightness", -1),
    (r"\b(bright\w*|lighter|lighten\w*|exposure)\b", "brightness", 1),
    (r"\b(cooler|cool(er)? (it )?down|colder|cool tones?|bluer)\b", "warmth", -1),
    (r"\b(warm\w*)\b", "warmth", 1),
    (r"\b(blur\w*|soften|out of focus)\b", "blur", 1),
    (r"\b(sharpen\w*|sharper|crisper|crisp)\b", "sharpen", 1),
)

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
    """Remove control characters and collapse whitespace; raise InstructionError when nothing usable is left."""
    text = "".join(" " if unicodedata.category(char).startswith("C") else char for char in instruction)
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise InstructionError("invalid instruction: it is empty; describe the edit, for example \"make it brighter\"")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(
            f"invalid instruction: {len(text)} characters is over the limit of {MAX_INSTRUCTION_CHARS}; shorten it"
        )
    return text


def decompose(instruction: str) -> Plan:
    """Split an instruction into routed subtasks and a preserve list."""
    text = clean_instruction(instruction)
    subtasks: list[Subtask] = []
    preserve: list[str] = []

    for clause in _split_clauses(text):
        kept = _preserved_object(clause)
        if kept is not None:
            _append_unique(preserve, kept)
            continue
        subtasks.append(_make_subtask(len(subtasks), clause))

    if not subtasks:
        subtasks.append(_make_subtask(0, text))
    return Plan(subtasks=subtasks, preserve=preserve)


def _append_unique(items: list[str], item: str) -> None:
    if item and item not in items:
        items.append(item)


# --- splitting ---------------------------------------------------------------------------------------------------


def _split_clauses(text: str) -> list[str]:
    clauses: list[str] = []
    for sentence in re.split(r"(?<!\d)[.;!?]+(?!\d)", text):
        for part in _split_on_separators(sentence):
            clauses.extend(_split_on_and(part, clauses))
    return [clause for clause in clauses if clause]


def _split_on_separators(sentence: str) -> list[str]:
    sequence = "|".join(re.escape(word) for word in SEQUENCE_WORDS)
    sentence = re.sub(rf"(^|,|\band\b)\s*({sequence})\b,?", ",", sentence.strip(), flags=re.IGNORECASE)
    sentence = re.sub(r"\s+(then|afterwards)\s+", ", ", sentence, flags=re.IGNORECASE)
    sentence = re.sub(r"\s+(without\s+(?:changing|touching|altering|modifying|affecting))\b", r", \1", sentence,
                      flags=re.IGNORECASE)
    sentence = re.sub(r"\bbut\b", ",", sentence, flags=re.IGNORECASE)
    sentence = re.sub(r"\bwhile\b", ",", sentence, flags=re.IGNORECASE)
    parts = [part.strip(" ,") for part in sentence.split(",")]
    merged: list[str] = []
    for part in parts:
        part = re.sub(r"^(and|just|also|please)\s+", "", part, flags=re.IGNORECASE).strip()
        if part:
            merged.append(part)
    return merged


def _split_on_and(part: str, earlier: list[str]) -> list[str]:
    """Split a comma-free part at each "and" that joins two edits; reuse the verb for a verbless right side."""
    protected = part
    for compound in AND_COMPOUNDS:
        protected = re.sub(re.escape(compound), compound.replace(" and ", " &&& "), protected, flags=re.IGNORECASE)
    pieces = [piece.strip() for piece in re.split(r"\band\b", protected, flags=re.IGNORECASE)]
    pieces = [piece.replace("&&&", "and") for piece in pieces if piece]

    # A list item without a verb ("a cat" in "add a dog, a cat") continues the previous clause's verb.
    if not _starts_with_verb(pieces[0]) and earlier and not _is_preserve_clause(pieces[0]):
        pieces[0] = _borrow_verb(earlier[-1], pieces[0])

    clauses = [pieces[0]]
    for piece in pieces[1:]:
        if _starts_with_verb(piece) or _is_preserve_clause(piece) or _starts_with_negation(piece):
            clauses.append(piece)
        elif _is_adjust_only(clauses[-1]) and not _has_content_words(piece):
            clauses[-1] = f"{clauses[-1]} and {piece}"
        else:
            clauses.append(_borrow_verb(clauses[-1], piece))
    return clauses


def _first_word(clause: str) -> str:
    words = re.findall(r"[a-z']+", clause.lower())
    return words[0] if words else ""


def _starts_with_verb(clause: str) -> bool:
    return _first_word(clause) in EDIT_VERBS or _first_word(clause) in PRESERVE_VERBS or _first_word(clause) == "leave"


def _starts_with_negation(clause: str) -> bool:
    return any(clause.lower().startswith(negation) for negation in NEGATIONS)


def _borrow_verb(previous: str, verbless: str) -> str:
    """Rebuild a clause that shares the previous clause's verb ("...and a tiara on the queen")."""
    words = previous.split()
    if not words:
        return verbless
    verbless_words = [word.lower() for word in verbless.split()]
    if any(word in PREPOSITIONS for word in verbless_words[1:]) or len(words) < 3:
        return f"{words[0]} {verbless}"

    # "give the woman a red hat and sunglasses": keep everything before the previous clause's last noun phrase.
    last_determiner = max(
        (index for index, word in enumerate(words) if index > 0 and word.lower() in DETERMINERS), default=1
    )
    return " ".join(words[:last_determiner] + [verbless])


# --- preserve clauses ---------------------------------------------------------------------------------------------

PRESERVE_PATTERNS = (
    re.compile(r"^(?:but |and |while |whilst )?(?:keep|keeping|preserve|preserving|retain|retaining|maintain|"
               r"maintaining|protect|protecting)\s+(?P<object>.+)$", re.IGNORECASE),
    re.compile(r"^(?:but )?(?:leave|leaving)\s+(?P<object>.+?)\s+(?:unchanged|untouched|alone|as (?:it is|they are|is)|"
               r"intact|the same|as before)$", re.IGNORECASE),
    re.compile(r"^(?:without|not)\s+(?:changing|touching|altering|modifying|affecting)\s+(?P<object>.+)$",
               re.IGNORECASE),
    re.compile(r"^(?:don't|do not|dont|never)\s+(?:touch|change|alter|modify|affect|edit)\s+(?P<object>.+)$",
               re.IGNORECASE),
    re.compile(r"^(?P<object>.+?)\s+(?:must|should|has to|have to|needs? to)\s+(?:stay|remain|be left|look)\s+"
               r"(?:the same|unchanged|untouched|as (?:it is|they are|is)|intact)$", re.IGNORECASE),
    re.compile(r"^(?:don't|do not|dont|never)\s+(?:remove|delete|erase|replace)\s+(?P<object>.+)$", re.IGNORECASE),
)
OBJECT_SUFFIXES = re.compile(
    r"\s+(unchanged|untouched|intact|alone|as (it is|they are|is)|the same|as before|on|in place|visible)$",
    re.IGNORECASE,
)


def _is_preserve_clause(clause: str) -> bool:
    return _preserved_object(clause) is not None


def _preserved_object(clause: str) -> str | None:
    for pattern in PRESERVE_PATTERNS:
        match = pattern.match(clause.strip())
        if match:
            return _strip_object(match.group("object"))
    return None


def _strip_object(phrase: str) -> str:
    phrase = OBJECT_SUFFIXES.sub("", phrase.strip(" .,"))
    phrase = OBJECT_SUFFIXES.sub("", phrase)
    words = phrase.split()
    while words and words[0].lower() in DETERMINERS:
        words = words[1:]
    return " ".join(words).lower()


# --- routing ------------------------------------------------------------------------------------------------------


def _match_adjust(clause: str) -> tuple[str, int] | None:
    lowered = clause.lower()
    for pattern, operation, sign in ADJUST_PATTERNS:
        if re.search(pattern, lowered):
            return operation, sign
    return None


def _content_words(clause: str) -> list[str]:
    lowered = clause.lower()
    for pattern, _, _ in ADJUST_PATTERNS:
        lowered = re.sub(pattern, " ", lowered)
    words = re.findall(r"[a-z]+", lowered)
    return [
        word
        for word in words
        if word not in FILLER_WORDS and word not in IMAGE_WORDS and word not in EDIT_VERBS and len(word) > 1
    ]


def _has_content_words(clause: str) -> bool:
    return bool(_content_words(clause))


def _is_adjust_only(clause: str) -> bool:
    return _match_adjust(clause) is not None and not _has_content_words(clause)


def _adjust_amount(clause: str, operation: str, sign: int) -> float | None:
    lowered = clause.lower()
    default = DEFAULT_AMOUNTS.get(operation)
    if operation == "rotate":
        return _rotation_degrees(lowered)
    if default is None:
        return None

    percent = re.search(r"(\d+(?:\.\d+)?)\s*(%|percent)", lowered)
    if percent and operation in ("brightness", "contrast", "saturation", "warmth", "vignette", "black_and_white",
                                 "sepia"):
        return sign * float(percent.group(1)) / 100.0
    if operation in ("black_and_white", "sepia"):
        # "make it black and white" means fully gray; only a stated strength ("slightly sepia") weakens it.
        return round(default * 0.5, 4) if SMALL_WORDS.search(lowered) else default
    if SMALL_WORDS.search(lowered):
        return round(sign * default * 0.5, 4)
    if LARGE_WORDS.search(lowered):
        return round(sign * default * 2.0, 4)
    return -default if sign < 0 else None


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
    adjust_match = _match_adjust(text)
    if adjust_match and not _has_content_words(text):
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
