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
