"""The `ragedit evaluate` command: score the agent, or an ablation of its parts, on a MagicBrush-format dataset."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

from agent.cli import (
    HomeOption,
    ProfileName,
    ProfileOption,
    UsageError,
    check_home,
    configure_logging,
    quiet_model_libraries,
    resolve_context,
    run_guarded,
)

# MagicBrush scores CLIP-I and CLIP-T with OpenAI's ViT-B/32, so the metrics default to it rather than to the
# agent's own CLIP model.
DEFAULT_METRIC_CLIP = "ViT-B-32:openai"
RESULT_FILES = ("results.md", "results.csv", "edits.jsonl", "sheet.png")
FILE_LABELS = {"table": "Table", "csv": "CSV", "edits": "Edits", "sheet": "Sheet"}


def evaluate_command(
    dataset: Path = typer.Argument(
        ..., help="A MagicBrush Parquet file or folder of them, or a folder in the MagicBrush test layout "
        "(edit_sessions.json and images/)."
    ),
    ablation: bool = typer.Option(
        False, "--ablation", help="Compare four configurations: InstructPix2Pix alone, + decomposition, "
        "+ retrieval, and the full agent with the critic."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N edit sessions."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for results.md, results.csv, edits.jsonl, sheet.png and the output images.",
        show_default="evaluation-DATE-TIME in the current folder",
    ),
    profile: Optional[ProfileName] = ProfileOption,
    seed: int = typer.Option(0, "--seed", help="Seed of every edit; each configuration uses the same seeds."),
    steps: int = typer.Option(0, "--steps", help="InstructPix2Pix denoising steps; 0 takes them from retrieved cases, "
                              "else 20."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Attempts per subtask of the full agent."),
    candidates: int = typer.Option(1, "--candidates", help="Candidates per attempt of the full agent."),
    editor_model: Optional[str] = typer.Option(
        None, "--editor-model", help="InstructPix2Pix weights: a Hugging Face id or a local diffusers folder.",
        show_default="timbrooks/instruct-pix2pix",
    ),
    clip_model: Optional[str] = typer.Option(
        None, "--clip-model", help="open_clip model or folder used by the agent's retrieval and critic.",
        show_default="ViT-B-32 with laion2b_s34b_b79k weights",
    ),
    metric_clip: str = typer.Option(
        DEFAULT_METRIC_CLIP, "--metric-clip",
        help="CLIP model for the CLIP-I, CLIP-T and CLIP-dir metrics: NAME:PRETRAINED or a local open_clip folder.",
    ),
    max_side: int = typer.Option(512, "--max-side", help="Maximum side length in pixels that InstructPix2Pix works at."),
    device: str = typer.Option("", "--device", help="Torch device: cpu, cuda, cuda:N or mps.",
                               show_default="the fastest available"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the results in an existing --out folder."),
    home: Optional[Path] = HomeOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log model loads, retries and timings to stderr."),
) -> None:
    """Run the agent on a MagicBrush-format dataset and score it with MagicBrush's metrics."""
    configure_logging(verbose)
    quiet_model_libraries()
    options = dict(
        profile=profile, seed=seed, steps=steps, max_attempts=max_attempts, candidates=candidates,
        editor_model=editor_model, clip_model=clip_model, max_side=max_side, device=device, home=home, llm=None,
    )
    code = run_guarded(
        lambda: _run_evaluation(dataset, ablation, limit, out, metric_clip, overwrite, options), verbose,
        input_errors=_input_errors(),
    )
    raise typer.Exit(code)


def _input_errors() -> tuple[type[Exception], ...]:
    from agent.eval_data import EvalDataError
    from tools.image_io import ImageInputError

    return (EvalDataError, ImageInputError)


def _run_evaluation(
    dataset: Path, ablation: bool, limit: int | None, out: Path | None, metric_clip: str, overwrite: bool,
    options: dict[str, Any],
) -> int:
    from agent.eval_data import load_eval_dataset
    from agent.evaluate import run_evaluation

    if limit is not None and limit < 1:
        raise UsageError(f"invalid --limit {limit}: use 1 or more sessions")
    out_dir = out or Path(f"evaluation-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_out_dir(out_dir, overwrite)
    check_home(options["home"])
    sessions = load_eval_dataset(dataset, limit=limit)

    context = resolve_context(options)
    if context.profile == "offline":
        typer.echo("ragedit: note: the offline profile has no InstructPix2Pix, so its semantic edits are skipped and "
                   "only adjust edits change the images; use --profile full for real numbers", err=True)

    turns = sum(len(session.turns) for session in sessions)
    typer.echo(f"Evaluating {len(sessions)} sessions ({turns} turns) from {dataset} into {out_dir}", err=True)
    result = run_evaluation(
        sessions, context, out_dir, ablation=ablation, metric_embedder=_metric_embedder(metric_clip, context),
        progress=lambda line: typer.echo(line, err=True),
    )
    typer.echo(result.table)
    for label, path in result.files.items():
        typer.echo(f"{FILE_LABELS[label]}: {path}")
    return 0


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"invalid --out {out_dir}: it is a file; pass a folder (it is created when missing)")
    existing = [name for name in RESULT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"--out {out_dir} already contains {', '.join(existing)}; pass --overwrite or another folder")
    folder = out_dir if out_dir.exists() else next(parent for parent in out_dir.resolve().parents if parent.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write --out {out_dir}: no permission to write in {folder}")


def _metric_embedder(spec: str, context: Any) -> Any:
    """Load the metrics' CLIP model, or return None (L1 and L2 only) with a note when it is not available."""
    from tools.embeddings import EmbedderUnavailableError, load_clip_embedder

    name, pretrained = split_clip_spec(spec)
    try:
        return load_clip_embedder(name, pretrained, device=context.device or None)
    except EmbedderUnavailableError as error:
        typer.echo(f"ragedit: note: CLIP metrics are n/a: {error}", err=True)
        return None


def split_clip_spec(spec: str) -> tuple[str, str]:
    """Split "NAME:PRETRAINED" into its parts; folders, "hf-hub:" and "local-dir:" ids are returned whole."""
    from tools.embeddings import DEFAULT_CLIP_PRETRAINED

    whole = spec.startswith(("hf-hub:", "local-dir:", ".", "/", "~")) or Path(spec).expanduser().exists()
    if whole or ":" not in spec:
        return spec, DEFAULT_CLIP_PRETRAINED
    name, pretrained = spec.split(":", 1)
    return name, pretrained
