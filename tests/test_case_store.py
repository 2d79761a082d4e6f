"""Tests for tools.case_store with real FAISS indexes and real files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from tools import case_store
from tools.adjust import ADJUST_OPERATIONS
from tools.case_store import (
    CaseMatch,
    CaseStore,
    CaseStoreError,
    EmbedderMismatchError,
    make_case_search_tool,
)

DIM = 16
EMBEDDER = "test-embedder"
STARTER_CASES = Path(__file__).resolve().parents[1] / "agent" / "data" / "starter_cases.jsonl"
OPERATIONS_WITHOUT_AMOUNT = {"flip_horizontal", "flip_vertical", "crop_square"}

FilledStore = tuple[CaseStore, np.ndarray, list[str]]


def make_vectors(count: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def make_records(count: int) -> list[dict]:
    tools = ["adjust", "instruct_pix2pix"]
    kinds = ["adjust", "style", "weather"]
    return [
        {
            "instruction": f"edit number {number}",
            "tool": tools[number % 2],
            "params": {"amount": number / 10},
            "edit_kind": kinds[number % 3],
        }
        for number in range(count)
    ]


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return tmp_path / "cases"


@pytest.fixture
def filled_store(library: Path) -> FilledStore:
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = make_vectors(12)
    ids = store.add(make_records(12), vectors)
    return store, vectors, ids


def test_create_writes_empty_library(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    manifest = json.loads((library / "manifest.json").read_text())

    assert CaseStore.exists(library)
    assert len(store) == 0
    assert manifest == {
        "format_version": 2,
        "embedder": EMBEDDER,
        "dim": DIM,
        "image_dim": None,
        "index_type": "flat",
        "count": 0,
    }
    assert (library / "cases.jsonl").read_text() == ""
    assert faiss.read_index(str(library / "index.faiss")).ntotal == 0


def test_create_rejects_existing_library(library: Path) -> None:
    CaseStore.create(library, EMBEDDER, DIM)

    with pytest.raises(CaseStoreError, match="already exists"):
        CaseStore.create(library, EMBEDDER, DIM)


def test_exists_false_for_empty_folder(tmp_path: Path) -> None:
    assert not CaseStore.exists(tmp_path)
    assert not CaseStore.exists(tmp_path / "missing")


def test_search_empty_store(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)

    assert store.search(make_vectors(1)[0], k=3) == []


def test_add_assigns_case_ids(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    records = make_records(3)
    records[1]["id"] = "my-case"

    ids = store.add(records, make_vectors(3))

    assert ids[1] == "my-case"
    for generated in (ids[0], ids[2]):
        assert generated.startswith("case-")
        assert len(generated) == len("case-") + 12
        int(generated.removeprefix("case-"), 16)
    assert ids[0] != ids[2]
    assert "id" not in records[0]


def test_search_ranks_exact_vector_first(filled_store: FilledStore) -> None:
    store, vectors, ids = filled_store

    matches = store.search(vectors[7], k=4)
    scores = [match.score for match in matches]

    assert len(matches) == 4
    assert matches[0].record["id"] == ids[7]
    assert matches[0].score == pytest.approx(1.0, abs=1e-5)
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= score <= 1.0 for score in scores)


def test_search_scores_are_cosine_similarity(filled_store: FilledStore) -> None:
    store, vectors, ids = filled_store
    query = make_vectors(1, seed=99)[0]
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = normalised @ (query / np.linalg.norm(query))

    matches = store.search(query, k=3)

    best = np.argsort(-expected)[:3]
    assert [match.record["id"] for match in matches] == [ids[i] for i in best]
    assert [match.score for match in matches] == pytest.approx(expected[best].tolist(), abs=1e-5)


def test_search_returns_fewer_when_small(filled_store: FilledStore) -> None:
    store, vectors, _ = filled_store

    assert len(store.search(vectors[0], k=50)) == 12


def test_search_accepts_row_vector(filled_store: FilledStore) -> None:
    store, vectors, ids = filled_store

    matches = store.search(vectors[3:4], k=1)

    assert matches[0].record["id"] == ids[3]


def test_search_rejects_bad_k(filled_store: FilledStore) -> None:
    store, vectors, _ = filled_store

    with pytest.raises(CaseStoreError, match="invalid k"):
        store.search(vectors[0], k=0)


def test_search_rejects_wrong_dimension(filled_store: FilledStore) -> None:
    store, _, _ = filled_store

    with pytest.raises(CaseStoreError, match=r"\(16,\)"):
        store.search(np.ones(8, dtype=np.float32))


def test_reopen_round_trip(filled_store: FilledStore, library: Path) -> None:
    store, vectors, ids = filled_store
    query = make_vectors(1, seed=5)[0]
    before = store.search(query, k=5)

    reopened = CaseStore.open(library, EMBEDDER, DIM)
    after = reopened.search(query, k=5)

    assert len(reopened) == 12
    assert [record["id"] for record in reopened.records] == ids
    assert [match.record["id"] for match in after] == [match.record["id"] for match in before]
    assert [match.score for match in after] == pytest.approx([match.score for match in before])
    assert reopened.get(ids[4]) == store.get(ids[4])


def test_add_after_reopen_appends(filled_store: FilledStore, library: Path) -> None:
    reopened = CaseStore.open(library, EMBEDDER, DIM)
    extra = make_vectors(2, seed=1)

    new_ids = reopened.add(make_records(2), extra)

    assert len(reopened) == 14
    assert reopened.search(extra[1], k=1)[0].record["id"] == new_ids[1]
    assert len(CaseStore.open(library, EMBEDDER, DIM)) == 14


def test_open_embedder_mismatch_message(filled_store: FilledStore, library: Path) -> None:
    with pytest.raises(EmbedderMismatchError) as error:
        CaseStore.open(library, "other-embedder", 32)

    message = str(error.value)
    assert str(library) in message
    assert f"'{EMBEDDER}' (dim {DIM})" in message
    assert "'other-embedder' (dim 32)" in message
    assert "delete" in message
    assert "\n" not in message


def test_open_dim_mismatch_same_embedder(filled_store: FilledStore, library: Path) -> None:
    with pytest.raises(EmbedderMismatchError, match=r"\(dim 16\).*\(dim 8\)"):
        CaseStore.open(library, EMBEDDER, 8)


def test_embedder_mismatch_is_case_store_error() -> None:
    assert issubclass(EmbedderMismatchError, CaseStoreError)
    assert issubclass(CaseStoreError, ValueError)


def test_open_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CaseStoreError, match="not found"):
        CaseStore.open(tmp_path / "nowhere", EMBEDDER, DIM)


def test_open_detects_truncated_cases(filled_store: FilledStore, library: Path) -> None:
    cases_path = library / "cases.jsonl"
    lines = cases_path.read_text().splitlines(keepends=True)
    cases_path.write_text("".join(lines[:9]))

    with pytest.raises(CaseStoreError) as error:
        CaseStore.open(library, EMBEDDER, DIM)

    message = str(error.value)
    assert "12 vectors" in message
    assert "9 records" in message
    assert f"delete {library}" in message


def test_open_detects_missing_index(filled_store: FilledStore, library: Path) -> None:
    (library / "index.faiss").unlink()

    with pytest.raises(CaseStoreError, match="index.faiss is missing"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_open_detects_corrupt_index(filled_store: FilledStore, library: Path) -> None:
    (library / "index.faiss").write_bytes(b"not a faiss index")

    with pytest.raises(CaseStoreError, match="cannot read FAISS index"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_open_detects_corrupt_manifest(filled_store: FilledStore, library: Path) -> None:
    (library / "manifest.json").write_text("{not json")

    with pytest.raises(CaseStoreError, match="manifest.json"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_open_detects_bad_json_line(filled_store: FilledStore, library: Path) -> None:
    cases_path = library / "cases.jsonl"
    lines = cases_path.read_text().splitlines(keepends=True)
    lines[3] = "{broken\n"
    cases_path.write_text("".join(lines))

    with pytest.raises(CaseStoreError, match="line 4"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_add_rejects_wrong_dimension(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)

    with pytest.raises(CaseStoreError) as error:
        store.add(make_records(2), make_vectors(2, dim=8))

    assert "dim 16" in str(error.value)
    assert len(store) == 0


def test_add_rejects_row_count_mismatch(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)

    with pytest.raises(CaseStoreError, match=r"expected \(3, 16\)"):
        store.add(make_records(3), make_vectors(2))


def test_add_rejects_one_dimensional(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)

    with pytest.raises(CaseStoreError, match="shape"):
        store.add(make_records(1), make_vectors(1)[0])


def test_add_converts_float64(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = np.random.default_rng(3).normal(size=(4, DIM)) * 25.0

    ids = store.add(make_records(4), vectors)
    stored = faiss.read_index(str(library / "index.faiss")).reconstruct_n(0, 4)

    assert vectors.dtype == np.float64
    assert stored.dtype == np.float32
    assert np.linalg.norm(stored, axis=1) == pytest.approx(np.ones(4), abs=1e-6)
    assert store.search(vectors[2], k=1)[0].record["id"] == ids[2]
    assert store.search(vectors[2], k=1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_add_rejects_nan(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = make_vectors(3)
    vectors[1, 4] = np.nan

    with pytest.raises(CaseStoreError, match=r"rows \[1\].*NaN"):
        store.add(make_records(3), vectors)

    assert len(store) == 0
    assert len(CaseStore.open(library, EMBEDDER, DIM)) == 0


def test_add_rejects_infinity(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = make_vectors(2)
    vectors[0, 0] = np.inf

    with pytest.raises(CaseStoreError, match="infinity"):
        store.add(make_records(2), vectors)


def test_add_rejects_zero_row(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = make_vectors(3)
    vectors[2] = 0.0

    with pytest.raises(CaseStoreError, match=r"rows \[2\].*zeros"):
        store.add(make_records(3), vectors)


def test_add_rejects_duplicate_id(filled_store: FilledStore) -> None:
    store, _, ids = filled_store

    with pytest.raises(CaseStoreError, match="already exists"):
        store.add([{"id": ids[0], "instruction": "again"}], make_vectors(1, seed=2))

    assert len(store) == 12


def test_add_rejects_unserialisable_record(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)

    with pytest.raises(CaseStoreError, match="JSON"):
        store.add([{"instruction": "x", "params": {"mask": object()}}], make_vectors(1))


def test_no_temp_or_pickle_files(filled_store: FilledStore, library: Path) -> None:
    store, _, ids = filled_store
    store.update(ids[0], {"score": 0.5})

    names = sorted(path.name for path in library.iterdir())

    assert names == [".lock", "cases.jsonl", "index.faiss", "manifest.json", "vectors.npy"]
    assert not list(library.rglob("*.pkl"))
    assert not list(library.rglob("*.pickle"))
    assert not list(library.rglob("*.tmp"))


def test_manifest_counts_cases(filled_store: FilledStore, library: Path) -> None:
    manifest = json.loads((library / "manifest.json").read_text())

    assert manifest["count"] == 12
    assert manifest["index_type"] == "flat"


def test_hnsw_above_threshold(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(case_store, "HNSW_THRESHOLD", 20)
    store = CaseStore.create(library, EMBEDDER, DIM)
    first = make_vectors(15, seed=1)
    second = make_vectors(15, seed=2)

    first_ids = store.add(make_records(15), first)
    assert store.index_type == "flat"
    second_ids = store.add(make_records(15), second)

    manifest = json.loads((library / "manifest.json").read_text())
    index = faiss.read_index(str(library / "index.faiss"))
    assert store.index_type == "hnsw"
    assert manifest["index_type"] == "hnsw"
    assert manifest["count"] == 30
    assert isinstance(index, faiss.IndexHNSWFlat)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert index.hnsw.nb_neighbors(1) == case_store.HNSW_M
    assert store.search(first[3], k=1)[0].record["id"] == first_ids[3]
    assert store.search(second[9], k=1)[0].record["id"] == second_ids[9]
    assert store.search(second[9], k=1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_hnsw_reopens(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(case_store, "HNSW_THRESHOLD", 10)
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = make_vectors(25, seed=4)
    ids = store.add(make_records(25), vectors)

    reopened = CaseStore.open(library, EMBEDDER, DIM)

    assert reopened.index_type == "hnsw"
    assert reopened.stats()["index_type"] == "hnsw"
    assert reopened.search(vectors[20], k=1)[0].record["id"] == ids[20]


def test_update_persists(filled_store: FilledStore, library: Path) -> None:
    store, vectors, ids = filled_store

    store.update(ids[2], {"params": {"amount": 0.9}, "accepted": True})

    reopened = CaseStore.open(library, EMBEDDER, DIM)
    record = reopened.get(ids[2])
    assert record["params"] == {"amount": 0.9}
    assert record["accepted"] is True
    assert record["instruction"] == "edit number 2"
    assert reopened.search(vectors[2], k=1)[0].record["id"] == ids[2]


def test_update_unknown_case(filled_store: FilledStore) -> None:
    store, _, _ = filled_store

    with pytest.raises(CaseStoreError, match="not found"):
        store.update("case-missing", {"tool": "adjust"})


def test_update_rejects_id_change(filled_store: FilledStore) -> None:
    store, _, ids = filled_store

    with pytest.raises(CaseStoreError, match="cannot change the id"):
        store.update(ids[0], {"id": "renamed"})


def test_get_returns_copy(filled_store: FilledStore) -> None:
    store, _, ids = filled_store

    record = store.get(ids[1])
    record["tool"] = "changed"

    assert store.get(ids[1])["tool"] == "instruct_pix2pix"
    assert store.get("case-unknown") is None


def test_stats_counts(filled_store: FilledStore) -> None:
    store, _, _ = filled_store

    stats = store.stats()

    assert stats["embedder"] == EMBEDDER
    assert stats["dim"] == DIM
    assert stats["index_type"] == "flat"
    assert stats["count"] == 12
    assert stats["by_tool"] == {"adjust": 6, "instruct_pix2pix": 6}
    assert stats["by_edit_kind"] == {"adjust": 4, "style": 4, "weather": 4}


def test_concurrent_add_and_search(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    store.add(make_records(5), make_vectors(5, seed=10))
    errors: list[BaseException] = []

    def add_batches(seed: int) -> None:
        try:
            for offset in range(5):
                store.add(make_records(2), make_vectors(2, seed=seed * 100 + offset))
        except BaseException as error:
            errors.append(error)

    def search_repeatedly() -> None:
        try:
            for number in range(30):
                store.search(make_vectors(1, seed=number)[0], k=3)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=add_batches, args=(seed,)) for seed in (1, 2)]
    threads += [threading.Thread(target=search_repeatedly) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(store) == 25
    assert len(CaseStore.open(library, EMBEDDER, DIM)) == 25


def test_search_tool_returns_json(filled_store: FilledStore) -> None:
    store, vectors, ids = filled_store
    queries: list[str] = []

    def embed_text(text: str) -> np.ndarray:
        queries.append(text)
        return vectors[5]

    tool = make_case_search_tool(store, embed_text)
    matches = json.loads(tool.invoke({"query": "brighter please", "k": 2}))

    assert tool.name == "search_cases"
    assert set(tool.args) == {"query", "k"}
    assert queries == ["brighter please"]
    assert len(matches) == 2
    assert set(matches[0]) == {
        "id",
        "instruction",
        "tool",
        "params",
        "score",
        "text_score",
        "image_score",
    }
    assert matches[0]["id"] == ids[5]
    assert matches[0]["instruction"] == "edit number 5"
    assert matches[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert matches[0]["text_score"] == pytest.approx(1.0, abs=1e-4)
    assert matches[0]["image_score"] is None


def test_search_tool_default_k(filled_store: FilledStore) -> None:
    store, vectors, _ = filled_store
    tool = make_case_search_tool(store, lambda text: vectors[0])

    matches = json.loads(tool.invoke({"query": "anything"}))

    assert len(matches) == 5


def load_starter_cases() -> list[dict]:
    lines = STARTER_CASES.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_starter_cases_size_and_uniqueness() -> None:
    cases = load_starter_cases()
    ids = [case["id"] for case in cases]
    instructions = [case["instruction"].strip().lower() for case in cases]

    assert len(cases) >= 150
    assert len(set(ids)) == len(ids)
    assert len(set(instructions)) == len(instructions)


def test_starter_cases_fields() -> None:
    for case in load_starter_cases():
        assert set(case) == {"id", "instruction", "tool", "params", "edit_kind", "source"}, case
        assert case["tool"] in {"adjust", "instruct_pix2pix"}, case
        assert case["source"] == "starter", case


def test_starter_adjust_cases_valid() -> None:
    adjust_cases = [case for case in load_starter_cases() if case["tool"] == "adjust"]
    operations = {case["params"]["operation"] for case in adjust_cases}

    assert operations == set(ADJUST_OPERATIONS)
    for case in adjust_cases:
        params = case["params"]
        assert params["operation"] in ADJUST_OPERATIONS, case
        if params["operation"] in OPERATIONS_WITHOUT_AMOUNT:
            assert "amount" not in params, case
        else:
            assert isinstance(params["amount"], (int, float)), case


def test_starter_pix2pix_params_in_range() -> None:
    cases = [case for case in load_starter_cases() if case["tool"] == "instruct_pix2pix"]

    assert len(cases) >= 100
    for case in cases:
        params = case["params"]
        assert 3 <= params["guidance_scale"] <= 12, case
        assert 1 <= params["image_guidance_scale"] <= 2.5, case
        assert 10 <= params["steps"] <= 100, case
        assert isinstance(params["steps"], int), case


def test_starter_cases_load_into_store(library: Path) -> None:
    cases = load_starter_cases()
    store = CaseStore.create(library, EMBEDDER, DIM)

    ids = store.add(cases, make_vectors(len(cases), seed=7))

    assert ids == [case["id"] for case in cases]
    assert store.stats()["by_tool"]["adjust"] >= 60


def test_failed_write_leaves_no_temp_file(
    filled_store: FilledStore, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, _ = filled_store

    def fail_write(index: faiss.Index, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(case_store.faiss, "write_index", fail_write)
    with pytest.raises(CaseStoreError, match="cannot write case library.*disk full"):
        store.add(make_records(1), make_vectors(1, seed=3))

    names = sorted(path.name for path in library.iterdir())
    assert names == [".lock", "cases.jsonl", "index.faiss", "manifest.json", "vectors.npy"]
    assert len(store) == 12
    monkeypatch.undo()
    assert len(CaseStore.open(library, EMBEDDER, DIM)) == 12


def test_search_accepts_numpy_k(filled_store: FilledStore) -> None:
    store, vectors, ids = filled_store

    matches = store.search(vectors[1], k=np.int64(2))

    assert len(matches) == 2
    assert matches[0].record["id"] == ids[1]


IMAGE_DIM = 8

# Adds 2 cases to the 3-case library in argv[1] and exits the process just before the file named
# argv[2] is written, as a crash or a kill would.
CRASHING_ADD = """
import os
import sys

import numpy as np

from tools import case_store

folder, stop_before, with_images = sys.argv[1], sys.argv[2], sys.argv[3] == "images"
write_atomically = case_store._write_atomically


def write_or_exit(directory, name, write):
    if name == stop_before:
        os._exit(1)
    write_atomically(directory, name, write)


case_store._write_atomically = write_or_exit
store = case_store.CaseStore.open(folder, "test-embedder", 16)
vectors = np.random.default_rng(50).normal(size=(2, 16))
image_vectors = np.ones((2, 8)) if with_images else None
store.add([{"id": "lost-1"}, {"id": "lost-2"}], vectors, image_vectors)
"""


def run_crashing_add(library: Path, stop_before: str, with_images: bool = False) -> int:
    arguments = [library, stop_before, "images" if with_images else "text"]
    completed = subprocess.run(
        [sys.executable, "-c", CRASHING_ADD, *map(str, arguments)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return completed.returncode


def make_image_vectors(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, IMAGE_DIM)).astype(np.float32)


def test_create_with_image_dim(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM, image_dim=IMAGE_DIM)
    manifest = json.loads((library / "manifest.json").read_text())
    image_vectors = np.load(library / "image_vectors.npy", allow_pickle=False)

    assert store.image_dim == IMAGE_DIM
    assert manifest["image_dim"] == IMAGE_DIM
    assert image_vectors.shape == (0, IMAGE_DIM)
    assert image_vectors.dtype == np.float32


def test_vectors_file_round_trip(filled_store: FilledStore, library: Path) -> None:
    _, vectors, _ = filled_store

    stored = np.load(library / "vectors.npy", allow_pickle=False)

    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert stored.dtype == np.float32
    assert stored.shape == (12, DIM)
    assert stored == pytest.approx(expected, abs=1e-6)
    assert not (library / "image_vectors.npy").exists()


def test_image_vectors_round_trip(filled_store: FilledStore, library: Path) -> None:
    store, _, ids = filled_store
    image_vectors = make_image_vectors(3, seed=1) * 7.0
    image_vectors[1] = 0.0

    new_ids = store.add(make_records(3), make_vectors(3, seed=2), image_vectors)

    reopened = CaseStore.open(library, EMBEDDER, DIM)
    stored = np.load(library / "image_vectors.npy", allow_pickle=False)
    manifest = json.loads((library / "manifest.json").read_text())
    expected = image_vectors[[0, 2]] / np.linalg.norm(image_vectors[[0, 2]], axis=1, keepdims=True)
    assert manifest["image_dim"] == IMAGE_DIM
    assert reopened.image_dim == IMAGE_DIM
    assert stored.shape == (15, IMAGE_DIM)
    assert not stored[:12].any()
    assert not stored[13].any()
    assert stored[[12, 14]] == pytest.approx(expected, abs=1e-6)
    assert reopened.stats()["with_image"] == 2
    assert reopened.get(new_ids[2]) == store.get(new_ids[2])
    assert reopened.get(ids[0]) == store.get(ids[0])


def test_add_without_images_pads_zero_rows(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    store.add(make_records(2), make_vectors(2), make_image_vectors(2))

    store.add(make_records(3), make_vectors(3, seed=1))

    stored = np.load(library / "image_vectors.npy", allow_pickle=False)
    assert stored.shape == (5, IMAGE_DIM)
    assert stored[:2].any(axis=1).all()
    assert not stored[2:].any()


def test_add_rejects_wrong_image_dim(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    store.add(make_records(1), make_vectors(1), make_image_vectors(1))

    with pytest.raises(CaseStoreError) as error:
        store.add(make_records(2), make_vectors(2, seed=1), np.ones((2, 4)))

    assert f"expected (2, {IMAGE_DIM})" in str(error.value)
    assert len(store) == 1


def test_add_rejects_nan_image_vector(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    image_vectors = make_image_vectors(2)
    image_vectors[1, 0] = np.nan

    with pytest.raises(CaseStoreError, match=r"image vectors: rows \[1\].*NaN"):
        store.add(make_records(2), make_vectors(2), image_vectors)

    assert store.image_dim is None


def test_search_image_reranks(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    text = make_vectors(1, seed=3)[0]
    image = make_image_vectors(1, seed=4)[0]
    records = [{"id": "text-only"}, {"id": "both"}, {"id": "other-image"}]
    image_vectors = np.stack([np.zeros(IMAGE_DIM), image, -image])
    nearby_text = text + 0.3 * make_vectors(1, seed=5)[0]
    store.add(records, np.stack([nearby_text, text, text]), image_vectors)

    matches = store.search(text, k=3, image_vector=image)

    assert [match.record["id"] for match in matches] == ["both", "text-only", "other-image"]
    assert matches[0].score == pytest.approx(1.0, abs=1e-5)
    assert matches[0].image_score == pytest.approx(1.0, abs=1e-5)
    assert matches[1].image_score is None
    assert matches[1].score == pytest.approx(matches[1].text_score)
    assert 0.4 < matches[1].score < 1.0
    assert matches[2].text_score == pytest.approx(1.0, abs=1e-5)
    assert matches[2].image_score == pytest.approx(-1.0, abs=1e-5)
    assert matches[2].score == pytest.approx(0.7 * 1.0 + 0.3 * -1.0, abs=1e-5)


def test_search_image_weight(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = make_vectors(2, seed=5)
    image_vectors = make_image_vectors(2, seed=6)
    store.add(make_records(2), vectors, image_vectors)

    match = store.search(vectors[0], k=1, image_vector=image_vectors[1], image_weight=0.5)[0]

    assert match.score == pytest.approx(0.5 * match.text_score + 0.5 * match.image_score)
    with pytest.raises(CaseStoreError, match="invalid image_weight"):
        store.search(vectors[0], image_vector=image_vectors[1], image_weight=1.5)


def test_search_text_parts_without_image(filled_store: FilledStore) -> None:
    store, vectors, ids = filled_store

    matches = store.search(vectors[4], k=3)

    assert isinstance(matches[0], CaseMatch)
    assert matches[0].record["id"] == ids[4]
    assert all(match.image_score is None for match in matches)
    assert [match.text_score for match in matches] == [match.score for match in matches]


def test_search_image_query_without_image_cases(filled_store: FilledStore) -> None:
    store, vectors, _ = filled_store
    text_only = store.search(vectors[6], k=4)

    matches = store.search(vectors[6], k=4, image_vector=make_image_vectors(1)[0])

    assert [match.record for match in matches] == [match.record for match in text_only]
    assert [match.score for match in matches] == pytest.approx([m.score for m in text_only])
    assert all(match.image_score is None for match in matches)


def test_search_rejects_wrong_image_query(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM, image_dim=IMAGE_DIM)
    store.add(make_records(1), make_vectors(1))

    with pytest.raises(CaseStoreError, match=rf"\({IMAGE_DIM},\)"):
        store.search(make_vectors(1)[0], image_vector=np.ones(3))


@pytest.mark.parametrize("stop_before", ["index.faiss", "manifest.json"])
def test_open_after_killed_add(
    library: Path, stop_before: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    vectors = make_vectors(3, seed=8)
    ids = store.add(make_records(3), vectors)

    assert run_crashing_add(library, stop_before) == 1
    assert np.load(library / "vectors.npy", allow_pickle=False).shape == (5, DIM)
    assert len((library / "cases.jsonl").read_text().splitlines()) == 5

    with caplog.at_level(logging.WARNING, logger="tools.case_store"):
        reopened = CaseStore.open(library, EMBEDDER, DIM)

    assert [record["id"] for record in reopened.records] == ids
    assert reopened.search(vectors[1], k=1)[0].record["id"] == ids[1]
    assert str(library) in caplog.text
    assert "dropping 2 rows" in caplog.text
    assert np.load(library / "vectors.npy", allow_pickle=False).shape == (3, DIM)
    assert faiss.read_index(str(library / "index.faiss")).ntotal == 3
    assert not list(library.glob("*.tmp"))


@pytest.mark.parametrize("stop_before", ["index.faiss", "manifest.json"])
def test_add_after_killed_add(library: Path, stop_before: str) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    store.add(make_records(3), make_vectors(3, seed=8))
    assert run_crashing_add(library, stop_before) == 1
    reopened = CaseStore.open(library, EMBEDDER, DIM)
    extra = make_vectors(2, seed=9)

    new_ids = reopened.add([{"id": "lost-1"}, {"id": "kept"}], extra)

    final = CaseStore.open(library, EMBEDDER, DIM)
    assert new_ids == ["lost-1", "kept"]
    assert len(final) == 5
    assert final.search(extra[1], k=1)[0].record["id"] == "kept"


def test_open_after_killed_first_image_add(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    store.add(make_records(3), make_vectors(3, seed=8))

    assert run_crashing_add(library, "index.faiss", with_images=True) == 1
    assert (library / "image_vectors.npy").exists()
    reopened = CaseStore.open(library, EMBEDDER, DIM)

    assert len(reopened) == 3
    assert reopened.image_dim is None
    assert not (library / "image_vectors.npy").exists()


def test_open_rejects_missing_vector_row(filled_store: FilledStore, library: Path) -> None:
    stored = np.load(library / "vectors.npy", allow_pickle=False)
    np.save(library / "vectors.npy", stored[:11], allow_pickle=False)

    with pytest.raises(CaseStoreError) as error:
        CaseStore.open(library, EMBEDDER, DIM)

    message = str(error.value)
    assert "vectors.npy has 11 vectors" in message
    assert "manifest.json records 12 cases" in message
    assert f"delete {library}" in message
    assert "\n" not in message


def test_open_rejects_missing_image_row(library: Path) -> None:
    store = CaseStore.create(library, EMBEDDER, DIM)
    store.add(make_records(4), make_vectors(4), make_image_vectors(4))
    stored = np.load(library / "image_vectors.npy", allow_pickle=False)
    np.save(library / "image_vectors.npy", stored[:2], allow_pickle=False)

    with pytest.raises(CaseStoreError, match="image_vectors.npy has 2 vectors"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_open_rejects_missing_vectors_file(filled_store: FilledStore, library: Path) -> None:
    (library / "vectors.npy").unlink()

    with pytest.raises(CaseStoreError, match="vectors.npy is missing"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_open_rejects_pickled_vectors(filled_store: FilledStore, library: Path) -> None:
    np.save(library / "vectors.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)

    with pytest.raises(CaseStoreError, match="cannot read .*vectors.npy"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_open_rebuilds_short_index(filled_store: FilledStore, library: Path) -> None:
    _, vectors, ids = filled_store
    short = faiss.IndexFlatIP(DIM)
    short.add(np.ascontiguousarray(vectors[:5]))
    faiss.write_index(short, str(library / "index.faiss"))

    reopened = CaseStore.open(library, EMBEDDER, DIM)

    assert reopened.search(vectors[10], k=1)[0].record["id"] == ids[10]
    assert faiss.read_index(str(library / "index.faiss")).ntotal == 12


def test_open_upgrades_version_one(filled_store: FilledStore, library: Path) -> None:
    store, vectors, ids = filled_store
    before = store.search(vectors[3], k=4)
    expected = np.load(library / "vectors.npy", allow_pickle=False)
    (library / "vectors.npy").unlink()
    manifest = json.loads((library / "manifest.json").read_text())
    del manifest["image_dim"]
    (library / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))

    reopened = CaseStore.open(library, EMBEDDER, DIM)

    after = reopened.search(vectors[3], k=4)
    upgraded = json.loads((library / "manifest.json").read_text())
    assert [match.record["id"] for match in after] == [match.record["id"] for match in before]
    assert np.load(library / "vectors.npy", allow_pickle=False) == pytest.approx(expected)
    assert upgraded["format_version"] == 2
    assert upgraded["image_dim"] is None
    assert [record["id"] for record in reopened.records] == ids


def test_open_rejects_version_one_hnsw(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(case_store, "HNSW_THRESHOLD", 10)
    CaseStore.create(library, EMBEDDER, DIM).add(make_records(12), make_vectors(12))
    (library / "vectors.npy").unlink()
    manifest = json.loads((library / "manifest.json").read_text())
    (library / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))

    with pytest.raises(CaseStoreError, match="HNSW index and no vectors.npy.*delete"):
        CaseStore.open(library, EMBEDDER, DIM)


def test_update_rewrites_only_cases(filled_store: FilledStore, library: Path) -> None:
    store, _, ids = filled_store
    before = {
        name: (library / name).stat().st_mtime_ns
        for name in ("vectors.npy", "index.faiss", "manifest.json")
    }

    store.update(ids[1], {"successes": 2})

    after = {name: (library / name).stat().st_mtime_ns for name in before}
    assert after == before
    assert CaseStore.open(library, EMBEDDER, DIM).get(ids[1])["successes"] == 2


def _add_twenty(directory: str, worker: int) -> None:
    store = CaseStore.open(directory, "test-embedder", 8)
    for number in range(20):
        vector = np.random.default_rng(worker * 100 + number).normal(size=(1, 8)).astype(np.float32)
        store.add([{"id": f"w{worker}-{number}", "instruction": f"edit {worker} {number}", "tool": "adjust",
                    "params": {}}], vector)


def test_processes_adding_together_lose_nothing(tmp_path):
    import multiprocessing

    directory = tmp_path / "cases"
    CaseStore.create(directory, "test-embedder", 8)
    # Each process opened the library before the others wrote, so every add must first reload their cases.
    workers = [multiprocessing.get_context("spawn").Process(target=_add_twenty, args=(str(directory), worker))
               for worker in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    reopened = CaseStore.open(directory, "test-embedder", 8)

    assert [process.exitcode for process in workers] == [0, 0, 0]
    assert len(reopened) == 60
    assert {case["id"] for case in reopened.records} == {f"w{w}-{n}" for w in range(3) for n in range(20)}
