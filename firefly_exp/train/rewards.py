"""Rewards in TRL's form, ``f(completions, **kwargs) -> list[float]``: one float per completion.

A completion is the whole multi-turn episode after the prompt (tool calls, the simulator's tool
responses, the final answer). ``answer`` is the dataset column with the task's labelled answer (JSON).

    >>> done = '<tool_call>\\n{"name": "a__b", "arguments": {}}\\n</tool_call>user\\n<tool_response>\\n{"x": 7}\\n</tool_response>assistant\\n{"x": 7, "y": "no"}'
    >>> binary([done], answer=['{"x": 7, "y": "yes"}'])
    [0.0]
    >>> partial([done], answer=['{"x": 7, "y": "yes"}'])
    [0.5]
    >>> format_reward([done, "I think it is 7"])
    [1.0, 0.0]
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ..evaluate import binary_reward, partial_reward
from .chat import TOOL_CALL_RE, final_answer


def _text(completion: Any) -> str:
    if isinstance(completion, list):      # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content") or "" for m in completion)
    return completion


def _labels(answer: list) -> list[dict]:
    return [json.loads(a) if isinstance(a, str) else a for a in answer]


def binary(completions: list, answer: list, **kwargs) -> list[float]:
    """1.0 when the final answer gets every field right (the paper's binary reward)."""
    return [binary_reward({"answer": gold}, final_answer(_text(c)) or {})
            for c, gold in zip(completions, _labels(answer))]


def partial(completions: list, answer: list, **kwargs) -> list[float]:
    """The fraction of answer fields right."""
    return [partial_reward({"answer": gold}, final_answer(_text(c)) or {})
            for c, gold in zip(completions, _labels(answer))]


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when every tool call parses as JSON with a name and the episode ends in a JSON object."""
    out = []
    for c in completions:
        text = _text(c)
        calls_ok = True
        for m in TOOL_CALL_RE.finditer(text):
            try:
                calls_ok &= "name" in json.loads(m.group(1))
            except (json.JSONDecodeError, TypeError):
                calls_ok = False
        out.append(float(calls_ok and final_answer(text) is not None))
    return out


REWARDS: dict[str, Callable] = {"binary": binary, "partial": partial, "format": format_reward}


def reward_functions(weights: dict[str, float]) -> tuple[list[Callable], list[float]]:
    """The reward functions and weights named in ``train.rewards`` (e.g. ``{binary: 1.0, format: 0.1}``)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown} in train.rewards: choose from {sorted(REWARDS)}")
    names = [n for n, w in weights.items() if w]
    return [REWARDS[n] for n in names], [float(weights[n]) for n in names]
