"""Runtime context: the settings of one run, shown by LangGraph Studio as a settings form."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import platformdirs

from tools.embeddings import DEFAULT_CLIP_MODEL
from tools.instruct_pix2pix import DEFAULT_MODEL_ID, DTYPE_NAMES, EditorOptions

Profile = Literal["full", "offline"]
# Largest seed a torch.Generator accepts, less headroom for the seeds that retries derive from it.
MAX_SEED = 2**63 - 1 - 2**20
PROFILES: tuple[str, ...] = ("full", "offline")
# Candidates per batched InstructPix2Pix call; each one costs a full denoising run's memory on the device.
MAX_CANDIDATES = 8


def default_home() -> Path:
    """Return the data folder: $RAGEDIT_HOME, else the platform's user data folder."""
    configured = os.environ.get("RAGEDIT_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(platformdirs.user_data_dir("ragedit", appauthor=False))


def _describe(text: str, **kwargs) -> dict:
    return {"metadata": {"description": text}, **kwargs}


@dataclass(kw_only=True)
class Context:
    """Settings of one edit run."""

    profile: Profile = field(
        default="full",
        **_describe(
            "full: InstructPix2Pix editor and CLIP retrieval and critic (weights downloaded once). "
            "offline: exact adjust edits only, MiniLM retrieval, image checks; needs no network."
        ),
    )
    home: str = field(
        default="",
        **_describe("Data folder for artifacts and case libraries; empty means $RAGEDIT_HOME or the user data folder."),
    )
    editor_model: str = field(
        default=DEFAULT_MODEL_ID,
        **_describe("InstructPix2Pix weights: a Hugging Face model id or a local diffusers directory."),
    )
    clip_model: str = field(
        default=DEFAULT_CLIP_MODEL,
        **_describe("open_clip model name (ViT-B-32 with laion2b_s34b_b79k weights) or a local open_clip directory."),
    )
    device: str = field(default="", **_describe("Torch device for the models (cuda, mps, cpu); empty picks one."))
    dtype: str = field(
        default="",
        **_describe(
            "Torch dtype of InstructPix2Pix: float16, bfloat16 or float32. Empty picks float16 on cuda and mps, "
            "float32 on cpu. Half precision halves the weights' memory and is faster on GPUs."
        ),
    )
    attention_slicing: bool = field(
        default=False,
        **_describe(
            "Compute InstructPix2Pix attention in slices to lower peak GPU memory. It replaces PyTorch's "
            "scaled-dot-product attention and is slower, so use it only when an edit runs out of memory."
        ),
    )
    cpu_offload: bool = field(
        default=False,
        **_describe(
            "Keep the InstructPix2Pix models in CPU memory and move each to the GPU only while it runs, for GPUs too "
            "small for the whole model. It needs a cuda or mps device, and each edit is slower."
        ),
    )
    compile_unet: bool = field(
        default=False,
        **_describe(
            "Compile the InstructPix2Pix UNet with torch.compile, for many edits in one process. The first edit at "
            "each working size waits for the compilation (seconds to minutes), and later edits at that size run faster."
        ),
    )
    seed: int = field(default=0, **_describe("Seed of the first attempt; retries derive new seeds from it."))
    steps: int = field(default=0, **_describe("Denoising steps of InstructPix2Pix; 0 takes them from retrieved cases."))
    max_attempts: int = field(default=3, **_describe("Attempts per subtask before the critic gives up (at least 1)."))
    max_side: int = field(
        default=512,
        **_describe("Longest side in pixels of the image InstructPix2Pix works on; the result is resized back."),
    )
    retrieval_k: int = field(default=5, **_describe("Number of similar past edits retrieved per subtask."))
    min_change: float = field(
        default=0.004,
        **_describe("Minimum mean absolute pixel change (0 to 1) for an output to count as an edit."),
    )
    min_clip_image: float = field(
        default=0.70,
        **_describe("Minimum CLIP image similarity between input and output; lower means the edit changed too much."),
    )
    min_clip_text: float = field(
        default=0.18,
        **_describe("Minimum CLIP similarity between the output and the subtask's after-caption."),
    )
    min_clip_directional: float = field(
        default=0.05,
        **_describe(
            "Minimum directional CLIP similarity (image change vs caption change); "
            "real editors average about 0.08 to 0.14, so the default only rejects edits that went the wrong way."
        ),
    )
    max_preserve_drop: float = field(
        default=0.03,
        **_describe(
            "Largest allowed drop in CLIP similarity between the image and each thing the user asked to keep; "
            "a larger drop means the edit changed or removed it."
        ),
    )
    max_local_change: float = field(
        default=0.8,
        **_describe(
            "Largest share of pixels (0 to 1) that a local edit (add, remove or replace an object, change its colour) "
            "may change visibly; more means the editor repainted the whole photo."
        ),
    )
    max_amount_error: float = field(
        default=0.5,
        **_describe(
            "Allowed relative error between the measured change of an adjust edit and the change its stated amount "
            "gives: 0.5 accepts from half to one and a half times the expected change."
        ),
    )
    candidates: int = field(
        default=1,
        **_describe(
            "Images InstructPix2Pix makes per attempt in one batched call; the critic keeps the best. "
            f"Candidate i uses seed + i. At most {MAX_CANDIDATES}."
        ),
    )
    use_decomposition: bool = field(
        default=True,
        **_describe("Split the instruction into subtasks; off sends the whole instruction to InstructPix2Pix (ablation)."),
    )
    use_retrieval: bool = field(
        default=True,
        **_describe("Take tools and parameters from similar past edits; off uses the defaults (ablation)."),
    )
    use_critic: bool = field(
        default=True,
        **_describe("Check every attempt and retry failed ones; off accepts the first output unchecked (ablation)."),
    )
    approve_plan: bool = field(
        default=False,
        **_describe(
            "Stop after decomposition with the plan as an interrupt; resume with accept, cancel, or "
            '{"action": "edit", "instruction": "..."} to plan a new instruction.'
        ),
    )
    learn: bool = field(default=True, **_describe("Add accepted attempts to the case library at the end of the run."))
    llm: str = field(
        default="",
        **_describe(
            "Chat model that decomposes the instruction, PROVIDER:MODEL or llamacpp:/path/model.gguf; "
            "empty uses the rules decomposer, which is also the fallback when the model fails."
        ),
    )
    llm_timeout_s: float = field(default=60.0, **_describe("Seconds to wait for the chat model's plan."))

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"invalid profile {self.profile!r}: use one of {', '.join(PROFILES)}")
        if self.max_attempts < 1:
            raise ValueError(f"invalid max_attempts {self.max_attempts}: use 1 or more")
        if self.steps < 0:
            raise ValueError(f"invalid steps {self.steps}: use 1 or more, or 0 to take them from retrieved cases")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ValueError(f"invalid candidates {self.candidates}: use 1 to {MAX_CANDIDATES}")
        for name in ("max_preserve_drop", "max_local_change", "max_amount_error"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"invalid {name} {value}: use a number from 0 to 1")
        if self.max_side < 64:
            raise ValueError(f"invalid max_side {self.max_side}: use 64 pixels or more")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"invalid seed {self.seed}: use an integer from 0 to {MAX_SEED}")
        if not re.fullmatch(r"|cpu|cuda(:\d+)?|mps", self.device):
            raise ValueError(f"invalid device {self.device!r}: use cpu, cuda, cuda:N or mps, or leave it empty")
        if self.dtype not in ("", *DTYPE_NAMES):
            raise ValueError(f"invalid dtype {self.dtype!r}: use {', '.join(DTYPE_NAMES)}, or leave it empty")
        if self.cpu_offload and self.device == "cpu":
            raise ValueError(
                "invalid cpu_offload on device 'cpu': CPU offload needs a cuda or mps device to move each model to "
                "while it runs; turn cpu_offload off, or select a cuda or mps device"
            )

    @property
    def editor_options(self) -> EditorOptions:
        """Memory and speed options of the InstructPix2Pix pipeline, taken from this context."""
        return EditorOptions(
            attention_slicing=self.attention_slicing, cpu_offload=self.cpu_offload, compile_unet=self.compile_unet
        )

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve() if self.home else default_home()

    @property
    def artifact_dir(self) -> Path:
        return self.home_path / "artifacts"

    @property
    def case_library_dir(self) -> Path:
        """Case library of this profile; each profile keeps its own because their embedders differ."""
        return self.home_path / "cases" / self.profile

