"""LM explorer: propose (and after an error, repair) the arguments of each call in a sub-DAG.

The tool to call reaches the program as a ``dspy.Tool`` built by DSPy's MCP support
(``dspy.Tool.from_mcp_tool``) from the server's own tool listing, so the LM sees the tool's name,
description and typed arguments the way any DSPy tool-using program does. The call itself is made
by the explorer engine (``firefly_exp.explorer.runtime``), which maps sandbox paths and records every call;
the tool's bound session only says so if something tries to call it directly.
"""

from __future__ import annotations

import json
from typing import Any

import dspy


class ProposeToolCall(dspy.Signature):
    """You are exploring a workflow of tool calls against live tools. Propose the JSON arguments for the
    next tool so that the call succeeds and, where the workflow links tools, uses values returned by
    earlier calls. Files and data live under /sandbox. If the previous attempt failed, fix the arguments."""

    workflow: str = dspy.InputField(desc="the tools of the sub-DAG in order and which outputs feed which inputs")
    tool: dspy.Tool = dspy.InputField(desc="the tool to call now: its name, description and arguments")
    observations: str = dspy.InputField(desc="earlier calls of this workflow with their arguments and results")
    hints: str = dspy.InputField(desc="example argument values known to exist in the sandbox")
    previous_error: str = dspy.InputField(desc="error of the previous attempt, or 'none'")
    arguments: dict[str, Any] = dspy.OutputField(desc="the arguments object for the call")


class CallProposer(dspy.Module):
    def __init__(self):
        super().__init__()
        self.propose = dspy.ChainOfThought(ProposeToolCall)

    def forward(self, **kwargs) -> dspy.Prediction:
        return self.propose(**kwargs)


class _EngineSession:
    """The MCP session a proposal tool is bound to: the explorer engine makes every call itself."""

    def __init__(self, server: str):
        self.server = server

    async def call_tool(self, name: str, arguments: dict | None = None, **_: Any):
        raise RuntimeError(f"{self.server}/{name}: calls go through firefly_exp.explorer (sandbox paths, "
                           "recording), not through the proposal tool")


def mcp_tool(row: dict) -> dspy.Tool:
    """A ``dspy.Tool`` for one tools.parquet row, through DSPy's MCP conversion.

    >>> t = mcp_tool({"server": "s", "name": "echo", "description": "Echo text",
    ...               "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}})
    >>> t.name, t.args
    ('echo', {'text': {'type': 'string'}})
    """
    from mcp import types

    schema = row["input_schema"] if isinstance(row["input_schema"], dict) else json.loads(row["input_schema"])
    listing = types.Tool(name=row["name"], description=row.get("description") or "", input_schema=schema)
    return dspy.Tool.from_mcp_tool(_EngineSession(row["server"]), listing)


class DSPyProposer:
    """Adapts :class:`CallProposer` to the explorer's proposer interface."""

    blocking = True   # an LM call blocks: the explorer runs it in a worker thread

    def __init__(self, lm, fallback=None, max_observation_chars: int = 6000):
        self.lm, self.fallback, self.limit = lm, fallback, max_observation_chars
        self.program = CallProposer()
        self._tools: dict[str, dspy.Tool] = {}

    def tool_for(self, row: dict) -> dspy.Tool:
        if row["tool"] not in self._tools:
            self._tools[row["tool"]] = mcp_tool(row)
        return self._tools[row["tool"]]

    def propose(self, ctx, attempt: int, last_error: str | None):
        tool = ctx.tool
        workflow = json.dumps({"nodes": ctx.dag["nodes"], "edges": [
            {"from": e["source"], "to": e["target"], "mapping": e.get("mapping")} for e in ctx.dag["edges"]]})
        observations = json.dumps([{"step": o["step"], "tool": o["tool"], "arguments": o["arguments"],
                                    "result": o["value"]} for o in ctx.observations], default=str)[-self.limit:]
        try:
            with dspy.context(lm=self.lm):
                pred = self.program(workflow=workflow, tool=self.tool_for(tool), observations=observations,
                                    hints=json.dumps(ctx.hints, default=str)[:3000],
                                    previous_error=last_error or "none")
            args = pred.arguments
            if isinstance(args, str):
                args = json.loads(args)
            if isinstance(args, dict):
                return args, {k: "lm" for k in args}
        except Exception as exc:  # noqa: BLE001 - an unusable LM answer falls back below
            print(f"[explorer] LM proposal failed for {tool['tool']}: {exc}")
        return self.fallback.propose(ctx, attempt, last_error) if self.fallback else None


def dspy_proposer(settings, ctx) -> DSPyProposer:
    """``proposer: programs.explorer.dspy_proposer`` (conf/explorer/dspy.yaml): the LM proposes each
    call's arguments (``ctx.lm``, the run's LM), the heuristic when its answer is unusable."""
    if ctx.lm is None:
        raise ValueError("explorer=dspy needs an LM: set lm=<choice> (see conf/lm/) or use explorer=heuristic")
    from firefly_exp.explorer.proposal import HeuristicProposer

    return DSPyProposer(ctx.lm, fallback=HeuristicProposer())
