"""The ragedit command line on awkward inputs: every sample photo, unusual instructions and output paths.

Each edit is a real `ragedit edit` process with the offline profile, as in test_cli.py. A process that edits takes
about 6 s of CPU on a 2-core machine, most of it importing sentence-transformers and torch. So `cli_runs` starts the
module's edits together, at most one process per CPU core, and each test reads the run it needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).parent / "data" / "samples"
SAMPLE_NAMES = sorted(path.name for path in SAMPLES.glob("*") if path.is_file())
BRIGHTER = "make it brighter"
MAX_INSTRUCTION_CHARS = 2000
MAX_PARALLEL_RUNS = 4

# An instruction in each script should be planned and run: edited, or skipped with a reason (exit 0 or 3).
SCRIPT_INSTRUCTIONS = {
    "chinese": "把照片调亮一点",
    "arabic": "اجعل الصورة أكثر سطوعا",
    "hindi": "तस्वीर को थोड़ा उज्जवल बनाओ",
    "russian": "сделай фото ярче",
    "emoji": "☀️✨🌈",
    "mixed": "make it brighter и ярче, 更亮 please",
}
# A bell and ANSI colour codes around the words, as pasted from a terminal.
CONTROL_INSTRUCTION = "\x1b[31mmake it\x07 brighter\x1b[0m"


def ragedit(*args: object, home: Path) -> subprocess.CompletedProcess[str]:
    # Each process gets one torch thread, because the module runs several processes at once.
    env = dict(os.environ, RAGEDIT_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )


@dataclass(frozen=True)
class SampleKind:
    """What Pillow makes of a sample file, decided by decoding it, not by its name."""

    readable: bool
    frames: int = 0
    upright_size: tuple[int, int] | None = None


def inspect_sample(path: Path) -> SampleKind:
    """Decode the first frame with Pillow, with its decompression bomb warning raised as an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                frames = getattr(image, "n_frames", 1)
                upright = ImageOps.exif_transpose(image)
                return SampleKind(readable=True, frames=frames, upright_size=upright.size)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return SampleKind(readable=False)


@dataclass(frozen=True)
class EditJob:
    """One `ragedit edit` of a copy of `source`, writing out.png next to the copy."""

    source: Path
    instruction: str
    extra_args: tuple[str, ...] = ()
    existing_output: bytes | None = None


@dataclass(frozen=True)
class EditRun:
    """A finished edit job: the process result, the edited copy and the output path."""

    result: subprocess.CompletedProcess[str]
    image: Path
    output: Path
    source: Path

    @property
    def stderr_lines(self) -> list[str]:
        return self.result.stderr.strip().splitlines()


EDIT_JOBS: dict[str, EditJob] = {
    **{f"sample:{name}": EditJob(SAMPLES / name, BRIGHTER) for name in SAMPLE_NAMES},
    **{f"script:{key}": EditJob(SAMPLES / "cat.png", text) for key, text in SCRIPT_INSTRUCTIONS.items()},
    "control": EditJob(SAMPLES / "cat.png", CONTROL_INSTRUCTION),
    "overwrite": EditJob(SAMPLES / "cat.png", BRIGHTER, ("--overwrite",), existing_output=b"old output"),
}


def run_job(job: EditJob, folder: Path, home: Path) -> EditRun:
    """Copy the job's file into its own folder, so the test can check that the copy is left unchanged."""
    folder.mkdir(parents=True)
    image = folder / job.source.name
    shutil.copyfile(job.source, image)
    output = folder / "out.png"
    if job.existing_output is not None:
        output.write_bytes(job.existing_output)

    result = ragedit("edit", image, job.instruction, "-o", output, "--profile", "offline", *job.extra_args, home=home)
    return EditRun(result=result, image=image, output=output, source=job.source)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory, home: Path) -> dict[str, EditRun]:
    """Run every job in EDIT_JOBS, several processes at a time, and return the runs by job name."""
    root = tmp_path_factory.mktemp("runs")
    workers = max(1, min(MAX_PARALLEL_RUNS, os.cpu_count() or 1))
    # One edit of a readable photo runs first and seeds the case library in `home` alone, so the parallel runs
    # only read it and add to it.
    first = "control"
    rest = [name for name in EDIT_JOBS if name != first]
    runs = {first: run_job(EDIT_JOBS[first], root / "job-0", home)}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            name: pool.submit(run_job, EDIT_JOBS[name], root / f"job-{index}", home)
            for index, name in enumerate(rest, start=1)
        }
        runs.update({name: future.result() for name, future in futures.items()})
    return runs


def luminance(image: Image.Image) -> float:
    return float(np.asarray(image.convert("L"), dtype=np.float64).mean())


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.corrcoef(first.ravel().astype(np.float64), second.ravel().astype(np.float64))[0, 1])


def check_readable(run: EditRun, kind: SampleKind) -> None:
    assert run.result.returncode == 0, run.result.stderr
    assert run.output.is_file()
    assert Image.open(run.output).size == kind.upright_size
    assert run.image.read_bytes() == run.source.read_bytes()
    assert "Traceback" not in run.result.stderr
    if kind.frames > 1:
        assert "frames" in run.result.stderr


def check_unreadable(run: EditRun) -> None:
    assert run.result.returncode == 2, run.result.stdout + run.result.stderr
    assert len(run.stderr_lines) == 1, run.result.stderr
    assert run.source.name in run.stderr_lines[0]
    assert "Traceback" not in run.result.stderr
    assert not run.output.exists()
    assert run.image.read_bytes() == run.source.read_bytes()


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_edit_by_kind(cli_runs, name):
    kind = inspect_sample(SAMPLES / name)
    run = cli_runs[f"sample:{name}"]

    if kind.readable:
        check_readable(run, kind)
    else:
        check_unreadable(run)


def test_exif_orientation_upright(cli_runs):
    run = cli_runs["sample:cat_exif_orientation6.jpg"]
    with Image.open(run.source) as stored:
        stored_size = stored.size
        orientation = stored.getexif().get(0x0112)
        upright = ImageOps.exif_transpose(stored).convert("L")
    output = Image.open(run.output).convert("L")

    assert run.result.returncode == 0, run.result.stderr
    assert orientation == 6
    assert stored_size[0] < stored_size[1], "the stored pixels are portrait"
    assert upright.width > upright.height, "exif_transpose turns them landscape"
    assert output.size == upright.size
    # A turn the wrong way round has the same size, so the pixels must also follow the upright photo.
    assert correlation(np.asarray(output), np.asarray(upright)) > 0.9


def test_rgba_transparency_white(cli_runs):
    run = cli_runs["sample:coffee_rgba.png"]
    alpha = np.asarray(Image.open(run.source).getchannel("A"))
    output = np.asarray(Image.open(run.output).convert("RGB"))
    transparent = alpha == 0

    assert run.result.returncode == 0, run.result.stderr
    assert transparent.sum() > 0
    # Brightening keeps white at 255, so transparent pixels composited on white stay white.
    assert output[transparent].min() == 255


def test_16bit_scaled_not_clipped(cli_runs):
    run = cli_runs["sample:cat_16bit.png"]
    source = np.asarray(Image.open(run.source))
    output = np.asarray(Image.open(run.output).convert("L"))

    assert run.result.returncode == 0, run.result.stderr
    assert source.dtype == np.uint16
    assert (output == 255).mean() < 0.05
    assert correlation(output, source) > 0.9


def test_cmyk_plausible_colours(cli_runs):
    run = cli_runs["sample:coffee_cmyk.jpg"]
    rgb_run = cli_runs["sample:coffee.png"]
    output = Image.open(run.output)
    pixels = np.asarray(output.convert("RGB"), dtype=np.float64)
    # coffee.png is the same photo stored as RGB, edited with the same instruction.
    reference = np.asarray(Image.open(rgb_run.output).convert("RGB"), dtype=np.float64)

    assert run.result.returncode == 0, run.result.stderr
    assert Image.open(run.source).mode == "CMYK"
    assert output.mode == "RGB"
    assert np.abs(pixels - reference).mean() < 10
    for channel in range(3):
        assert correlation(pixels[..., channel], reference[..., channel]) > 0.9


def test_one_pixel_adjusted(cli_runs):
    run = cli_runs["sample:one_pixel.png"]
    before = Image.open(run.source)
    after = Image.open(run.output)

    assert run.result.returncode == 0, run.result.stderr
    assert before.size == (1, 1)
    assert after.size == (1, 1)
    assert luminance(after) > luminance(before)


def test_panorama_adjusted(cli_runs):
    run = cli_runs["sample:panorama_4000x200.jpg"]
    before = Image.open(run.source)
    after = Image.open(run.output)

    assert run.result.returncode == 0, run.result.stderr
    assert after.size == (4000, 200)
    assert luminance(after) > luminance(before) + 5


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """Return a copy of cat.png in tmp_path."""
    copy = tmp_path / "cat.png"
    shutil.copyfile(SAMPLES / "cat.png", copy)
    return copy


@pytest.mark.parametrize("instruction", ["", "   ", "\t\n  "], ids=["empty", "spaces", "whitespace"])
def test_blank_instruction_exit_2(photo, tmp_path, home, instruction):
    output = tmp_path / "out.png"
    result = ragedit("edit", photo, instruction, "-o", output, "--profile", "offline", home=home)
    lines = result.stderr.strip().splitlines()

    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert "empty" in lines[0]
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_long_instruction_exit_2(photo, tmp_path, home):
    # The cut falls inside a word, so no trailing space is trimmed before the length is checked.
    instruction = ((BRIGHTER + " ") * 200)[:MAX_INSTRUCTION_CHARS] + "!"
    output = tmp_path / "out.png"
    result = ragedit("edit", photo, instruction, "-o", output, "--profile", "offline", home=home)
    lines = result.stderr.strip().splitlines()

    assert len(instruction) == MAX_INSTRUCTION_CHARS + 1
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert str(MAX_INSTRUCTION_CHARS) in lines[0]
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_control_characters_removed(cli_runs):
    run = cli_runs["control"]

    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    assert "\x07" not in run.result.stdout
    assert "\x1b" not in run.result.stdout
    assert luminance(Image.open(run.output)) > luminance(Image.open(run.source)) + 5


@pytest.mark.parametrize("script", list(SCRIPT_INSTRUCTIONS))
def test_instruction_any_script(cli_runs, script):
    run = cli_runs[f"script:{script}"]

    assert run.result.returncode in (0, 3), run.result.stdout + run.result.stderr
    assert "Traceback" not in run.result.stderr
    assert run.output.is_file()
    assert Image.open(run.output).size == Image.open(run.source).size


def test_output_is_input_exit_2(photo, home):
    result = ragedit("edit", photo, BRIGHTER, "-o", photo, "--profile", "offline", home=home)
    lines = result.stderr.strip().splitlines()

    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert "input image" in lines[0]
    assert "Traceback" not in result.stderr
    assert photo.read_bytes() == (SAMPLES / "cat.png").read_bytes()


def test_existing_output_kept(photo, tmp_path, home):
    output = tmp_path / "out.png"
    output.write_bytes(b"old output")
    result = ragedit("edit", photo, BRIGHTER, "-o", output, "--profile", "offline", home=home)
    lines = result.stderr.strip().splitlines()

    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert "--overwrite" in lines[0]
    assert output.read_bytes() == b"old output"


def test_existing_output_overwritten(cli_runs):
    run = cli_runs["overwrite"]

    assert run.result.returncode == 0, run.result.stderr
    assert run.output.read_bytes() != b"old output"
    assert Image.open(run.output).size == Image.open(run.source).size
