"""Which leaves of a recorded result can be the answer to a task: short scalars that the question
does not give away (shared by the synthesizer, which picks answer fields from them, and the tool
graph, which prefers tools whose probed results hold any)."""

from __future__ import annotations

import json
import re
from typing import Any

from .results import leaves, normalise, value_of


def candidate_fields(value: Any, max_len: int) -> list[tuple[str, Any]]:
    out = []
    for path, v in leaves(value):
        if v is None or isinstance(v, (dict, list)):
            continue
        if isinstance(v, str):
            s = v.strip()
            if not s or len(s) > max_len or "\n" in s:
                continue
        out.append((path, v))
    return out


def _leaks(value: Any, question: str, strict: bool = False) -> bool:
    """Whether ``value`` can be read off the question. ``strict`` (for values passed along the chain)
    ignores small integers, which the question's step numbers would match."""
    text = normalise(question)
    v = normalise(value)
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, float):
        if strict and v.is_integer() and abs(v) < 10:
            return False
        numbers = {float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", question)}
        return v in numbers
    return len(v) >= 3 and v in text


def answer_fields(call: dict, volatile: bool, max_value_len: int = 80, given: str | None = None) -> list[tuple[str, Any]]:
    """The (path, value) leaves of a call's result that can be answer fields: not from a failed call or a
    volatile tool, short scalars, and not an echo of an argument (``given``: the arguments' JSON, by
    default this call's own), which the question would give away."""
    if volatile or call["is_error"]:
        return []
    if given is None:
        given = json.dumps(call["arguments"], ensure_ascii=False, default=str)
    return [(p, v) for p, v in candidate_fields(value_of(call), max_value_len) if not _leaks(v, given)]
