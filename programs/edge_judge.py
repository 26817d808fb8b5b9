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


def _cache_key(lm, source: str, target: str) -> str:
    import hashlib

    model = getattr(lm, "model", type(lm).__name__)
    return hashlib.sha256(json.dumps([JudgeToolEdge.__doc__, str(model), source, target]).encode()).hexdigest()[:32]


def judge_edges(edges: list[dict], tools: dict[str, dict], lm, cache_dir=None, num_threads: int = 1) -> list[dict | None]:
    """One verdict per candidate edge ({confidence, mapping}); None where the LM's answer was unusable.

    Verdicts are cached by content hash (instruction, model, both tool descriptions) under
    ``cache_dir/edge_judge/``; the uncached pairs go to the LM in one batch of ``num_threads`` threads."""
    from pathlib import Path

    program = EdgeJudge()
    store = Path(cache_dir) / "edge_judge" if cache_dir else None
    inputs = [(describe_tool(tools[e["source"]], "out"), describe_tool(tools[e["target"]], "in")) for e in edges]
    keys = [_cache_key(lm, s, t) for s, t in inputs]
    verdicts: list[dict | None] = [None] * len(edges)
    todo = []
    for i, k in enumerate(keys):
        if store is not None and (store / f"{k}.json").exists():
            verdicts[i] = json.loads((store / f"{k}.json").read_text())
        else:
            todo.append(i)

    def verdict(pred) -> dict | None:
        if pred is None:
            return None
        return {"confidence": pred.confidence, "mapping": dict(pred.mapping or {})}

    with dspy.context(lm=lm):
        if num_threads > 1 and len(todo) > 1:
            examples = [dspy.Example(source_tool=inputs[i][0], target_tool=inputs[i][1]).with_inputs(
                "source_tool", "target_tool") for i in todo]
            preds = program.batch(examples, num_threads=num_threads, max_errors=len(examples) + 1)
            results = [verdict(p) for p in preds]
        else:
            results = []
            for i in todo:
                try:
                    results.append(verdict(program(source_tool=inputs[i][0], target_tool=inputs[i][1])))
                except Exception as exc:  # noqa: BLE001 - a bad LM answer keeps the cheap verdict
                    print(f"[graph] LM judge failed on {edges[i]['source']} -> {edges[i]['target']}: {exc}")
                    results.append(None)
    for i, v in zip(todo, results):
        verdicts[i] = v
        if v is not None and store is not None:
            store.mkdir(parents=True, exist_ok=True)
            (store / f"{keys[i]}.json").write_text(json.dumps(v))
    return verdicts
