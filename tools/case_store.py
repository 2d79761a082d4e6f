"""Case library: past edits stored as FAISS vectors plus JSON records, one folder on disk.

A case library folder contains three files:

- ``index.faiss``: a raw FAISS index written with ``faiss.write_index``. Vectors are L2-normalised
  float32, and the index uses the inner product metric, so a score is the cosine similarity.
- ``cases.jsonl``: one JSON record per line, in the same order as the vectors in the index.
- ``manifest.json``: ``{"format_version", "embedder", "dim", "index_type", "count"}``.

Every write goes to a temporary file in the same folder followed by ``os.replace``, with the
manifest written last. A crash in the middle of ``add`` leaves an index and a record file whose
counts disagree, which ``CaseStore.open`` detects and reports.
"""

from __future__ import annotations

import copy
import json
import logging
import numbers
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
CASES_FILE = "cases.jsonl"
MANIFEST_FILE = "manifest.json"

# Flat search is exact and fast enough below this many cases. Above it, HNSW keeps search time low.
HNSW_THRESHOLD = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64

# Rows with a smaller L2 norm have no direction to normalise.
MIN_VECTOR_NORM = 1e-12


class CaseStoreError(ValueError):
    """Invalid input to a case library, or a case library folder that cannot be read."""


class EmbedderMismatchError(CaseStoreError):
    """Case library built with another embedder id or vector dimension than the current run."""


class CaseStore:
    """Case records with their embeddings, searchable by cosine similarity.

    All public methods hold one lock, so threads in one process may add and search concurrently.
    Separate processes must not write to the same folder at the same time.
    """

    directory: Path
    embedder_id: str
    dim: int

    def __init__(
        self,
        directory: Path,
        embedder_id: str,
        dim: int,
        index: faiss.Index,
        records: list[dict],
    ) -> None:
        """Wrap an index and its matching records. Callers use create or open instead."""
        self.directory = directory
        self.embedder_id = embedder_id
        self.dim = dim
        self._index = index
        self._records = records
        self._positions = {record["id"]: position for position, record in enumerate(records)}
        self._lock = threading.RLock()

    # Construction

    @classmethod
    def create(cls, directory: str | os.PathLike[str], embedder_id: str, dim: int) -> CaseStore:
        """Create an empty case library in directory and write it to disk.

        Raises CaseStoreError when directory already contains a case library.
        """
        path = Path(directory)
        _validate_embedder(embedder_id, dim)
        if cls.exists(path):
            raise CaseStoreError(
                f"cannot create case library {path}: one already exists there; "
                f"open it with CaseStore.open or delete {path} to rebuild it"
            )

        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, embedder_id, dim, _new_index("flat", dim), [])
        store._write_all()
        logger.info("created case library %s (embedder %r, dim %d)", path, embedder_id, dim)
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike[str], embedder_id: str, dim: int) -> CaseStore:
        """Open the case library in directory, checking it against the current embedder.

        Raises EmbedderMismatchError when the library was built with another embedder id or
        dimension, and CaseStoreError when a file is missing or corrupt or when the index, the
        records and the manifest disagree on the number of cases.
        """
        path = Path(directory)
        _validate_embedder(embedder_id, dim)

        manifest = _read_manifest(path)
        if manifest["embedder"] != embedder_id or manifest["dim"] != dim:
            raise EmbedderMismatchError(
                f"case library {path} was built with embedder {manifest['embedder']!r} "
                f"(dim {manifest['dim']}), but this run uses {embedder_id!r} (dim {dim}); "
                f"use another --home or delete {path} to rebuild it"
            )

        index = _read_index(path, dim, manifest["index_type"])
        records = _read_records(path)
        _check_counts(path, index.ntotal, len(records), manifest["count"])

        logger.info(
            "opened case library %s: %d cases, %s index", path, len(records), manifest["index_type"]
        )
        return cls(path, embedder_id, dim, index, records)

    @classmethod
    def exists(cls, directory: str | os.PathLike[str]) -> bool:
        """Return whether directory contains a case library manifest."""
        return (Path(directory) / MANIFEST_FILE).is_file()

    # Reading

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def index_type(self) -> str:
        """Kind of FAISS index in use: "flat" or "hnsw"."""
        with self._lock:
            return _index_type_of(self._index)

    @property
    def records(self) -> list[dict]:
        """Copies of all case records, in index order."""
        with self._lock:
            return copy.deepcopy(self._records)

    def get(self, case_id: str) -> dict | None:
        """Return a copy of the record with this id, or None when there is none."""
        with self._lock:
            position = self._positions.get(case_id)
            if position is None:
                return None
            return copy.deepcopy(self._records[position])

    def search(self, vector: np.ndarray, k: int = 5) -> list[tuple[dict, float]]:
        """Find the k records nearest to vector by cosine similarity.

        Returns (record copy, score) pairs, best first, with scores clamped to [-1, 1]. Returns
        fewer than k pairs when the library has fewer cases, and [] when it is empty.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise CaseStoreError(f"invalid k for case search: {k!r}; pass a positive integer")
        query = self._prepare_query(vector)

        with self._lock:
            if not self._records:
                return []

            k = min(int(k), len(self._records))
            if isinstance(self._index, faiss.IndexHNSWFlat):
                self._index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
            scores, positions = self._index.search(query, k)

            matches = []
            for position, score in zip(positions[0], scores[0], strict=True):
                # HNSW pads with -1 when its graph walk finds fewer than k neighbours.
                if position < 0:
                    continue
                clamped = float(min(1.0, max(-1.0, score)))
                matches.append((copy.deepcopy(self._records[position]), clamped))
            return matches

    def stats(self) -> dict:
        """Summarise the library: embedder, dim, index type, count and counts by tool and edit kind.

        Records without a "tool" or "edit_kind" field are counted under "unknown".
        """
        with self._lock:
            by_tool = Counter(str(record.get("tool", "unknown")) for record in self._records)
            by_edit_kind = Counter(
                str(record.get("edit_kind", "unknown")) for record in self._records
            )
            return {
                "embedder": self.embedder_id,
                "dim": self.dim,
                "index_type": _index_type_of(self._index),
                "count": len(self._records),
                "by_tool": dict(sorted(by_tool.items())),
                "by_edit_kind": dict(sorted(by_edit_kind.items())),
            }

    # Writing

    def add(self, records: Sequence[dict], vectors: np.ndarray) -> list[str]:
        """Add records with one embedding each, persist the library and return the case ids.

        A record without an "id" gets "case-<12 hex digits>". Vectors must be a 2-D array of
        shape (len(records), dim) with finite, non-zero rows, which are converted to float32 and
        L2-normalised. The index switches from flat to HNSW when the count reaches HNSW_THRESHOLD.
        """
        prepared = [self._prepare_record(record) for record in records]
        matrix = self._prepare_vectors(vectors, len(prepared))
        if not prepared:
            return []

        with self._lock:
            self._check_new_ids(prepared)

            index = self._index
            total = len(self._records) + len(prepared)
            if total >= HNSW_THRESHOLD and _index_type_of(index) == "flat":
                index = self._rebuild_as_hnsw()
            index.add(matrix)

            self._index = index
            start = len(self._records)
            self._records.extend(prepared)
            for offset, record in enumerate(prepared):
                self._positions[record["id"]] = start + offset

            self._write_all()
            logger.info("added %d cases to %s (now %d)", len(prepared), self.directory, total)
            return [record["id"] for record in prepared]

    def update(self, case_id: str, changes: dict) -> None:
        """Update fields of one record (not its vector) and persist the records.

        Raises CaseStoreError when no record has case_id, when changes try to change the id, or
        when the changed record is not JSON-serialisable.
        """
        if not isinstance(changes, dict):
            raise CaseStoreError(
                f"invalid changes for case {case_id!r}: expected a dict, got {type(changes).__name__}"
            )
        if "id" in changes and changes["id"] != case_id:
            raise CaseStoreError(
                f"cannot change the id of case {case_id!r} to {changes['id']!r}; "
                "add a new case instead"
            )

        with self._lock:
            position = self._positions.get(case_id)
            if position is None:
                raise CaseStoreError(
                    f"case {case_id!r} not found in case library {self.directory}; "
                    "check the id with CaseStore.get"
                )

            updated = {**self._records[position], **copy.deepcopy(changes)}
            _check_serialisable(updated)
            self._records[position] = updated

            self._persist(include_index=False)

    # Validation

    def _prepare_record(self, record: dict) -> dict:
        if not isinstance(record, dict):
            raise CaseStoreError(
                f"invalid case record {record!r}: expected a dict, got {type(record).__name__}"
            )

        prepared = copy.deepcopy(record)
        if "id" not in prepared:
            prepared = {"id": f"case-{uuid.uuid4().hex[:12]}", **prepared}
        elif not isinstance(prepared["id"], str) or not prepared["id"]:
            raise CaseStoreError(
                f"invalid case id {prepared['id']!r}: expected a non-empty string, or omit it"
            )

        _check_serialisable(prepared)
        return prepared

    def _check_new_ids(self, records: list[dict]) -> None:
        seen: set[str] = set()
        for record in records:
            case_id = record["id"]
            if case_id in self._positions:
                raise CaseStoreError(
                    f"case {case_id!r} already exists in case library {self.directory}; "
                    "use update to change it or give the new case another id"
                )
            if case_id in seen:
                raise CaseStoreError(
                    f"case {case_id!r} appears twice in one add call; give each case its own id"
                )
            seen.add(case_id)

    def _prepare_vectors(self, vectors: np.ndarray, expected_rows: int) -> np.ndarray:
        matrix = np.asarray(vectors)
        if matrix.ndim != 2 or matrix.shape != (expected_rows, self.dim):
            raise CaseStoreError(
                f"invalid vectors shape {matrix.shape}: expected ({expected_rows}, {self.dim}), "
                f"one row of dim {self.dim} per record for embedder {self.embedder_id!r}"
            )
        return _normalise_rows(matrix, "vectors")

    def _prepare_query(self, vector: np.ndarray) -> np.ndarray:
        query = np.asarray(vector)
        if query.shape not in ((self.dim,), (1, self.dim)):
            raise CaseStoreError(
                f"invalid query vector shape {query.shape}: expected ({self.dim},) or "
                f"(1, {self.dim}) for embedder {self.embedder_id!r}"
            )
        return _normalise_rows(query.reshape(1, self.dim), "query vector")

    # Persistence

    def _rebuild_as_hnsw(self) -> faiss.Index:
        started = time.perf_counter()
        hnsw = _new_index("hnsw", self.dim)
        if self._index.ntotal:
            hnsw.add(self._index.reconstruct_n(0, self._index.ntotal))
        logger.info(
            "rebuilt case library %s as HNSW with %d cases in %.1f s",
            self.directory,
            hnsw.ntotal,
            time.perf_counter() - started,
        )
        return hnsw

    def _write_all(self) -> None:
        self._persist(include_index=True)

    def _persist(self, include_index: bool) -> None:
        # The manifest goes last, so a crash before it leaves counts that open() can compare.
        # NOTE: when a write fails, the cases stay added in memory although the files may lack them.
        try:
            if include_index:
                self._write_index()
            self._write_file(CASES_FILE, _encode_records(self._records))
            self._write_file(MANIFEST_FILE, self._encode_manifest())
        except (OSError, RuntimeError) as error:
            raise CaseStoreError(
                f"cannot write case library {self.directory}: {error}; check free disk space "
                f"and permissions, and delete {self.directory} to rebuild it if it will not open"
            ) from error

    def _encode_manifest(self) -> bytes:
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedder": self.embedder_id,
            "dim": self.dim,
            "index_type": _index_type_of(self._index),
            "count": len(self._records),
        }
        return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")

    def _write_index(self) -> None:
        temp_path = self._temp_path(INDEX_FILE)
        try:
            faiss.write_index(self._index, str(temp_path))
            _fsync_file(temp_path)
            os.replace(temp_path, self.directory / INDEX_FILE)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise

    def _write_file(self, name: str, data: bytes) -> None:
        temp_path = self._temp_path(name)
        try:
            with open(temp_path, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_path, self.directory / name)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise

    def _temp_path(self, name: str) -> Path:
        # Same folder as the target, so os.replace is an atomic rename on one file system.
        handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        os.close(handle)
        return Path(temp_name)


# Module helpers


def _validate_embedder(embedder_id: str, dim: int) -> None:
    if not isinstance(embedder_id, str) or not embedder_id:
        raise CaseStoreError(f"invalid embedder id {embedder_id!r}: expected a non-empty string")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise CaseStoreError(f"invalid embedding dim {dim!r}: expected a positive integer")


def _new_index(index_type: str, dim: int) -> faiss.Index:
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)

    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def _index_type_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    return "flat"


def _normalise_rows(matrix: np.ndarray, label: str) -> np.ndarray:
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise CaseStoreError(
            f"invalid {label} dtype {matrix.dtype}: expected a real numeric array (float or int)"
        )

    rows = np.array(matrix, dtype=np.float32, copy=True)
    if not np.isfinite(rows).all():
        bad_rows = np.flatnonzero(~np.isfinite(rows).all(axis=1)).tolist()
        raise CaseStoreError(
            f"invalid {label}: rows {bad_rows} contain NaN or infinity; check the embedder output"
        )

    norms = np.linalg.norm(rows, axis=1)
    if (norms < MIN_VECTOR_NORM).any():
        bad_rows = np.flatnonzero(norms < MIN_VECTOR_NORM).tolist()
        raise CaseStoreError(
            f"invalid {label}: rows {bad_rows} are all zeros and have no direction; "
            "check the embedder output"
        )

    rows /= norms[:, None]
    return np.ascontiguousarray(rows, dtype=np.float32)


def _check_serialisable(record: dict) -> None:
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CaseStoreError(
            f"case {record.get('id')!r} is not JSON-serialisable ({error}); "
            "store only str, int, float, bool, None, lists and dicts"
        ) from error


def _encode_records(records: list[dict]) -> bytes:
    lines = [json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records]
    return "".join(lines).encode("utf-8")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CaseStoreError(
            f"case library {path} not found: {manifest_path} is missing; "
            f"create the library or delete {path} to rebuild it"
        )

    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CaseStoreError(
            f"cannot read {manifest_path}: {error}; delete {path} to rebuild the case library"
        ) from error

    _validate_manifest(path, manifest)
    return manifest


def _validate_manifest(path: Path, manifest: Any) -> None:
    manifest_path = path / MANIFEST_FILE
    if not isinstance(manifest, dict):
        raise CaseStoreError(
            f"invalid {manifest_path}: expected a JSON object; delete {path} to rebuild it"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CaseStoreError(
            f"unsupported case library format {manifest.get('format_version')!r} in "
            f"{manifest_path} (supported: {FORMAT_VERSION}); delete {path} to rebuild it"
        )

    checks = {
        "embedder": isinstance(manifest.get("embedder"), str),
        "dim": _is_count(manifest.get("dim")) and manifest.get("dim", 0) > 0,
        "index_type": manifest.get("index_type") in ("flat", "hnsw"),
        "count": _is_count(manifest.get("count")),
    }
    for field, valid in checks.items():
        if not valid:
            raise CaseStoreError(
                f"invalid {field!r} in {manifest_path}: {manifest.get(field)!r}; "
                f"delete {path} to rebuild the case library"
            )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_index(path: Path, dim: int, index_type: str) -> faiss.Index:
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        raise CaseStoreError(
            f"case library {path} is incomplete: {index_path} is missing; "
            f"delete {path} to rebuild it"
        )

    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise CaseStoreError(
            f"cannot read FAISS index {index_path}: {first_line}; delete {path} to rebuild it"
        ) from error

    if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CaseStoreError(
            f"invalid FAISS index {index_path}: dim {index.d}, metric {index.metric_type} "
            f"(expected dim {dim}, inner product); delete {path} to rebuild it"
        )
    if _index_type_of(index) != index_type:
        raise CaseStoreError(
            f"invalid FAISS index {index_path}: it is {_index_type_of(index)} but the manifest "
            f"says {index_type}; delete {path} to rebuild it"
        )
    return index


def _read_records(path: Path) -> list[dict]:
    cases_path = path / CASES_FILE
    if not cases_path.is_file():
        raise CaseStoreError(
            f"case library {path} is incomplete: {cases_path} is missing; "
            f"delete {path} to rebuild it"
        )

    try:
        lines = cases_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CaseStoreError(
            f"cannot read {cases_path}: {error}; delete {path} to rebuild the case library"
        ) from error

    records = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_record_line(path, cases_path, number, line)
        if record["id"] in seen:
            raise CaseStoreError(
                f"invalid {cases_path} line {number}: duplicate case id {record['id']!r}; "
                f"delete {path} to rebuild the case library"
            )
        seen.add(record["id"])
        records.append(record)
    return records


def _parse_record_line(path: Path, cases_path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise CaseStoreError(
            f"invalid JSON in {cases_path} line {number}: {error.msg}; "
            f"delete {path} to rebuild the case library"
        ) from error

    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise CaseStoreError(
            f"invalid case record in {cases_path} line {number}: expected an object with a "
            f"string id; delete {path} to rebuild the case library"
        )
    return record


def _check_counts(path: Path, index_count: int, record_count: int, manifest_count: int) -> None:
    if index_count == record_count == manifest_count:
        return
    raise CaseStoreError(
        f"case library {path} is inconsistent: {INDEX_FILE} has {index_count} vectors, "
        f"{CASES_FILE} has {record_count} records and {MANIFEST_FILE} says {manifest_count} "
        f"(an interrupted write?); delete {path} to rebuild it"
    )


# LangChain tool


class SearchCasesInput(BaseModel):
    """Arguments of the search_cases tool."""

    query: str = Field(
        min_length=1,
        description="Edit instruction to find similar past edits for, e.g. 'make the sky stormy'.",
    )
    k: int = Field(default=5, ge=1, le=50, description="Maximum number of cases to return.")


def make_case_search_tool(
    store: CaseStore, embed_text: Callable[[str], np.ndarray]
) -> StructuredTool:
    """Build the "search_cases" LangChain tool over store, embedding queries with embed_text.

    The tool returns a JSON list of matches, best first, each with id, instruction, tool,
    params and score (cosine similarity).
    """

    def search_cases(query: str, k: int = 5) -> str:
        matches = store.search(embed_text(query), k=k)
        results = [
            {
                "id": record.get("id"),
                "instruction": record.get("instruction"),
                "tool": record.get("tool"),
                "params": record.get("params", {}),
                "score": round(score, 4),
            }
            for record, score in matches
        ]
        return json.dumps(results, ensure_ascii=False)

    return StructuredTool.from_function(
        func=search_cases,
        name="search_cases",
        description=(
            "Search the case library for past image edits similar to an instruction. "
            "Returns JSON: a list of {id, instruction, tool, params, score}, best match first."
        ),
        args_schema=SearchCasesInput,
    )
