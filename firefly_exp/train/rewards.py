"""The rewards of ``firefly_exp/rewards.py`` in TRL's form, ``f(completions, **kwargs) -> list[float]``.

A completion is the whole multi-turn episode after the prompt (tool calls, the simulator's tool
responses, the final answer). ``answer`` is the dataset column with the task's labelled answer (JSON).

    >>> done = '<tool_call>\\n{"name": "a__b", "arguments": {}}\\n</tool_call>user\\n<tool_response>\\n{"x": 7}\\n</tool_response>assistant\\n{"x": 7, "y": "no"}'
    >>> funcs, weights = reward_functions({"binary": 1.0, "partial": 0.5, "format": 0.0})
    >>> [f.__name__ for f in funcs], weights
    (['binary', 'partial'], [1.0, 0.5])
    >>> [f([done], answer=['{"x": 7, "y": "yes"}']) for f in funcs]
    [[0.0], [0.5]]
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ..settings import REWARDS_MODULE, _check_target, resolve
from .chat import final_answer


def _text(completion: Any) -> str:
    if isinstance(completion, list):      # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content") or "" for m in completion)
    return completion


def _labels(answer: list) -> list[dict]:
    return [json.loads(a) if isinstance(a, str) else a for a in answer]


class TRLReward:
    """``reward(task, answer, text)`` as a TRL reward function over a batch of completions. TRL names it
    (its logs, ``curves.json``) by ``__name__``, the reward's function name; a class, not a closure, so that it
    pickles like the module-level functions TRL expects."""

    def __init__(self, reward: Callable[..., float]):
        self.reward, self.__name__ = reward, reward.__name__

    def __call__(self, completions: list, answer: list, **kwargs) -> list[float]:
        out = []
        for c, gold in zip(completions, _labels(answer)):
            text = _text(c)
            out.append(self.reward({"answer": gold}, final_answer(text), text))
        return out


def reward_functions(weights: dict[str, float]) -> tuple[list[Callable], list[float]]:
    """The TRL reward functions and weights named in ``train.rewards`` (e.g. ``{binary: 1.0, format: 0.1}``;
    a name is a function in ``firefly_exp/rewards.py`` or a dotted path); a zero weight leaves one out."""
    for name in weights:
        _check_target(name, REWARDS_MODULE, "reward")
    names = [n for n, w in weights.items() if w]
    return [TRLReward(resolve(n, REWARDS_MODULE)) for n in names], [float(weights[n]) for n in names]
