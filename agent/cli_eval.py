"""The `ragedit evaluate` command: score the agent, or an ablation of its parts, on a MagicBrush-format dataset."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

from agent.cli_common import (
    AttentionSlicingOption,
    CompileUnetOption,
    CpuOffloadOption,
    DtypeOption,
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
    split: Optional[str] = typer.Option(
        None, "--split", help="For a folder of Parquet files of several splits (train-*.parquet, dev-*.parquet), "
        "the split to read."
    ),
    out: Optional[str] = typer.Option(
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
    dtype: str = DtypeOption,
    attention_slicing: bool = AttentionSlicingOption,
    cpu_offload: bool = CpuOffloadOption,
    compile_unet: bool = CompileUnetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the results in an existing --out folder."),
    home: Optional[Path] = HomeOption,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", "--debug",
        help="Log model loads, retries and timings to stderr, and the traceback of an internal error.",
    ),
) -> None:
    """Run the agent on a MagicBrush-format dataset and score it with MagicBrush's metrics."""
    configure_logging(verbose)
    quiet_model_libraries()
    options = dict(
        profile=profile, seed=seed, steps=steps, max_attempts=max_attempts, candidates=candidates,
        editor_model=editor_model, clip_model=clip_model, max_side=max_side, device=device, dtype=dtype,
        attention_slicing=attention_slicing, cpu_offload=cpu_offload, compile_unet=compile_unet, home=home, llm=None,
    )
    code = run_guarded(
        lambda: _run_evaluation(dataset, ablation, limit, split, out, metric_clip, overwrite, options), verbose,
        input_errors=_input_errors(),
    )
    raise typer.Exit(code)


def _input_errors() -> tuple[type[Exception], ...]:
    from agent.eval_data import EvalDataError
    from tools.image_io import ImageInputError

    return (EvalDataError, ImageInputError)


def _run_evaluation(
    dataset: Path, ablation: bool, limit: int | None, split: str | None, out: str | None, metric_clip: str,
    overwrite: bool, options: dict[str, Any],
) -> int:
    from agent import cli_common
    from agent.eval_data import load_eval_dataset
    from agent.evaluate import EDITS_FILE, run_evaluation

    if limit is not None and limit < 1:
        raise UsageError(f"invalid --limit {limit}: use 1 or more sessions")
    if out is not None and not out.strip():
        # Path("") would mean the current folder, and the results would land among the user's own files.
        raise UsageError("invalid --out '': pass a folder name, for example --out evaluation")
    out_dir = Path(out) if out is not None else Path(f"evaluation-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_out_dir(out_dir, dataset, overwrite)
    check_home(options["home"])
    metric_spec = split_clip_spec(metric_clip)
    sessions = load_eval_dataset(dataset, limit=limit, split=split)

    context = resolve_context(options)
    if context.profile == "offline":
        typer.echo("ragedit: note: the offline profile has no InstructPix2Pix, so its semantic edits are skipped and "
                   "only adjust edits change the images; use --profile full for real numbers", err=True)
    else:
        _check_editor(context)
    metric_embedder = _metric_embedder(metric_spec, context)

    turns = sum(len(session.turns) for session in sessions)
    typer.echo(f"Evaluating {_count(len(sessions), 'session')} ({_count(turns, 'turn')}) from {dataset} into "
               f"{out_dir}", err=True)
    cli_common.interrupt_message = f"interrupted; the edits finished so far are in {out_dir / EDITS_FILE}"
    result = run_evaluation(
        sessions, context, out_dir, ablation=ablation, metric_embedder=metric_embedder,
        progress=lambda line: typer.echo(line, err=True),
    )
    typer.echo(result.table)
    for message in result.skipped:
        typer.echo(f"Left out: {message}")
    for label, path in result.files.items():
        typer.echo(f"{FILE_LABELS[label]}: {path}")
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _check_out_dir(out_dir: Path, dataset: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"invalid --out {out_dir}: it is a file; pass a folder (it is created when missing)")
    resolved = out_dir.resolve()
    # Outputs written among the dataset's own images/<img_id>/ folders could be read back as dataset files.
    data_folder = dataset.resolve() if dataset.is_dir() else dataset.resolve().parent
    is_folder_layout = dataset.is_dir() or dataset.suffix.lower() == ".json"
    if is_folder_layout and (resolved == data_folder or data_folder in resolved.parents):
        raise UsageError(f"invalid --out {out_dir}: it is inside the dataset folder {dataset}; choose a folder outside it")
    existing = [name for name in RESULT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"--out {out_dir} already contains {', '.join(existing)}; pass --overwrite or another folder")
    folder = next(parent for parent in (resolved, *resolved.parents) if parent.exists())
    if not folder.is_dir():
        raise UsageError(f"invalid --out {out_dir}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write --out {out_dir}: no permission to write in {folder}")


def _check_editor(context: Any) -> None:
    """Load InstructPix2Pix before the first edit, so a missing model stops the evaluation instead of every edit."""
    from tools.instruct_pix2pix import EditorUnavailableError, load_pipeline

    try:
        load_pipeline(context.editor_model, device=context.device or None, dtype=context.dtype or None,
                      options=context.editor_options)
    except EditorUnavailableError as error:
        raise UsageError(f"{error}; the evaluation needs the editor, or pass --profile offline to score adjust edits "
                         "only") from None


def _metric_embedder(spec: tuple[str, str], context: Any) -> Any:
    """Load the metrics' CLIP model, or return None (L1 and L2 only) with a note when its weights cannot be fetched."""
    from tools.embeddings import EmbedderUnavailableError, load_clip_embedder

    name, pretrained = spec
    try:
        return load_clip_embedder(name, pretrained, device=context.device or None)
    except EmbedderUnavailableError as error:
        typer.echo(f"ragedit: note: CLIP metrics are n/a: {error}", err=True)
        return None


def split_clip_spec(spec: str) -> tuple[str, str]:
    """Split and check "NAME:PRETRAINED"; a folder, "hf-hub:" or "local-dir:" id is returned whole.

    Raises UsageError for a spec that can never load: an empty part, an unknown model or weights tag, a missing folder.
    """
    from tools.embeddings import DEFAULT_CLIP_PRETRAINED

    hint = "pass NAME:PRETRAINED (for example ViT-B-32:openai) or a local open_clip folder"
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, DEFAULT_CLIP_PRETRAINED
    path = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise UsageError(f"invalid --metric-clip {spec}: folder not found; {hint}")
        return spec, DEFAULT_CLIP_PRETRAINED

    name, _, pretrained = spec.partition(":")
    if not name or (":" in spec and not pretrained):
        raise UsageError(f"invalid --metric-clip {spec!r}: a model name and a weights tag are needed; {hint}")
    import open_clip

    if name not in open_clip.list_models():
        raise UsageError(f"invalid --metric-clip {spec!r}: unknown open_clip model {name!r}; {hint}")
    pretrained = pretrained or DEFAULT_CLIP_PRETRAINED
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise UsageError(f"invalid --metric-clip {spec!r}: {name} has no weights {pretrained!r} (it has "
                         f"{', '.join(tags) or 'none'}); {hint}")
    return name, pretrained
