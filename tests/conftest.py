"""Session fixtures: tiny random-weight models built once per test session and loaded through the real loaders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach the Hugging Face Hub. huggingface_hub reads this variable once, when it is first imported,
# so it is set before any test module imports diffusers, transformers or open_clip.
os.environ["HF_HUB_OFFLINE"] = "1"

from tests.tiny_models import build_tiny_clip, build_tiny_ip2p  # noqa: E402 - after HF_HUB_OFFLINE on purpose


@pytest.fixture(scope="session")
def tiny_ip2p_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random StableDiffusionInstructPix2PixPipeline saved with save_pretrained."""
    return build_tiny_ip2p(tmp_path_factory.mktemp("models") / "ip2p")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random open_clip model in open_clip's local-dir layout."""
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "clip")


@pytest.fixture(scope="session")
def tiny_models(tiny_ip2p_dir: Path, tiny_clip_dir: Path) -> dict[str, Path]:
    """Both tiny model directories by name, as build_tiny_models returns them."""
    return {"ip2p": tiny_ip2p_dir, "clip": tiny_clip_dir}
