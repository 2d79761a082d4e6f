"""Add MagicBrush edits to a case library.

MagicBrush (`osunlp/MagicBrush` on the Hugging Face Hub) contains manually annotated edit turns with the columns img_id,
turn_index, source_img, mask_img, instruction and target_img. The turns of one editing session share an img_id. Each
turn becomes one instruct_pix2pix case with the id "magicbrush-{img_id}-{turn_index}", so ingesting the same rows
again adds nothing. Rows come from local Parquet files (`read_parquet_rows`) or from the Hub (`stream_magicbrush`).
"""

from __future__ import annotations

import io
import itertools
import logging
import operator
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from agent.edit_kinds import infer_edit_kind
from tools.case_store import CaseStore
from tools.embeddings import Embedder
from tools.image_io import ImageInputError, load_image

# NOTE: tools.image_io has no public decoder for in-memory bytes, so these two helpers are borrowed to give dataset
# images the same EXIF orientation and RGB conversion as files read with load_image.
from tools.image_io import _apply_exif_orientation, _to_rgb

logger = logging.getLogger(__name__)

MAGICBRUSH_DATASET = "osunlp/MagicBrush"
MAGICBRUSH_SPLITS: tuple[str, ...] = ("train", "dev")
MAGICBRUSH_COLUMNS: tuple[str, ...] = ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")
# Columns that a text-only ingestion reads. The full profile also reads source_img.
TEXT_COLUMNS: tuple[str, ...] = ("img_id", "turn_index", "instruction")
IMAGE_COLUMNS: tuple[str, ...] = (*TEXT_COLUMNS, "source_img")

# Cases held in memory between writes to the case library. Every write rewrites the library's files, so writing per
# embedding batch would copy the whole library a few hundred times for MagicBrush's 8,807 training turns.
COMMIT_EVERY = 1024
# Unreadable source images are logged one by one up to this many, then only counted.
MAX_LOGGED_IMAGE_ERRORS = 5
PARQUET_BATCH_ROWS = 64


class IngestError(ValueError):
    """Error raised when a dataset cannot be read, with a one-line message that names the file and the fix."""


def ingest_magicbrush(
    store: CaseStore,
    embedder: Embedder,
    rows: Iterable[dict],
    *,
    image_embedder: Embedder | None = None,
    limit: int | None = None,
    progress: bool = True,
    batch_size: int = 32,
) -> int:
    """Add MagicBrush rows to store as instruct_pix2pix cases and return how many cases were added.

    Args:
        store: the case library. Rows whose case id it already contains are skipped.
        embedder: embeds the instructions, in batches of batch_size.
        rows: dicts with img_id, turn_index and instruction, and source_img when image_embedder is given (raw image
            bytes, a Hugging Face Image struct {"bytes", "path"} or a PIL image).
        image_embedder: embeds the decoded source images (the full profile's CLIP); None stores no image embeddings.
            A source image that cannot be decoded gets an all-zero row, which the store reads as "no image".
        limit: read at most this many rows, counting the skipped ones; None reads all.
        progress: show a progress bar with rows per second on stderr.
        batch_size: rows embedded together.

    Raises:
        ValueError: limit or batch_size is not positive, or image_embedder embeds only texts.
        IngestError: the rows cannot be read (raised by the row iterator).
        CaseStoreError: the case library cannot be written.
    """
    _check_options(limit, batch_size, image_embedder)
    selected = rows if limit is None else itertools.islice(rows, limit)
    run = _IngestRun(store, embedder, image_embedder)

    with tqdm(
        total=_expected_rows(rows, limit), desc="MagicBrush", unit="row", disable=not progress, file=sys.stderr
    ) as bar:
        try:
            _ingest_rows(run, selected, batch_size, bar)
        except IngestError:
            # The cases embedded before a damaged row group or a dropped connection are valid, so they are written.
            run.commit()
            raise

    run.log_summary()
    return run.added


def _ingest_rows(run: _IngestRun, rows: Iterable[dict], batch_size: int, bar: tqdm) -> None:
    batch: list[tuple[dict, Any]] = []
    for row in rows:
        bar.update(1)
        case = run.new_case(row)
        if case is None:
            continue
        batch.append((case, row.get("source_img")))
        if len(batch) == batch_size:
            run.embed(batch)
            batch = []
            # Pending rows are embedded but reach the library only at the next commit.
            bar.set_postfix(embedded=run.added + len(run.pending_records), saved=run.added, refresh=False)
    if batch:
        run.embed(batch)
    run.commit()


def _check_options(limit: int | None, batch_size: int, image_embedder: Embedder | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"invalid limit {limit}: pass a positive number of rows, or None for all")
    if batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size}: pass a positive number of rows")
    if image_embedder is not None and not image_embedder.supports_images:
        raise ValueError(
            f"invalid image_embedder {image_embedder.id}: it embeds only texts; pass a CLIP embedder or None"
        )


def _expected_rows(rows: Iterable[dict], limit: int | None) -> int | None:
    known = operator.length_hint(rows, 0) or None
    if known is None:
        return limit
    return known if limit is None else min(known, limit)


@dataclass
class _IngestRun:
    """Cases embedded but not yet written, and the counts of one ingestion."""

    store: CaseStore
    embedder: Embedder
    image_embedder: Embedder | None
    added: int = 0
    counts: Counter = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)
    pending_records: list[dict] = field(default_factory=list)
    pending_vectors: list[np.ndarray] = field(default_factory=list)
    pending_image_vectors: list[np.ndarray] = field(default_factory=list)

    def new_case(self, row: dict) -> dict | None:
        """Return the case of a row, or None when the row is invalid or its case is already stored."""
        case = case_from_row(row)
        if case is None:
            self.counts["invalid"] += 1
            return None
        if case["id"] in self.seen or self.store.get(case["id"]) is not None:
            self.counts["existing"] += 1
            return None
        self.seen.add(case["id"])
        return case

    def embed(self, batch: list[tuple[dict, Any]]) -> None:
        """Embed a batch of cases, and write the pending cases once COMMIT_EVERY of them are waiting."""
        records = [case for case, _ in batch]
        self.pending_records.extend(records)
        self.pending_vectors.append(self.embedder.embed_texts([case["instruction"] for case in records]))
        if self.image_embedder is not None:
            self.pending_image_vectors.append(self._embed_images(self.image_embedder, batch))
        if len(self.pending_records) >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        """Add the pending cases to the store, which writes them to disk."""
        if not self.pending_records:
            return
        vectors = np.concatenate(self.pending_vectors)
        if self.image_embedder is None:
            self.store.add(self.pending_records, vectors)
        else:
            self.store.add(self.pending_records, vectors, np.concatenate(self.pending_image_vectors))

        self.added += len(self.pending_records)
        self.pending_records = []
        self.pending_vectors = []
        self.pending_image_vectors = []

    def _embed_images(self, image_embedder: Embedder, batch: list[tuple[dict, Any]]) -> np.ndarray:
        matrix = np.zeros((len(batch), image_embedder.dim), dtype=np.float32)
        images: list[Image.Image] = []
        rows_with_image: list[int] = []
        for position, (case, value) in enumerate(batch):
            image = self._decode_or_log(case["id"], value)
            if image is not None:
                images.append(image)
                rows_with_image.append(position)
        if images:
            matrix[rows_with_image] = image_embedder.embed_images(images)
        return matrix

    def _decode_or_log(self, case_id: str, value: Any) -> Image.Image | None:
        try:
            return decode_image(value, f"source_img of {case_id}")
        except (IngestError, ImageInputError) as error:
            self.counts["unreadable_image"] += 1
            if self.counts["unreadable_image"] <= MAX_LOGGED_IMAGE_ERRORS:
                logger.warning("storing case %s without an image embedding: %s", case_id, error)
            return None

    def log_summary(self) -> None:
        logger.info(
            "MagicBrush: added %d cases; skipped %d rows already in the library or repeated and %d invalid rows",
            self.added, self.counts["existing"], self.counts["invalid"],
        )
        if self.counts["invalid"]:
            logger.warning(
                "skipped %d MagicBrush rows without an img_id, an integer turn_index or an instruction",
                self.counts["invalid"],
            )
        if self.counts["unreadable_image"] > MAX_LOGGED_IMAGE_ERRORS:
            logger.warning(
                "%d MagicBrush cases were stored without an image embedding because their source_img could not "
                "be decoded", self.counts["unreadable_image"],
            )


def case_from_row(row: dict) -> dict | None:
    """Build the case record of a MagicBrush row, or return None when img_id, turn_index or instruction is unusable."""
    img_id = row.get("img_id")
    turn = row.get("turn_index")
    instruction = row.get("instruction")
    if img_id is None or str(img_id).strip() == "" or not isinstance(instruction, str) or not instruction.strip():
        return None
    if isinstance(turn, bool) or not isinstance(turn, (int, np.integer)):
        return None

    text = " ".join(instruction.split())
    return {
        "id": f"magicbrush-{str(img_id).strip()}-{int(turn)}",
        "instruction": text,
        "tool": "instruct_pix2pix",
        "params": {},
        "edit_kind": infer_edit_kind(text),
        "source": "magicbrush",
        "img_id": str(img_id).strip(),
        "turn_index": int(turn),
    }


def decode_image(value: Any, label: str) -> Image.Image:
    """Decode an image column value into an upright RGB image.

    value is raw encoded bytes, a Hugging Face Image struct {"bytes": ..., "path": ...} (the path is read only when
    bytes is empty), or a PIL image, which is what the datasets library yields.

    Raises:
        IngestError: the value is empty, of another type, or not a decodable image.
        ImageInputError: a struct's path names an image file that cannot be read.
    """
    if isinstance(value, Image.Image):
        return _decode_pil(value, label)

    data = value
    if isinstance(value, dict):
        data = value.get("bytes")
        path = value.get("path")
        if not data and path and Path(path).is_file():
            return load_image(path)
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes) or not data:
        raise IngestError(
            f"invalid {label}: expected encoded image bytes or a {{'bytes', 'path'}} struct, got "
            f"{_describe_value(value)}"
        )

    try:
        opened = Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise IngestError(f"cannot decode {label}: {_first_line(error)}") from None
    with opened:
        return _decode_pil(opened, label)


def _decode_pil(image: Image.Image, label: str) -> Image.Image:
    try:
        image.load()
        upright = _apply_exif_orientation(image, label)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise IngestError(f"cannot decode {label}: {_first_line(error)}") from None
    return _to_rgb(upright, label)


def _describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return f"a struct with keys {sorted(value)} and no image bytes"
    if value is None or (isinstance(value, (bytes, bytearray)) and not value):
        return "an empty value"
    return type(value).__name__


# --- reading rows -------------------------------------------------------------------------------------------------


def read_parquet_rows(
    paths: Iterable[str | os.PathLike[str]],
    *,
    columns: Sequence[str] = MAGICBRUSH_COLUMNS,
    batch_rows: int = PARQUET_BATCH_ROWS,
) -> Iterator[dict]:
    """Read MagicBrush rows from local Parquet files, batch_rows rows at a time, in file order.

    A folder means the *.parquet files directly inside it. Every file is checked before the first row is
    returned: it must be readable Parquet with all of MAGICBRUSH_COLUMNS. columns selects the columns read into each
    row, so a text-only ingestion does not load the images. The returned iterator reports the total number of rows as
    its length hint.

    Raises:
        IngestError: a path is missing or unreadable, a file lacks MagicBrush columns, or columns names an unknown
            column. Reading a damaged row group later raises IngestError as well.
    """
    unknown = [name for name in columns if name not in MAGICBRUSH_COLUMNS]
    if unknown:
        raise IngestError(
            f"invalid columns {', '.join(unknown)}: MagicBrush has {', '.join(MAGICBRUSH_COLUMNS)}"
        )
    files = [file for path in paths for file in _expand_parquet_path(Path(path))]
    if not files:
        raise IngestError("no Parquet files given: pass one or more MagicBrush .parquet files")
    total = sum(_check_parquet_file(file) for file in files)
    return _RowStream(_iterate_parquet(files, list(columns), batch_rows), total)


def _expand_parquet_path(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise IngestError(f"cannot read {path}: the folder has no .parquet files; pass MagicBrush Parquet files")
        return files
    if not path.exists():
        raise IngestError(f"cannot read {path}: file not found; pass a MagicBrush Parquet file")
    return [path]


def _check_parquet_file(path: Path) -> int:
    """Check that path is a MagicBrush Parquet file and return its number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        names = metadata.schema.to_arrow_schema().names
    except (pa.ArrowException, OSError) as error:
        raise IngestError(
            f"cannot read {path}: not a readable Parquet file ({_first_line(error)}); pass a MagicBrush Parquet file"
        ) from None

    missing = [name for name in MAGICBRUSH_COLUMNS if name not in names]
    if missing:
        raise IngestError(
            f"invalid MagicBrush file {path}: missing columns {', '.join(missing)} "
            f"(expected {', '.join(MAGICBRUSH_COLUMNS)})"
        )
    return metadata.num_rows


def _iterate_parquet(files: list[Path], columns: list[str], batch_rows: int) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            with pq.ParquetFile(path) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                    yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as error:
            raise IngestError(
                f"cannot read {path}: {_first_line(error)}; the file may be damaged, so download it again"
            ) from None


def stream_magicbrush(split: str = "train", *, columns: Sequence[str] = MAGICBRUSH_COLUMNS) -> Iterator[dict]:
    """Stream MagicBrush rows of a split ("train" or "dev") from the Hugging Face Hub with the datasets library.

    Images arrive as PIL images. The iterator reports the split's number of rows, when the Hub lists it, as its
    length hint.

    Raises:
        IngestError: the split is unknown, the datasets package is missing, or the Hub cannot be reached (also while
            rows are streamed). The message names local Parquet files passed with --parquet as the alternative.
    """
    if split not in MAGICBRUSH_SPLITS:
        raise IngestError(f"invalid MagicBrush split {split!r}: use one of {', '.join(MAGICBRUSH_SPLITS)}")
    try:
        import datasets
    except ImportError:
        raise IngestError(
            f"cannot stream {MAGICBRUSH_DATASET}: the datasets package is missing; run pip install datasets, or "
            f"pass the dataset's Parquet files with --parquet FILE"
        ) from None

    try:
        dataset = datasets.load_dataset(MAGICBRUSH_DATASET, split=split, streaming=True)
        dataset = dataset.select_columns(list(columns))
    except Exception as error:  # noqa: BLE001 - hub, network and cache failures come as many exception types
        raise IngestError(_hub_message(split, error)) from None
    return _RowStream(_guard_stream(dataset, split), _split_size(dataset, split))


def _guard_stream(dataset: Iterable[dict], split: str) -> Iterator[dict]:
    try:
        yield from dataset
    except Exception as error:  # noqa: BLE001 - a dropped connection surfaces as any of several library errors
        raise IngestError(_hub_message(split, error)) from None


def _split_size(dataset: Any, split: str) -> int:
    splits = getattr(getattr(dataset, "info", None), "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return int(getattr(info, "num_examples", 0) or 0)


def _hub_message(split: str, error: BaseException) -> str:
    return (
        f"cannot stream {MAGICBRUSH_DATASET} ({split}) from the Hugging Face Hub: {_first_line(error)}; download "
        f"the dataset's Parquet files where the Hub is reachable and pass them with --parquet FILE"
    )


class _RowStream(Iterator[dict]):
    """Rows from an iterator, with the expected number of rows as the length hint for progress bars."""

    def __init__(self, rows: Iterator[dict], total: int) -> None:
        self._rows = rows
        self._total = total

    def __next__(self) -> dict:
        return next(self._rows)

    def __length_hint__(self) -> int:
        return self._total


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
