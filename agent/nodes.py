"""Node functions of the edit graph.

Every node is a plain synchronous function because model loads, pipeline calls, FAISS searches and file writes block.
Nodes read and write JSON-native state only: images go through the artifact store.
"""

from __future__ import annotations

import logging
from typing import Any

from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime
from PIL import Image

from agent import critic, resources
from agent.context import Context
from agent.decompose import decompose
from agent.learning import learn_from_run
from agent.retrieval import first_params, to_retrieved
from agent.state import Attempt, EditState, Memory, Subtask, SubtaskResult
from tools.adjust import AdjustError, adjust
from tools.image_io import ImageRef, load_image, write_image_atomic
from tools.instruct_pix2pix import DEFAULT_MODEL_ID, EditorUnavailableError, edit_image

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
    return [attempt for attempt in state.get("attempts", []) if attempt["subtask_index"] == index]


# --- nodes --------------------------------------------------------------------------------------------------------


def decompose_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Load the photo into the artifact store and decompose the instruction into a plan."""
    context = context_of(runtime)
    image = load_image(state["image_path"])
    source = resources.artifact_store(context).put(image)
    plan = _decompose(state["instruction"], context)
    _emit({"event": "plan", "subtasks": plan.subtasks, "preserve": plan.preserve})
    memory = Memory(added=[], removed=[], changed=[], preserved=list(plan.preserve))
    return {
        "source": source,
        "current": source,
        "plan": plan.subtasks,
        "preserve": plan.preserve,
        "subtask_index": 0,
        "lineage": [source],
        "memory": memory,
    }


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
    embedder = resources.embedder_for(context)
    store = resources.case_store(context, embedder)
    query = embedder.embed_texts([subtask["text"]])[0]
    image_query = None
    if embedder.supports_images:
        artifacts = resources.artifact_store(context)
        image_query = resources.image_embedding(embedder, state["current"], lambda: artifacts.get(state["current"]))
    retrieved = to_retrieved(store.search(query, context.retrieval_k, image_vector=image_query))
    params = first_params(subtask, retrieved, context)
    update: dict[str, Any] = {"retrieved": retrieved}

    if params.pop("tool", subtask["tool"]) != subtask["tool"]:
        subtask = Subtask(**{**subtask, "tool": "adjust", "operation": params["operation"], "amount": params["amount"]})
        plan = list(state["plan"])
        plan[subtask["index"]] = subtask
        update["plan"] = plan

    if subtask["tool"] == "instruct_pix2pix" and context.profile == "offline":
        result = _result(subtask, "skipped", OFFLINE_EDITOR_REASON, 0, None, retrieved, state["current"])
        _emit({"event": "verdict", "subtask": subtask["text"], "status": "skipped", "reason": OFFLINE_EDITOR_REASON})
        update.update(results=[result], subtask_index=state["subtask_index"] + 1, next_params={})
        return update
    update["next_params"] = params
    return update


def edit_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Run the subtask's tool with the next attempt's parameters and store the output as an artifact."""
    context = context_of(runtime)
    subtask = _subtask(state)
    params = state["next_params"]
    store = resources.artifact_store(context)
    image = store.get(state["current"])
    number = len(_subtask_attempts(state)) + 1
    _emit({"event": "attempt", "subtask": subtask["text"], "number": number, "params": _public(params)})

    try:
        output = _run_tool(subtask, params, image, context)
    except EditorUnavailableError as error:
        return {"pending_attempt": {"image": None, "error": str(error), "status": "skipped"}}
    except AdjustError as error:
        # An amount outside the operation's range ("make it 900% brighter") fails this subtask, not the run.
        return {"pending_attempt": {"image": None, "error": str(error), "status": "failed"}}
    return {"pending_attempt": {"image": store.put(output), "error": "", "status": ""}}


def _run_tool(subtask: Subtask, params: dict[str, Any], image: Image.Image, context: Context) -> Image.Image:
    if subtask["tool"] == "adjust":
        return adjust(image, params["operation"], params.get("amount"))

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
        max_side=context.max_side,
        device=context.device or None,
        step_callback=on_step,
    )
    return images[0]


def critique_node(state: EditState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Judge the pending attempt; accept it, schedule a retry with new parameters, or give up keeping the best."""
    context = context_of(runtime)
    subtask = _subtask(state)
    pending = state["pending_attempt"]
    earlier = _subtask_attempts(state)
    number = len(earlier) + 1
    params = state["next_params"]

    if pending["image"] is None:
        attempt = _attempt(subtask, number, params, None, {}, "give_up", pending["error"], False, -1.0)
        result = _result(
            subtask, pending["status"], pending["error"], number, None, state.get("retrieved", []), state["current"]
        )
        _emit({"event": "verdict", "subtask": subtask["text"], "status": pending["status"], "reason": pending["error"]})
        return {"attempts": [attempt], "results": [result], "subtask_index": state["subtask_index"] + 1}

    judgement = _judge(state, subtask, params, pending["image"], context)
    verdict = critic.verdict_for(judgement, number, context.max_attempts)
    attempt = _attempt(
        subtask, number, params, pending["image"], judgement.scores, verdict, judgement.reason, judgement.valid,
        judgement.quality,
    )
    _emit({"event": "critique", "subtask": subtask["text"], "number": number, "verdict": verdict,
           "reason": judgement.reason})
    if verdict == "retry":
        logger.info("retrying %r (attempt %d): %s", subtask["text"], number + 1, judgement.reason)
        previous = [item["params"] for item in earlier] + [params]
        return {"attempts": [attempt], "next_params": critic.retry_params(subtask, previous, state["retrieved"])}
    if verdict == "accept":
        return _finish_subtask(state, subtask, attempt, "accepted", judgement.reason, [attempt])
    return _give_up(state, subtask, earlier + [attempt], attempt)


def _judge(
    state: EditState, subtask: Subtask, params: dict[str, Any], output: ImageRef, context: Context
) -> critic.Judgement:
    store = resources.artifact_store(context)
    before = store.get(state["current"])
    after = store.get(output)
    clip_scores = None
    clip = resources.clip_for(context) if subtask["tool"] == "instruct_pix2pix" else None
    if clip is not None and before.size == after.size:
        from tools.clip_scores import score_edit

        source_embedding = resources.image_embedding(clip, state["current"], before)
        clip_scores = dict(
            score_edit(
                clip, before, after, subtask["before_caption"], subtask["after_caption"], source_embedding=source_embedding
            )
        )
    return critic.judge_image(subtask, params, before, after, context, clip_scores)


def _give_up(state: EditState, subtask: Subtask, attempts: list[Attempt], last: Attempt) -> dict[str, Any]:
    best = critic.best_attempt(attempts)
    if best is None:
        reason = f"{last['reason']}; no attempt produced a usable image, so the image is unchanged"
        return _finish_subtask(state, subtask, last, "failed", reason, [last], keep_image=False)
    reason = f"{last['reason']} after {len(attempts)} attempts; kept attempt {best['number']}, the best one"
    update = _finish_subtask(state, subtask, best, "failed", reason, [last])
    return update


def _finish_subtask(
    state: EditState,
    subtask: Subtask,
    kept: Attempt,
    status: str,
    reason: str,
    new_attempts: list[Attempt],
    keep_image: bool = True,
) -> dict[str, Any]:
    number = len(_subtask_attempts(state)) + 1
    image = kept["image"] if keep_image else None
    result = _result(subtask, status, reason, number, image, state.get("retrieved", []), state["current"])
    _emit({"event": "verdict", "subtask": subtask["text"], "status": status, "reason": reason})
    update: dict[str, Any] = {
        "attempts": new_attempts,
        "results": [result],
        "subtask_index": state["subtask_index"] + 1,
    }
    if image is not None:
        update["current"] = image
        update["lineage"] = [image]
        update["memory"] = _remember(state["memory"], subtask)
    return update


def _remember(memory: Memory, subtask: Subtask) -> Memory:
    updated = Memory(
        added=list(memory["added"]), removed=list(memory["removed"]), changed=list(memory["changed"]),
        preserved=list(memory["preserved"]),
    )
    first_word = subtask["text"].split()[0].lower() if subtask["text"] else ""
    if first_word in ("remove", "delete", "erase"):
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
        written = write_image_atomic(store.get(output), output_path, overwrite=bool(state.get("overwrite")))
        update["written_path"] = str(written)
        _emit({"event": "written", "path": str(written), "width": output["width"], "height": output["height"]})

    if context.learn:
        update["learned_cases"] = learn_from_run(state, context)
    return update


# --- records ------------------------------------------------------------------------------------------------------


def _public(params: dict[str, Any]) -> dict[str, Any]:
    """Return the tool parameters without bookkeeping keys such as "sources"."""
    return {key: value for key, value in params.items() if key != "sources"}


def _attempt(
    subtask: Subtask,
    number: int,
    params: dict[str, Any],
    image: ImageRef | None,
    scores: dict[str, float],
    verdict: str,
    reason: str,
    valid: bool,
    quality: float,
) -> Attempt:
    return Attempt(
        subtask_index=subtask["index"],
        number=number,
        tool=subtask["tool"],
        params=dict(params),
        image=image,
        scores={key: round(float(value), 5) for key, value in scores.items()},
        verdict=verdict,  # type: ignore[typeddict-item]
        reason=reason,
        valid=valid,
        quality=round(float(quality), 5),
    )


def _result(
    subtask: Subtask,
    status: str,
    reason: str,
    attempts: int,
    image: ImageRef | None,
    retrieved: list,
    input_image: ImageRef | None = None,
) -> SubtaskResult:
    return SubtaskResult(
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
