"""Graph state of an edit: the plan, every attempt and the image lineage, all JSON-native.

Images never live in the state. They are PNG artifacts named by their sha256 (see `tools.image_io.ArtifactStore`), and
the state contains `ImageRef`s, so checkpoints stay small and any checkpointer can store them without pickle.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, with_config
# typing.TypedDict gives pydantic no JSON schema before Python 3.12, and the LangGraph server needs one for Studio's
# input form.
from typing_extensions import TypedDict

from tools.image_io import ImageRef

ToolName = Literal["adjust", "instruct_pix2pix"]
Verdict = Literal["accept", "retry", "give_up", "outscored"]
"""outscored: the candidate passed, but another candidate of the same batched call scored higher."""
SubtaskStatus = Literal["accepted", "failed", "skipped"]


class Subtask(TypedDict):
    """One step of the plan, routed to one tool."""

    index: int
    """Position in the plan, from 0."""
    text: str
    """The subtask as an instruction, for example "make the sky stormy"."""
    tool: ToolName
    operation: str | None
    """The adjust operation (for example "brightness"); None for instruct_pix2pix."""
    amount: float | None
    """The adjust amount stated in the instruction ("30% brighter" is 0.3); None when the instruction gave none."""
    before_caption: str
    """A caption of the image before this subtask, for the directional CLIP check."""
    after_caption: str
    """A caption of the image after this subtask."""


class RetrievedCase(TypedDict):
    """A past edit found in the case library for the current subtask."""

    case_id: str
    instruction: str
    tool: str
    params: dict[str, Any]
    score: float
    """Combined similarity in [-1, 1]: the text part alone, or weighted with the image part when both exist."""
    text_score: float
    """Cosine similarity between the subtask text and the case instruction."""
    image_score: float | None
    """Cosine similarity between the current image and the case's source image; None without image embeddings."""
    success_rate: float
    """Laplace-smoothed share of attempts with this case's parameters that were accepted."""


class Attempt(TypedDict):
    """One run of a tool on one subtask, with the critic's verdict."""

    turn: int
    """The instruction of the thread this attempt belongs to, from 1."""
    subtask_index: int
    number: int
    """1 for the first attempt at a subtask, 2 for its first retry, and so on."""
    candidate: int
    """Position of this output in the attempt's batched call, from 1; always 1 without candidates."""
    tool: ToolName
    params: dict[str, Any]
    image: ImageRef | None
    """The tool's output; None when the tool failed before producing an image."""
    scores: dict[str, float]
    verdict: Verdict
    reason: str
    valid: bool
    """False when the output failed a hard check (wrong size, blank, unreadable) and must never be kept."""
    quality: float
    """Scalar used to pick the best attempt when every attempt is rejected; higher is better."""


class SubtaskResult(TypedDict):
    """Final outcome of one subtask."""

    turn: int
    """The instruction of the thread this subtask belongs to, from 1."""
    subtask_index: int
    text: str
    tool: ToolName
    status: SubtaskStatus
    reason: str
    attempts: int
    image: ImageRef | None
    """The image kept for this subtask (the accepted or best attempt); None when skipped."""
    input_image: ImageRef | None
    """The image this subtask started from."""
    retrieved: list[RetrievedCase]


class Step(TypedDict):
    """One image in the thread's history: the input photo, or the image after a subtask changed it."""

    step: int
    """Position in the thread's history, from 0 for the input photo."""
    turn: int
    text: str
    """The subtask that made the image, or "input" for the photo."""
    status: str
    """"input", or the subtask's status ("accepted" or "failed" with the best attempt kept)."""
    image: ImageRef


class Memory(TypedDict):
    """Record of what the edit added, removed, changed and preserved, for later instructions on the same thread."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    preserved: list[str]


@with_config(ConfigDict(use_attribute_docstrings=True))
class InputState(TypedDict, total=False):
    """The input form: the photo, the instruction, and where to write the result."""

    image_path: str
    """Path of the photo to edit (PNG, JPEG, WebP, BMP, TIFF or GIF). On a thread that already has an image, empty or
    the same photo continues from the current image, and another photo starts over from it."""
    instruction: str
    """The edit in plain language, for example "make it brighter and add a rainbow"."""
    output_path: str
    """Output file for the edited photo. When empty, the result stays an artifact only."""
    overwrite: bool
    """Replace an existing file at output_path."""


class EditState(TypedDict, total=False):
    """The full state: input, plan, attempts, results and the image lineage."""

    image_path: str
    instruction: str
    output_path: str
    overwrite: bool

    turn: int
    """Number of instructions given on this thread so far; each run of the graph is one turn."""
    source_path: str
    """Absolute path of the photo the thread edits."""
    source: ImageRef
    """The input photo after orientation and colour-mode normalisation."""
    turn_input: ImageRef
    """The image this turn started from: the source on the first turn, the previous turn's result after that."""
    current: ImageRef
    """The image that the next subtask edits."""
    plan: list[Subtask]
    preserve: list[str]
    """Things the user asked to keep unchanged."""
    subtask_index: int
    """Index of the subtask in progress; len(plan) once every subtask is done."""
    retrieved: list[RetrievedCase]
    """Cases retrieved for the subtask in progress."""
    next_params: dict[str, Any]
    """Parameters for the next attempt at the subtask in progress."""
    pending_attempt: dict[str, Any]
    """The edit node's output awaiting the critic: {"images": [ImageRef, ...], "seeds": [int, ...], "error": str,
    "status": str}, one image per candidate.

    When the tool produced no image, "images" is empty, "status" is the subtask's final status ("skipped" when the
    editor is unavailable, "failed" for invalid parameters) and "error" the reason."""
    attempts: Annotated[list[Attempt], operator.add]
    """Every attempt of the run, appended in order."""
    results: Annotated[list[SubtaskResult], operator.add]
    lineage: Annotated[list[ImageRef], operator.add]
    """Each image the edit passed through, from the source to the output."""
    steps: Annotated[list[Step], operator.add]
    """The thread's history of images, which `ragedit history` lists and `--from STEP` and undo go back to."""
    cancelled: bool
    """True when the user cancelled the plan at the approval step; nothing was edited or written."""
    approval: str
    """State of the plan approval: "" before the approval step, then "accepted" or "edited".

    "edited" means a new plan awaits approval. "unreadable ..." gives the reason the last reply could not be read,
    and the question is asked again."""
    memory: Memory
    output: ImageRef
    written_path: str
    """Absolute path of the written output file, when output_path was given."""
    learned_cases: int
    """Accepted attempts added to the case library by this run."""


class OutputState(TypedDict, total=False):
    """Result returned to a caller: the plan, the attempts and results, and the source and output images."""

    turn: int
    source: ImageRef
    turn_input: ImageRef
    plan: list[Subtask]
    preserve: list[str]
    results: list[SubtaskResult]
    attempts: list[Attempt]
    lineage: list[ImageRef]
    steps: list[Step]
    output: ImageRef
    written_path: str
    cancelled: bool
    memory: Memory
    learned_cases: int
