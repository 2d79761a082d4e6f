"""Rows, the results table and the description of the machine the numbers come from."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One measurement: what was measured, the value, the target it is read against and a note on the result."""

    group: str
    name: str
    value: str
    target: str = ""
    status: str = ""
    note: str = ""


def check(value: float, limit: float, unit: str, *, higher_is_better: bool = False) -> str:
    """Return "met", or how far the value misses the limit ("missed by 0.12 s (24%)")."""
    met = value >= limit if higher_is_better else value <= limit
    if met:
        return "met"
    gap = abs(value - limit)
    return f"missed by {gap:.3g}{unit} ({gap / limit:.0%})"


def machine_description() -> dict[str, str]:
    """Describe the CPU, cores, memory, OS and library versions behind the numbers."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "CPU": cpu,
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "memory": f"{memory_gib:.1f} GiB",
        "GPU": gpu,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        # Other work on the machine slows every row, so the load when the table was written is part of the record.
        "load average (1, 5, 15 min)": ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        **_versions("diffusers", "open_clip_torch", "faiss-cpu", "langgraph", "pillow"),
    }


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass
class ProcessRun:
    """A finished child process: its wall time, peak resident memory and output."""

    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def run_process(command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path = REPO) -> ProcessRun:
    """Run a command to completion and measure its wall time and peak resident memory (ru_maxrss of the child)."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True)
        # wait4 reaps the child and returns its own resource usage, which Popen.wait() would discard.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        return ProcessRun(seconds, usage.ru_maxrss / 1024, process.returncode, stdout.read(), stderr.read())


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the value at `fraction` (0 to 1) of the sorted values, by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def peak_rss_mib() -> float:
    """Return this process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_table(rows: Sequence[Row]) -> str:
    """Format rows as one Markdown table."""
    lines = ["| Row | Measurement | Result | Target | Status |", "|---|---|---|---|---|"]
    for row in rows:
        status = "; ".join(part for part in (row.status, row.note) if part)
        lines.append(f"| {row.group} | {row.name} | {row.value} | {row.target or '-'} | {status or '-'} |")
    return "\n".join(lines)
