"""The edit graph: decompose, approve the plan when asked to, then for each subtask retrieve, edit and critique.

`builder` is the uncompiled graph for callers that add a checkpointer; `graph` is compiled without one for
langgraph.json (the LangGraph server brings its own persistence).
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph

from agent.context import Context
from agent.nodes import (
    approve_node,
    critique_node,
    decompose_node,
    edit_node,
    finish_node,
    next_subtask_node,
    retrieve_node,
)
from agent.state import EditState, InputState, OutputState


def route_approval(state: EditState) -> Literal["next_subtask", "approve", "__end__"]:
    """Edit after an accepted plan, ask again after an edited plan or an unreadable answer, stop after a cancel."""
    if state.get("cancelled"):
        return END
    if state.get("approval", "accepted") != "accepted":
        return "approve"
    return "next_subtask"


def route_subtask(state: EditState) -> Literal["retrieve", "finish"]:
    """Go on to the next subtask, or finish when the plan is done."""
    if state["subtask_index"] < len(state["plan"]):
        return "retrieve"
    return "finish"


def route_retrieved(state: EditState) -> Literal["edit", "next_subtask"]:
    """Edit the subtask, or move on when retrieval skipped it (no editor for it in this profile)."""
    if state.get("next_params"):
        return "edit"
    return "next_subtask"


def route_verdict(state: EditState) -> Literal["edit", "next_subtask"]:
    """Retry the subtask after a "retry" verdict; accept and give_up move on."""
    last = state["attempts"][-1]
    if last["verdict"] == "retry":
        return "edit"
    return "next_subtask"


builder = StateGraph(EditState, context_schema=Context, input_schema=InputState, output_schema=OutputState)
builder.add_node("decompose", decompose_node)
builder.add_node("approve", approve_node)
builder.add_node("next_subtask", next_subtask_node)
builder.add_node("retrieve", retrieve_node)
builder.add_node("edit", edit_node)
builder.add_node("critique", critique_node)
builder.add_node("finish", finish_node)

builder.add_edge(START, "decompose")
builder.add_edge("decompose", "approve")
builder.add_conditional_edges("approve", route_approval)
builder.add_conditional_edges("next_subtask", route_subtask)
builder.add_conditional_edges("retrieve", route_retrieved)
builder.add_edge("edit", "critique")
builder.add_conditional_edges("critique", route_verdict)
builder.add_edge("finish", END)

graph = builder.compile(name="ragedit")
