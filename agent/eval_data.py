"""Read MagicBrush editing sessions for evaluation, from either of the two layouts MagicBrush is published in.

1. Parquet, as in `osunlp/MagicBrush` on the Hugging Face Hub: one row per turn with img_id, turn_index (1-based),
   source_img, mask_img, instruction and target_img. Image columns are Hugging Face Image structs {"bytes", "path"}.
   This layout has no captions.
2. The test-set folder: DATASET/edit_sessions.json maps each img_id to its list of turns
   [{"input", "mask", "output", "instruction"}, ...], and the images are DATASET/images/<img_id>/<image name>.
   Optional caption files next to edit_sessions.json give the captions that CLIP-T and directional CLIP need.

Images stay encoded until a turn's load_source or load_target is called, so a dataset of hundreds of sessions takes
little memory. Every structural problem is found by load_eval_dataset; only a damaged image is found later.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from agent.ingest import TEXT_COLUMNS, IngestError, decode_image, read_parquet_rows
from tools.image_io import ImageInputError, load_image

logger = logging.getLogger(__name__)

EDIT_SESSIONS_FILE = "edit_sessions.json"
IMAGES_FOLDER = "images"
# NOTE: the exact contents of MagicBrush's caption files could not be checked here. Its evaluation README passes
# local_captions.json, and its script reads captions as {img_id: {image_name: caption}}, so both local file names,
# the global file, and both the nested and the flat {image_name: caption} shape are accepted.
LOCAL_CAPTION_FILES: tuple[str, ...] = ("local_descriptions.json", "local_captions.json")
GLOBAL_CAPTION_FILES: tuple[str, ...] = ("global_descriptions.json",)

_IMAGE_COLUMNS: tuple[str, ...] = ("source_img", "target_img")
_FORMATS_HINT = (
    "pass MagicBrush Parquet files (a .parquet file or a folder of them) or a MagicBrush test-set folder that "
    "contains edit_sessions.json"
)


class EvalDataError(ValueError):
    """Error raised when an evaluation dataset cannot be read, with a one-line message that names the file and fix."""


@dataclass(frozen=True)
class _StoredImage:
    """Encoded image of a turn, decoded only on request."""

    data: bytes | Path
    """Encoded image bytes from a Parquet row, or the path of an image file."""
    location: str
    """File named in error messages, e.g. "dev.parquet (source_img)"."""

    def load(self, description: str) -> Image.Image:
        try:
            if isinstance(self.data, Path):
                return load_image(self.data)
            return decode_image(self.data, self.location)
        except ImageInputError as error:
            reason = _first_line(error)
        except IngestError:
            # decode_image's message repeats the location and shows the in-memory buffer, so it is replaced.
            reason = "the stored bytes are not a readable image"
        raise EvalDataError(
            f"cannot load the {description} from {self.location}: {reason}; replace the image or remove the "
            f"session from the dataset"
        )


@dataclass(frozen=True)
class EvalTurn:
    """One turn of an editing session with its instruction, captions and ground-truth images."""

    session_id: str
    """MagicBrush img_id of the session."""
    turn: int
    """1-based position in the session."""
    instruction: str
    """Edit instruction of this turn."""
    source_caption: str | None
    """Caption of the turn's input image, or None when the dataset has none."""
    target_caption: str | None
    """Caption of the turn's ground-truth output image, or None when the dataset has none."""
    # Images are left out of equality, so the same turn read from either layout compares equal.
    _source: _StoredImage = field(repr=False, compare=False, kw_only=True)
    _target: _StoredImage = field(repr=False, compare=False, kw_only=True)

    def load_source(self) -> Image.Image:
        """Decode the turn's ground-truth input image as an upright RGB image, on every call.

        Raises:
            EvalDataError: the image is damaged or its file was removed. The message names the session, turn and file.
        """
        return self._source.load(f"source image of session {self.session_id} turn {self.turn}")

    def load_target(self) -> Image.Image:
        """Decode the turn's ground-truth output image as an upright RGB image, on every call.

        Raises:
            EvalDataError: the image is damaged or its file was removed. The message names the session, turn and file.
        """
        return self._target.load(f"target image of session {self.session_id} turn {self.turn}")


@dataclass(frozen=True)
class EvalSession:
    """Editing session: the turns applied one after another to the same picture."""

    session_id: str
    """MagicBrush img_id of the session."""
    turns: tuple[EvalTurn, ...]
    """Turns sorted by turn number, starting at 1."""


def load_eval_dataset(
    path: str | os.PathLike[str], *, limit: int | None = None, split: str | None = None
) -> list[EvalSession]:
    """Read a MagicBrush dataset and return its sessions, checked and with the images left encoded.

    Args:
        path: a MagicBrush Parquet file, a folder of them, a test-set folder that contains edit_sessions.json, that
            folder's images/ subfolder, or the edit_sessions.json file itself.
        limit: keep only the first `limit` sessions; None keeps all. Sessions come in the file's order for
            edit_sessions.json and in order of first appearance for Parquet.
        split: for a folder of Parquet files of several splits (train-*.parquet, dev-*.parquet), the split to read.

    Raises:
        EvalDataError: limit is below 1, the path is missing or in neither layout, or a file is not valid JSON or
            Parquet. Also raised when a session's turns are not numbered 1..n, an image file or image value is
            missing, an instruction is empty, or the dataset has no sessions.
    """
    _check_limit(limit)
    dataset = Path(path).expanduser()
    if not dataset.exists():
        raise EvalDataError(f"cannot read the evaluation dataset {dataset}: path not found; {_FORMATS_HINT}")

    layout = _find_test_set(dataset)
    if layout is not None:
        sessions_file, images_dir = layout
        return _load_test_set(sessions_file, images_dir, limit)

    parquet_files = _find_parquet_files(dataset, split)
    if parquet_files:
        return _load_parquet(parquet_files, limit)
    raise EvalDataError(f"cannot read the evaluation dataset {dataset}: it is in neither MagicBrush layout; "
                        f"{_FORMATS_HINT}")


def _check_limit(limit: int | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise EvalDataError(f"invalid limit {limit!r}: pass a whole number of sessions of at least 1, or no limit")


def _find_test_set(path: Path) -> tuple[Path, Path] | None:
    """Return edit_sessions.json and the images folder when path is in the test-set layout, else None."""
    if path.is_file():
        return (path, path.parent / IMAGES_FOLDER) if path.suffix.lower() == ".json" else None
    if (path / EDIT_SESSIONS_FILE).is_file():
        return path / EDIT_SESSIONS_FILE, path / IMAGES_FOLDER
    # MagicBrush's evaluation script is given the images folder, with edit_sessions.json one level up.
    if (path.parent / EDIT_SESSIONS_FILE).is_file() and not any(path.glob("*.parquet")):
        return path.parent / EDIT_SESSIONS_FILE, path
    return None


def _find_parquet_files(path: Path, split: str | None) -> list[Path]:
    """Return the Parquet files of path, of one split when the folder contains several (train-*.parquet, dev-*.parquet)."""
    if path.is_file():
        return [path] if path.suffix.lower() == ".parquet" else []
    files = sorted(path.glob("*.parquet"))
    if not files and (path / "data").is_dir():
        # A snapshot of the Hugging Face dataset repository keeps its Parquet files in data/.
        files = sorted((path / "data").glob("*.parquet"))
    splits = sorted({_split_of(file) for file in files} - {""})
    if split is not None:
        chosen = [file for file in files if _split_of(file) == split]
        if files and not chosen:
            raise EvalDataError(f"invalid split {split!r}: {path} has Parquet files of {', '.join(splits)}; "
                                f"pass one of them")
        return chosen
    if len(splits) > 1:
        raise EvalDataError(f"{path} contains Parquet files of several splits ({', '.join(splits)}); pass --split with one "
                            f"of them, or the path of one split's files")
    return files


def _split_of(file: Path) -> str:
    """Return the split of a file that Hugging Face named SPLIT-00000-of-00001.parquet, else ""."""
    match = re.fullmatch(r"(\w+)-\d+-of-\d+\.parquet", file.name)
    return match.group(1) if match else ""


# --- test-set folder ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Captions:
    """Captions by image name from the local and the global caption files."""

    local: dict[str, str]
    global_: dict[str, str]

    def target(self, image_name: str) -> str | None:
        return self.local.get(image_name) or self.global_.get(image_name)

    def source(self, image_name: str) -> str | None:
        return self.global_.get(image_name) or self.local.get(image_name)


def _load_test_set(sessions_file: Path, images_dir: Path, limit: int | None) -> list[EvalSession]:
    raw = _read_json(sessions_file)
    if not isinstance(raw, dict):
        raise EvalDataError(
            f"invalid {sessions_file}: expected an object that maps each img_id to its list of turns, got "
            f"{_json_type(raw)}; pass MagicBrush's edit_sessions.json"
        )
    if not raw:
        raise EvalDataError(f"empty evaluation dataset {sessions_file}: it contains no sessions; add sessions to it")

    captions = _read_captions(sessions_file.parent)
    entries = list(raw.items())[:limit]
    sessions = [
        _build_test_set_session(str(session_id), turns, sessions_file, images_dir, captions)
        for session_id, turns in entries
    ]
    _log_missing_captions(sessions, sessions_file, captions)
    return sessions


def _build_test_set_session(
    session_id: str, turns: Any, sessions_file: Path, images_dir: Path, captions: _Captions
) -> EvalSession:
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if isinstance(turns, list) else _json_type(turns)
        raise EvalDataError(
            f"invalid session {session_id} in {sessions_file}: expected a non-empty list of turns, got "
            f"{got}; give each session its turns as [{{\"input\", \"output\", \"instruction\"}}, ...]"
        )

    built = []
    for number, entry in enumerate(_chain_order(session_id, turns, sessions_file), start=1):
        where = f"turn {number} of session {session_id} in {sessions_file}"
        if not isinstance(entry, dict):
            raise EvalDataError(
                f"invalid {where}: expected an object with input, output and instruction, got {_json_type(entry)}; "
                f"fix the entry"
            )
        input_name = _image_name(entry, "input", where)
        output_name = _image_name(entry, "output", where)
        built.append(EvalTurn(
            session_id=session_id,
            turn=number,
            instruction=_instruction(entry.get("instruction"), where),
            source_caption=captions.source(input_name),
            target_caption=captions.target(output_name),
            _source=_image_file(images_dir, input_name, where),
            _target=_image_file(images_dir, output_name, where),
        ))
    return EvalSession(session_id=session_id, turns=tuple(built))


def _chain_order(session_id: str, turns: list, sessions_file: Path) -> list:
    """Return the turns in edit order: each turn's input is the previous turn's output.

    The file's order is kept when it is a chain. Otherwise the turns are sorted by following the links from the turn
    whose input no other turn outputs, and a session whose links do not form one chain is rejected.
    """
    if not all(isinstance(entry, dict) for entry in turns):
        return turns
    inputs = [entry.get("input") for entry in turns]
    outputs = [entry.get("output") for entry in turns]
    if all(inputs[index] == outputs[index - 1] for index in range(1, len(turns))):
        return turns

    by_input = {name: entry for name, entry in zip(inputs, turns)}
    starts = [entry for entry in turns if entry.get("input") not in outputs]
    ordered = []
    current = starts[0] if len(starts) == 1 and len(by_input) == len(turns) else None
    while current is not None and len(ordered) < len(turns):
        ordered.append(current)
        current = by_input.get(current.get("output"))
    if len(ordered) != len(turns):
        raise EvalDataError(
            f"invalid session {session_id} in {sessions_file}: its turns do not form one chain in which each "
            f"turn's input is the previous turn's output; fix the input and output names"
        )
    logger.info("session %s in %s lists its turns out of order; they are sorted by their input and output names",
                session_id, sessions_file)
    return ordered


def _image_name(entry: dict, key: str, where: str) -> str:
    name = entry.get(key)
    if not isinstance(name, str) or not name.strip():
        raise EvalDataError(f"invalid {where}: the {key!r} image name is missing or empty; name the image file")
    # A name is looked up inside images/<img_id>/, so a path in it would read files outside the dataset.
    if Path(name).name != name or name in (".", ".."):
        raise EvalDataError(
            f"invalid {key} image name {name!r} in {where}: expected a file name such as 139306-input.png, not a path"
        )
    return name


def _image_file(images_dir: Path, name: str, where: str) -> _StoredImage:
    # MagicBrush keeps <img_id>-input.png, <img_id>-output1.png, ... in images/<img_id>/.
    path = images_dir / name.split("-", 1)[0] / name
    if not path.is_file():
        raise EvalDataError(
            f"missing image {path} named by {where}; restore the file or remove the session from "
            f"{EDIT_SESSIONS_FILE}"
        )
    return _StoredImage(path, str(path))


def _read_captions(folder: Path) -> _Captions:
    local_files = [folder / name for name in LOCAL_CAPTION_FILES if (folder / name).is_file()]
    global_files = [folder / name for name in GLOBAL_CAPTION_FILES if (folder / name).is_file()]
    if not local_files and not global_files:
        logger.warning(
            "no caption files (%s) in %s; CLIP-T and directional CLIP are not computed",
            ", ".join(LOCAL_CAPTION_FILES + GLOBAL_CAPTION_FILES), folder,
        )
    else:
        logger.info("reading captions from %s", ", ".join(file.name for file in local_files + global_files))
    return _Captions(local=_merge_caption_files(local_files), global_=_merge_caption_files(global_files))


def _merge_caption_files(files: Sequence[Path]) -> dict[str, str]:
    """Merge caption files into captions by image name. A file earlier in files wins over a later one."""
    merged: dict[str, str] = {}
    for file in reversed(files):
        merged.update(_read_caption_file(file))
    return merged


def _read_caption_file(path: Path) -> dict[str, str]:
    raw = _read_json(path)
    shape_hint = "use {img_id: {image_name: caption}} or {image_name: caption}"
    if not isinstance(raw, dict):
        raise EvalDataError(f"invalid caption file {path}: expected an object, got {_json_type(raw)}; {shape_hint}")

    captions: dict[str, str] = {}
    for key, value in raw.items():
        # Image names start with their img_id, so flattening the nested shape cannot mix up two sessions.
        pairs = value.items() if isinstance(value, dict) else [(key, value)]
        for image_name, caption in pairs:
            if not isinstance(caption, str):
                raise EvalDataError(
                    f"invalid caption of {image_name!r} in {path}: expected a string, got {_json_type(caption)}; "
                    f"{shape_hint}"
                )
            if caption.strip():
                captions[str(image_name)] = caption
    return captions


def _log_missing_captions(sessions: list[EvalSession], sessions_file: Path, captions: _Captions) -> None:
    if not captions.local and not captions.global_:
        return
    turns = [turn for session in sessions for turn in session.turns]
    missing = sum(1 for turn in turns if turn.source_caption is None or turn.target_caption is None)
    if missing:
        logger.warning(
            "%d of %d turns from %s lack a source or target caption; their CLIP-T or directional CLIP is not computed",
            missing, len(turns), sessions_file,
        )


def _read_json(path: Path) -> Any:
    try:
        # utf-8-sig also reads files that an editor saved with a byte order mark.
        return json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as error:
        raise EvalDataError(
            f"invalid JSON in {path}: {error.msg} at line {error.lineno} column {error.colno}; fix or replace the file"
        ) from None
    except _DuplicateKeyError as error:
        raise EvalDataError(f"invalid JSON in {path}: the key {error.key!r} appears twice; keep one of them") from None
    except RecursionError:
        raise EvalDataError(f"invalid JSON in {path}: it is nested too deeply to read; fix or replace the file") \
            from None
    except (OSError, UnicodeDecodeError) as error:
        raise EvalDataError(f"cannot read {path}: {_first_line(error)}; check that the file is readable UTF-8 JSON") \
            from None


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys, which would drop a session or a caption without a word.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


# --- Parquet --------------------------------------------------------------------------------------------------------


@dataclass
class _ParquetTurn:
    """Text columns of one kept Parquet row, and its images once the second pass has read them."""

    file: Path
    row: int
    turn: int
    instruction: str
    source: _StoredImage | None = None
    target: _StoredImage | None = None


def _load_parquet(files: list[Path], limit: int | None) -> list[EvalSession]:
    # The first pass reads only the text columns, so images are read just for the kept sessions.
    rows_by_session = _read_parquet_text(files, limit)
    if not rows_by_session:
        names = ", ".join(str(file) for file in files)
        raise EvalDataError(f"empty evaluation dataset {names}: the Parquet files contain no rows; {_FORMATS_HINT}")

    for session_id, rows in rows_by_session.items():
        _check_turn_numbers(session_id, rows)
    _read_parquet_images(rows_by_session)
    logger.info("MagicBrush Parquet has no captions, so CLIP-T and directional CLIP are not computed")
    return [_build_parquet_session(session_id, rows) for session_id, rows in rows_by_session.items()]


def _read_parquet_text(files: list[Path], limit: int | None) -> dict[str, list[_ParquetTurn]]:
    rows_by_session: dict[str, list[_ParquetTurn]] = {}
    for file in files:
        for index, row in enumerate(_read_rows(file, TEXT_COLUMNS)):
            session_id = _parquet_session_id(row.get("img_id"), file, index)
            if session_id not in rows_by_session:
                if limit is not None and len(rows_by_session) >= limit:
                    continue
                rows_by_session[session_id] = []
            where = f"row {index} (session {session_id}) of {file}"
            rows_by_session[session_id].append(_ParquetTurn(
                file=file,
                row=index,
                turn=_parquet_turn_index(row.get("turn_index"), where),
                instruction=_instruction(row.get("instruction"), where),
            ))
    return rows_by_session


def _read_parquet_images(rows_by_session: dict[str, list[_ParquetTurn]]) -> None:
    """Attach the encoded source and target images to each kept row, reading each file only as far as needed."""
    kept_rows_by_file: dict[Path, dict[int, tuple[str, _ParquetTurn]]] = {}
    for session_id, rows in rows_by_session.items():
        for row in rows:
            kept_rows_by_file.setdefault(row.file, {})[row.row] = (session_id, row)

    for file, rows_by_index in kept_rows_by_file.items():
        remaining = len(rows_by_index)
        for index, values in enumerate(_read_rows(file, _IMAGE_COLUMNS)):
            if index not in rows_by_index:
                continue
            session_id, row = rows_by_index[index]
            where = f"session {session_id} turn {row.turn} (row {index}) of {file}"
            row.source = _parquet_image(values.get("source_img"), file, "source_img", where)
            row.target = _parquet_image(values.get("target_img"), file, "target_img", where)
            remaining -= 1
            if remaining == 0:
                break


def _build_parquet_session(session_id: str, rows: list[_ParquetTurn]) -> EvalSession:
    turns = []
    for row in sorted(rows, key=lambda item: item.turn):
        if row.source is None or row.target is None:
            raise EvalDataError(
                f"cannot read row {row.row} of {row.file}: the file ended before that row; download it again"
            )
        turns.append(EvalTurn(
            session_id=session_id,
            turn=row.turn,
            instruction=row.instruction,
            source_caption=None,
            target_caption=None,
            _source=row.source,
            _target=row.target,
        ))
    return EvalSession(session_id=session_id, turns=tuple(turns))


def _read_rows(file: Path, columns: Sequence[str]) -> Iterator[dict]:
    try:
        yield from read_parquet_rows([file], columns=columns)
    except IngestError as error:
        raise EvalDataError(str(error)) from None


def _parquet_session_id(value: Any, file: Path, index: int) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise EvalDataError(f"invalid row {index} of {file}: img_id is empty; give every row its session's img_id")
    return str(value)


def _parquet_turn_index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EvalDataError(f"invalid turn_index {value!r} in {where}: expected a whole number starting at 1")
    return value


def _check_turn_numbers(session_id: str, rows: list[_ParquetTurn]) -> None:
    numbers = sorted(row.turn for row in rows)
    if numbers == list(range(1, len(numbers) + 1)):
        return

    duplicates = sorted(number for number, count in Counter(numbers).items() if count > 1)
    problem = f"turn_index {duplicates[0]} appears more than once" if duplicates else "turn_index has gaps"
    files = ", ".join(sorted({str(row.file) for row in rows}))
    raise EvalDataError(
        f"invalid session {session_id} in {files}: {problem} (found {numbers}, expected 1..{len(numbers)}); fix "
        f"the session's rows or remove them"
    )


def _parquet_image(value: Any, file: Path, column: str, where: str) -> _StoredImage:
    data = value.get("bytes") if isinstance(value, dict) else value
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if isinstance(data, bytes) and data:
        return _StoredImage(data, f"{file} ({column})")

    # A Hugging Face Image struct may carry a file path instead of bytes, and decode_image reads such a path too.
    path = value.get("path") if isinstance(value, dict) else None
    if isinstance(path, str) and path and Path(path).is_file():
        return _StoredImage(Path(path), path)
    raise EvalDataError(
        f"missing {column} image in {where}: the value has no image bytes; download the dataset's Parquet files again"
    )


# --- shared checks --------------------------------------------------------------------------------------------------


def _instruction(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise EvalDataError(
            f"invalid {where}: the instruction is {_json_type(value)}, not text; give every turn an edit instruction"
        )
    if not value.strip():
        raise EvalDataError(f"invalid {where}: the instruction is empty; give every turn an edit instruction")
    return value.strip()


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
