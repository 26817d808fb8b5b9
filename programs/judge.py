"""LM task judge: score a synthesized task on the five FireFly criteria; the pipeline keeps the tasks
scoring at least ``synthesizer.judge_min_score`` on every one (and reports the keep rate)."""

from __future__ import annotations

import json

import dspy

CRITERIA = ("clarity", "answerability", "non_triviality", "no_leakage", "naturalness")


class JudgeTask(dspy.Signature):
    """Score a tool-use task for a training set, each criterion from 1 (bad) to 5 (good):
    clarity (one unambiguous request), answerability (the listed tools can produce every answer field),
    non_triviality (answering needs the tool calls, not common knowledge), no_leakage (the question
    does not reveal any answer value), naturalness (it reads like a real user's request)."""

    question: str = dspy.InputField(desc="the task as the user asks it")
    tools: str = dspy.InputField(desc="JSON: the offered tools with their descriptions")
    answer_schema: str = dspy.InputField(desc="JSON: the answer fields, their types and what they hold")
    clarity: int = dspy.OutputField(desc="1-5")
    answerability: int = dspy.OutputField(desc="1-5")
    non_triviality: int = dspy.OutputField(desc="1-5")
    no_leakage: int = dspy.OutputField(desc="1-5")
    naturalness: int = dspy.OutputField(desc="1-5")


class TaskJudge:
    """``judge(task) -> {criterion: score}``; the answer values are never shown to the LM."""

    def __init__(self, lm, tools: dict[str, dict]):
        self.lm, self.tools = lm, tools
        self.program = dspy.Predict(JudgeTask)

    def __call__(self, task: dict) -> dict[str, int]:
        tools = [{"name": t, "description": (self.tools.get(t) or {}).get("description", "")} for t in task["tools"]]
        with dspy.context(lm=self.lm):
            pred = self.program(question=task["question"], tools=json.dumps(tools),
                                answer_schema=json.dumps(task["answer_schema"]))
        return {c: _score(getattr(pred, c, 0)) for c in CRITERIA}


def _score(value) -> int:
    try:
        return max(0, min(5, int(value)))
    except (TypeError, ValueError):
        return 0
