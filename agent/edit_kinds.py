"""Edit kinds: a coarse label of what an instruction changes, used to group and count cases in the case library.

`infer_edit_kind` reads an instruction with ordered word rules, and the first rule that matches wins. The narrow
readings come first: a global adjustment with no object ("make it warmer"), an edit of the whole background, a
removal, an explicit replacement, and a transform ("turn X into Y"), which is labelled by its result Y. Then come the
topics (style, season, weather, time of day, texture, material, expression, person), colour changes and additions,
and last the looser adjustments ("icy blue cold tone"), any colour word and any mention of the background."""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.decompose import UNDO_WORDS, content_words, match_adjust

EDIT_KINDS: tuple[str, ...] = (
    "remove", "add", "replace", "color", "style", "weather", "time_of_day", "season", "material", "background",
    "expression", "person", "texture", "adjust", "other",
)

COLOUR_WORDS = (
    "red|orange|yellow|green|blue|purple|violet|pink|brown|black|white|gr[ae]y|silver|beige|cyan|magenta|turquoise|"
    "navy|maroon|teal|lavender|lilac|crimson|scarlet|indigo|olive|tan|cream|ivory"
)
# Words that qualify a colour without naming anything: "a light pastel blue", "bright yellow", "more green".
COLOUR_QUALIFIERS = r"(?:(?:a|an|the|more|much|very|really|light|dark|darker|deep|deeper|bright|brighter|pale|pastel|" \
    r"vivid|neon|soft|warm|cool|rich|hot|baby|sky|royal|lime|forest|navy|dusty)\s+)*"
COLOUR_PHRASE = rf"{COLOUR_QUALIFIERS}(?:{COLOUR_WORDS})(?:ish)?(?:\s+(?:and|or)\s+(?:{COLOUR_WORDS}))?(?:\s+colou?r)?"

STYLE = re.compile(
    r"\b(painting|paintings|painterly|painted like|sketch\w*|drawing|drawn|watercolou?rs?|anime|manga|cartoon\w*|"
    r"comic|illustration|pixel art|mosaic|render|rendering|claymation|style|stylized|stylised|stained glass|"
    r"woodblock|impressionis\w*|expressionis\w*|cubis\w*|surreal\w*|pop art|pixar|disney|ghibli|van gogh|monet|"
    r"picasso|oil paint\w*|charcoal|crayon|pencil|cyberpunk|steampunk|vaporwave|low poly|ukiyo-e|graffiti|"
    r"origami|lego)\b"
)
SEASON = re.compile(
    r"\b(autumn\w*|fall colou?rs|fall foliage|in the fall|winter\w*|wintry|spring\w*|summer\w*|cherry blossoms?|"
    r"bare trees)\b|\bfall\b(?!\s+(?:down|over|off|from|into))"
)
WEATHER = re.compile(
    r"\b(snow|snowy|snowing|snowfall|rain|rainy|raining|rainfall|drizzl\w*|fog|foggy|mist|misty|haze|hazy|storm|"
    r"stormy|thunder\w*|lightning|blizzard|overcast|cloudy|gloomy|sunny|sunshine|hail|puddles?|tornado|hurricane|"
    r"clear (?:blue )?skies)\b"
)
TIME_OF_DAY = re.compile(
    r"\b(night\w*|midnight|sunset|sunrise|dawn|dusk|twilight|golden hour|blue hour|midday|noon|evening|morning|"
    r"daytime|daylight|nightfall|time of day)\b"
)
# "glass of", "wood chips" and similar name objects, not what something is made of.
MATERIAL = re.compile(
    r"\b(gold|wood|wooden|marble|glass|stone|metal|metallic|chrome|copper|bronze|brass|steel|iron|plastic|"
    r"porcelain|ceramic|crystal|concrete|clay|cardboard|ice|leather|granite|diamond|jade)\b(?!\s+(?:of|cream|chips))"
)
TEXTURE = re.compile(
    r"\b(textur\w*|moss|mossy|knit\w*|cracked|cracks|crackled|rust|rusty|rusted|wet|shiny|glossy|matte|velvet\w*|"
    r"brick|bricks|furry|fluffy|fuzzy|rough|smooth|woven|scaly|weathered|polished|frosted|muddy|dusty)\b"
)
EXPRESSION = re.compile(
    r"\b(smil\w*|frown\w*|laugh\w*|grin|grinning|surprised|shocked|sad|sadder|angry|happy|happier|cry|crying|"
    r"wink\w*|sleepy|scared|afraid|expression|pout\w*|yawn\w*)\b"
    r"|\b(?:close|open|shut)\s+(?:\w+\s+)?eyes\b|\beyes (?:closed|open)\b"
)
PERSON = re.compile(
    r"\b(hat|hats|cap|helmet|glasses|sunglasses|beard|moustache|mustache|hair|hairstyle|haircut|bald|makeup|"
    r"lipstick|earrings?|necklace|tattoos?|wrinkles|older|younger|aged|crown|scarf)\b"
    r"|\bdress(?:ed)?\s+(?:him|her|them|the \w+)\s+(?:in|as|up)\b"
)
REMOVE = re.compile(
    r"\b(remove|erase|delete|get rid of|take (?:out|away|off)|eliminate|wipe out|cut out)\b"
    r"|\bclear\b.*\b(?:off|from|away)\b|\bclear (?:away|out)\b|\bwithout (?:the|a|an|any)\b"
)
REPLACE = re.compile(r"\b(replace|replaced|swap|swapped|substitute|exchange)\b")
ADD = re.compile(
    r"\b(add|put|place|insert|include|hold\w*|carry\w*|wear\w*)\b|\b(?:let|have|should) there be\b|\bthere should be\b"
)
BACKGROUND_OBJECT = re.compile(
    r"\b(?:remove|replace|change|swap|blur|erase|delete|make|turn|set|darken|brighten|lighten|paint|fill)\s+"
    r"(?:the\s+|its\s+|their\s+)?back(?:ground|drop)\b"
    r"|\bback(?:ground|drop) (?:to|with|into|should be)\b"
    r"|\b(?:put|place|move|set)\s+(?:him|her|them|it|us|me|the scene|everything)\s+(?:in front of|in|on|at|into|to)\b"
)
BACKGROUND = re.compile(r"\bback(?:ground|drop)\b")
# Global looks that the adjust patterns of the decomposer do not name.
GLOBAL_LOOK = re.compile(
    r"\b(tones?|cast|white balance|exposure|vintage|retro|old photo\w*|film look|grain\w*|faded|washed[- ]out|hdr|"
    r"straighten\w*|horizon|spin|mirror|enhance\w*|invert\w*|zoom\w*|colou?r grad\w*|filter|(?:more|less) colou?r)\b"
    r"|\b1:1\b"
    r"|\bcolou?rs? pop\b|\b(?:drain|strip|wash out)\b.*\bcolou?r"
)
COLOUR_ANYWHERE = re.compile(rf"\b({COLOUR_WORDS})\b")
COLOUR_CHANGE = re.compile(
    rf"\b(?:re)?colou?r(?:ize|ise|ed)?\s+(?:of|to|it|them|the)\b|\bchange (?:the )?colou?rs?\b"
    rf"|\b(?:a|an)\s+{COLOUR_QUALIFIERS}(?:{COLOUR_WORDS})(?:ish)?\s+(?:tint|hue|shade|glow)\b"
    rf"|\b(?:make|paint|turn|dye|change|colou?r|tint|recolou?r)\b.*\b{COLOUR_PHRASE}$"
)
# "turn X into Y", "change X to Y", "make X a Y", "what if X was Y", "X should be Y": Y is the result of the edit.
TRANSFORM = (
    re.compile(r"\b(?:turn|change|convert|transform|morph)\s+(?P<subject>.+?)\s+(?:into|to)\s+(?P<target>.+)$"),
    re.compile(r"\bmake\s+(?P<subject>.+?)\s+look like\s+(?P<target>.+)$"),
    re.compile(r"\bmake\s+(?P<subject>.+?)\s+into\s+(?P<target>.+)$"),
    # "make the clock a mirror", but not "make it a little darker".
    re.compile(
        r"\bmake\s+(?P<subject>(?:[\w']+\s+){0,3}?[\w']+)\s+"
        r"(?P<target>(?:a|an)\s+(?!(?:little|bit|lot|touch|tad)\b).+)$"
    ),
    re.compile(r"\bwhat if\s+(?P<subject>.+?)\s+(?:was|were|is|became)\s+(?P<target>.+)$"),
    re.compile(r"^(?P<subject>.+?)\s+(?:should be|should become|becomes|is now)\s+(?P<target>.+)$"),
)
# Subjects that mean the whole image: "turn it into ..." restyles the photo rather than replacing an object.
IMAGE_SUBJECTS = re.compile(r"^(?:it|this|that|everything|the (?:whole |entire )?(?:photo|image|picture|scene|shot))$")

# Rules for what an edit is about, in the order they are tried.
TOPIC_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("style", STYLE),
    ("season", SEASON),
    ("weather", WEATHER),
    ("time_of_day", TIME_OF_DAY),
    ("texture", TEXTURE),
    ("material", MATERIAL),
    ("expression", EXPRESSION),
    ("person", PERSON),
)
# Rules for the result phrase of a transform ("... should be holding a bat"). A result that none matches is "replace".
TARGET_RULES = (*TOPIC_RULES, ("add", ADD))
SUBJECT_RULES = (*TOPIC_RULES, ("color", COLOUR_CHANGE), ("add", ADD))


def infer_edit_kind(instruction: str) -> str:
    """Label an instruction with one of EDIT_KINDS by word rules, or "other" when no rule matches."""
    text = _normalise(instruction)
    if not text:
        return "other"

    rules: tuple[Callable[[str], str | None], ...] = (
        _global_adjustment,
        _background_object,
        _removal,
        _explicit_replacement,
        _transform_result,
        _subject_kind,
        _loose_adjustment,
        _colour_mention,
        _background_mention,
    )
    for rule in rules:
        kind = rule(text)
        if kind is not None:
            return kind
    return "other"


def _normalise(instruction: str) -> str:
    text = instruction.lower().replace("\u2019", "'").replace("colour", "color")
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .!?,;:\"'")


def _global_adjustment(text: str) -> str | None:
    # The decomposer's own routing test, so a case is "adjust" exactly when ragedit would edit it with adjust.
    match = match_adjust(text)
    if match is None or content_words(text):
        return None
    undoes_effect = UNDO_WORDS.search(text) and match[0] not in ("brightness", "contrast", "saturation", "warmth")
    return None if undoes_effect else "adjust"


def _background_object(text: str) -> str | None:
    return "background" if BACKGROUND_OBJECT.search(text) else None


def _removal(text: str) -> str | None:
    return "remove" if REMOVE.search(text) else None


def _explicit_replacement(text: str) -> str | None:
    return "replace" if REPLACE.search(text) else None


def _transform_result(text: str) -> str | None:
    for pattern in TRANSFORM:
        match = pattern.search(text)
        if match is None:
            continue
        target = match.group("target")
        if re.fullmatch(COLOUR_PHRASE, target):
            return "color"
        for kind, rule in TARGET_RULES:
            if rule.search(target):
                return kind
        # "turn it into something nicer" replaces no object, so later rules decide.
        if IMAGE_SUBJECTS.match(match.group("subject")):
            return None
        return "replace"
    return None


def _subject_kind(text: str) -> str | None:
    for kind, rule in SUBJECT_RULES:
        if rule.search(text):
            return kind
    return None


def _loose_adjustment(text: str) -> str | None:
    if match_adjust(text) is not None or GLOBAL_LOOK.search(text):
        return "adjust"
    return None


def _colour_mention(text: str) -> str | None:
    return "color" if COLOUR_ANYWHERE.search(text) else None


def _background_mention(text: str) -> str | None:
    return "background" if BACKGROUND.search(text) else None
