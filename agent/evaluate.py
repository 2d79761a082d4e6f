"""Evaluate the agent on a MagicBrush-format dataset, alone or as an ablation of its parts.

Each configuration runs the real edit graph on the same turns with the same seed. Single-turn edits every turn from its
ground-truth input; multi-turn chains the turns of a session and scores only the final output. The first turn of both
settings has the same input, so its edit is run once and shared. Metrics are MagicBrush's (see tools.edit_metrics).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from agent.context import Context
from agent.eval_data import EvalDataError, EvalSession, EvalTurn
from tools.edit_metrics import METRIC_KEYS, mean_metrics, score_against_target
from tools.embeddings import Embedder
from tools.image_io import ArtifactStore, write_image_atomic

logger = logging.getLogger(__name__)

SETTINGS = ("single-turn", "multi-turn")
# InstructPix2Pix zero-shot on the MagicBrush test set, single-turn, as the MagicBrush paper reports it.
PUBLISHED_IP2P_SINGLE_TURN = {"l1": 0.1122, "clip_i": 0.8524, "clip_t": 0.2764}
SHEET_SESSIONS = 6
EDITS_FILE = "edits.jsonl"
METRIC_LABELS = {"l1": "L1", "l2": "L2", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "clip_dir": "CLIP-dir"}


@dataclass(frozen=True)
class Configuration:
    """One row of the ablation: a name and the context settings that switch the agent's parts on or off."""

    name: str
    label: str
    overrides: dict[str, Any]


CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration(
        "ip2p", "InstructPix2Pix on the whole instruction",
        {"use_decomposition": False, "use_retrieval": False, "use_critic": False, "candidates": 1},
    ),
    Configuration(
        "decomposition", "+ decomposition",
        {"use_decomposition": True, "use_retrieval": False, "use_critic": False, "candidates": 1},
    ),
    Configuration(
        "retrieval", "+ decomposition and retrieval",
        {"use_decomposition": True, "use_retrieval": True, "use_critic": False, "candidates": 1},
    ),
    Configuration("agent", "full agent (+ critic)", {"use_decomposition": True, "use_retrieval": True, "use_critic": True}),
)


@dataclass
class TurnOutcome:
    """One edit of one turn by one configuration, with its metrics."""

    configuration: str
    setting: str
    session_id: str
    turn: int
    output_path: str
    metrics: dict[str, float | None]
    statuses: list[str]
    seconds: float


@dataclass
class EvaluationResult:
    """Every scored edit, the mean metrics per configuration and setting, and the files written."""

    outcomes: list[TurnOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One message per session and configuration left out because an image of the dataset could not be read."""
    means: dict[tuple[str, str], dict[str, float | None]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    table: str = ""


def run_evaluation(
    sessions: list[EvalSession],
    context: Context,
    out_dir: Path,
    *,
    ablation: bool,
    metric_embedder: Embedder | None,
    progress: Callable[[str], None] = lambda line: None,
) -> EvaluationResult:
    """Run the configurations on every session, score the outputs and write the table, CSV and contact sheet."""
    configurations = CONFIGURATIONS if ablation else CONFIGURATIONS[-1:]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvaluationResult()
    # Each edit is appended as it finishes, so an interrupted evaluation keeps the edits it completed.
    with (out_dir / EDITS_FILE).open("w", encoding="utf-8") as edits:
        for number, configuration in enumerate(configurations, start=1):
            run_context = replace(context, learn=False, **configuration.overrides)
            progress(f"[{number}/{len(configurations)}] {configuration.label}")
            for session in sessions:
                try:
                    outcomes = _evaluate_session(session, configuration, run_context, out_dir, metric_embedder,
                                                 progress)
                except EvalDataError as error:
                    logger.warning("left out session %s for %s: %s", session.session_id, configuration.name, error)
                    result.skipped.append(f"{configuration.label}: {error}")
                    continue
                for outcome in outcomes:
                    edits.write(json.dumps(vars(outcome)) + "\n")
                edits.flush()
                result.outcomes += outcomes

    for configuration in configurations:
        for setting in SETTINGS:
            rows = [outcome.metrics for outcome in _select(result.outcomes, configuration.name, setting)]
            result.means[(configuration.name, setting)] = mean_metrics(rows)
    result.table = format_table(result, configurations, len(sessions))
    result.files = _write_outputs(result, configurations, sessions, out_dir)
    return result


def _evaluate_session(
    session: EvalSession,
    configuration: Configuration,
    context: Context,
    out_dir: Path,
    metric_embedder: Embedder | None,
    progress: Callable[[str], None],
) -> list[TurnOutcome]:
    outcomes = []
    first_output: Image.Image | None = None
    for turn in session.turns:
        source, target = turn.load_source(), turn.load_target()
        output, statuses, seconds = _edit(source, turn, context, out_dir)
        path = _save_output(output, out_dir, configuration.name, turn, "single")
        metrics = score_against_target(metric_embedder, source, output, target, turn.source_caption,
                                       turn.target_caption)
        outcomes.append(TurnOutcome(configuration.name, "single-turn", session.session_id, turn.turn, str(path),
                                    metrics, statuses, seconds))
        progress(f"  session {session.session_id} turn {turn.turn}: {_brief(metrics)} ({seconds:.1f} s)")
        if turn.turn == 1:
            first_output = output

    assert first_output is not None
    outcomes.append(_chain(session, configuration, context, out_dir, metric_embedder, first_output, outcomes[0]))
    return outcomes


def _chain(
    session: EvalSession,
    configuration: Configuration,
    context: Context,
    out_dir: Path,
    metric_embedder: Embedder | None,
    first_output: Image.Image,
    first: TurnOutcome,
) -> TurnOutcome:
    """Edit the session's turns one after another from the first turn's output and score the final output."""
    if len(session.turns) == 1:
        return replace(first, setting="multi-turn")

    current = first_output
    statuses = list(first.statuses)
    seconds = first.seconds
    for turn in session.turns[1:]:
        previous = current
        current, turn_statuses, turn_seconds = _edit(previous, turn, context, out_dir)
        statuses += turn_statuses
        seconds += turn_seconds
    last = session.turns[-1]
    path = _save_output(current, out_dir, configuration.name, last, "multi")
    metrics = score_against_target(metric_embedder, previous, current, last.load_target(), last.source_caption,
                                   last.target_caption)
    return TurnOutcome(configuration.name, "multi-turn", session.session_id, last.turn, str(path), metrics, statuses,
                       seconds)


def _edit(source: Image.Image, turn: EvalTurn, context: Context, out_dir: Path) -> tuple[Image.Image, list[str], float]:
    """Run the edit graph on one image and instruction; return the output, each subtask's status and the time."""
    from graphs.edit import graph

    work = out_dir / "work"
    input_path = write_image_atomic(source, work / f"{_safe(turn.session_id)}-{turn.turn}-input.png", overwrite=True)
    started = time.perf_counter()
    final = graph.invoke({"image_path": str(input_path), "instruction": turn.instruction}, context=context)
    seconds = time.perf_counter() - started
    output = ArtifactStore(context.artifact_dir).get(final["output"])
    statuses = [result["status"] for result in final.get("results", [])]
    return output, statuses, seconds


def _save_output(image: Image.Image, out_dir: Path, configuration: str, turn: EvalTurn, setting: str) -> Path:
    name = f"{_safe(turn.session_id)}-{setting}-{turn.turn}.png"
    return write_image_atomic(image, out_dir / "images" / configuration / name, overwrite=True)


def _safe(text: str) -> str:
    """Return a file-name form of a session id; ids changed by it get a hash, so "a.b" and "a_b" stay apart."""
    safe = "".join(char if char.isalnum() or char in "-_" else "_" for char in text)
    if safe == text:
        return safe
    return f"{safe}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def _brief(metrics: dict[str, float | None]) -> str:
    return ", ".join(f"{METRIC_LABELS[key]} {value:.3f}" for key, value in metrics.items()
                     if key in METRIC_LABELS and value is not None)


def _select(outcomes: list[TurnOutcome], configuration: str, setting: str) -> list[TurnOutcome]:
    return [outcome for outcome in outcomes if outcome.configuration == configuration and outcome.setting == setting]


# --- outputs ------------------------------------------------------------------------------------------------------


def format_table(result: EvaluationResult, configurations: tuple[Configuration, ...], sessions: int) -> str:
    """Format the mean metrics as one Markdown table per setting, with a line on how to read them."""
    sections = []
    for setting in SETTINGS:
        turns = len(_select(result.outcomes, configurations[0].name, setting))
        header = ["configuration", *(METRIC_LABELS[key] for key in METRIC_KEYS), "accepted by critic", "s/edit"]
        lines = [
            f"### {setting.capitalize()} ({turns} edits from {sessions} sessions)",
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
        ]
        for configuration in configurations:
            means = result.means[(configuration.name, setting)]
            selected = _select(result.outcomes, configuration.name, setting)
            cells = [configuration.label, *(_cell(means.get(key)) for key in METRIC_KEYS),
                     _accepted_share(configuration, selected), f"{_mean_seconds(selected):.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    published = ", ".join(f"{METRIC_LABELS[key]} {value}" for key, value in PUBLISHED_IP2P_SINGLE_TURN.items())
    note = (
        "L1 and L2: lower is better; CLIP-I, CLIP-T and CLIP-dir: higher is better; n/a: the dataset has no captions "
        "or no CLIP model was available for the metrics; accepted by critic: the share of subtasks the critic "
        "accepted, n/a without the critic.\n"
        f"Published InstructPix2Pix zero-shot, MagicBrush test set, single-turn: {published}."
    )
    return "\n\n".join(sections) + "\n\n" + note + "\n"


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _accepted_share(configuration: Configuration, outcomes: list[TurnOutcome]) -> str:
    """Return the share of subtasks the critic accepted, or "n/a" for a configuration without the critic."""
    statuses = [status for outcome in outcomes for status in outcome.statuses]
    if not statuses or not configuration.overrides.get("use_critic", True):
        return "n/a"
    return f"{sum(status == 'accepted' for status in statuses) / len(statuses):.0%}"


def _mean_seconds(outcomes: list[TurnOutcome]) -> float:
    return sum(outcome.seconds for outcome in outcomes) / len(outcomes) if outcomes else 0.0


def _write_outputs(
    result: EvaluationResult, configurations: tuple[Configuration, ...], sessions: list[EvalSession], out_dir: Path
) -> dict[str, Path]:
    """Write the table, the CSV and the contact sheet; edits.jsonl was written during the run."""
    files = {
        "table": _write_text(out_dir / "results.md", "# ragedit evaluation\n\n" + result.table),
        "csv": _write_text(out_dir / "results.csv", _csv(result, configurations)),
        "edits": out_dir / EDITS_FILE,
        "sheet": write_evaluation_sheet(result, configurations, sessions, out_dir / "sheet.png"),
    }
    return {label: path for label, path in files.items() if path is not None}


def _csv(result: EvaluationResult, configurations: tuple[Configuration, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["configuration", "label", "setting", "edits", *METRIC_KEYS, "accepted_by_critic",
                     "seconds_per_edit"])
    for configuration in configurations:
        for setting in SETTINGS:
            means = result.means[(configuration.name, setting)]
            selected = _select(result.outcomes, configuration.name, setting)
            values = ["" if means.get(key) is None else f"{means[key]:.6f}" for key in METRIC_KEYS]
            accepted = _accepted_share(configuration, selected).replace("n/a", "")
            writer.writerow([configuration.name, configuration.label, setting, len(selected), *values, accepted,
                             f"{_mean_seconds(selected):.3f}"])
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> Path:
    from agent.report import write_text_atomic

    return write_text_atomic(text, path)


def write_evaluation_sheet(
    result: EvaluationResult, configurations: tuple[Configuration, ...], sessions: list[EvalSession], path: Path
) -> Path | None:
    """Write one row per session (the first few): its first turn's input, ground truth and each configuration's output.

    Returns None, writing nothing, when no session was edited by every configuration.
    """
    from agent.report import compose_sheet

    first_turns = {
        (outcome.configuration, outcome.session_id): outcome
        for outcome in result.outcomes
        if outcome.setting == "single-turn" and outcome.turn == 1
    }
    complete = [
        session for session in sessions
        if all((configuration.name, session.session_id) in first_turns for configuration in configurations)
    ]
    rows = []
    for session in complete[:SHEET_SESSIONS]:
        turn = session.turns[0]
        row = [
            (turn.load_source(), ["input", _shorten(turn.instruction)]),
            (turn.load_target(), ["ground truth", f"session {session.session_id}, turn 1"]),
        ]
        for configuration in configurations:
            outcome = first_turns[(configuration.name, session.session_id)]
            with Image.open(outcome.output_path) as image:
                row.append((image.convert("RGB"), [configuration.label, *_metric_lines(outcome.metrics)]))
        rows.append(row)
    if not rows:
        return None
    return write_image_atomic(compose_sheet(rows, tile_height=192), path, overwrite=True)


def _metric_lines(metrics: dict[str, float | None]) -> list[str]:
    groups = [("l1", "l2"), ("clip_i", "clip_t"), ("clip_dir",)]
    return [_brief({key: metrics.get(key) for key in group}) or "n/a" for group in groups]


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
