"""LM judge for tool-graph edges: can the output of one tool feed an input of another?"""

from __future__ import annotations

import json
from typing import Literal

import dspy


class JudgeToolEdge(dspy.Signature):
    """Decide whether the output of the source tool can be passed as an input to the target tool in a
    realistic workflow. Give a confidence level and map target input parameters to the source output
    fields that would supply them (use "*" for the whole text output)."""

    source_tool: str = dspy.InputField(desc="name, description and output schema of the tool called first")
    target_tool: str = dspy.InputField(desc="name, description and input schema of the tool called next")
    confidence: Literal["none", "low", "medium", "high"] = dspy.OutputField()
    mapping: dict[str, str] = dspy.OutputField(desc="target input parameter -> source output field path")


class EdgeJudge(dspy.Module):
    def __init__(self):
        super().__init__()
        self.judge = dspy.Predict(JudgeToolEdge)

    def forward(self, source_tool: str, target_tool: str) -> dspy.Prediction:
        return self.judge(source_tool=source_tool, target_tool=target_tool)


def describe_tool(row: dict, side: str) -> str:
    schema = row["output_schema"] if side == "out" else row["input_schema"]
    return json.dumps({"name": row["tool"], "description": row["description"],
                       ("output_schema" if side == "out" else "input_schema"):
                           json.loads(schema) if schema else "free text"})[:4000]


def judge_edges(edges: list[dict], tools: dict[str, dict], lm) -> list[dict | None]:
    """One verdict per candidate edge ({confidence, mapping}); None where the LM's answer was unusable."""
    program = EdgeJudge()
    verdicts: list[dict | None] = []
    with dspy.context(lm=lm):
        for e in edges:
            try:
                pred = program(source_tool=describe_tool(tools[e["source"]], "out"),
                               target_tool=describe_tool(tools[e["target"]], "in"))
                verdicts.append({"confidence": pred.confidence, "mapping": dict(pred.mapping or {})})
            except Exception as exc:  # noqa: BLE001 - a bad LM answer keeps the cheap verdict
                print(f"[graph] LM judge failed on {e['source']} -> {e['target']}: {exc}")
                verdicts.append(None)
    return verdicts
