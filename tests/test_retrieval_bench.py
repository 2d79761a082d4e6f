"""The retrieval benchmark on a small case library: structure and values of its result, and its command line."""

from __future__ import annotations

import json
import subprocess
import sys

import faiss
import numpy as np
import pytest

from benchmarks import retrieval
from benchmarks.harness import REPO
from tools import case_store

CASES = 2000
QUERIES = 50
QUERY_SETS = ("random", "near_duplicate")


@pytest.fixture(scope="module")
def result() -> dict:
    """One small measurement, shared by the tests that read it."""
    return retrieval.measure(CASES, queries=QUERIES)


def test_measure_records_run_settings(result: dict) -> None:
    assert result["cases"] == CASES
    assert result["dim"] == retrieval.DIM
    assert result["queries"] == QUERIES
    assert result["k"] == retrieval.K
    assert result["product_index"] == "flat"
    assert set(result["indexes"]) == {"flat", "hnsw"}


def test_measure_uses_product_hnsw_constants(result: dict) -> None:
    settings = result["hnsw_settings"]
    assert settings["M"] == case_store.HNSW_M
    assert settings["ef_construction"] == case_store.HNSW_EF_CONSTRUCTION
    assert settings["ef_search"] == max(case_store.HNSW_EF_SEARCH, retrieval.K)


def test_measure_flat_recall_exact(result: dict) -> None:
    for name in QUERY_SETS:
        assert result["indexes"]["flat"]["query_sets"][name]["recall_at_10"] == 1.0


def test_measure_flat_finds_sources(result: dict) -> None:
    scores = result["indexes"]["flat"]["query_sets"]["near_duplicate"]
    assert scores["source_at_1"] == 1.0
    assert scores["source_in_top_10"] == 1.0


def test_measure_hnsw_recall_range(result: dict) -> None:
    for name in QUERY_SETS:
        recall = result["indexes"]["hnsw"]["query_sets"][name]["recall_at_10"]
        assert 0.0 < recall <= 1.0
        # Recall is a mean of hits out of K per query, so it is a multiple of 1 / (K * QUERIES).
        assert round(recall * retrieval.K * QUERIES, 6) == round(recall * retrieval.K * QUERIES)


def test_measure_latency_order(result: dict) -> None:
    for index in result["indexes"].values():
        for scores in index["query_sets"].values():
            assert 0.0 < scores["p50_ms"]
            assert scores["p50_ms"] <= scores["p99_ms"]


def test_measure_thread_check(result: dict) -> None:
    threads = result["faiss_threads"]
    for index in result["indexes"].values():
        check = index["thread_check"]
        assert check["queries"] == QUERIES
        assert check["by_threads"]["1"]["p50_ms"] <= check["by_threads"]["1"]["p99_ms"]
        assert check["by_threads"][str(threads)]["p50_ms"] > 0.0


def test_measure_index_bytes(result: dict) -> None:
    flat_bytes = result["indexes"]["flat"]["index_bytes"]
    hnsw_bytes = result["indexes"]["hnsw"]["index_bytes"]
    assert flat_bytes > CASES * retrieval.DIM * 4
    # HNSW stores the same vectors plus 2*M neighbour ids per case on level 0.
    assert hnsw_bytes > flat_bytes + CASES * 2 * case_store.HNSW_M * 4


def test_serialised_bytes_match_faiss() -> None:
    vectors = np.random.default_rng(2).standard_normal((300, 32)).astype(np.float32)
    for index_type in ("flat", "hnsw"):
        index = case_store._build_index(index_type, 32, vectors)
        assert retrieval.serialised_bytes(index) == faiss.serialize_index(index).nbytes


def test_measure_build_values(result: dict) -> None:
    for index in result["indexes"].values():
        assert index["build_s"] > 0.0
        # The growth can be below the index size when the allocator reuses freed pages, so only its presence is checked.
        assert index["rss_growth_mib"] is not None


def test_measure_near_duplicate_cosine(result: dict) -> None:
    cosine = result["near_duplicate_cosine"]
    assert cosine["mean"] == pytest.approx(retrieval.NEAR_DUPLICATE_COSINE, abs=0.02)
    assert cosine["min"] > 0.7
    assert cosine["max"] < 0.9
    assert result["noise_scale"] == pytest.approx(retrieval.near_duplicate_noise_scale(retrieval.DIM))


def test_measure_result_is_json(result: dict) -> None:
    assert json.loads(json.dumps(result)) == result


def test_noise_scale_reaches_cosine() -> None:
    rng = np.random.default_rng(1)
    dim = 384
    vectors = rng.standard_normal((500, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noisy = vectors + rng.standard_normal((500, dim)) * retrieval.near_duplicate_noise_scale(dim, 0.6)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert np.mean(np.sum(vectors * noisy, axis=1)) == pytest.approx(0.6, abs=0.02)


def test_measure_rejects_too_few_cases() -> None:
    with pytest.raises(ValueError, match="invalid cases 5"):
        retrieval.measure(5)


def test_measure_restores_product_constants() -> None:
    settings = retrieval.HnswSettings(m=8, ef_construction=20, ef_search=16)
    before = (case_store.HNSW_M, case_store.HNSW_EF_CONSTRUCTION, case_store.HNSW_EF_SEARCH)

    small = retrieval.measure(200, dim=32, queries=10, hnsw=settings)

    assert small["hnsw_settings"] == {"M": 8, "ef_construction": 20, "ef_search": 16}
    assert (case_store.HNSW_M, case_store.HNSW_EF_CONSTRUCTION, case_store.HNSW_EF_SEARCH) == before


def test_cli_one_line_per_size() -> None:
    command = [sys.executable, "-m", "benchmarks.retrieval", "--cases", "300", "500", "--dim", "32", "--queries", "10"]
    child = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert [json.loads(line)["cases"] for line in lines] == [300, 500]
    assert "building hnsw" in child.stderr


def test_cli_invalid_cases_message() -> None:
    with pytest.raises(SystemExit) as exit_info:
        retrieval.main(["--cases", "3"])

    assert str(exit_info.value) == "invalid cases 3: expected an integer of at least 10"


def test_cli_rejects_zero_ef_search() -> None:
    with pytest.raises(SystemExit) as exit_info:
        retrieval.main(["--cases", "100", "--ef-search", "0"])

    assert str(exit_info.value) == "invalid --ef-search 0: expected a positive integer"
