"""Cold starts: `ragedit --help`, `ragedit plan` and an offline `ragedit edit` as whole processes, with peak memory."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import REPO, ProcessRun, run_process

RUNS = 5


def ragedit_command() -> list[str]:
    """Return the command that starts this checkout's CLI, as the `ragedit` script does.

    The installed script may belong to another checkout of the package, so the module runs from this repository.
    """
    return [sys.executable, "-m", "agent.cli"]


def measure_command(arguments: list[str], *, runs: int = RUNS, env: dict[str, str] | None = None) -> dict:
    """Run a ragedit command `runs` times and return the median and range of wall time and peak memory."""
    results: list[ProcessRun] = []
    for _ in range(runs):
        result = run_process(ragedit_command() + arguments, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"ragedit {' '.join(arguments)} failed with exit code {result.returncode}: "
                               f"{result.stderr.strip().splitlines()[-1:]}")
        results.append(result)
    seconds = [result.seconds for result in results]
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "peak_rss_mib": max(result.peak_rss_mib for result in results),
        "runs": runs,
    }


def measure_edit(image: Path, instruction: str, *, runs: int = 3) -> dict:
    """Time an offline `ragedit edit` in a fresh data folder (first run) and in a used one (later runs)."""
    with tempfile.TemporaryDirectory(prefix="ragedit-bench-") as folder:
        env = {**os.environ, "RAGEDIT_HOME": str(Path(folder) / "home"), "HF_HUB_OFFLINE": "1"}
        first = measure_command(_edit_arguments(image, instruction, Path(folder), 0), runs=1, env=env)
        later = [measure_command(_edit_arguments(image, instruction, Path(folder), run), runs=1, env=env)
                 for run in range(1, runs)]
    return {
        "first_s": first["median_s"],
        "first_peak_rss_mib": first["peak_rss_mib"],
        "median_s": statistics.median(result["median_s"] for result in later),
        "peak_rss_mib": max(result["peak_rss_mib"] for result in later),
        "runs": runs,
    }


def _edit_arguments(image: Path, instruction: str, folder: Path, run: int) -> list[str]:
    output = folder / f"out-{run}.png"
    return ["edit", str(image), instruction, "--profile", "offline", "-o", str(output)]


def demo_image() -> Path:
    """Return ../shared/samples/cat.png when this checkout sits beside it, else the copy shipped in agent/data."""
    shared = REPO.parent / "shared" / "samples" / "cat.png"
    return shared if shared.exists() else REPO / "agent" / "data" / "cat.png"
