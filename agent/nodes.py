"""Node functions of the edit graph.

Every node is a plain synchronous function because model loads, pipeline calls, FAISS searches and file writes block.
Nodes read and write JSON-native state only: images go through the artifact store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from PIL import Image

from agent import critic, resources
from agent.context import Context
from agent.decompose import decompose, whole_instruction_plan
from agent.learning import learn_from_run
from agent.retrieval import first_params, to_retrieved
from agent.state import Attempt, EditState, Memory, RetrievedCase, Step, Subtask, SubtaskResult
from tools.adjust import AdjustError, adjust
from tools.image_io import ImageRef, load_image, write_image_atomic
from tools.instruct_pix2pix import (
    DEFAULT_MODEL_ID,
    EditorInputError,
    EditorOutOfMemoryError,
    EditorUnavailableError,
    edit_image,
    prompt_for_editor,
)

logger = logging.getLogger(__name__)

OFFLINE_EDITOR_REASON = (
    "needs the instruct_pix2pix editor, whose weights are not available in the offline profile; "
    "to get them, run with --profile full on a machine with network access "
    f"(downloads {DEFAULT_MODEL_ID}, several GB, once) or pass --profile full --editor-model DIR with a local copy"
)


def context_of(runtime: Runtime[Context]) -> Context:
    """Return the run's Context; Studio and API clients may send it as a plain dict, or not at all."""
    context = runtime.context
    if context is None:
        return Context()
    if isinstance(context, dict):
        return Context(**context)
    return context


def _emit(event: dict[str, Any]) -> None:
    try:
        get_stream_writer()(event)
    except RuntimeError:
        # Called outside a graph run (a unit test calling a node directly): there is no stream to write to.
        pass


def _subtask(state: EditState) -> Subtask:
    return state["plan"][state["subtask_index"]]


def _subtask_attempts(state: EditState) -> list[Attempt]:
    index = state["subtask_index"]
    turn = state.get("turn", 1)
    return [
        attempt for attempt in state.get("attempts", [])
        if attempt["subtask_index"] == index and attempt.get("turn", 1) == turn
    ]


# --- nodes --------------------------------------------------------------------------------------------------------


def decompose_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Start a turn: load the photo (or continue from the thread's current image) and decompose the instruction.

    On a thread that already has an image, an empty image_path or the same photo continues from the current image.
    That turn keeps the memory, so the things to preserve carry over. Another photo starts over from that photo.
    """
    context = context_of(runtime)
    turn = state.get("turn", 0) + 1
    plan = _plan(state["instruction"], context)
    update: dict[str, Any] = {
        "turn": turn, "subtask_index": 0, "cancelled": False, "approval": "", "next_params": {}, "written_path": "",
    }

    if _continues_thread(state):
        memory = state["memory"]
        preserve = list(dict.fromkeys([*memory["preserved"], *plan.preserve]))
        update["turn_input"] = state["current"]
    else:
        source_path = str(Path(state["image_path"]).expanduser().resolve())
        source = resources.artifact_store(context).put(load_image(source_path))
        memory = Memory(added=[], removed=[], changed=[], preserved=[])
        preserve = list(plan.preserve)
        step = Step(step=len(state.get("steps", [])), turn=turn, text="input", status="input", image=source)
        update.update(source=source, source_path=source_path, current=source, turn_input=source, lineage=[source],
                      steps=[step])

    if state.get("output_path"):
        # Checked before any edit, so a bad path costs no editing time.
        check_output_path(state["output_path"], update.get("source_path") or state["source_path"])
    memory = Memory(**{**memory, "preserved": preserve})
    _emit({"event": "plan", "subtasks": plan.subtasks, "preserve": preserve, "turn": turn})
    update.update(plan=plan.subtasks, preserve=preserve, memory=memory)
    return update


def check_output_path(output_path: str, source_path: str) -> None:
    """Reject an output path that is the photo being edited, also through "..", a symlink or a hard link."""
    target = Path(output_path).expanduser()
    same = os.path.realpath(target) == os.path.realpath(source_path)
    if not same and target.exists():
        same = os.path.samefile(target, source_path)
    if same:
        raise ValueError(f"invalid output_path {output_path}: it is the input image {source_path}; choose another path")


def _continues_thread(state: EditState) -> bool:
    if state.get("current") is None:
        return False
    image_path = state.get("image_path")
    if not image_path:
        return True
    return str(Path(image_path).expanduser().resolve()) == state.get("source_path")


def _plan(instruction: str, context: Context):
    if context.use_decomposition:
        return _decompose(instruction, context)
    return whole_instruction_plan(instruction)


def approve_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """With approve_plan set, stop with the plan as an interrupt and apply the answer: accept, cancel or edit.

    The answer is "accept", "cancel", or {"action": "edit", "instruction": "..."}, which plans the new instruction
    and asks again.
    """
    context = context_of(runtime)
    if not context.approve_plan:
        return {"approval": "accepted"}
    payload = {
        "question": "Accept this plan? Answer accept, cancel, or {\"action\": \"edit\", \"instruction\": ...}.",
        "instruction": state["instruction"],
        "plan": [_public_subtask(subtask) for subtask in state["plan"]],
        "preserve": state["preserve"],
    }
    if state.get("approval", "").startswith("unreadable"):
        payload["error"] = state["approval"]
    action, instruction = _read_answer(interrupt(payload))
    if action == "unreadable":
        return {"approval": instruction}
    if action == "cancel":
        _emit({"event": "cancelled"})
        return {"cancelled": True}
    if action == "accept":
        return {"approval": "accepted"}

    plan = _plan(instruction, context)
    preserve = list(dict.fromkeys([*state["memory"]["preserved"], *plan.preserve]))
    _emit({"event": "plan", "subtasks": plan.subtasks, "preserve": preserve, "turn": state["turn"]})
    return {"instruction": instruction, "plan": plan.subtasks, "preserve": preserve, "approval": "edited"}


def _read_answer(answer: Any) -> tuple[str, str]:
    """Return (action, instruction) from an approval answer; for an unreadable one, ("unreadable", the reason)."""
    if isinstance(answer, bool):
        return ("accept" if answer else "cancel"), ""
    action = answer.get("action", "") if isinstance(answer, dict) else answer
    action = action.strip().lower() if isinstance(action, str) else ""
    if action in ("accept", "cancel"):
        return action, ""
    instruction = answer.get("instruction") if isinstance(answer, dict) else None
    if action == "edit" and isinstance(instruction, str) and instruction.strip():
        return "edit", instruction
    shown = repr(answer)[:80]
    logger.warning("unreadable plan approval %s; asking again", shown)
    return "unreadable", (
        f"unreadable answer {shown}: answer accept, cancel, or {{\"action\": \"edit\", \"instruction\": \"...\"}} "
        "with a non-empty instruction"
    )


def _public_subtask(subtask: Subtask) -> dict[str, Any]:
    return {key: subtask[key] for key in ("text", "tool", "operation", "amount")}


def _decompose(instruction: str, context: Context):
    if not context.llm:
        return decompose(instruction)
    from agent.llm_plan import decompose_with_llm

    return decompose_with_llm(instruction, resources.chat_model(context.llm), timeout_s=context.llm_timeout_s)


def next_subtask_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Mark the start of the next subtask; the graph routes from here to retrieve, or to finish when none is left."""
    index = state["subtask_index"]
    if index < len(state["plan"]):
        _emit({"event": "subtask", "index": index, "total": len(state["plan"]), "text": state["plan"][index]["text"]})
    return {"next_params": {}}


def retrieve_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Find similar past edits and derive the first attempt's tool and parameters from them.

    A subtask that needs InstructPix2Pix in the offline profile is skipped here, after retrieval, because a close
    case may show that an exact adjust operation does the same edit.
    """
    context = context_of(runtime)
    subtask = _subtask(state)
    retrieved = _search_cases(state, subtask, context) if context.use_retrieval else []
    params = first_params(subtask, retrieved, context)
    update: dict[str, Any] = {"retrieved": retrieved}

    if params.pop("tool", subtask["tool"]) != subtask["tool"]:
        subtask = Subtask(**{**subtask, "tool": "adjust", "operation": params["operation"], "amount": params["amount"]})
        plan = list(state["plan"])
        plan[subtask["index"]] = subtask
        update["plan"] = plan

    if subtask["tool"] == "instruct_pix2pix" and context.profile == "offline":
        result = _result(
            state["turn"], subtask, "skipped", OFFLINE_EDITOR_REASON, 0, None, retrieved, state["current"]
        )
        _emit({"event": "verdict", "subtask": subtask["text"], "status": "skipped", "reason": OFFLINE_EDITOR_REASON})
        update.update(results=[result], subtask_index=state["subtask_index"] + 1, next_params={})
        return update
    update["next_params"] = params
    return update


def _search_cases(state: EditState, subtask: Subtask, context: Context) -> list[RetrievedCase]:
    embedder = resources.embedder_for(context)
    store = resources.case_store(context, embedder)
    query = resources.text_embeddings(embedder, [subtask["text"]])[0]
    image_query = None
    if embedder.supports_images:
        artifacts = resources.artifact_store(context)
        image_query = resources.image_embedding(embedder, state["current"], lambda: artifacts.get(state["current"]))
    return to_retrieved(store.search(query, context.retrieval_k, image_vector=image_query))


def edit_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Run the subtask's tool with the next attempt's parameters and store the output as an artifact."""
    context = context_of(runtime)
    subtask = _subtask(state)
    params = state["next_params"]
    store = resources.artifact_store(context)
    image = store.get(state["current"])
    number = _attempt_count(_subtask_attempts(state)) + 1
    candidates = context.candidates if subtask["tool"] == "instruct_pix2pix" else 1
    _emit({"event": "attempt", "subtask": subtask["text"], "number": number, "candidates": candidates,
           "params": _public(params)})

    try:
        prompt = _fitted_prompt(subtask, params, context)
        outputs = _run_tool(subtask, {**params, "prompt": prompt} if prompt else params, image, context)
    except EditorUnavailableError as error:
        return {"pending_attempt": _no_image(str(error), "skipped")}
    except (AdjustError, EditorInputError, EditorOutOfMemoryError) as error:
        # An amount outside the operation's range ("make it 900% brighter"), an image too small for the editor or
        # a device out of memory fails this subtask, not the run.
        return {"pending_attempt": _no_image(str(error), "failed")}
    seed = int(params.get("seed", 0))
    pending: dict[str, Any] = {
        "images": [store.put(output) for output in outputs],
        "seeds": [seed + index for index in range(len(outputs))],
        "error": "",
        "status": "",
    }
    if prompt and prompt != params.get("prompt"):
        pending["prompt"] = prompt
    return {"pending_attempt": pending}


def _fitted_prompt(subtask: Subtask, params: dict[str, Any], context: Context) -> str:
    """Return the InstructPix2Pix prompt shortened to the text encoder's limit, or "" for an adjust subtask."""
    if subtask["tool"] != "instruct_pix2pix":
        return ""
    prompt = prompt_for_editor(params["prompt"], model=context.editor_model, device=context.device or None,
                               dtype=context.dtype or None, options=context.editor_options)
    if prompt != params["prompt"]:
        logger.warning("shortened the prompt %r to %r to fit the text encoder's 77 tokens", params["prompt"], prompt)
        _emit({"event": "note", "subtask": subtask["text"],
               "message": f"prompt shortened to fit the text encoder's 77 tokens: {prompt!r}"})
    return prompt


def _no_image(error: str, status: str) -> dict[str, Any]:
    return {"images": [], "seeds": [], "error": error, "status": status}


def _run_tool(subtask: Subtask, params: dict[str, Any], image: Image.Image, context: Context) -> list[Image.Image]:
    """Run the subtask's tool; InstructPix2Pix makes `context.candidates` images in one call, adjust makes one."""
    if subtask["tool"] == "adjust":
        return [adjust(image, params["operation"], params.get("amount"))]

    def on_step(step: int, total: int) -> None:
        _emit({"event": "step", "subtask": subtask["text"], "step": step, "total": total})

    images = edit_image(
        image,
        params["prompt"],
        model=context.editor_model,
        seed=int(params["seed"]),
        steps=int(params["steps"]),
        guidance_scale=float(params["guidance_scale"]),
        image_guidance_scale=float(params["image_guidance_scale"]),
        num_images=context.candidates,
        max_side=context.max_side,
        device=context.device or None,
        dtype=context.dtype or None,
        options=context.editor_options,
        step_callback=on_step,
    )
    return images


def critique_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Judge the pending attempt's candidates; accept the best, schedule a retry with new parameters, or give up."""
    context = context_of(runtime)
    subtask = _subtask(state)
    pending = state["pending_attempt"]
    earlier = _subtask_attempts(state)
    number = _attempt_count(earlier) + 1
    params = state["next_params"]

    if not pending["images"]:
        attempt = _attempt(
            state["turn"], subtask, number, 1, params, None, {}, "give_up", pending["error"], False, -1.0
        )
        result = _result(
            state["turn"], subtask, pending["status"], pending["error"], number, None, state.get("retrieved", []), state["current"]
        )
        _emit({"event": "verdict", "subtask": subtask["text"], "status": pending["status"], "reason": pending["error"]})
        return {"attempts": [attempt], "results": [result], "subtask_index": state["subtask_index"] + 1}

    judgements = _judge_candidates(state, subtask, params, pending, context)
    order = critic.rank_candidates(judgements)
    chosen = order[0]
    verdict = critic.verdict_for(judgements[chosen], number, context.max_attempts)
    attempts = [
        _candidate_attempt(state["turn"], subtask, number, index, params, pending, judgement, verdict, chosen,
                           judgements[chosen])
        for index, judgement in enumerate(judgements)
    ]
    for attempt in attempts:
        _emit({"event": "critique", "subtask": subtask["text"], "number": number, "candidate": attempt["candidate"],
               "candidates": len(attempts), "verdict": attempt["verdict"], "reason": attempt["reason"]})

    if verdict == "retry":
        logger.info("retrying %r (attempt %d): %s", subtask["text"], number + 1, judgements[chosen].reason)
        previous = [item["params"] for item in earlier if item["candidate"] == 1] + [params]
        return {"attempts": attempts, "next_params": critic.retry_params(subtask, previous, state["retrieved"])}
    if verdict == "accept":
        return _finish_subtask(state, subtask, attempts[chosen], "accepted", judgements[chosen].reason, attempts, number)
    return _give_up(state, subtask, earlier + attempts, attempts[chosen], attempts, number)


def _attempt_count(attempts: list[Attempt]) -> int:
    return max((attempt["number"] for attempt in attempts), default=0)


def _candidate_attempt(
    turn: int,
    subtask: Subtask,
    number: int,
    index: int,
    params: dict[str, Any],
    pending: dict[str, Any],
    judgement: critic.Judgement,
    verdict: str,
    chosen: int,
    best: critic.Judgement,
) -> Attempt:
    """Record one candidate: the chosen one carries the verdict; when it is accepted, the others are outscored."""
    reason = judgement.reason
    if index != chosen and verdict == "accept":
        if judgement.passed:
            reason = f"passed, but candidate {chosen + 1} scored higher ({best.quality:.3f} vs {judgement.quality:.3f})"
        verdict = "outscored"
    candidate_params = {**params, "seed": pending["seeds"][index]} if "seed" in params else dict(params)
    if pending.get("prompt"):
        # The report shows what the editor was given and what it was shortened from.
        candidate_params.update(prompt=pending["prompt"], prompt_shortened_from=params["prompt"])
    return _attempt(
        turn, subtask, number, index + 1, candidate_params, pending["images"][index], judgement.scores, verdict, reason,
        judgement.valid, judgement.quality,
    )


def _judge_candidates(
    state: EditState, subtask: Subtask, params: dict[str, Any], pending: dict[str, Any], context: Context
) -> list[critic.Judgement]:
    if not context.use_critic:
        return [critic.Judgement(True, True, "accepted unchecked: the critic is off", {}, 0.0) for _ in pending["images"]]

    store = resources.artifact_store(context)
    before = store.get(state["current"])
    afters = [store.get(ref) for ref in pending["images"]]
    clip_rows: list[dict[str, float] | None] = [None] * len(afters)
    preserve_rows: list[dict[str, tuple[float, float]] | None] = [None] * len(afters)
    clip = resources.clip_for(context) if subtask["tool"] == "instruct_pix2pix" else None
    if clip is not None:
        clip_rows, preserve_rows = _clip_scores(clip, state, subtask, before, afters, pending["images"])
    return [
        critic.judge_image(subtask, params, before, after, context, clip_row, preserve_row)
        for after, clip_row, preserve_row in zip(afters, clip_rows, preserve_rows)
    ]


def _clip_scores(
    clip: Any,
    state: EditState,
    subtask: Subtask,
    before: Image.Image,
    afters: list[Image.Image],
    after_refs: list[ImageRef],
) -> tuple[list[dict[str, float] | None], list[dict[str, tuple[float, float]] | None]]:
    """Score every candidate with CLIP, embedding the input once and the candidates in one batch."""
    from tools.clip_scores import scores_from_vectors, similarity_matrix

    source_vector = resources.image_embedding(clip, state["current"], before)
    after_vectors = resources.image_embeddings(clip, after_refs, afters)
    keep = critic.preserved_for(subtask, state.get("preserve", []))
    captions = [subtask["before_caption"], subtask["after_caption"]]
    text_vectors = resources.text_embeddings(clip, captions + [f"a photo of {item}" for item in keep])

    clip_rows: list[dict[str, float] | None] = [
        dict(scores_from_vectors(source_vector, vector, text_vectors[0], text_vectors[1]))
        if after.size == before.size else None
        for after, vector in zip(afters, after_vectors)
    ]
    if not keep:
        return clip_rows, [None] * len(afters)
    before_similarity = similarity_matrix(source_vector[None, :], text_vectors[2:])[0]
    after_similarity = similarity_matrix(after_vectors, text_vectors[2:])
    preserve_rows: list[dict[str, tuple[float, float]] | None] = [
        {item: (float(before_similarity[column]), float(row[column])) for column, item in enumerate(keep)}
        for row in after_similarity
    ]
    return clip_rows, preserve_rows


def _give_up(
    state: EditState,
    subtask: Subtask,
    attempts: list[Attempt],
    last: Attempt,
    new_attempts: list[Attempt],
    count: int,
) -> dict[str, Any]:
    best = critic.best_attempt(attempts)
    if best is None:
        reason = f"{last['reason']}; no attempt produced a usable image, so the image is unchanged"
        return _finish_subtask(state, subtask, last, "failed", reason, new_attempts, count, keep_image=False)
    kept = f"attempt {best['number']}" + (f" (candidate {best['candidate']})" if best["candidate"] > 1 else "")
    reason = f"no attempt passed in {count}; kept {kept}, the best one: {best['reason']}"
    return _finish_subtask(state, subtask, best, "failed", reason, new_attempts, count)


def _finish_subtask(
    state: EditState,
    subtask: Subtask,
    kept: Attempt,
    status: str,
    reason: str,
    new_attempts: list[Attempt],
    count: int,
    keep_image: bool = True,
) -> dict[str, Any]:
    image = kept["image"] if keep_image else None
    result = _result(
        state["turn"], subtask, status, reason, count, image, state.get("retrieved", []), state["current"]
    )
    _emit({"event": "verdict", "subtask": subtask["text"], "status": status, "reason": reason})
    update: dict[str, Any] = {
        "attempts": new_attempts,
        "results": [result],
        "subtask_index": state["subtask_index"] + 1,
    }
    if image is not None:
        step = Step(step=len(state.get("steps", [])), turn=state["turn"], text=subtask["text"], status=status,
                    image=image)
        update.update(current=image, lineage=[image], steps=[step], memory=_remember(state["memory"], subtask))
    return update


def _remember(memory: Memory, subtask: Subtask) -> Memory:
    updated = Memory(
        added=list(memory["added"]), removed=list(memory["removed"]), changed=list(memory["changed"]),
        preserved=list(memory["preserved"]),
    )
    first_word = subtask["text"].split()[0].lower() if subtask["text"] else ""
    if subtask["tool"] == "adjust":
        # "add a vignette" adjusts the whole photo; it adds no object to remember.
        updated["changed"].append(subtask["text"])
    elif first_word in ("remove", "delete", "erase"):
        updated["removed"].append(subtask["text"])
    elif first_word in ("add", "put", "place", "insert", "give"):
        updated["added"].append(subtask["text"])
    else:
        updated["changed"].append(subtask["text"])
    return updated


def finish_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the output file and add the run's accepted attempts to the case library."""
    context = context_of(runtime)
    store = resources.artifact_store(context)
    output = state["current"]
    update: dict[str, Any] = {"output": output}

    output_path = state.get("output_path")
    if output_path:
        check_output_path(output_path, state["source_path"])
        written = write_image_atomic(store.get(output), output_path, overwrite=bool(state.get("overwrite")))
        # A later turn that names no output file must not write this one again.
        update.update(written_path=str(written), output_path="")
        _emit({"event": "written", "path": str(written), "width": output["width"], "height": output["height"]})

    if context.learn:
        update["learned_cases"] = learn_from_run(state, context)
    return update


# --- records ------------------------------------------------------------------------------------------------------


def _public(params: dict[str, Any]) -> dict[str, Any]:
    """Return the tool parameters without bookkeeping keys such as "sources"."""
    return {key: value for key, value in params.items() if key != "sources"}


def _attempt(
    turn: int,
    subtask: Subtask,
    number: int,
    candidate: int,
    params: dict[str, Any],
    image: ImageRef | None,
    scores: dict[str, float],
    verdict: str,
    reason: str,
    valid: bool,
    quality: float,
) -> Attempt:
    return Attempt(
        turn=turn,
        subtask_index=subtask["index"],
        number=number,
        candidate=candidate,
        tool=subtask["tool"],
        params=dict(params),
        image=image,
        scores={key: float(value) for key, value in scores.items()},
        verdict=verdict,  # type: ignore[typeddict-item]
        reason=reason,
        valid=valid,
        quality=float(quality),
    )


def _result(
    turn: int,
    subtask: Subtask,
    status: str,
    reason: str,
    attempts: int,
    image: ImageRef | None,
    retrieved: list,
    input_image: ImageRef | None = None,
) -> SubtaskResult:
    return SubtaskResult(
        turn=turn,
        input_image=input_image,
        subtask_index=subtask["index"],
        text=subtask["text"],
        tool=subtask["tool"],
        status=status,  # type: ignore[typeddict-item]
        reason=reason,
        attempts=attempts,
        image=image,
        retrieved=list(retrieved),
    )
