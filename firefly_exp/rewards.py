"""Rewards: one home for the functions that score an answer, in evaluation and in GRPO.

A reward is a plain function ``reward(task, answer, text="") -> float``: ``task`` holds the labelled
``answer`` (field -> value), ``answer`` is what the policy answered (a dict, or None when it gave none),
``text`` the episode as the policy wrote it (tool calls, tool responses, final answer; empty in
evaluation, where a policy returns only its answer). YAML names a reward by its function name here
(``eval.reward: binary``, ``train.rewards: {binary: 1.0, partial: 0.5}``) or by a dotted path
(``eval.reward: mypkg.rewards.strict``); ``firefly_exp.settings.resolve`` turns the name into the
function. A new reward is a function (here or anywhere importable) plus its name in YAML.
GRPO takes them in TRL's form through ``firefly_exp.train.rewards.reward_functions``.
"""

from __future__ import annotations

import json

from .results import answers_match

# the reward functions a bare name picks (``settings.choices_in`` lists these in error messages)
CHOICES = ("binary", "partial", "format")


def binary(task: dict, answer: dict | None, text: str = "") -> float:
    """1.0 when every answer field is correct (the paper's binary reward).

    >>> binary({"answer": {"a": 1, "b": "x"}}, {"a": "1", "b": " X"})
    1.0
    >>> binary({"answer": {"a": 1, "b": "x"}}, {"a": 1})
    0.0
    >>> binary({"answer": {"a": 1}}, None)
    0.0
    """
    answer = answer or {}
    return float(all(name in answer and answers_match(v, answer[name]) for name, v in task["answer"].items()))


def partial(task: dict, answer: dict | None, text: str = "") -> float:
    """The fraction of answer fields that are correct.

    >>> partial({"answer": {"a": 1, "b": "x"}}, {"a": 1, "b": "no"})
    0.5
    """
    answer, fields = answer or {}, task["answer"]
    return sum(name in answer and answers_match(v, answer[name]) for name, v in fields.items()) / max(len(fields), 1)


def format_reward(task: dict, answer: dict | None, text: str = "") -> float:
    """1.0 when every tool call in ``text`` parses as JSON with a name and the episode ends in an answer
    (named ``format`` in YAML; TRL logs it by its function name, ``format_reward``).

    >>> format_reward({"answer": {}}, {"x": 7}, '<tool_call>\\n{"name": "a__b", "arguments": {}}\\n</tool_call>')
    1.0
    >>> format_reward({"answer": {}}, None, "I think it is 7")
    0.0
    """
    from .train.chat import TOOL_CALL_RE   # here, not at the top: the train package imports torch

    calls_ok = True
    for m in TOOL_CALL_RE.finditer(text):
        try:
            calls_ok &= "name" in json.loads(m.group(1))
        except (json.JSONDecodeError, TypeError):
            calls_ok = False
    return float(calls_ok and answer is not None)


format = format_reward   # the YAML name (train.rewards.format); the function keeps the name the curves log
