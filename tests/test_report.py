"""The report and the pictures of a run: tile layout and which subtasks a run sheet shows."""

from pathlib import Path

from PIL import Image

from agent.context import Context
from agent.report import (
    MAX_TILE_ASPECT, MIN_TILE_WIDTH, SHEET_LINE_HEIGHT, SHEET_PADDING, compose_sheet, write_run_sheet,
)
from graphs.edit import graph

CAT = Path(__file__).parent / "data" / "cat.png"


def _caption_height(lines):
    return lines * SHEET_LINE_HEIGHT + 2 * SHEET_PADDING


def test_wide_image_tile_capped():
    sheet = compose_sheet([[(Image.new("RGB", (4000, 10), (200, 0, 0)), ["wide"])]])

    assert sheet.size == (MAX_TILE_ASPECT * 256, 256 + _caption_height(1))
    assert sheet.getpixel((MAX_TILE_ASPECT * 128, 128)) == (200, 0, 0)
    assert sheet.getpixel((MAX_TILE_ASPECT * 128, 10)) == (255, 255, 255)


def test_tall_image_tile_padded():
    sheet = compose_sheet([[(Image.new("RGB", (10, 4000), (0, 0, 200)), ["tall", "two lines"])]])

    assert sheet.size == (MIN_TILE_WIDTH, 256 + _caption_height(2))
    assert sheet.getpixel(((MIN_TILE_WIDTH - 1) // 2, 128)) == (0, 0, 200)
    assert sheet.getpixel((2, 128)) == (255, 255, 255)


def test_run_sheet_shows_skipped_subtask(tmp_path):
    context = Context(profile="offline", home=str(tmp_path / "home"))
    final = graph.invoke({"image_path": str(CAT), "instruction": "add a party hat and make it 30% brighter"},
                         context=context)
    sheet = Image.open(write_run_sheet(final, context.artifact_dir, tmp_path / "sheet.png"))
    tile_width = round(451 * 256 / 300)

    assert [result["status"] for result in final["results"]] == ["skipped", "accepted"]
    assert sheet.width == 3 * tile_width
    # The skipped subtask's tile is its unchanged input, the same pixels as the first tile.
    assert sheet.crop((0, 0, tile_width, 256)).tobytes() == sheet.crop((tile_width, 0, 2 * tile_width, 256)).tobytes()
