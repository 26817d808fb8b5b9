"""LM explorer: propose (and after an error, repair) the arguments of each call in a sub-DAG."""

from __future__ import annotations

import json
from typing import Any

import dspy


class ProposeToolCall(dspy.Signature):
    """You are exploring a workflow of tool calls against live tools. Propose the JSON arguments for the
    next tool so that the call succeeds and, where the workflow links tools, uses values returned by
    earlier calls. Files and data live under /sandbox. If the previous attempt failed, fix the arguments."""

    workflow: str = dspy.InputField(desc="the tools of the sub-DAG in order and which outputs feed which inputs")
    tool: str = dspy.InputField(desc="name, description and JSON input schema of the tool to call now")
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


class DSPyProposer:
    """Adapts :class:`CallProposer` to the explorer's proposer interface."""

    def __init__(self, lm, fallback=None, max_observation_chars: int = 6000):
        self.lm, self.fallback, self.limit = lm, fallback, max_observation_chars
        self.program = CallProposer()

    def propose(self, ctx, attempt: int, last_error: str | None):
        tool = ctx.tool
        workflow = json.dumps({"nodes": ctx.dag["nodes"], "edges": [
            {"from": e["source"], "to": e["target"], "mapping": e.get("mapping")} for e in ctx.dag["edges"]]})
        observations = json.dumps([{"step": o["step"], "tool": o["tool"], "arguments": o["arguments"],
                                    "result": o["value"]} for o in ctx.observations], default=str)[-self.limit:]
        try:
            with dspy.context(lm=self.lm):
                pred = self.program(workflow=workflow, tool=json.dumps(
                    {"name": tool["tool"], "description": tool["description"], "input_schema": tool["input_schema"]}),
                    observations=observations, hints=json.dumps(ctx.hints, default=str)[:3000],
                    previous_error=last_error or "none")
            args = pred.arguments
            if isinstance(args, str):
                args = json.loads(args)
            if isinstance(args, dict):
                return args, {k: "lm" for k in args}
        except Exception as exc:  # noqa: BLE001 - an unusable LM answer falls back below
            print(f"[explorer] LM proposal failed for {tool['tool']}: {exc}")
        return self.fallback.propose(ctx, attempt, last_error) if self.fallback else None
