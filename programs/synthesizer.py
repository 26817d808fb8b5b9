"""LM task writer: word the question for a recorded tool chain and a fixed answer schema.

The answer fields and their values are chosen from recorded outputs by the pipeline; the LM only
writes the question, which must not contain the answers (checked by the pipeline)."""

from __future__ import annotations

import json

import dspy


class WriteTask(dspy.Signature):
    """Write the request a user would make so that answering it requires exactly this chain of tool
    calls and yields the listed answer fields. State the given inputs; do not reveal any answer value;
    do not mention tool names or internals; sound natural."""

    tool_chain: str = dspy.InputField(desc="the calls in order: tool, description, arguments, where each argument came from")
    answer_fields: str = dspy.InputField(desc="JSON: field name -> type and what it holds")
    question: str = dspy.OutputField(desc="the user's request, ending with the JSON fields to report")


class TaskWriter:
    def __init__(self, lm):
        self.lm = lm
        self.program = dspy.Predict(WriteTask)

    def __call__(self, gold: list[dict], tools: dict, fields: dict) -> str:
        chain = [{"tool": c["tool"], "description": tools[f"{c['server']}/{c['tool']}"]["description"],
                  "arguments": c["arguments"], "argument_sources": c.get("arg_sources")} for c in gold]
        with dspy.context(lm=self.lm):
            pred = self.program(tool_chain=json.dumps(chain, default=str), answer_fields=json.dumps(fields))
        return str(pred.question).strip()
