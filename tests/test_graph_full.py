"""The full profile through the real graph, with tiny random-weight InstructPix2Pix and open_clip models.

The models are saved to a temporary folder and loaded by the same loaders users hit, so only the weights are fake.
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent import resources
from agent.context import Context
from graphs.edit import graph

DATA = Path(__file__).parent / "data"


@pytest.fixture
def full_context(tiny_ip2p_dir, tiny_clip_dir, tmp_path):
    def make(**overrides):
        settings = dict(
            profile="full",
            home=str(tmp_path / "home"),
            editor_model=str(tiny_ip2p_dir),
            clip_model=str(tiny_clip_dir),
            max_side=64,
            steps=2,
            min_clip_image=-1.0,
            min_clip_text=-1.0,
            min_clip_directional=-1.0,
            # The random-weight editor repaints every pixel, which a local edit's check would reject.
            max_local_change=1.0,
        )
        settings.update(overrides)
        return Context(**settings)

    return make


def _run(image, instruction, context, output=None):
    state = {"image_path": str(image), "instruction": instruction}
    if output is not None:
        state["output_path"] = str(output)
    return graph.invoke(state, context=context)


@pytest.mark.parametrize("name, size", [("cat.png", (451, 300)), ("rocket.jpg", (640, 427))])
def test_output_keeps_input_size(full_context, tmp_path, name, size):
    output = tmp_path / "out.png"
    final = _run(DATA / name, "add a rainbow in the sky", full_context(), output)

    assert final["results"][0]["status"] == "accepted"
    assert final["output"]["width"] == size[0]
    assert final["output"]["height"] == size[1]
    assert Image.open(output).size == size


def test_fixed_seed_reproducible(full_context, tmp_path):
    first = _run(DATA / "cat.png", "turn the cat into a tiger", full_context(seed=5, home=str(tmp_path / "a")))
    second = _run(DATA / "cat.png", "turn the cat into a tiger", full_context(seed=5, home=str(tmp_path / "b")))
    other = _run(DATA / "cat.png", "turn the cat into a tiger", full_context(seed=6, home=str(tmp_path / "c")))

    assert first["output"]["sha256"] == second["output"]["sha256"]
    assert first["output"]["sha256"] != other["output"]["sha256"]


def test_rejection_retries_with_new_params(full_context):
    # A directional threshold above the maximum cosine similarity makes the critic reject every attempt.
    final = _run(DATA / "cat.png", "make the cat wear a hat", full_context(min_clip_directional=1.01, max_attempts=3))
    attempts = final["attempts"]

    assert [attempt["verdict"] for attempt in attempts] == ["retry", "retry", "give_up"]
    assert "directional similarity" in attempts[0]["reason"]
    params = [attempt["params"] for attempt in attempts]
    assert params[0]["seed"] != params[1]["seed"]
    assert params[2]["guidance_scale"] > params[1]["guidance_scale"]
    assert params[2]["image_guidance_scale"] < params[1]["image_guidance_scale"]


def test_give_up_keeps_best_attempt(full_context):
    final = _run(DATA / "cat.png", "make the cat wear a hat", full_context(min_clip_directional=1.01, max_attempts=2))
    result = final["results"][0]
    attempts = final["attempts"]
    best = max(attempts, key=lambda attempt: attempt["quality"])

    assert len(attempts) == 2
    assert result["status"] == "failed"
    assert result["image"]["sha256"] == best["image"]["sha256"]
    assert final["output"]["sha256"] == best["image"]["sha256"]
    assert f"kept attempt {best['number']}" in result["reason"]


def test_clip_scores_recorded(full_context):
    final = _run(DATA / "cat.png", "add a rainbow", full_context())
    scores = final["attempts"][0]["scores"]

    for name in ("clip_image", "clip_text", "clip_directional"):
        assert -1.0 <= scores[name] <= 1.0


def test_mixed_plan_uses_both_tools(full_context):
    final = _run(DATA / "cat.png", "add a rainbow and make it 30% brighter", full_context())

    assert [result["tool"] for result in final["results"]] == ["instruct_pix2pix", "adjust"]
    assert [result["status"] for result in final["results"]] == ["accepted", "accepted"]
    assert final["attempts"][1]["params"]["amount"] == pytest.approx(0.3)
    assert len(final["lineage"]) == 3


def test_missing_editor_weights_skip_subtask(full_context, tmp_path):
    final = _run(DATA / "cat.png", "add a rainbow", full_context(editor_model=str(tmp_path / "no-such-model")))
    result = final["results"][0]

    assert result["status"] == "skipped"
    assert "no-such-model" in result["reason"]


def test_source_embedded_once_per_subtask(full_context, monkeypatch):
    from tools.embeddings import ClipEmbedder

    embedded = []
    original = ClipEmbedder.embed_images

    def counting(self, images):
        embedded.append(len(images))
        return original(self, images)

    monkeypatch.setattr(ClipEmbedder, "embed_images", counting)
    # Start from an empty cache, since earlier tests in this process may have embedded the same photo.
    monkeypatch.setattr(resources, "_image_embeddings", OrderedDict())
    final = _run(DATA / "rocket.jpg", "make the rocket red", full_context(min_clip_directional=1.01, max_attempts=3))

    assert len(final["attempts"]) == 3
    assert sum(embedded) == 1 + 3


def test_each_image_and_text_embedded_once(full_context, monkeypatch):
    from tools.embeddings import ClipEmbedder

    images, texts = [], []
    embed_images, embed_texts = ClipEmbedder.embed_images, ClipEmbedder.embed_texts

    def count_images(self, batch):
        images.extend(image.tobytes() for image in batch)
        return embed_images(self, batch)

    def count_texts(self, batch):
        texts.extend(batch)
        return embed_texts(self, batch)

    monkeypatch.setattr(ClipEmbedder, "embed_images", count_images)
    monkeypatch.setattr(ClipEmbedder, "embed_texts", count_texts)
    monkeypatch.setattr(resources, "_image_embeddings", OrderedDict())
    monkeypatch.setattr(resources, "_text_embeddings", OrderedDict())
    final = _run(DATA / "cat.png", "add a rainbow and add a party hat, but keep the cat", full_context())

    # The photo, then each subtask's output once: the next subtask's retrieval reuses the critic's embedding.
    assert [result["status"] for result in final["results"]] == ["accepted", "accepted"]
    assert len(images) == 3
    assert len(set(images)) == 3
    assert len(texts) == len(set(texts))


def test_retrieval_reports_text_and_image_parts(full_context, tmp_path):
    from agent.report import build_report

    context = full_context()
    final = _run(DATA / "cat.png", "add a rainbow in the sky", context)
    retrieved = final["results"][0]["retrieved"]
    report = build_report("add a rainbow in the sky", context, final)

    assert retrieved
    assert all(-1.0 <= case["text_score"] <= 1.0 for case in retrieved)
    # Starter cases carry no image embedding, so their image part is absent and the score is the text part.
    assert all(case["image_score"] is None for case in retrieved)
    assert report["subtasks"][0]["retrieved"][0]["text_score"] == retrieved[0]["text_score"]


def test_learned_case_found_by_image(full_context):
    # After an accepted edit, the case stores the input image's embedding, so the same photo finds it with an
    # image part in its score.
    context = full_context()
    _run(DATA / "rocket.jpg", "paint the rocket bright orange", context)
    final = _run(DATA / "rocket.jpg", "paint the rocket bright orange", context)
    learned = [case for case in final["results"][0]["retrieved"] if case["image_score"] is not None]

    assert learned
    assert learned[0]["image_score"] == pytest.approx(1.0, abs=1e-4)


@pytest.fixture
def pipeline_calls(monkeypatch):
    """Record the batch size of every InstructPix2Pix pipeline call."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    calls = []
    original = StableDiffusionInstructPix2PixPipeline.__call__

    def counting(self, *args, **kwargs):
        calls.append(len(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionInstructPix2PixPipeline, "__call__", counting)
    return calls


def test_candidates_one_batched_call_keeps_best(full_context, pipeline_calls):
    final = _run(DATA / "cat.png", "turn the cat into a tiger", full_context(candidates=3, max_attempts=1, seed=10))
    attempts = final["attempts"]
    best = max(attempts, key=lambda attempt: attempt["quality"])

    assert pipeline_calls == [3]
    assert [attempt["candidate"] for attempt in attempts] == [1, 2, 3]
    assert [attempt["params"]["seed"] for attempt in attempts] == [10, 11, 12]
    assert len({attempt["image"]["sha256"] for attempt in attempts}) == 3
    assert [attempt["verdict"] for attempt in attempts].count("accept") == 1
    assert best["verdict"] == "accept"
    assert final["output"]["sha256"] == best["image"]["sha256"]
    assert final["results"][0]["attempts"] == 1


def test_candidate_repeats_alone_with_its_seed(full_context, tmp_path):
    batched = _run(DATA / "cat.png", "turn the cat into a tiger",
                   full_context(candidates=3, max_attempts=1, seed=10, home=str(tmp_path / "a")))
    alone = _run(DATA / "cat.png", "turn the cat into a tiger",
                 full_context(candidates=1, max_attempts=1, seed=12, home=str(tmp_path / "b")))
    third = Image.open(batched["attempts"][2]["image"]["path"])
    single = Image.open(alone["attempts"][0]["image"]["path"])
    difference = np.abs(np.asarray(third, dtype=np.int16) - np.asarray(single, dtype=np.int16))

    # Batched and single matrix products may round differently, so a pixel may differ by a level or two.
    assert difference.max() <= 3
    assert difference.mean() < 0.5


def test_candidates_all_rejected_keep_best_of_every_call(full_context, pipeline_calls):
    final = _run(DATA / "cat.png", "make the cat wear a hat",
                 full_context(candidates=2, max_attempts=2, min_clip_directional=1.01))
    attempts = final["attempts"]
    best = max(attempts, key=lambda attempt: attempt["quality"])

    assert pipeline_calls == [2, 2]
    assert [(attempt["number"], attempt["candidate"]) for attempt in attempts] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [attempt["verdict"] for attempt in attempts] == ["retry", "retry", "give_up", "give_up"]
    assert final["results"][0]["status"] == "failed"
    assert final["output"]["sha256"] == best["image"]["sha256"]


def test_critic_off_accepts_first_output(full_context, pipeline_calls):
    final = _run(DATA / "cat.png", "make the cat wear a hat",
                 full_context(use_critic=False, min_clip_directional=1.01, max_attempts=3))

    assert pipeline_calls == [1]
    assert final["results"][0]["status"] == "accepted"
    assert final["attempts"][0]["reason"] == "accepted unchecked: the critic is off"


def test_without_decomposition_one_editor_call(full_context, pipeline_calls):
    final = _run(DATA / "cat.png", "add a rainbow and make it 30% brighter",
                 full_context(use_decomposition=False, use_retrieval=False))

    assert pipeline_calls == [1]
    assert [subtask["text"] for subtask in final["plan"]] == ["add a rainbow and make it 30% brighter"]
    assert final["results"][0]["retrieved"] == []


def test_tiny_image_fails_generative_keeps_adjust(full_context, tmp_path):
    photo = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (120, 60, 30)).save(photo)
    final = _run(photo, "add a rainbow and make it 30% brighter", full_context())
    results = final["results"]

    assert [result["status"] for result in results] == ["failed", "accepted"]
    assert "too small for InstructPix2Pix" in results[0]["reason"]
    assert final["output"]["width"] == 1


def test_long_prompt_shortened_and_reported(full_context):
    from agent.report import build_report

    instruction = "replace the cat with a tiger " + " ".join(["that has very long orange and black stripes"] * 10)
    context = full_context(max_attempts=1)
    final = _run(DATA / "cat.png", instruction, context)
    params = final["attempts"][0]["params"]
    report = build_report(instruction, context, final)

    assert params["prompt_shortened_from"].startswith("replace the cat with a tiger")
    assert len(params["prompt"]) < len(params["prompt_shortened_from"])
    assert params["prompt"].startswith("replace the cat with a tiger")
    assert report["subtasks"][0]["attempts"][0]["params"]["prompt_shortened_from"] == params["prompt_shortened_from"]
