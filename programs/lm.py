"""Turn an ``lm`` config group entry into a ``dspy.LM`` (any LiteLLM model string or an
OpenAI-compatible ``api_base``); ``model: null`` means no LM."""

from __future__ import annotations

from typing import Any


# settings of ours, not LiteLLM keywords
_OWN_KEYS = ("model", "check_timeout_s")


def configure_lm(lm_cfg: Any) -> Any:
    """A ``dspy.LM`` from the ``lm`` settings (an ``LMSettings`` or a dict), or None for ``model: null``."""
    if lm_cfg is not None and hasattr(lm_cfg, "plain"):
        lm_cfg = lm_cfg.plain()
    if not lm_cfg or not lm_cfg.get("model"):
        return None
    import dspy

    kwargs = {k: v for k, v in lm_cfg.items() if k not in _OWN_KEYS and v is not None}
    return dspy.LM(lm_cfg["model"], **kwargs)


_ANSWERED: set[str] = set()   # the LMs (model and endpoint) that answered the check in this process


def check_lm(lm: Any, settings: Any) -> None:
    """One short uncached request: an LM that does not answer in ``lm.check_timeout_s`` is a one-line
    ``ConfigError`` naming ``lm.api_base`` (or ``lm.model``), raised before any stage runs. An LM that
    answered once in this process (the command line's check, then the pipeline's) is not asked again."""
    if lm is None or repr(settings.identity()) in _ANSWERED:
        return
    import concurrent.futures

    from firefly_exp.settings import ConfigError

    timeout = float(settings.check_timeout_s)
    probe = lm.copy(cache=False, num_retries=0, timeout=timeout, max_tokens=4)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(probe, messages=[{"role": "user", "content": "Reply with OK."}])
    try:
        future.result(timeout=timeout + 1)
    except Exception as exc:  # noqa: BLE001 - any failure of the endpoint is the user's to fix
        where = f"lm.api_base={settings.api_base}" if settings.api_base else f"lm.model={settings.model}"
        why = "no answer within %ss" % timeout if isinstance(exc, concurrent.futures.TimeoutError) else \
            (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"{where}: the LM {settings.model} did not answer ({why}); start the server, fix "
                          f"lm.api_base / lm.model / the API key in the environment, or use lm=none") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    _ANSWERED.add(repr(settings.identity()))


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
