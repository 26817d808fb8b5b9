"""What Hydra knows about this job (its folder, overrides, sweep, choices); empty outside ``@hydra.main``."""

from __future__ import annotations

from pathlib import Path


def _config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # noqa: BLE001 - not running under @hydra.main (tests, library use)
        return None


def output_dir() -> str | None:
    hc = _config()
    return hc.runtime.output_dir if hc else None


def overrides() -> list[str]:
    """The command-line overrides of this job (a sweep job's own values), as Hydra recorded them, a
    secret's value masked (``lm.api_key=***``: see :func:`firefly_exp.settings.redacted`)."""
    from .settings import redacted

    hc = _config()
    out = []
    for o in (list(hc.overrides.task) if hc else []):
        key, eq, value = o.partition("=")
        name = key.rsplit(".", 1)[-1]
        out.append(f"{key}={redacted({name: value})[name]}" if eq else o)
    return out


def sweep() -> dict | None:
    """The sweep folder and this job's number when running under ``-m``, else None."""
    hc = _config()
    if hc is None:
        return None
    from hydra.types import RunMode

    if hc.mode != RunMode.MULTIRUN:
        return None
    return {"dir": str(Path(hc.sweep.dir).resolve()), "job": int(hc.job.num)}


def choices() -> dict:
    """The config group choices of this job (``sampler: random_walk``, ...)."""
    hc = _config()
    if hc is None:
        return {}
    return {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
