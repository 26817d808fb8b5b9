"""LM adapter for the simulator's retrieval step: rewrite the result of the nearest cached call so it
answers the call actually made (when the difference is small enough to be predictable)."""

from __future__ import annotations

import json

import dspy


class AdaptToolResult(dspy.Signature):
    """A tool was called with new arguments. A similar cached call and its real result are given.
    Write the result the tool would most plausibly return for the new call, in exactly the same
    format as the cached result. If the new call cannot be answered from it, answer UNKNOWN."""

    tool: str = dspy.InputField()
    new_arguments: str = dspy.InputField()
    cached_arguments: str = dspy.InputField()
    cached_result: str = dspy.InputField()
    result: str = dspy.OutputField(desc="the adapted result text, or UNKNOWN")


class ResultAdapter:
    def __init__(self, lm):
        self.lm = lm
        self.program = dspy.Predict(AdaptToolResult)

    def __call__(self, tool: str, arguments: dict, cached_arguments: dict, cached_result: dict) -> dict | None:
        text = "\n".join(c.get("text", "") for c in cached_result["content"] if c.get("type") == "text")
        with dspy.context(lm=self.lm):
            pred = self.program(tool=tool, new_arguments=json.dumps(arguments),
                                cached_arguments=json.dumps(cached_arguments), cached_result=text[:6000])
        out = str(pred.result).strip()
        if not out or out.upper() == "UNKNOWN":
            return None
        structured = None
        try:
            parsed = json.loads(out)
            structured = parsed if isinstance(parsed, dict) and cached_result.get("structured") is not None else None
        except json.JSONDecodeError:
            pass
        return {"content": [{"type": "text", "text": out}], "structured": structured,
                "is_error": bool(cached_result["is_error"])}
