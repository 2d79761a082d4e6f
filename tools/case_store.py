"""Case library: past edits stored as embeddings plus JSON records, one folder on disk.

A case library folder contains these files:

- ``vectors.npy``: the text embeddings, float32 of shape (count, dim), L2-normalised. They are
  the source of truth for the index.
- ``image_vectors.npy``: only when the library has an image dimension. Image embeddings of shape
  (count, image_dim), L2-normalised, with an all-zero row for a case that has no image embedding.
- ``cases.jsonl``: one JSON record per line, in the same order as the vectors.
- ``index.faiss``: a raw FAISS index built from ``vectors.npy`` (flat below HNSW_THRESHOLD cases,
  HNSW from there on) and written with ``faiss.write_index``. It uses the inner product metric, so
  a score is the cosine similarity. It is derived data, rebuilt on open when its size is wrong.
- ``manifest.json``: ``{"format_version", "embedder", "dim", "image_dim", "index_type", "count"}``.

Every file is written to a temporary file in the same folder and moved into place with
``os.replace``. ``add`` writes the manifest last, so the manifest's count is the commit point: a
crash before it leaves files with more rows than the count, and ``CaseStore.open`` drops those
rows. ``.npy`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks, so processes must not write at the same time there.
    fcntl = None
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
# Version 1 folders have no vectors.npy, so open() rebuilds it from their flat index.
LEGACY_FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
CASES_FILE = "cases.jsonl"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
VECTORS_FILE = "vectors.npy"
IMAGE_VECTORS_FILE = "image_vectors.npy"

# Flat search is exact and fast enough below this many cases. Above it, HNSW keeps search time low.
HNSW_THRESHOLD = 50_000
# On 100,000 random 512-dimensional cases (benchmarks/RESULTS.md), M 48 and efConstruction 200 put the case that a
# rephrased query came from first for every query at a p50 of 0.7 ms. M 32 and efConstruction 80 missed 9% of them.
HNSW_M = 48
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 64

# Rows with a smaller L2 norm have no direction to normalise.
MIN_VECTOR_NORM = 1e-12

# Share of the image similarity in the combined score of a search with an image query:
# score = (1 - IMAGE_WEIGHT) * text score + IMAGE_WEIGHT * image score when both the query and
# the case have an image embedding, else the text score alone.
# NOTE: a case without an image embedding keeps its full text score, so it ranks above a case with
# the same text score whose image similarity is below 1.
IMAGE_WEIGHT = 0.3

# A search with an image query reranks this many text candidates per requested case, and at
# least MIN_CANDIDATES, capped at the number of cases.
CANDIDATES_PER_RESULT = 10
MIN_CANDIDATES = 50


class CaseStoreError(ValueError):
    """Invalid input to a case library, or a case library folder that cannot be read."""


class EmbedderMismatchError(CaseStoreError):
    """Case library built with another embedder id or vector dimension than the current run."""


@dataclass(frozen=True)
class CaseMatch:
    """One search result: a case record with its similarity to the query."""

    record: dict
    """Copy of the case record."""
    score: float
    """Combined score, clamped to [-1, 1], by which results are ranked."""
    text_score: float
    """Cosine similarity of the text embeddings, clamped to [-1, 1]."""
    image_score: float | None
    """Cosine similarity of the image embeddings, or None when the query or the case has none."""


class CaseStore:
    """Case records with their embeddings, searchable by cosine similarity.

    All public methods hold one lock, so threads in one process may add and search concurrently.
    Processes that share the folder take a file lock (.lock) for every open and write, and a
    write first reloads the cases that another process committed since this one read them.
    """

    directory: Path
    embedder_id: str
    dim: int
    image_dim: int | None

    def __init__(
        self,
        directory: Path,
        embedder_id: str,
        dim: int,
        index: faiss.Index,
        records: list[dict],
        vectors: np.ndarray,
        image_dim: int | None = None,
        image_vectors: np.ndarray | None = None,
    ) -> None:
        """Wrap an index and its matching records and vectors. Callers use create or open instead."""
        self.directory = directory
        self.embedder_id = embedder_id
        self.dim = dim
        self.image_dim = image_dim
        self._index = index
        self._records = records
        self._vectors = vectors
        self._image_vectors = image_vectors
        self._positions = {record["id"]: position for position, record in enumerate(records)}
        self._lock = threading.RLock()
        self._stamp = _manifest_stamp(directory)

    # Construction

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        embedder_id: str,
        dim: int,
        image_dim: int | None = None,
    ) -> CaseStore:
        """Create an empty case library in directory and write it to disk.

        image_dim is the dimension of the image embeddings, or None to set it from the first
        image vectors passed to add. Raises CaseStoreError when directory already contains a
        case library.
        """
        path = Path(directory)
        _validate_embedder(embedder_id, dim)
        _validate_image_dim(image_dim)
        if cls.exists(path):
            raise CaseStoreError(
                f"cannot create case library {path}: one already exists there; "
                f"open it with CaseStore.open or delete {path} to rebuild it"
            )

        path.mkdir(parents=True, exist_ok=True)
        image_vectors = None if image_dim is None else np.zeros((0, image_dim), dtype=np.float32)
        store = cls(
            path,
            embedder_id,
            dim,
            _new_index("flat", dim),
            [],
            np.zeros((0, dim), dtype=np.float32),
            image_dim,
            image_vectors,
        )
        store._persist()
        logger.info(
            "created case library %s (embedder %r, dim %d, image dim %s)",
            path,
            embedder_id,
            dim,
            image_dim,
        )
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike[str], embedder_id: str, dim: int) -> CaseStore:
        """Open the case library in directory, checking it against the current embedder.

        Rows that an interrupted add wrote past the manifest's count are dropped (with a warning)
        and the files rewritten. An index of the wrong size is rebuilt from vectors.npy. A
        version 1 folder gets its vectors.npy from its flat index.

        Raises EmbedderMismatchError when the library was built with another embedder id or
        dimension, and CaseStoreError when a file is missing or corrupt or has fewer rows than
        the manifest's count.
        """
        path = Path(directory)
        _validate_embedder(embedder_id, dim)
        with _folder_lock(path):
            return cls._open_unlocked(path, embedder_id, dim)

    @classmethod
    def _open_unlocked(cls, path: Path, embedder_id: str, dim: int) -> CaseStore:
        manifest = _read_manifest(path)
        if manifest["embedder"] != embedder_id or manifest["dim"] != dim:
            raise EmbedderMismatchError(
                f"case library {path} was built with embedder {manifest['embedder']!r} "
                f"(dim {manifest['dim']}), but this run uses {embedder_id!r} (dim {dim}); "
                f"use another --home or delete {path} to rebuild it"
            )

        if manifest["format_version"] == LEGACY_FORMAT_VERSION:
            store = cls._open_legacy(path, embedder_id, dim, manifest)
        else:
            store = cls._open_current(path, embedder_id, dim, manifest)

        logger.info(
            "opened case library %s: %d cases, %s index", path, len(store), store.index_type
        )
        return store

    @classmethod
    def _open_current(
        cls, path: Path, embedder_id: str, dim: int, manifest: dict
    ) -> CaseStore:
        count = manifest["count"]
        image_dim = manifest["image_dim"]
        vectors = _read_matrix(path, VECTORS_FILE, dim)
        image_vectors = None
        if image_dim is not None:
            image_vectors = _read_matrix(path, IMAGE_VECTORS_FILE, image_dim)
        records = _read_records(path)
        index = _read_index(path, dim)

        rows = {VECTORS_FILE: len(vectors), CASES_FILE: len(records)}
        if image_vectors is not None:
            rows[IMAGE_VECTORS_FILE] = len(image_vectors)
        _check_rows(path, rows, count)

        # An image_vectors.npy that the manifest does not name comes from an add that set the
        # image dimension and was interrupted before the manifest.
        stray_images = image_dim is None and (path / IMAGE_VECTORS_FILE).exists()
        dropped = max(rows.values()) - count
        if dropped or stray_images:
            logger.warning(
                "case library %s: dropping %d rows past the manifest's %d cases, left by an "
                "interrupted write",
                path,
                dropped,
                count,
            )
            records = records[:count]
            vectors = vectors[:count]
            if image_vectors is not None:
                image_vectors = image_vectors[:count]

        rebuild = index.ntotal != count or _index_type_of(index) != manifest["index_type"]
        if rebuild:
            logger.warning(
                "case library %s: rebuilding %s (%d vectors, %s) from %s (%d cases)",
                path,
                INDEX_FILE,
                index.ntotal,
                _index_type_of(index),
                VECTORS_FILE,
                count,
            )
            index = _build_index(manifest["index_type"], dim, vectors)

        store = cls(path, embedder_id, dim, index, records, vectors, image_dim, image_vectors)
        if dropped or stray_images:
            store._persist()
            if stray_images:
                (path / IMAGE_VECTORS_FILE).unlink(missing_ok=True)
        elif rebuild:
            store._write_files([INDEX_FILE])
        return store

    @classmethod
    def _open_legacy(cls, path: Path, embedder_id: str, dim: int, manifest: dict) -> CaseStore:
        index = _read_index(path, dim)
        if manifest["index_type"] != "flat" or _index_type_of(index) != "flat":
            raise CaseStoreError(
                f"cannot upgrade case library {path}: it has an HNSW index and no {VECTORS_FILE} "
                f"to rebuild it from; delete {path} to rebuild it"
            )
        records = _read_records(path)
        _check_legacy_counts(path, index.ntotal, len(records), manifest["count"])

        vectors = np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
        store = cls(path, embedder_id, dim, index, records, vectors.reshape(-1, dim))
        store._write_files([VECTORS_FILE, MANIFEST_FILE])
        logger.info(
            "upgraded case library %s to format %d: wrote %s", path, FORMAT_VERSION, VECTORS_FILE
        )
        return store

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
        with self._lock, _folder_lock(self.directory):
            self._reload_if_changed()
            position = self._positions.get(case_id)
            if position is None:
                return None
            return copy.deepcopy(self._records[position])

    def search(
        self,
        vector: np.ndarray,
        k: int = 5,
        *,
        image_vector: np.ndarray | None = None,
        image_weight: float = IMAGE_WEIGHT,
    ) -> list[CaseMatch]:
        """Find the k records nearest to a text embedding, optionally reranked with an image one.

        Without image_vector, the score is the cosine similarity of the text embeddings. With
        it, the index returns k * CANDIDATES_PER_RESULT text candidates (at least MIN_CANDIDATES).
        They are reranked by (1 - image_weight) * text score + image_weight * image score, or by
        the text score alone for a case without an image embedding. Returns matches best first,
        fewer than k when the library has fewer cases, and [] when it is empty.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise CaseStoreError(f"invalid k for case search: {k!r}; pass a positive integer")
        _validate_image_weight(image_weight)
        query = self._prepare_query(vector)

        with self._lock:
            image_query = None
            if image_vector is not None:
                image_query = self._prepare_image_query(image_vector)
            if not self._records:
                return []

            count = len(self._records)
            if image_query is None:
                candidates = self._search_text(query, min(int(k), count))
                return [self._match(position, score) for position, score in candidates]

            # NOTE: only text candidates are reranked, so a case whose text is far from the query
            # is not found through a close image alone.
            candidate_count = min(count, max(int(k) * CANDIDATES_PER_RESULT, MIN_CANDIDATES))
            candidates = self._search_text(query, candidate_count)
            scored = [
                self._score(position, text_score, image_query, image_weight)
                for position, text_score in candidates
            ]
            scored.sort(key=lambda item: item[1], reverse=True)
            return [
                CaseMatch(copy.deepcopy(self._records[position]), score, text_score, image_score)
                for position, score, text_score, image_score in scored[: int(k)]
            ]

    def stats(self) -> dict:
        """Summarise the library: embedder, dims, index type, count and counts by tool and edit kind.

        Records without a "tool" or "edit_kind" field are counted under "unknown". "with_image"
        counts the cases that have an image embedding.
        """
        with self._lock:
            by_tool = Counter(str(record.get("tool", "unknown")) for record in self._records)
            by_edit_kind = Counter(
                str(record.get("edit_kind", "unknown")) for record in self._records
            )
            with_image = 0
            if self._image_vectors is not None:
                with_image = int(np.count_nonzero(self._image_vectors.any(axis=1)))
            return {
                "embedder": self.embedder_id,
                "dim": self.dim,
                "image_dim": self.image_dim,
                "index_type": _index_type_of(self._index),
                "count": len(self._records),
                "with_image": with_image,
                "by_tool": dict(sorted(by_tool.items())),
                "by_edit_kind": dict(sorted(by_edit_kind.items())),
            }

    def _search_text(self, query: np.ndarray, limit: int) -> list[tuple[int, float]]:
        if isinstance(self._index, faiss.IndexHNSWFlat):
            self._index.hnsw.efSearch = max(HNSW_EF_SEARCH, limit)
        with _one_thread():
            scores, positions = self._index.search(query, limit)

        # HNSW pads with -1 when its graph walk finds fewer than limit neighbours.
        return [
            (int(position), _clamp(score))
            for position, score in zip(positions[0], scores[0], strict=True)
            if position >= 0
        ]

    def _score(
        self, position: int, text_score: float, image_query: np.ndarray, image_weight: float
    ) -> tuple[int, float, float, float | None]:
        if self._image_vectors is None or not self._image_vectors[position].any():
            return position, text_score, text_score, None

        image_score = _clamp(float(self._image_vectors[position] @ image_query[0]))
        score = _clamp((1.0 - image_weight) * text_score + image_weight * image_score)
        return position, score, text_score, image_score

    def _match(self, position: int, text_score: float) -> CaseMatch:
        return CaseMatch(copy.deepcopy(self._records[position]), text_score, text_score, None)

    # Writing

    def add(
        self,
        records: Sequence[dict],
        vectors: np.ndarray,
        image_vectors: np.ndarray | None = None,
    ) -> list[str]:
        """Add records with their embeddings, persist the library and return the case ids.

        A record without an "id" gets "case-<12 hex digits>". vectors must be a 2-D array of
        shape (len(records), dim) with finite, non-zero rows. image_vectors is None when no
        record in this call has an image embedding, or an array of shape (len(records),
        image_dim) with an all-zero row for each record without one. The first image vectors
        added to a library without an image dimension set it. Rows are converted to float32 and
        L2-normalised. The index switches from flat to HNSW when the count reaches
        HNSW_THRESHOLD. When a write fails, the library in memory keeps its previous cases.
        """
        prepared = [self._prepare_record(record) for record in records]
        matrix = self._prepare_vectors(vectors, len(prepared))

        with self._lock, _folder_lock(self.directory):
            self._reload_if_changed()
            image_matrix = self._prepare_image_vectors(image_vectors, len(prepared))
            if not prepared:
                return []
            self._check_new_ids(prepared)

            self._append(prepared, matrix, image_matrix)
            logger.info(
                "added %d cases to %s (now %d)", len(prepared), self.directory, len(self._records)
            )
            return [record["id"] for record in prepared]

    def update(self, case_id: str, changes: dict) -> None:
        """Update fields of one record (not its vectors) and rewrite cases.jsonl.

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

        with self._lock, _folder_lock(self.directory):
            self._reload_if_changed()
            position = self._positions.get(case_id)
            if position is None:
                raise CaseStoreError(
                    f"case {case_id!r} not found in case library {self.directory}; "
                    "check the id with CaseStore.get"
                )

            previous = self._records[position]
            updated = {**previous, **copy.deepcopy(changes)}
            _check_serialisable(updated)
            self._records[position] = updated
            try:
                self._write_files([CASES_FILE])
            except BaseException:
                self._records[position] = previous
                raise

    def _append(
        self, records: list[dict], vectors: np.ndarray, image_vectors: np.ndarray | None
    ) -> None:
        previous = (self._records, self._vectors, self.image_dim, self._image_vectors, self._index)
        start = len(self._records)
        total = start + len(records)

        if image_vectors is not None and self._image_vectors is None:
            self.image_dim = image_vectors.shape[1]
            self._image_vectors = np.zeros((start, self.image_dim), dtype=np.float32)
        if self._image_vectors is not None and image_vectors is None:
            image_vectors = np.zeros((len(records), self._image_vectors.shape[1]), np.float32)

        self._records = self._records + records
        self._vectors = np.concatenate([self._vectors, vectors])
        if self._image_vectors is not None:
            self._image_vectors = np.concatenate([self._image_vectors, image_vectors])
        if total >= HNSW_THRESHOLD and _index_type_of(self._index) == "flat":
            self._index = self._build_hnsw()
        else:
            self._index.add(vectors)
        for offset, record in enumerate(records):
            self._positions[record["id"]] = start + offset

        try:
            self._persist()
        except BaseException:
            self._restore(previous, records)
            raise

    def _reload_if_changed(self) -> None:
        """Load the files again when another process committed a write since this one read them."""
        if _manifest_stamp(self.directory) == self._stamp:
            return
        fresh = type(self)._open_unlocked(self.directory, self.embedder_id, self.dim)
        logger.info(
            "case library %s changed on disk (%d cases, now %d); reloaded it before writing",
            self.directory, len(self._records), len(fresh._records),
        )
        self.image_dim = fresh.image_dim
        self._index = fresh._index
        self._records = fresh._records
        self._vectors = fresh._vectors
        self._image_vectors = fresh._image_vectors
        self._positions = fresh._positions
        self._stamp = fresh._stamp

    def _restore(self, previous: tuple, records: list[dict]) -> None:
        # The manifest was not written, so open() would load the previous cases. Match that.
        old_records, old_vectors, old_image_dim, old_image_vectors, old_index = previous
        if old_index is self._index:
            old_index = _build_index(_index_type_of(old_index), self.dim, old_vectors)
        self._records = old_records
        self._vectors = old_vectors
        self.image_dim = old_image_dim
        self._image_vectors = old_image_vectors
        self._index = old_index
        for record in records:
            self._positions.pop(record["id"], None)

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

    def _prepare_image_vectors(
        self, image_vectors: np.ndarray | None, expected_rows: int
    ) -> np.ndarray | None:
        if image_vectors is None:
            return None

        matrix = np.asarray(image_vectors)
        width = self.image_dim if self.image_dim is not None else "image_dim"
        if (
            matrix.ndim != 2
            or matrix.shape[0] != expected_rows
            or matrix.shape[1] < 1
            or (self.image_dim is not None and matrix.shape[1] != self.image_dim)
        ):
            raise CaseStoreError(
                f"invalid image vectors shape {matrix.shape}: expected ({expected_rows}, {width}), "
                f"one row of dim {width} per record (all zeros for a case without an image) "
                f"for case library {self.directory}"
            )
        return _normalise_rows_or_zero(matrix, "image vectors")

    def _prepare_query(self, vector: np.ndarray) -> np.ndarray:
        query = np.asarray(vector)
        if query.shape not in ((self.dim,), (1, self.dim)):
            raise CaseStoreError(
                f"invalid query vector shape {query.shape}: expected ({self.dim},) or "
                f"(1, {self.dim}) for embedder {self.embedder_id!r}"
            )
        return _normalise_rows(query.reshape(1, self.dim), "query vector")

    def _prepare_image_query(self, vector: np.ndarray) -> np.ndarray:
        query = np.asarray(vector)
        # A library without an image dimension accepts any length, since no case can match it.
        width = self.image_dim
        if width is None:
            width = query.shape[-1] if query.ndim else 0
        if width < 1 or query.shape not in ((width,), (1, width)):
            raise CaseStoreError(
                f"invalid image query vector shape {query.shape}: expected ({width},) or "
                f"(1, {width}) for case library {self.directory}"
            )
        return _normalise_rows(query.reshape(1, width), "image query vector")

    # Persistence

    def _build_hnsw(self) -> faiss.Index:
        started = time.perf_counter()
        hnsw = _build_index("hnsw", self.dim, self._vectors)
        logger.info(
            "rebuilt case library %s as HNSW with %d cases in %.1f s",
            self.directory,
            hnsw.ntotal,
            time.perf_counter() - started,
        )
        return hnsw

    def _persist(self) -> None:
        self._write_files([VECTORS_FILE, IMAGE_VECTORS_FILE, CASES_FILE, INDEX_FILE, MANIFEST_FILE])
        self._stamp = _manifest_stamp(self.directory)

    def _write_files(self, names: list[str]) -> None:
        # Callers list the manifest last, because its count commits the rows written before it.
        writers: dict[str, Callable[[Path], None]] = {
            VECTORS_FILE: lambda path: _save_matrix(path, self._vectors),
            CASES_FILE: lambda path: path.write_bytes(_encode_records(self._records)),
            INDEX_FILE: lambda path: faiss.write_index(self._index, str(path)),
            MANIFEST_FILE: lambda path: path.write_bytes(self._encode_manifest()),
        }
        if self._image_vectors is not None:
            image_vectors = self._image_vectors
            writers[IMAGE_VECTORS_FILE] = lambda path: _save_matrix(path, image_vectors)

        try:
            for name in names:
                if name in writers:
                    _write_atomically(self.directory, name, writers[name])
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
            "image_dim": self.image_dim,
            "index_type": _index_type_of(self._index),
            "count": len(self._records),
        }
        return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")


# Module helpers


@contextlib.contextmanager
def _folder_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on directory/.lock, so one process at a time opens or writes the library."""
    if fcntl is None or not directory.is_dir():
        yield
        return
    with open(directory / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _manifest_stamp(directory: Path) -> tuple[int, int, int] | None:
    """Identify the manifest's current version; a committed write replaces the file, so the stamp changes."""
    try:
        status = (directory / MANIFEST_FILE).stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def _write_atomically(directory: Path, name: str, write: Callable[[Path], None]) -> None:
    """Write directory/name through write(temp path), then fsync it and move it into place."""
    # Same folder as the target, so os.replace is an atomic rename on one file system.
    handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        write(temp_path)
        _fsync_file(temp_path)
        os.replace(temp_path, directory / name)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _save_matrix(path: Path, matrix: np.ndarray) -> None:
    # A file handle, because np.save appends ".npy" to a path that lacks it.
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the folder entry is. Windows cannot open a folder this way.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _validate_embedder(embedder_id: str, dim: int) -> None:
    if not isinstance(embedder_id, str) or not embedder_id:
        raise CaseStoreError(f"invalid embedder id {embedder_id!r}: expected a non-empty string")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise CaseStoreError(f"invalid embedding dim {dim!r}: expected a positive integer")


def _validate_image_dim(image_dim: int | None) -> None:
    if image_dim is None:
        return
    if isinstance(image_dim, bool) or not isinstance(image_dim, int) or image_dim < 1:
        raise CaseStoreError(
            f"invalid image embedding dim {image_dim!r}: expected a positive integer or None"
        )


def _validate_image_weight(image_weight: float) -> None:
    valid = isinstance(image_weight, numbers.Real) and not isinstance(image_weight, bool)
    if not valid or not 0.0 <= float(image_weight) <= 1.0:
        raise CaseStoreError(
            f"invalid image_weight {image_weight!r}: expected a number from 0 to 1"
        )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Search with one OpenMP thread: splitting a single query costs more than it saves.

    A flat search of 100,000 cases took 7.7 ms on one thread and 9.7 ms on two, and 21 ms on a busy machine.
    """
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _new_index(index_type: str, dim: int) -> faiss.Index:
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)

    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def _build_index(index_type: str, dim: int, vectors: np.ndarray) -> faiss.Index:
    index = _new_index(index_type, dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _index_type_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    return "flat"


def _clamp(score: float) -> float:
    return float(min(1.0, max(-1.0, score)))


def _normalise_rows(matrix: np.ndarray, label: str) -> np.ndarray:
    rows = _to_finite_float32(matrix, label)

    norms = np.linalg.norm(rows, axis=1)
    if (norms < MIN_VECTOR_NORM).any():
        bad_rows = np.flatnonzero(norms < MIN_VECTOR_NORM).tolist()
        raise CaseStoreError(
            f"invalid {label}: rows {bad_rows} are all zeros and have no direction; "
            "check the embedder output"
        )

    rows /= norms[:, None]
    return np.ascontiguousarray(rows, dtype=np.float32)


def _normalise_rows_or_zero(matrix: np.ndarray, label: str) -> np.ndarray:
    """Normalise the rows that are not all zeros, which mark a case without this embedding."""
    rows = _to_finite_float32(matrix, label)

    norms = np.linalg.norm(rows, axis=1)
    present = rows.any(axis=1)
    too_short = present & (norms < MIN_VECTOR_NORM)
    if too_short.any():
        raise CaseStoreError(
            f"invalid {label}: rows {np.flatnonzero(too_short).tolist()} are too short to "
            "normalise; pass all zeros for a case without this embedding"
        )

    rows[present] /= norms[present, None]
    return np.ascontiguousarray(rows, dtype=np.float32)


def _to_finite_float32(matrix: np.ndarray, label: str) -> np.ndarray:
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
    return rows


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
    if manifest["format_version"] == LEGACY_FORMAT_VERSION:
        manifest["image_dim"] = None
    return manifest


def _validate_manifest(path: Path, manifest: Any) -> None:
    manifest_path = path / MANIFEST_FILE
    if not isinstance(manifest, dict):
        raise CaseStoreError(
            f"invalid {manifest_path}: expected a JSON object; delete {path} to rebuild it"
        )
    version = manifest.get("format_version")
    if version not in (LEGACY_FORMAT_VERSION, FORMAT_VERSION) or isinstance(version, bool):
        raise CaseStoreError(
            f"unsupported case library format {version!r} in {manifest_path} "
            f"(supported: {LEGACY_FORMAT_VERSION}, {FORMAT_VERSION}); delete {path} to rebuild it"
        )

    image_dim = manifest.get("image_dim")
    checks = {
        "embedder": isinstance(manifest.get("embedder"), str),
        "dim": _is_count(manifest.get("dim")) and manifest.get("dim", 0) > 0,
        "index_type": manifest.get("index_type") in ("flat", "hnsw"),
        "count": _is_count(manifest.get("count")),
    }
    if version == FORMAT_VERSION:
        checks["image_dim"] = image_dim is None or (_is_count(image_dim) and image_dim > 0)
    for field, valid in checks.items():
        if not valid:
            raise CaseStoreError(
                f"invalid {field!r} in {manifest_path}: {manifest.get(field)!r}; "
                f"delete {path} to rebuild the case library"
            )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_index(path: Path, dim: int) -> faiss.Index:
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
    return index


def _read_matrix(path: Path, name: str, width: int) -> np.ndarray:
    matrix_path = path / name
    if not matrix_path.is_file():
        raise CaseStoreError(
            f"case library {path} is incomplete: {matrix_path} is missing; "
            f"delete {path} to rebuild it"
        )

    try:
        matrix = np.load(matrix_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise CaseStoreError(
            f"cannot read {matrix_path}: {first_line}; delete {path} to rebuild it"
        ) from error

    valid = (
        isinstance(matrix, np.ndarray)
        and matrix.dtype == np.float32
        and matrix.ndim == 2
        and matrix.shape[1] == width
    )
    if not valid:
        found = f"{matrix.dtype} {matrix.shape}" if isinstance(matrix, np.ndarray) else "an archive"
        raise CaseStoreError(
            f"invalid {matrix_path}: expected float32 of shape (count, {width}), found {found}; "
            f"delete {path} to rebuild it"
        )
    if not np.isfinite(matrix).all():
        raise CaseStoreError(
            f"invalid {matrix_path}: it contains NaN or infinity; delete {path} to rebuild it"
        )
    return matrix


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


def _check_rows(path: Path, rows: dict[str, int], count: int) -> None:
    """Reject files with fewer rows than the manifest's count, which no interrupted add leaves."""
    if min(rows.values()) >= count:
        return

    units = {CASES_FILE: "records"}
    found = ", ".join(f"{name} has {size} {units.get(name, 'vectors')}" for name, size in rows.items())
    raise CaseStoreError(
        f"case library {path} is inconsistent: {found}, but {MANIFEST_FILE} records {count} "
        f"cases (a file has fewer rows than the manifest); delete {path} to rebuild it"
    )


def _check_legacy_counts(path: Path, index_count: int, record_count: int, manifest_count: int) -> None:
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
    params, score, text_score and image_score. The query is text only, so score equals
    text_score (cosine similarity) and image_score is null.
    """

    def search_cases(query: str, k: int = 5) -> str:
        matches = store.search(embed_text(query), k=k)
        results = [_describe_match(match) for match in matches]
        return json.dumps(results, ensure_ascii=False)

    return StructuredTool.from_function(
        func=search_cases,
        name="search_cases",
        description=(
            "Search the case library for past image edits similar to an instruction. "
            "Returns JSON: a list of {id, instruction, tool, params, score, text_score, "
            "image_score}, best match first."
        ),
        args_schema=SearchCasesInput,
    )


def _describe_match(match: CaseMatch) -> dict:
    record = match.record
    image_score = None if match.image_score is None else round(match.image_score, 4)
    return {
        "id": record.get("id"),
        "instruction": record.get("instruction"),
        "tool": record.get("tool"),
        "params": record.get("params", {}),
        "score": round(match.score, 4),
        "text_score": round(match.text_score, 4),
        "image_score": image_score,
    }
