"""Turn an ``lm`` config group entry into a ``dspy.LM`` (any LiteLLM model string or an
OpenAI-compatible ``api_base``); ``model: null`` means no LM."""

from __future__ import annotations

from typing import Any


def configure_lm(lm_cfg: dict | None) -> Any:
    if not lm_cfg or not lm_cfg.get("model"):
        return None
    import dspy

    kwargs = {k: v for k, v in lm_cfg.items() if k != "model" and v is not None}
    return dspy.LM(lm_cfg["model"], **kwargs)


def lm_usage(lm: Any, before: set | None = None) -> dict:
    """Calls, tokens and cost of ``lm``'s history entries not in ``before`` (uuids taken earlier).

    DSPy records each LM call's provider usage and LiteLLM's cost estimate (None for models it has
    no price for, and for local servers); cached answers appear again but were not billed twice.

    >>> class Fake: history = [{"uuid": "a", "usage": {"prompt_tokens": 10, "completion_tokens": 5,
    ...                         "total_tokens": 15}, "cost": 0.002}, {"uuid": "b", "usage": {}, "cost": None}]
    >>> lm_usage(Fake(), before={"b"})
    {'lm_calls': 1, 'lm_prompt_tokens': 10, 'lm_completion_tokens': 5, 'lm_total_tokens': 15, 'lm_cost_usd': 0.002}
    """
    before = before or set()
    out = {"lm_calls": 0, "lm_prompt_tokens": 0, "lm_completion_tokens": 0, "lm_total_tokens": 0, "lm_cost_usd": 0.0}
    for entry in getattr(lm, "history", None) or []:
        if entry.get("uuid") in before:
            continue
        usage = entry.get("usage") or {}
        out["lm_calls"] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            out[f"lm_{key}"] += int(usage.get(key) or 0)
        out["lm_cost_usd"] += float(entry.get("cost") or 0.0)
    out["lm_cost_usd"] = round(out["lm_cost_usd"], 6)
    return out


def history_ids(lm: Any) -> set:
    """The uuids of ``lm``'s history so far: pass to :func:`lm_usage` after a stage."""
    return {e.get("uuid") for e in getattr(lm, "history", None) or []}
