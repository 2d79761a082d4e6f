"""MagicBrush ingestion: Parquet files of MagicBrush's schema, real FAISS case libraries and the real embedders."""

import io
import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from agent.ingest import (
    MAGICBRUSH_COLUMNS,
    TEXT_COLUMNS,
    IngestError,
    decode_image,
    ingest_magicbrush,
    read_parquet_rows,
)
from tools.case_store import CaseStore
from tools.embeddings import load_clip_embedder, load_offline_embedder
from tools.image_io import load_image

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
STARTER_CASES = REPO / "agent" / "data" / "starter_cases.jsonl"
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

TURNS = [
    ("327726", 1, "remove the dog"),
    ("327726", 2, "make the sky stormy"),
    ("581929", 1, "add a red balloon"),
    ("581929", 2, "turn it into a watercolor painting"),
]
EXPECTED_KINDS = {
    "magicbrush-327726-1": "remove",
    "magicbrush-327726-2": "weather",
    "magicbrush-581929-1": "add",
    "magicbrush-581929-2": "style",
}


def png_bytes(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    """Encode a random RGB image as PNG: distinct seeds give distinct pictures."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_struct(data: bytes, name: str | None) -> dict:
    return {"bytes": data, "path": name}


def write_magicbrush(path: Path, turns=TURNS, *, drop=()) -> Path:
    """Write a Parquet file with MagicBrush's columns and types; image columns use the Hugging Face Image struct."""
    columns = {
        "img_id": pa.array([img_id for img_id, _, _ in turns], pa.string()),
        "turn_index": pa.array([turn for _, turn, _ in turns], pa.int32()),
        "source_img": pa.array(
            [image_struct(png_bytes(number), f"{img_id}-source.png") for number, (img_id, _, _) in enumerate(turns)],
            IMAGE_STRUCT,
        ),
        "mask_img": pa.array([image_struct(png_bytes(100 + number), None) for number in range(len(turns))],
                             IMAGE_STRUCT),
        "instruction": pa.array([instruction for _, _, instruction in turns], pa.string()),
        "target_img": pa.array([image_struct(png_bytes(200 + number), None) for number in range(len(turns))],
                               IMAGE_STRUCT),
    }
    table = pa.table({name: values for name, values in columns.items() if name not in drop})
    pq.write_table(table, path, row_group_size=2)
    return path


@pytest.fixture(scope="module")
def embedder():
    return load_offline_embedder()


@pytest.fixture
def parquet_file(tmp_path):
    return write_magicbrush(tmp_path / "dev-00000-of-00001.parquet")


@pytest.fixture
def store(tmp_path, embedder):
    return CaseStore.create(tmp_path / "cases", embedder.id, embedder.dim)


def ingest(store, embedder, path, **options):
    return ingest_magicbrush(store, embedder, read_parquet_rows([path]), progress=False, **options)


# --- reading Parquet ------------------------------------------------------------------------------------------------


def test_rows_have_magicbrush_columns(parquet_file):
    rows = list(read_parquet_rows([parquet_file]))

    assert len(rows) == 4
    assert list(rows[0]) == list(MAGICBRUSH_COLUMNS)
    assert rows[0]["img_id"] == "327726"
    assert rows[0]["turn_index"] == 1
    assert rows[0]["source_img"]["bytes"] == png_bytes(0)
    assert rows[3]["instruction"] == "turn it into a watercolor painting"


def test_rows_read_selected_columns(parquet_file):
    rows = list(read_parquet_rows([parquet_file], columns=TEXT_COLUMNS))

    assert [sorted(row) for row in rows] == [sorted(TEXT_COLUMNS)] * 4


def test_rows_hint_their_total(tmp_path, parquet_file):
    second = write_magicbrush(tmp_path / "dev-extra.parquet", TURNS[:3])

    rows = read_parquet_rows([parquet_file, second])

    assert operator.length_hint(rows) == 7
    assert len(list(rows)) == 7


def test_folder_reads_its_parquet_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_magicbrush(folder / "train-00000.parquet", TURNS[:2])
    write_magicbrush(folder / "train-00001.parquet", TURNS[2:])

    rows = list(read_parquet_rows([folder], columns=TEXT_COLUMNS))

    assert [(row["img_id"], row["turn_index"]) for row in rows] == [(img_id, turn) for img_id, turn, _ in TURNS]


def test_missing_columns_named(tmp_path):
    path = write_magicbrush(tmp_path / "partial.parquet", drop=("mask_img", "target_img"))

    with pytest.raises(IngestError) as error:
        read_parquet_rows([path])

    message = str(error.value)
    assert str(path) in message
    assert "missing columns mask_img, target_img" in message
    assert "\n" not in message


def test_missing_columns_found_before_reading(tmp_path, parquet_file):
    partial = write_magicbrush(tmp_path / "partial.parquet", drop=("instruction",))

    with pytest.raises(IngestError, match="missing columns instruction"):
        read_parquet_rows([parquet_file, partial])


def test_unreadable_file_rejected(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("not parquet")

    with pytest.raises(IngestError) as error:
        read_parquet_rows([path])

    assert f"cannot read {path}: not a readable Parquet file" in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(IngestError, match="file not found"):
        read_parquet_rows([tmp_path / "absent.parquet"])


def test_empty_folder_rejected(tmp_path):
    with pytest.raises(IngestError, match="no .parquet files"):
        read_parquet_rows([tmp_path])


def test_unknown_column_rejected(parquet_file):
    with pytest.raises(IngestError, match="invalid columns caption"):
        read_parquet_rows([parquet_file], columns=("img_id", "caption"))


# --- decoding images ------------------------------------------------------------------------------------------------


def test_decode_struct_and_raw_bytes():
    data = png_bytes(7)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    from_struct = decode_image(image_struct(data, "a.png"), "source_img")
    from_bytes = decode_image(data, "source_img")

    assert from_struct.mode == "RGB"
    assert from_struct.size == (40, 32)
    assert np.array_equal(np.asarray(from_struct), expected)
    assert np.array_equal(np.asarray(from_bytes), expected)


def test_decode_applies_exif_orientation():
    path = DATA / "cat_exif_orientation6.jpg"

    decoded = decode_image(path.read_bytes(), "source_img")

    assert decoded.size == load_image(path).size
    assert decoded.size == tuple(reversed(Image.open(path).size))


def test_decode_pil_image_as_rgb():
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))

    decoded = decode_image(rgba, "source_img")

    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_decode_struct_path_without_bytes():
    path = DATA / "cat.png"

    decoded = decode_image({"bytes": None, "path": str(path)}, "source_img")

    assert decoded.size == load_image(path).size


@pytest.mark.parametrize("value", [b"not an image", b"", None, {"bytes": None, "path": None}, 42])
def test_decode_rejects_non_images(value):
    with pytest.raises(IngestError, match="source_img"):
        decode_image(value, "source_img")


# --- ingesting into a case library ----------------------------------------------------------------------------------


def test_ingest_adds_each_turn(store, embedder, parquet_file):
    added = ingest(store, embedder, parquet_file)
    records = {record["id"]: record for record in store.records}

    assert added == 4
    assert len(store) == 4
    assert sorted(records) == sorted(EXPECTED_KINDS)
    assert {case_id: record["edit_kind"] for case_id, record in records.items()} == EXPECTED_KINDS


def test_ingest_record_fields(store, embedder, parquet_file):
    ingest(store, embedder, parquet_file)

    record = store.get("magicbrush-581929-2")

    assert record == {
        "id": "magicbrush-581929-2",
        "instruction": "turn it into a watercolor painting",
        "tool": "instruct_pix2pix",
        "params": {},
        "edit_kind": "style",
        "source": "magicbrush",
        "img_id": "581929",
        "turn_index": 2,
    }


def test_reingest_adds_nothing(store, embedder, parquet_file):
    first = ingest(store, embedder, parquet_file)
    second = ingest(store, embedder, parquet_file)

    assert first == 4
    assert second == 0
    assert len(store) == 4


def test_reopened_library_skips_known_turns(tmp_path, store, embedder, parquet_file):
    ingest(store, embedder, parquet_file)
    reopened = CaseStore.open(tmp_path / "cases", embedder.id, embedder.dim)

    added = ingest(reopened, embedder, parquet_file)

    assert added == 0
    assert len(reopened) == 4


def test_limit_counts_rows_read(store, embedder, parquet_file):
    first = ingest(store, embedder, parquet_file, limit=3)
    second = ingest(store, embedder, parquet_file)

    assert first == 3
    assert second == 1
    assert store.get("magicbrush-581929-2") is not None


def test_small_batches_add_all(store, embedder, parquet_file):
    added = ingest(store, embedder, parquet_file, batch_size=1)

    assert added == 4
    assert len(store) == 4


def test_text_vectors_found_by_search(store, embedder, parquet_file):
    ingest(store, embedder, parquet_file)

    matches = store.search(embedder.embed_texts(["remove the dog"])[0], k=2)

    assert matches[0].record["id"] == "magicbrush-327726-1"
    assert matches[0].score == pytest.approx(1.0, abs=1e-4)
    assert matches[0].image_score is None
    assert matches[1].score < 0.9


def test_invalid_rows_skipped(store, embedder):
    rows = [
        {"img_id": "1", "turn_index": 1, "instruction": "add a cat"},
        {"img_id": "1", "turn_index": 2, "instruction": "   "},
        {"img_id": "1", "turn_index": None, "instruction": "add a dog"},
        {"img_id": None, "turn_index": 1, "instruction": "add a dog"},
        {"img_id": "2", "turn_index": "one", "instruction": "add a dog"},
        {"img_id": "3", "turn_index": 1, "instruction": "add  a\nbird"},
        {"img_id": "3", "turn_index": 1, "instruction": "add a bird again"},
    ]

    added = ingest_magicbrush(store, embedder, rows, progress=False)

    assert added == 2
    assert sorted(record["id"] for record in store.records) == ["magicbrush-1-1", "magicbrush-3-1"]
    assert store.get("magicbrush-3-1")["instruction"] == "add a bird"


def test_nonpositive_limit_rejected(store, embedder):
    with pytest.raises(ValueError, match="invalid limit 0"):
        ingest_magicbrush(store, embedder, [], limit=0, progress=False)


def test_text_only_image_embedder_rejected(store, embedder):
    with pytest.raises(ValueError, match="embeds only texts"):
        ingest_magicbrush(store, embedder, [], image_embedder=embedder, progress=False)


def test_progress_bar_on_stderr(store, embedder, parquet_file, capsys):
    ingest_magicbrush(store, embedder, read_parquet_rows([parquet_file]), progress=True)

    captured = capsys.readouterr()
    assert "4/4" in captured.err
    assert "row/s" in captured.err
    assert captured.out == ""


def test_clip_stores_image_vectors(tmp_path, tiny_clip_dir, parquet_file):
    clip = load_clip_embedder(str(tiny_clip_dir))
    store = CaseStore.create(tmp_path / "clip-cases", clip.id, clip.dim)

    added = ingest(store, clip, parquet_file, image_embedder=clip)
    source = decode_image(image_struct(png_bytes(2), None), "source_img")
    image_query = clip.embed_images([source])[0]
    matches = store.search(clip.embed_texts(["add a red balloon"])[0], k=4, image_vector=image_query)
    by_id = {match.record["id"]: match for match in matches}

    assert added == 4
    assert store.stats()["image_dim"] == clip.dim
    assert store.stats()["with_image"] == 4
    assert by_id["magicbrush-581929-1"].image_score == pytest.approx(1.0, abs=1e-4)
    assert all(match.image_score < 0.9999 for case_id, match in by_id.items() if case_id != "magicbrush-581929-1")


def test_unreadable_source_image_stored_without_image(tmp_path, tiny_clip_dir):
    clip = load_clip_embedder(str(tiny_clip_dir))
    store = CaseStore.create(tmp_path / "clip-cases", clip.id, clip.dim)
    rows = [
        {"img_id": "9", "turn_index": 1, "instruction": "add a cat", "source_img": image_struct(png_bytes(1), None)},
        {"img_id": "9", "turn_index": 2, "instruction": "add a dog", "source_img": image_struct(b"broken", None)},
    ]

    added = ingest_magicbrush(store, clip, rows, image_embedder=clip, progress=False)
    matches = store.search(clip.embed_texts(["add a dog"])[0], k=2, image_vector=clip.embed_images(
        [decode_image(png_bytes(1), "source_img")])[0])
    by_id = {match.record["id"]: match for match in matches}

    assert added == 2
    assert store.stats()["with_image"] == 1
    assert by_id["magicbrush-9-1"].image_score == pytest.approx(1.0, abs=1e-4)
    assert by_id["magicbrush-9-2"].image_score is None


# --- command line -------------------------------------------------------------------------------------------------


def ragedit(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )


def starter_count() -> int:
    return sum(1 for line in STARTER_CASES.read_text(encoding="utf-8").splitlines() if line.strip())


@pytest.fixture(scope="module")
def built_home(tmp_path_factory):
    """A data folder whose offline case library was built from a MagicBrush Parquet file with `index build`."""
    folder = tmp_path_factory.mktemp("cli")
    parquet = write_magicbrush(folder / "dev.parquet")
    home = folder / "home"
    build = ragedit("index", "build", "--magicbrush", "--parquet", parquet, "--profile", "offline", "--home", home)
    return home, build


def test_cli_build_reports_counts(built_home):
    _, build = built_home

    assert build.returncode == 0, build.stderr
    assert "Added 4 MagicBrush cases to the offline case library" in build.stdout
    assert f"it now has {starter_count() + 4} cases" in build.stdout
    assert "4/4" in build.stderr
    assert "row/s" in build.stderr


def test_cli_stats(built_home):
    home, _ = built_home

    stats = ragedit("index", "stats", "--profile", "offline", "--home", home)

    assert stats.returncode == 0, stats.stderr
    assert f"Cases: {starter_count() + 4}" in stats.stdout
    assert "Embedder: sentence-transformers:all-MiniLM-L6-v2 (384 dimensions)" in stats.stdout
    assert "Image embeddings: none" in stats.stdout
    assert "Index: flat" in stats.stdout
    assert "By edit kind:" in stats.stdout
    assert "By tool:" in stats.stdout


def test_cli_search_json(built_home):
    home, _ = built_home

    search = ragedit("index", "search", "remove the dog", "--json", "--profile", "offline", "--home", home)
    matches = json.loads(search.stdout)

    assert search.returncode == 0, search.stderr
    assert len(matches) == 5
    assert matches[0]["id"] == "magicbrush-327726-1"
    assert matches[0]["instruction"] == "remove the dog"
    assert matches[0]["tool"] == "instruct_pix2pix"
    assert matches[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert matches[0]["text_score"] == pytest.approx(1.0, abs=1e-3)
    assert matches[0]["image_score"] is None
    assert [match["score"] for match in matches] == sorted((match["score"] for match in matches), reverse=True)


def test_cli_search_text(built_home):
    home, _ = built_home

    search = ragedit("index", "search", "make the sky stormy", "-k", "2", "--profile", "offline", "--home", home)
    lines = search.stdout.splitlines()

    assert search.returncode == 0, search.stderr
    assert len(lines) == 2
    assert lines[0].startswith("  1. score 1.000 (text 1.000, image -)  magicbrush-327726-2  instruct_pix2pix")
    assert lines[1].startswith("  2. score ")


def test_cli_missing_columns_exit_2(tmp_path):
    path = write_magicbrush(tmp_path / "partial.parquet", drop=("source_img",))

    result = ragedit("index", "build", "--magicbrush", "--parquet", path, "--profile", "offline",
                     "--home", tmp_path / "home")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ragedit: error: invalid MagicBrush file {path}: missing columns source_img "
        f"(expected {', '.join(MAGICBRUSH_COLUMNS)})"
    )
    assert not (tmp_path / "home" / "cases").exists()


def test_cli_image_search_offline_exit_2(tmp_path):
    result = ragedit("index", "search", "remove the dog", "--image", DATA / "cat.png", "--profile", "offline",
                     "--home", tmp_path / "home")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ragedit: error: image search needs the full profile: add --profile full, or drop --image"
    )


def test_cli_offline_build_needs_parquet(tmp_path):
    result = ragedit("index", "build", "--magicbrush", "--profile", "offline", "--home", tmp_path / "home")

    assert result.returncode == 2
    assert "--parquet FILE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
