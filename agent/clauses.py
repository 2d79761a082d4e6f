"""Clause splitting for the rules decomposer.

An instruction splits into sentences at . ; ! ? and line breaks. Sentences split into parts at commas, at sequence
words such as "then" and "finally", and at "but", "while", "without ...ing" and "except". Parts split into clauses at
each "and" that joins two edits rather than two words of one noun phrase ("fish and chips", "red and white"). A part
without a verb ("a cat" in "add a dog, a cat and a parrot") borrows the verb of the clause before it. Each clause is
then an edit, a preserve clause ("keep the bridge", "don't touch the flowers"), or a constraint with nothing to edit
("don't make it too bright"), which is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

EDIT_VERBS = frozenset(
    """add put place insert include give remove delete erase take drop get replace swap change turn convert make
    transform paint color colour recolor recolour colorize colourise increase decrease boost raise lower reduce enhance
    brighten darken lighten dim blur sharpen rotate flip mirror crop desaturate saturate warm cool apply set fill cover
    draw show create let render restyle stylize stylise move enlarge shrink resize zoom straighten fix restore clean
    denoise upscale extend expand hide reveal dress decorate age bring hand offer send adjust tint tone
    correct boost amplify intensify soften smooth whiten blacken redden repaint bump crank dial pump push knock tweak
    warm cool"""
    .split()
)
PRESERVE_VERBS = frozenset("keep preserve retain maintain protect".split())
NEGATIONS = ("don't ", "do not ", "dont ", "never ", "do n't ")
DITRANSITIVE_VERBS = frozenset("give hand offer send bring show buy".split())
VERB_PARTICLES = frozenset("out off away up down".split())

SEQUENCE_WORDS = (
    "first of all", "first", "firstly", "second", "secondly", "third", "thirdly", "then", "next", "after that",
    "afterwards", "finally", "lastly", "last", "also", "additionally", "to finish", "in the end", "at the end",
)

# Noun phrases with "and" inside; a clause is never split there.
AND_COMPOUNDS = (
    "black and white", "fish and chips", "salt and pepper", "bread and butter", "rock and roll", "cheese and crackers",
    "bacon and eggs", "peanut butter and jelly", "macaroni and cheese", "mac and cheese", "pen and ink",
    "arts and crafts", "cup and saucer", "knife and fork", "bow and arrow", "table and chairs", "pen and paper",
    "ham and cheese", "sweet and sour", "salt and vinegar", "milk and cookies", "stars and stripes",
    "horse and carriage", "bride and groom", "ladies and gentlemen", "rise and shine", "pros and cons",
    "nuts and bolts", "hugs and kisses", "cats and dogs", "lock and key", "thunder and lightning",
)
COLOURS = (
    "red orange yellow green blue purple violet pink brown black white gray grey gold golden silver beige cyan "
    "magenta turquoise navy maroon teal".split()
)

# Irregular past participles of edit verbs ("the photo made brighter", "sunglasses given to the man").
IRREGULAR_FORMS = {"made": "make", "given": "give", "taken": "take", "left": "leave", "kept": "keep", "lit": "light",
                   "shown": "show", "brought": "bring"}

# "I don't want a filter on the whole thing": a constraint with nothing to edit, unless a preserve pattern matched.
UNWANTED = re.compile(r"^(?:i|we)\s+(?:do not|don't|dont)\s+(?:want|need|like)\b", re.IGNORECASE)

# Words that mark a statement about the photo ("it's too dark", "he looks unarmed", "this was taken at dusk").
STATE_WORDS = frozenset(
    """is are was were looks look looking seems seem took taken has had got it's that's there's he's she's they're
    we're i'm i've we've""".split()
)
# Words that turn a statement into a request ("the sky should be pink", "I want it to look older").
REQUEST_WORDS = frozenset("should must need needs want wants would like to let".split())
SUBJECT_WORDS = frozenset("this that it it's its i i'm we we're he she they there there's my our his her their".split())

# Openers and closers that carry no edit: "hey", "could you please", "I'd like", "please", "thanks", "lol".
OPENER = re.compile(
    r"^(?:(?:hey|hi|hello|ok|okay|so|now|please|kindly|just|also|and|then)\b[,!]?\s*"
    r"|(?:can|could|would|will)\s+(?:you|u)\s+(?:please\s+)?"
    r"|(?:i'd|i would|we'd|we would)\s+(?:like|love)\s+(?:(?:you|u)\s+)?(?:to\s+)?"
    r"|(?:i|we)\s+(?:just\s+|really\s+|also\s+)?(?:want|need)\s+(?:(?:you|u)\s+to\s+|to\s+(?=(?:"
    + "|".join(sorted(EDIT_VERBS)) + r")\b))?"
    r"|(?:maybe|perhaps|only|if (?:you|u) can|if possible)\b,?\s*)",
    re.IGNORECASE,
)
CLOSER = re.compile(
    r"\s*\b(?:please|pls|plz|thanks|thank you|thx|lol|if possible|if you can|too|as well|that would be \w+(?: \w+)?)$",
    re.IGNORECASE,
)
POLITENESS_WORDS = frozenset(
    """please pls plz thanks thank you u thx lol hey hi hello ok okay if possible can could would kindly so now just
    nothing fancy else more that's all it that"""
    .split()
)

PREPOSITIONS = frozenset("on in onto into to at under over above below behind beside near next with from of for".split())
DETERMINERS = frozenset("a an the some this that these those his her their its my your our both all".split())
# Words that show a verbless-looking piece is a clause of its own ("the sky should be pink").
FINITE_MARKERS = frozenset("should must would will could is are be becomes become looks look has have was were".split())

# Objects of a preserve clause that name nothing in particular ("keep the rest the same").
GENERIC_OBJECTS = frozenset(
    "it everything rest everything else the rest all else anything else image photo picture remainder".split()
)

PRESERVE_SUFFIX = (
    r"(?:unchanged|untouched|intact|alone|as (?:it is|they are|is|it was|they were)|the same|as before|in place|"
    r"exactly as (?:it is|they are)|(?:exactly )?where (?:it is|they are)|unedited|unaltered|unmodified|original|"
    r"visible|on|sharp|in focus|clear|natural)"
)
PRESERVE_PATTERNS = (
    re.compile(r"^(?:keep|preserve|retain|maintain|protect)\s+(?P<object>.+)$", re.IGNORECASE),
    re.compile(rf"^leave\s+(?P<object>.+?)\s+{PRESERVE_SUFFIX}$", re.IGNORECASE),
    re.compile(
        r"^(?:without|not)\s+(?:changing|touching|altering|modifying|affecting|editing|moving|removing)\s+(?P<object>.+)$",
        re.IGNORECASE,
    ),
    re.compile(
        r"^(?:don't|do not|dont|never|no)\s+(?:touch|change|alter|modify|affect|edit|move|remove|delete|erase|replace|"
        r"mess with)\s+(?P<object>.+)$",
        re.IGNORECASE,
    ),
    re.compile(
        rf"^(?P<object>.+?)\s+(?:must|should|has to|have to|needs? to|will|shall)\s+(?:stay|remain|be left|be kept|look)"
        rf"(?:\s+{PRESERVE_SUFFIX})?$",
        re.IGNORECASE,
    ),
    re.compile(rf"^(?P<object>.+?)\s+(?:stays?|remains?)(?:\s+{PRESERVE_SUFFIX})?$", re.IGNORECASE),
    re.compile(r"^except(?: for)?\s+(?P<object>.+)$", re.IGNORECASE),
    re.compile(
        r"^(?:i|we)\s+(?:do not|don't|dont)\s+want\s+(?P<object>.+?)\s+(?:changed|touched|altered|edited|modified|"
        r"affected|moved)$",
        re.IGNORECASE,
    ),
    re.compile(
        r"^(?P<object>nothing else|everything else|the rest|anything else)\s+(?:should|must|may|can|will|is to)\s+"
        r"(?:be\s+)?(?:change|changed|touched|altered|edited|modified)$",
        re.IGNORECASE,
    ),
    re.compile(
        rf"^(?:make sure|ensure|be sure)(?: that)?\s+(?P<object>.+?)\s+(?:stays?|remains?|is kept|are kept|is left|are left|"
        rf"is not changed|isn't changed|are not changed|doesn't change|don't change)(?:\s+{PRESERVE_SUFFIX})?$",
        re.IGNORECASE,
    ),
)
GROUPED_PRESERVE = re.compile(
    rf"^(?:leave\s+(?P<objects>.+?\band\b.+?)\s+{PRESERVE_SUFFIX}"
    rf"|(?P<subjects>.+?\band\b.+?)\s+(?:must|should|have to|need to|will)\s+(?:stay|remain)(?:\s+{PRESERVE_SUFFIX})?)"
    rf"(?:\s+and\s+(?P<rest>.+))?$",
    re.IGNORECASE,
)
OBJECT_SUFFIX = re.compile(rf"\s+{PRESERVE_SUFFIX}$", re.IGNORECASE)


@dataclass
class Clause:
    """One clause of an instruction."""

    text: str
    kind: Literal["edit", "preserve", "constraint"]
    preserved: str = ""
    """The object to keep, for a preserve clause."""
    shares_verb_with_previous: bool = False


def split_clauses(text: str) -> list[Clause]:
    """Split a cleaned instruction into clauses, in order."""
    clauses: list[Clause] = []
    for sentence in _split_sentences(text):
        for part in _split_parts(sentence):
            _extend_with_part(clauses, part)
    _share_trailing_phrases(clauses)
    return clauses


# --- sentences and parts ------------------------------------------------------------------------------------------


def _split_sentences(text: str) -> list[str]:
    return [sentence.strip() for sentence in re.split(r"(?<!\d)[.;!?]+(?!\d)|\n", text) if sentence.strip()]


def _split_parts(sentence: str) -> list[str]:
    sequence = "|".join(re.escape(word) for word in SEQUENCE_WORDS)
    sentence = re.sub(rf"(^|,|\band\b)\s*(?:{sequence})\b,?", ",", sentence, flags=re.IGNORECASE)
    sentence = re.sub(r"\s+(?:and\s+)?(?:then|afterwards)\s+", ", ", sentence, flags=re.IGNORECASE)
    sentence = re.sub(r"\s+(without\s+\w+ing)\b", r", \1", sentence, flags=re.IGNORECASE)
    sentence = re.sub(r"\s+(except(?:\s+for)?)\s+", r", \1 ", sentence, flags=re.IGNORECASE)
    sentence = re.sub(r"\b(?:but|while|whilst|whereas)\b|\s[-\u2013\u2014]\s", ",", sentence, flags=re.IGNORECASE)
    verbs = "|".join(sorted(EDIT_VERBS | PRESERVE_VERBS))
    sentence = re.sub(rf"\s+so\s+(?=(?:(?:can|could|would) (?:you|u) )?(?:please )?(?:{verbs})\b)", ", ", sentence,
                      flags=re.IGNORECASE)

    parts = []
    for part in sentence.split(","):
        part = _strip_politeness(part)
        if part and not _is_politeness(part):
            parts.append(_imperative(part))
    return parts


def _strip_politeness(part: str) -> str:
    previous = None
    while previous != part:
        previous = part
        part = OPENER.sub("", part.strip(" :")).strip()
        part = CLOSER.sub("", part).strip()
    return part


def _is_politeness(part: str) -> bool:
    return all(word in POLITENESS_WORDS for word in re.findall(r"[a-z']+", part.lower()))


def _imperative(part: str) -> str:
    """Turn a clause that opens with a gerund or participle ("making the sky red", "converted to sepia") into an
    imperative, also after a subject that names the image ("the photo cropped to a square")."""
    subject = re.match(
        r"^(?P<subject>(?:the |this |my )?(?:whole |entire )?(?:photo|image|picture|pic|thing|shot|it))\s+"
        r"(?P<rest>[A-Za-z]+(?:ed|en)\b.*)$",
        part,
        re.IGNORECASE,
    )
    if subject:
        verb, rest = _verb_base(subject.group("rest"))
        if verb:
            return f"{verb} {subject.group('subject')}{rest}"
    verb, rest = _verb_base(part)
    return f"{verb}{rest}" if verb else part


def _verb_base(text: str) -> tuple[str, str]:
    """Return (base verb, rest of the text) when the text opens with a form of a known verb, else ("", text)."""
    match = re.match(r"^([A-Za-z]+)\b", text)
    if not match:
        return "", text
    word = match.group(1).lower()
    rest = text[match.end():]
    if word in IRREGULAR_FORMS:
        return IRREGULAR_FORMS[word], rest
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            candidates = [stem, stem + "e"]
            if stem[-1] == stem[-2]:
                candidates.append(stem[:-1])
            for candidate in candidates:
                if candidate in EDIT_VERBS or candidate in PRESERVE_VERBS or candidate == "leave":
                    return candidate, rest
    return "", text


# --- clauses within a part ----------------------------------------------------------------------------------------


def _extend_with_part(clauses: list[Clause], part: str) -> None:
    qualifies_previous = re.match(r"^not\b", part, re.IGNORECASE) and preserved_object(part) is None
    if qualifies_previous and clauses and clauses[-1].kind == "edit":
        # "make the sky blue, not purple" qualifies the clause before it.
        clauses[-1].text = f"{clauses[-1].text}, {part}"
        return

    grouped = GROUPED_PRESERVE.match(part)
    if grouped:
        # "leave the tree and the bench unchanged (and ...)": every listed object is kept.
        for item in _split_on_and(grouped.group("objects") or grouped.group("subjects")):
            clauses.append(_classify(f"keep {item}", shares_verb=False))
        part = grouped.group("rest") or ""
        if not part:
            return

    pieces = [_imperative(_strip_politeness(piece)) for piece in _split_on_and(part)]
    pieces = [piece for piece in pieces if piece and not _is_politeness(piece) and not _is_context(piece)]
    for index, piece in enumerate(pieces):
        first_of_part = index == 0
        if _has_own_verb(piece) or not clauses:
            clauses.append(_classify(piece, shares_verb=False))
            continue

        previous = clauses[-1]
        if previous.kind == "preserve":
            clauses.append(_classify(f"keep {piece}", shares_verb=True))
        elif previous.kind == "edit" and not first_of_part and _is_bare_adjust(previous.text, piece):
            previous.text = f"{previous.text} and {piece}"
        else:
            clauses.append(_classify(_borrow_verb(previous.text, piece), shares_verb=True))


def _is_context(piece: str) -> bool:
    """Tell whether a piece describes the photo rather than requests an edit ("this is my holiday photo", "it looks
    too blue"). Such a piece makes a statement, names no edit verb and requests no state ("should be", "to look")."""
    words = re.findall(r"[a-z']+", piece.lower())
    if len(words) > 1 and words[0] == "to" and words[1] not in EDIT_VERBS:
        # A purpose, as in "I want to use it as a wallpaper".
        return True
    if not words or not set(words) & STATE_WORDS:
        return False
    if set(words) & (EDIT_VERBS | PRESERVE_VERBS | REQUEST_WORDS) or words[0] in ("leave", "don't", "do", "never"):
        return False
    from agent.decompose import match_adjust

    return match_adjust(piece) is None or words[0] in SUBJECT_WORDS


def _split_on_and(part: str) -> list[str]:
    protected = part
    for compound in AND_COMPOUNDS:
        protected = re.sub(rf"\b{re.escape(compound)}\b", compound.replace(" and ", " &&& "), protected, flags=re.I)
    colours = "|".join(COLOURS)
    protected = re.sub(rf"\b({colours}) and ({colours})\b", r"\1 &&& \2", protected, flags=re.IGNORECASE)
    pieces = [piece.strip().replace("&&&", "and") for piece in re.split(r"\band\b", protected, flags=re.IGNORECASE)]
    return [piece for piece in pieces if piece]


def _first_word(text: str) -> str:
    words = re.findall(r"[a-z']+", text.lower())
    return words[0] if words else ""


def _has_own_verb(piece: str) -> bool:
    first = _first_word(piece)
    if first in EDIT_VERBS or first in PRESERVE_VERBS or first in ("leave", "without", "except", "not", "no"):
        return True
    if any(piece.lower().startswith(negation) for negation in NEGATIONS) or UNWANTED.match(piece):
        return True
    if preserved_object(piece) is not None:
        return True
    words = set(re.findall(r"[a-z']+", piece.lower()))
    return bool(words & FINITE_MARKERS)


def _is_bare_adjust(previous: str, piece: str) -> bool:
    # "increase the contrast and saturation" must still split, so only a piece with no adjust word of its own
    # ("make it brighter and more") joins the clause before it.
    from agent.decompose import match_adjust, content_words

    return match_adjust(piece) is None and not content_words(piece) and match_adjust(previous) is not None


def _borrow_verb(previous: str, verbless: str) -> str:
    """Rebuild a verbless piece with the previous clause's verb ("...and a tiara on the queen")."""
    words = previous.split()
    if not words:
        return verbless
    verb = [words[0]]
    if len(words) > 2 and words[1].lower() == "rid" and words[2].lower() == "of":
        verb = words[:3]
    elif len(words) > 1 and words[1].lower() in VERB_PARTICLES:
        verb = words[:2]

    has_preposition = any(word.lower() in PREPOSITIONS for word in verbless.split()[1:])
    if words[0].lower() in DITRANSITIVE_VERBS and not has_preposition and len(words) >= 4:
        # "give the woman a red hat and sunglasses" -> "give the woman sunglasses": keep the indirect object.
        last_determiner = max(
            (index for index, word in enumerate(words) if index > 1 and word.lower() in DETERMINERS), default=0
        )
        if last_determiner:
            return " ".join(words[:last_determiner] + [verbless])
    return " ".join(verb + [verbless])


def _share_trailing_phrases(clauses: list[Clause]) -> None:
    """Give a shared-verb list the place phrase of its last item ("add a hat and a scarf to the snowman")."""
    start = 0
    while start < len(clauses):
        end = start + 1
        while end < len(clauses) and clauses[end].shares_verb_with_previous and clauses[end].kind == "edit":
            end += 1
        group = clauses[start:end]
        if len(group) > 1 and group[0].kind == "edit":
            phrase = _trailing_place_phrase(group[-1].text)
            if phrase and not any(_has_preposition(clause.text) for clause in group[:-1]):
                for clause in group[:-1]:
                    clause.text = f"{clause.text} {phrase}"
        start = end


def _trailing_place_phrase(text: str) -> str:
    match = re.search(r"\s((?:to|on|onto|in|into|at|under|behind|beside|near)\s+(?:the|a|an|his|her|their|its|my)\s.+)$",
                      text, re.IGNORECASE)
    return match.group(1) if match else ""


def _has_preposition(text: str) -> bool:
    return any(word.lower() in PREPOSITIONS for word in text.split()[1:])


# --- classification -----------------------------------------------------------------------------------------------


def _classify(text: str, *, shares_verb: bool) -> Clause:
    text = text.strip(" ,.")
    preserved = preserved_object(text)
    if preserved is not None:
        kind: Literal["edit", "preserve", "constraint"] = "preserve" if preserved else "constraint"
        return Clause(text, kind, preserved, shares_verb)
    if any(text.lower().startswith(negation) for negation in NEGATIONS) or UNWANTED.match(text):
        return Clause(text, "constraint", "", shares_verb)
    return Clause(text, "edit", "", shares_verb)


def preserved_object(clause: str) -> str | None:
    """Return the object a preserve clause keeps ("" when it is generic, like "the rest"), or None for other clauses."""
    starts_with_edit_verb = _first_word(clause) in EDIT_VERBS
    for pattern in PRESERVE_PATTERNS:
        if starts_with_edit_verb and pattern.pattern.startswith("^(?P<object>"):
            # "make the fog stay" is an edit, not a request to keep "make the fog".
            continue
        match = pattern.match(clause.strip())
        if match:
            preserved = _strip_object(match.group("object"))
            return "" if preserved in GENERIC_OBJECTS else preserved
    return None


def _strip_object(phrase: str) -> str:
    phrase = phrase.strip(" .,")
    for _ in range(2):
        phrase = OBJECT_SUFFIX.sub("", phrase)
    phrase = re.sub(r"\s+(?:of the (?:image|photo|picture)|in the (?:image|photo|picture))$", "", phrase, flags=re.I)
    words = phrase.split()
    while words and words[0].lower() in DETERMINERS:
        words = words[1:]
    return " ".join(words).lower()
