"""Score a decomposer against labelled instructions.

A labelled case is a JSON object with `instruction`, `subtasks` (one list of keywords per expected subtask),
`preserve` (keywords) and optionally `tools` (the expected tool of each expected subtask). A case passes when all of
these hold:

- the plan has as many subtasks as expected;
- each expected keyword list is found (case-insensitive) in the text of a different produced subtask;
- each preserve keyword is found in a preserve entry;
- where tools are given, each matched subtask has the expected tool.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.decompose import InstructionError, Plan


class EvalFileError(ValueError):
    """A labelled file that cannot be read or parsed."""


@dataclass(frozen=True)
class CaseOutcome:
    """The result of one labelled case."""

    line: int
    instruction: str
    passed: bool
    reason: str
    produced: dict


def load_cases(path: str | Path) -> list[tuple[int, dict]]:
    """Read a JSON Lines file of labelled cases, returning (line number, case) pairs."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalFileError(f"cannot read {source}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise EvalFileError(f"cannot read {source}: {error}") from None

    cases = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvalFileError(f"invalid JSON in {source} line {number}: {error.msg}") from None
        _check_case(case, source, number)
        cases.append((number, case))
    if not cases:
        raise EvalFileError(f"no cases in {source}: expected one JSON object a line")
    return cases


def _check_case(case: object, source: Path, number: int) -> None:
    where = f"{source} line {number}"
    if not isinstance(case, dict) or not isinstance(case.get("instruction"), str):
        raise EvalFileError(f"invalid case in {where}: expected an object with a string 'instruction'")
    subtasks = case.get("subtasks")
    if not isinstance(subtasks, list) or not all(isinstance(item, list) for item in subtasks):
        raise EvalFileError(f"invalid case in {where}: 'subtasks' must be a list of keyword lists")
    if not isinstance(case.get("preserve", []), list):
        raise EvalFileError(f"invalid case in {where}: 'preserve' must be a list of keywords")
    tools = case.get("tools")
    if tools is not None and (not isinstance(tools, list) or len(tools) != len(subtasks)):
        raise EvalFileError(f"invalid case in {where}: 'tools' must list one tool per expected subtask")


def score_case(case: dict, plan: Plan) -> tuple[bool, str]:
    """Return whether the plan satisfies the case, and the first reason it does not."""
    produced = [(subtask["text"].lower(), subtask["tool"]) for subtask in plan.subtasks]
    expected = case["subtasks"]
    if len(produced) != len(expected):
        return False, f"expected {len(expected)} subtasks, got {len(produced)}"

    tools = case.get("tools")
    assignment = _match(expected, tools, produced)
    if assignment is None:
        return False, "no one-to-one match of expected keywords (and tools) to produced subtasks"

    preserved = [item.lower() for item in plan.preserve]
    for keyword in case.get("preserve", []):
        if not any(keyword.lower() in item for item in preserved):
            return False, f"preserve keyword {keyword!r} not found in {plan.preserve}"
    return True, ""


def _match(
    expected: list[list[str]], tools: list[str] | None, produced: list[tuple[str, str]]
) -> list[int] | None:
    """Assign each expected subtask to a different produced subtask (a small bipartite matching by backtracking)."""

    def fits(expected_index: int, produced_index: int) -> bool:
        text, tool = produced[produced_index]
        if tools is not None and tools[expected_index] != tool:
            return False
        return all(keyword.lower() in text for keyword in expected[expected_index])

    assignment: list[int] = []
    used: set[int] = set()

    def assign(expected_index: int) -> bool:
        if expected_index == len(expected):
            return True
        for produced_index in range(len(produced)):
            if produced_index not in used and fits(expected_index, produced_index):
                used.add(produced_index)
                assignment.append(produced_index)
                if assign(expected_index + 1):
                    return True
                used.discard(produced_index)
                assignment.pop()
        return False

    return assignment if assign(0) else None


def evaluate(cases: Iterable[tuple[int, dict]], decompose: Callable[[str], Plan]) -> list[CaseOutcome]:
    """Run the decomposer on every case and score it."""
    outcomes = []
    for line, case in cases:
        try:
            plan = decompose(case["instruction"])
        except InstructionError as error:
            outcomes.append(CaseOutcome(line, case["instruction"], False, str(error), {}))
            continue
        passed, reason = score_case(case, plan)
        outcomes.append(CaseOutcome(line, case["instruction"], passed, reason, plan.to_json()))
    return outcomes
