"""Settings objects for tests that call the graph and sampler stages' functions directly."""

from __future__ import annotations

from omegaconf import OmegaConf

from firefly_exp import PROJECT_ROOT
from firefly_exp.settings import GraphSettings, SamplerSettings


def graph_settings(weights: dict | None = None, thresholds: dict | None = None, **over) -> GraphSettings:
    """``conf/graph/default.yaml`` with ``weights`` (evidence not named is off), ``thresholds`` and
    other keys replaced (a nested dict, e.g. ``lm_judge``, replaces only the keys it names)."""
    base = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf/graph/default.yaml"))
    if weights is not None:
        base["weights"] = {"flow": 0.0, "similarity": 0.0, "observed": 0.0, "value": 0.0, **weights}
    if thresholds is not None:
        base["thresholds"] = thresholds
    for key, value in over.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return GraphSettings(**base)


def sampler_settings(strategy: str = "random_walk", **over) -> SamplerSettings:
    """A sampler choice by its strategy function's name (or dotted path), the model's defaults otherwise."""
    target = strategy if "." in strategy else f"firefly_exp.sampler.{strategy}"
    return SamplerSettings(**{"_target_": target, **over})
