"""Retrieval: build time, single-query latency, memory and recall@10 of the case library's flat and HNSW indexes.

Run alone as `python -m benchmarks.retrieval --cases 10000 100000`. It prints one JSON object per size on stdout, one
line each, and progress on stderr. With more than one size, each size runs in its own child process, so that one
size's memory numbers do not include another's.

Both indexes are built by `tools.case_store._build_index`, so they have the product's HNSW constants unless
--hnsw-m, --ef-construction or --ef-search replace them for a run. The cases are random unit vectors, the hardest
data for HNSW because they have no neighbourhood structure for its graph walk to follow. Two query sets are measured:
"random" (fresh random unit vectors, whose neighbours are barely nearer than the other cases) and "near_duplicate"
(a stored case's vector plus Gaussian noise, at a cosine of about 0.8 to it, like a rephrased instruction). For the
near duplicates, "source_at_1" is the share of queries whose first result is the case they were made from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from benchmarks.harness import REPO, peak_rss_mib, percentile
from tools import case_store

DIM = 512
K = 10
QUERIES = 1000
SIZES = (10_000, 100_000)
NEAR_DUPLICATE_COSINE = 0.8
# Untimed queries before each timed run, so page faults on first touch are not counted.
WARMUP_QUERIES = 10
# Queries per thread count in the thread check, fewer than all because flat search at 2 threads is slow.
THREAD_CHECK_QUERIES = 200

# Sizes above this get a duration estimate from a build of this many cases before the full build starts.
CALIBRATION_CASES = 10_000
# Growth of the run time with the number of cases, measured on random 512-dimensional vectors with M=32 and
# efConstruction=80 (faiss-cpu 1.15.1, 2-core AMD EPYC). The HNSW build took 3.3 s, 30 to 58 s and 643 s for 10,000,
# 100,000 and 1,000,000 cases, slower while other processes ran. A single flat query took 0.44 ms, 7.4 ms and 62 ms.
# NOTE: the estimate came within 10% of the 1,000,000 run, but it was up to 2 times too low for 100,000 cases.
BUILD_TIME_EXPONENT = 1.15
FLAT_QUERY_TIME_EXPONENT = 1.07
# Factor on the estimated index memory that must be available before the indexes are built.
MEMORY_MARGIN = 1.25

MIB = 2**20
FLOAT32_BYTES = 4
# Per case, faiss's HNSW stores 2*M int32 neighbours on level 0, an int32 level and an int64 offset. A case reaches
# level 1 with probability 1/M and then has M neighbours there, so the upper levels add about one neighbour per case.
HNSW_LINK_BYTES = 4
HNSW_BOOKKEEPING_BYTES = 4 + 8


@dataclass(frozen=True)
class HnswSettings:
    """HNSW settings that replace the product's constants for one run, to compare them."""

    m: int
    """Neighbours per case on the upper levels (faiss's M). Level 0 keeps 2*M."""
    ef_construction: int
    """Candidate list size while inserting a case."""
    ef_search: int
    """Candidate list size while searching, raised to k when smaller, as CaseStore.search does."""


def measure(
    cases: int,
    *,
    dim: int = DIM,
    queries: int = QUERIES,
    seed: int = 0,
    hnsw: HnswSettings | None = None,
) -> dict:
    """Build a flat and an HNSW index over `cases` random unit vectors, then time and score single queries on both.

    hnsw replaces the product's HNSW constants for this run (None keeps them). Returns a JSON-able dict: the settings,
    the near-duplicate noise scale and the cosine it reached, and per index its build time, serialised bytes, resident
    memory growth while building, query latency percentiles and recall@10 per query set, and a thread check.
    """
    _validate_sizes(cases, dim, queries)
    started = time.perf_counter()
    load_before = _load_average()
    rng = np.random.default_rng(seed)
    vectors = _random_unit_vectors(rng, cases, dim)
    query_sets, sources, noise_scale = _make_query_sets(rng, vectors, queries)
    cosines = np.einsum("ij,ij->i", query_sets["near_duplicate"], vectors[sources])
    _progress(f"{cases} cases: near-duplicate noise scale {noise_scale:.5f}, mean cosine {cosines.mean():.3f}")

    with _product_settings(hnsw):
        if cases > 2 * CALIBRATION_CASES:
            _check_memory(cases, dim)
            _progress(_estimate_duration(vectors, query_sets["random"], cases))

        flat = _measure_index("flat", vectors)
        exact = {name: flat.index.search(matrix, K)[1] for name, matrix in query_sets.items()}
        hnsw_built = _measure_index("hnsw", vectors)

        indexes = {}
        for built in (flat, hnsw_built):
            indexes[built.name] = _measure_queries(built, query_sets, exact, sources)

    return {
        "cases": cases,
        "dim": dim,
        "queries": queries,
        "k": K,
        "seed": seed,
        "product_index": "hnsw" if cases >= case_store.HNSW_THRESHOLD else "flat",
        "hnsw_settings": _read_hnsw_settings(hnsw_built.index),
        "noise_scale": noise_scale,
        "near_duplicate_cosine": {
            "mean": float(cosines.mean()),
            "min": float(cosines.min()),
            "max": float(cosines.max()),
        },
        "faiss_threads": faiss.omp_get_max_threads(),
        # Other processes on the machine lengthen the tail latencies, so the 1-minute load shows how busy it was.
        "load_average": {"before": load_before, "after": _load_average()},
        "indexes": indexes,
        "peak_rss_mib": peak_rss_mib(),
        "seconds": time.perf_counter() - started,
    }


# Data


def _validate_sizes(cases: int, dim: int, queries: int) -> None:
    for name, value, minimum in (("cases", cases, K), ("dim", dim, 2), ("queries", queries, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"invalid {name} {value!r}: expected an integer of at least {minimum}")


def _random_unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    return _normalise(rng.standard_normal((count, dim), dtype=np.float32))


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix, dtype=np.float32)


def near_duplicate_noise_scale(dim: int, cosine: float = NEAR_DUPLICATE_COSINE) -> float:
    """Return the standard deviation of Gaussian noise per component that moves a unit vector to about `cosine`.

    For a unit vector v and noise e with d independent components of deviation s, |v + e|^2 is about 1 + d*s^2 and
    v.(v + e) is about 1, so the cosine is about 1 / sqrt(1 + d*s^2). Solving for s gives sqrt((1/cosine^2 - 1) / d).
    """
    return math.sqrt((1.0 / cosine**2 - 1.0) / dim)


def _make_query_sets(
    rng: np.random.Generator, vectors: np.ndarray, queries: int
) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Return the random and near-duplicate query sets, the case each near-duplicate comes from and the noise scale."""
    cases, dim = vectors.shape
    random_queries = _random_unit_vectors(rng, queries, dim)

    noise_scale = near_duplicate_noise_scale(dim)
    sources = rng.choice(cases, size=queries, replace=queries > cases)
    noise = rng.standard_normal((queries, dim), dtype=np.float32) * np.float32(noise_scale)
    near_duplicates = _normalise(vectors[sources] + noise)
    return {"random": random_queries, "near_duplicate": near_duplicates}, sources, noise_scale


# Settings


@contextlib.contextmanager
def _product_settings(hnsw: HnswSettings | None) -> Iterator[None]:
    """Replace the product's HNSW constants while the block runs, so that _build_index uses the given settings."""
    if hnsw is None:
        yield
        return

    names = ("HNSW_M", "HNSW_EF_CONSTRUCTION", "HNSW_EF_SEARCH")
    previous = {name: getattr(case_store, name) for name in names}
    replacements = dict(zip(names, (hnsw.m, hnsw.ef_construction, hnsw.ef_search), strict=True))
    for name, value in replacements.items():
        setattr(case_store, name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(case_store, name, value)


def _read_hnsw_settings(index: faiss.Index) -> dict[str, int]:
    """Read the settings back from the built index, to show what was measured."""
    hnsw = index.hnsw
    return {
        "M": int(hnsw.nb_neighbors(1)),
        "ef_construction": int(hnsw.efConstruction),
        "ef_search": int(hnsw.efSearch),
    }


def _prepare_search(index: faiss.Index, k: int) -> None:
    # CaseStore.search raises efSearch to the number of results it requests, because HNSW returns at most efSearch.
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(case_store.HNSW_EF_SEARCH, k)


# Memory and duration


def _check_memory(cases: int, dim: int) -> None:
    """Raise MemoryError before building when the two indexes would not fit in the available memory."""
    needed = _estimate_index_bytes(cases, dim)
    available = _available_memory_bytes()
    resident = _resident_bytes() or 0
    _progress(f"{cases} cases: estimated peak resident memory {(resident + needed) / 2**30:.1f} GiB")
    if available is not None and needed * MEMORY_MARGIN > available:
        raise MemoryError(
            f"cannot measure {cases} cases: the indexes need about {needed / 2**30:.1f} GiB and "
            f"{available / 2**30:.1f} GiB is available; free memory or pass fewer --cases"
        )


def _estimate_index_bytes(cases: int, dim: int) -> int:
    """Estimate the memory of both indexes: the flat index's copy of the vectors and the HNSW index's copy and graph."""
    matrix = cases * dim * FLOAT32_BYTES
    graph = cases * ((2 * case_store.HNSW_M + 1) * HNSW_LINK_BYTES + HNSW_BOOKKEEPING_BYTES)
    return matrix + matrix + graph


def _available_memory_bytes() -> int | None:
    """Return MemAvailable from /proc/meminfo, or None where that file does not exist."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _resident_bytes() -> int | None:
    """Return this process's current resident memory, or None where /proc/self/statm does not exist."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            resident_pages = int(handle.read().split()[1])
    except OSError:
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _estimate_duration(vectors: np.ndarray, random_queries: np.ndarray, cases: int) -> str:
    """Time an HNSW build and flat queries on CALIBRATION_CASES cases and extrapolate them to `cases`."""
    sample = vectors[:CALIBRATION_CASES]
    started = time.perf_counter()
    case_store._build_index("hnsw", vectors.shape[1], sample)
    calibration_s = time.perf_counter() - started
    build_s = calibration_s * (cases / CALIBRATION_CASES) ** BUILD_TIME_EXPONENT

    flat = case_store._build_index("flat", vectors.shape[1], sample)
    flat_query_s = np.median(_time_queries(flat, random_queries[:THREAD_CHECK_QUERIES], threads=1)) / 1000
    # Flat queries run for both query sets, plus the thread check at 1 thread and at the default count. The default
    # count was 1.3 to 3 times slower per query on an idle 2-core machine, so the check counts as 4 single-thread runs.
    flat_queries = 2 * len(random_queries) + 4 * THREAD_CHECK_QUERIES
    query_s = flat_query_s * (cases / CALIBRATION_CASES) ** FLAT_QUERY_TIME_EXPONENT * flat_queries
    return (
        f"{cases} cases: estimated duration about {_format_duration(build_s + query_s)} (HNSW build about "
        f"{_format_duration(build_s)}, extrapolated as cases^{BUILD_TIME_EXPONENT} from {calibration_s:.1f} s for "
        f"{CALIBRATION_CASES} cases, and flat queries about {_format_duration(query_s)})"
    )


def _format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


# Measurement


@dataclass
class _BuiltIndex:
    name: str
    index: faiss.Index
    build_s: float
    rss_growth_mib: float | None


def _measure_index(index_type: str, vectors: np.ndarray) -> _BuiltIndex:
    """Build an index with the product's _build_index and record its build time and resident memory growth."""
    _progress(f"{len(vectors)} cases: building {index_type}")
    resident_before = _resident_bytes()
    started = time.perf_counter()
    index = case_store._build_index(index_type, vectors.shape[1], vectors)
    build_s = time.perf_counter() - started
    resident_after = _resident_bytes()

    growth = None
    if resident_before is not None and resident_after is not None:
        growth = (resident_after - resident_before) / MIB
    _progress(f"{len(vectors)} cases: built {index_type} in {build_s:.1f} s")
    return _BuiltIndex(index_type, index, build_s, growth)


def _measure_queries(
    built: _BuiltIndex,
    query_sets: dict[str, np.ndarray],
    exact: dict[str, np.ndarray],
    sources: np.ndarray,
) -> dict:
    """Time one query per search call on each query set, score the results against the exact ones and check threads."""
    result: dict = {
        "build_s": built.build_s,
        "index_bytes": serialised_bytes(built.index),
        "rss_growth_mib": built.rss_growth_mib,
        "query_sets": {},
    }

    for name, matrix in query_sets.items():
        _progress(f"{built.index.ntotal} cases: {built.name} queries, {name}")
        # One query is too small to split between threads, because the parallel region around it costs more than it
        # saves. "thread_check" measures both ways.
        latencies, found = _time_and_collect(built.index, matrix, threads=1)
        scores = {
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "recall_at_10": _recall(found, exact[name]),
        }
        if name == "near_duplicate":
            scores["source_at_1"] = float(np.mean(found[:, 0] == sources))
            scores["source_in_top_10"] = float(np.mean((found == sources[:, None]).any(axis=1)))
        result["query_sets"][name] = scores

    result["thread_check"] = _check_threads(built.index, query_sets["random"][:THREAD_CHECK_QUERIES])
    return result


def serialised_bytes(index: faiss.Index) -> int:
    """Return the length of faiss.serialize_index(index) without holding the serialised copy in memory.

    serialize_index grows a buffer by doubling and then copies it into a numpy array, which at 1,000,000 cases would
    add several GiB to the peak memory. write_index through a callback writer produces the same bytes in chunks.
    """
    size = 0

    def count(chunk: bytes) -> int:
        nonlocal size
        size += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return size


def _check_threads(index: faiss.Index, queries: np.ndarray) -> dict:
    """Time single queries at one thread and at faiss's default thread count."""
    default_threads = faiss.omp_get_max_threads()
    by_threads = {}
    for threads in sorted({1, default_threads}):
        latencies = _time_queries(index, queries, threads=threads)
        by_threads[str(threads)] = {
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
        }
    return {"queries": len(queries), "by_threads": by_threads}


def _time_queries(index: faiss.Index, queries: np.ndarray, *, threads: int) -> list[float]:
    latencies, _ = _time_and_collect(index, queries, threads=threads)
    return latencies


def _time_and_collect(index: faiss.Index, queries: np.ndarray, *, threads: int) -> tuple[list[float], np.ndarray]:
    """Search each query alone with `threads` OpenMP threads and return the latencies in ms and the result positions."""
    default_threads = faiss.omp_get_max_threads()
    _prepare_search(index, K)
    found = np.empty((len(queries), K), dtype=np.int64)
    latencies = []

    faiss.omp_set_num_threads(threads)
    try:
        for position in range(min(WARMUP_QUERIES, len(queries))):
            index.search(queries[position : position + 1], K)
        for position in range(len(queries)):
            started = time.perf_counter_ns()
            _, positions = index.search(queries[position : position + 1], K)
            latencies.append((time.perf_counter_ns() - started) / 1e6)
            found[position] = positions[0]
    finally:
        faiss.omp_set_num_threads(default_threads)
    return latencies, found


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Return the mean share of each query's exact top K that the index also returned."""
    hits = [len(set(row.tolist()) & set(truth.tolist())) for row, truth in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Command line


def main(argv: Sequence[str] | None = None) -> None:
    """Measure each size given with --cases and print one JSON line per size."""
    args = _parse_args(argv)
    hnsw = _settings_from_args(args)

    if len(args.cases) == 1:
        try:
            result = measure(args.cases[0], dim=args.dim, queries=args.queries, seed=args.seed, hnsw=hnsw)
        except (ValueError, MemoryError) as error:
            raise SystemExit(str(error)) from error
        print(json.dumps(result), flush=True)
        return

    failed = [cases for cases in args.cases if not _run_child(cases, args)]
    if failed:
        raise SystemExit(f"retrieval benchmark failed for --cases {' '.join(map(str, failed))}; see the errors above")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", type=int, nargs="+", default=list(SIZES),
        help="number of cases per run, one run (and one process) each; 1000000 is the documented large run",
    )
    parser.add_argument("--dim", type=int, default=DIM, help="embedding dimension")
    parser.add_argument("--queries", type=int, default=QUERIES, help="queries per query set")
    parser.add_argument("--seed", type=int, default=0, help="seed of numpy's default_rng for cases and queries")
    parser.add_argument("--hnsw-m", type=int, help="HNSW M in place of tools.case_store.HNSW_M")
    parser.add_argument(
        "--ef-construction", type=int, help="HNSW efConstruction in place of tools.case_store.HNSW_EF_CONSTRUCTION"
    )
    parser.add_argument("--ef-search", type=int, help="HNSW efSearch in place of tools.case_store.HNSW_EF_SEARCH")
    return parser.parse_args(argv)


def _settings_from_args(args: argparse.Namespace) -> HnswSettings | None:
    overrides = (args.hnsw_m, args.ef_construction, args.ef_search)
    if all(value is None for value in overrides):
        return None
    for option, value in zip(("--hnsw-m", "--ef-construction", "--ef-search"), overrides, strict=True):
        if value is not None and value < 1:
            raise SystemExit(f"invalid {option} {value}: expected a positive integer")
    return HnswSettings(
        m=args.hnsw_m or case_store.HNSW_M,
        ef_construction=args.ef_construction or case_store.HNSW_EF_CONSTRUCTION,
        ef_search=args.ef_search or case_store.HNSW_EF_SEARCH,
    )


def _run_child(cases: int, args: argparse.Namespace) -> bool:
    """Measure one size in a child process, forward its JSON line and return whether it succeeded."""
    command = [sys.executable, "-m", "benchmarks.retrieval", "--cases", str(cases), "--dim", str(args.dim),
               "--queries", str(args.queries), "--seed", str(args.seed)]
    for option, value in (("--hnsw-m", args.hnsw_m), ("--ef-construction", args.ef_construction),
                          ("--ef-search", args.ef_search)):
        if value is not None:
            command += [option, str(value)]

    # stderr is inherited, so the child's progress and errors reach the terminal as they happen.
    child = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    if child.returncode != 0:
        _progress(f"retrieval benchmark for {cases} cases failed with exit status {child.returncode}")
        return False
    sys.stdout.write(child.stdout)
    sys.stdout.flush()
    return True


if __name__ == "__main__":
    main()
