"""The `ragedit index` commands: build, inspect and search the case library that `ragedit edit` retrieves from."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from agent.cli_common import (
    HomeOption,
    ProfileName,
    ProfileOption,
    UsageError,
    check_home,
    configure_logging,
    fail,
    quiet_model_libraries,
    resolve_profile,
    run_guarded,
)

index_app = typer.Typer(
    help="Build, inspect and search the case library that `ragedit edit` retrieves past edits from.",
    no_args_is_help=True,
)


class MagicBrushSplit(str, Enum):
    """Splits of osunlp/MagicBrush on the Hugging Face Hub."""

    train = "train"
    dev = "dev"


IndexClipOption = typer.Option(
    None, "--clip-model", help="open_clip model name or local folder for the full profile's embeddings.",
    show_default="ViT-B-32 with laion2b_s34b_b79k weights",
)
IndexVerboseOption = typer.Option(
    False, "--verbose", "-v", "--debug",
    help="Log model loads and library writes to stderr, and the traceback of an internal error.",
)


@index_app.command("build")
def index_build(
    magicbrush: bool = typer.Option(
        False, "--magicbrush", help="Add the edit turns of MagicBrush (osunlp/MagicBrush)."
    ),
    split: MagicBrushSplit = typer.Option(
        MagicBrushSplit.train, "--split", help="MagicBrush split to stream from the Hugging Face Hub."
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1, help="Read at most this many dataset rows, including rows already in the library.",
        show_default="all rows",
    ),
    parquet: Optional[list[Path]] = typer.Option(
        None, "--parquet", help="Read a local MagicBrush Parquet file, or a folder of them, instead of streaming "
        "from the Hub; repeat for several.",
    ),
    profile: Optional[ProfileName] = ProfileOption,
    home: Optional[Path] = HomeOption,
    clip_model: Optional[str] = IndexClipOption,
    verbose: bool = IndexVerboseOption,
) -> None:
    """Add a dataset's edits to the profile's case library, skipping cases already in it."""
    configure_logging(verbose)
    if not magicbrush:
        fail("no dataset given: pass --magicbrush (the one dataset ragedit can index)")
    _run_index_command(
        lambda: _build_case_library(split.value, limit, parquet or [], profile, home, clip_model), verbose
    )


@index_app.command("stats")
def index_stats(
    profile: Optional[ProfileName] = ProfileOption,
    home: Optional[Path] = HomeOption,
    clip_model: Optional[str] = IndexClipOption,
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    verbose: bool = IndexVerboseOption,
) -> None:
    """Show the case library's embedder, index type and number of cases by edit kind and by tool."""
    configure_logging(verbose)
    _run_index_command(lambda: _print_case_library_stats(profile, home, clip_model, as_json), verbose)


@index_app.command("search")
def index_search(
    text: str = typer.Argument(..., help="Instruction to find similar past edits for, in quotes."),
    image: Optional[Path] = typer.Option(
        None, "--image", help="Also rank cases by how similar their source image is to this photo (full profile only)."
    ),
    k: int = typer.Option(5, "-k", min=1, max=100, help="Number of cases to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the matches as a JSON list."),
    profile: Optional[ProfileName] = ProfileOption,
    home: Optional[Path] = HomeOption,
    clip_model: Optional[str] = IndexClipOption,
    verbose: bool = IndexVerboseOption,
) -> None:
    """Search the case library for the cases nearest to TEXT, best first."""
    configure_logging(verbose)
    if not text.strip():
        fail("missing TEXT: give an instruction in quotes, such as \"remove the dog\"")
    if image is not None and profile is not None and ProfileName(profile) is ProfileName.offline:
        fail("image search needs the full profile: add --profile full, or drop --image")
    _run_index_command(lambda: _search_case_library(text, image, k, as_json, profile, home, clip_model), verbose)


def _run_index_command(command: Any, verbose: bool) -> None:
    """Run an index command, turning input errors into one line and exit status 2."""
    from agent.ingest import IngestError
    from tools.image_io import ImageInputError

    quiet_model_libraries()
    run_guarded(command, verbose, input_errors=(IngestError, ImageInputError))


def _index_context(profile: ProfileName | None, home: Path | None, clip_model: str | None) -> Any:
    from agent.context import Context

    check_home(home)
    options: dict[str, Any] = {"clip_model": clip_model} if clip_model else {}
    try:
        return Context(profile=resolve_profile(profile, clip_model), home=str(home or ""), **options)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _open_case_library(context: Any) -> tuple[Any, Any]:
    """Return the profile's embedder and case library, the same library that `ragedit edit` uses."""
    from agent.resources import case_store, embedder_for

    embedder = embedder_for(context)
    return embedder, case_store(context, embedder)


def _build_case_library(
    split: str, limit: int | None, parquet: list[Path], profile: ProfileName, home: Path | None,
    clip_model: str | None,
) -> None:
    from agent.ingest import IMAGE_COLUMNS, TEXT_COLUMNS, ingest_magicbrush, read_parquet_rows, stream_magicbrush
    from agent.resources import clip_for

    context = _index_context(profile, home, clip_model)
    columns = TEXT_COLUMNS if context.profile == "offline" else IMAGE_COLUMNS
    if context.profile == "offline":
        if not parquet:
            raise UsageError(
                "the offline profile reads nothing from the network: pass local MagicBrush files with --parquet FILE, "
                "or add --profile full to stream the dataset from the Hugging Face Hub"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The files are checked, or the Hub reached, before any model loads, so a bad file fails fast.
    if parquet:
        rows = read_parquet_rows(parquet, columns=columns)
    else:
        rows = stream_magicbrush(split, columns=columns)

    embedder, store = _open_case_library(context)
    added = ingest_magicbrush(store, embedder, rows, image_embedder=clip_for(context), limit=limit)
    typer.echo(
        f"Added {added} MagicBrush case{'s' if added != 1 else ''} to the {context.profile} case library "
        f"{store.directory}; it now has {len(store)} cases."
    )


def _print_case_library_stats(profile: ProfileName, home: Path | None, clip_model: str | None, as_json: bool) -> None:
    context = _index_context(profile, home, clip_model)
    if context.profile == "offline":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _, store = _open_case_library(context)
    stats = store.stats()
    if as_json:
        typer.echo(json.dumps({"directory": str(store.directory), **stats}, indent=2))
        return

    typer.echo(f"Case library: {store.directory}")
    typer.echo(f"Embedder: {stats['embedder']} ({stats['dim']} dimensions)")
    if stats.get("image_dim"):
        typer.echo(f"Image embeddings: {stats['with_image']} cases ({stats['image_dim']} dimensions)")
    else:
        typer.echo("Image embeddings: none")
    typer.echo(f"Index: {stats['index_type']}")
    typer.echo(f"Cases: {stats['count']}")
    _print_counts("By edit kind", stats["by_edit_kind"])
    _print_counts("By tool", stats["by_tool"])


def _print_counts(title: str, counts: dict[str, int]) -> None:
    typer.echo(f"{title}:")
    width = max((len(name) for name in counts), default=0)
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        typer.echo(f"  {name:<{width}}  {count:>6}")


def _search_case_library(
    text: str, image: Path | None, k: int, as_json: bool, profile: ProfileName, home: Path | None,
    clip_model: str | None,
) -> None:
    from agent.resources import clip_for
    from tools.image_io import load_image

    context = _index_context(profile, home, clip_model)
    if context.profile == "offline":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if image is not None and context.profile == "offline":
        raise UsageError("image search needs the full profile, whose CLIP model is not available here; drop --image")
    # The image is read before any model loads, so a bad file fails fast.
    photo = load_image(image) if image is not None else None
    embedder, store = _open_case_library(context)

    image_vector = None
    clip = clip_for(context)
    if photo is not None and clip is not None:
        image_vector = clip.embed_images([photo])[0]
    matches = store.search(embedder.embed_texts([text])[0], k, image_vector=image_vector)

    results = [_describe_case_match(rank, match) for rank, match in enumerate(matches, start=1)]
    if as_json:
        typer.echo(json.dumps(results, indent=2, ensure_ascii=False))
        return
    if not results:
        typer.echo(f"No cases in the case library {store.directory}.")
    for result in results:
        image_score = "-" if result["image_score"] is None else f"{result['image_score']:.3f}"
        typer.echo(
            f"{result['rank']:>3}. score {result['score']:.3f} (text {result['text_score']:.3f}, image {image_score})"
            f"  {result['id']}  {result['tool']}  {result['instruction']}"
        )


def _describe_case_match(rank: int, match: Any) -> dict[str, Any]:
    record = match.record
    return {
        "rank": rank,
        "id": record.get("id"),
        "instruction": record.get("instruction"),
        "tool": record.get("tool"),
        "edit_kind": record.get("edit_kind"),
        "source": record.get("source"),
        "params": record.get("params", {}),
        "score": round(match.score, 4),
        "text_score": round(match.text_score, 4),
        "image_score": None if match.image_score is None else round(match.image_score, 4),
        "successes": int(record.get("successes", 0)),
        "failure_count": int(record.get("failure_count", 0)),
    }


