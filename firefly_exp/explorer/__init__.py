"""Stage 4, explorer: execute each sampled sub-DAG against the live servers and record every call.

- :mod:`.proposal`: who builds each call's arguments, a target (``explorer.proposer``): the offline
  heuristic (:func:`.proposal.heuristic`, no LM: values along the DAG's field mappings, then earlier
  values of the same name, the catalog's hints, the schema, a type default; after a tool error the
  next candidate, within ``max_retries``) or ``programs.explorer.dspy_proposer`` (the DSPy program
  ``CallProposer`` with the configured LM; the tool reaches it as a ``dspy.Tool`` made by DSPy's MCP
  support, the call is made here).
- :mod:`.runtime`: sandbox slots, server pools, one DAG attempt, :func:`explore` (resumable).
- :mod:`.records`: ``calls.jsonl``, ``trajectories.jsonl`` and ``trajectories.ordered.jsonl``, read back
  by :func:`load_trajectories`, counted by :func:`exploration_metrics`.

The stage (:data:`STAGE`) explores the sampler's DAGs over the servers stage's tools, in this process
or sharded across Ray workers (``ctx.executor``, :func:`firefly_exp.explorer.shards.explore`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..stage import Stage, with_lm_usage
from ..results import value_of
from . import proposal, records, runtime, shards, values
from .proposal import HeuristicProposer, NodeContext, Proposer, hinted_values, looks_like_error, passable
from .records import ERROR_KINDS, ORDERED, exploration_metrics, load_trajectories, write_ordered
from .runtime import Exploration, explore
from .values import Knowledge

if TYPE_CHECKING:
    from ..settings import ExplorerSettings
    from ..stage import RunContext, StageResult

__all__ = ["ERROR_KINDS", "ORDERED", "STAGE", "Exploration", "HeuristicProposer", "NodeContext", "Proposer",
           "exploration_metrics", "explore", "hinted_values", "load", "load_trajectories", "looks_like_error",
           "passable", "run", "settings_from_yaml", "write_ordered"]


def settings_from_yaml(choice: str = "heuristic", **overrides) -> ExplorerSettings:
    """``conf/explorer/<choice>.yaml`` (after the files its ``defaults`` list names) with ``overrides``:
    the explorer's settings outside a run (tests, benches), with the YAML's defaults, checked.

    >>> settings_from_yaml("dspy", concurrency=1).proposer
    'programs.explorer.dspy_proposer'
    """
    from omegaconf import OmegaConf

    from .. import PROJECT_ROOT
    from ..settings import ExplorerSettings

    def group(name: str) -> dict:
        cfg = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / "explorer" / f"{name}.yaml"))
        base: dict = {}
        for parent in cfg.pop("defaults", None) or []:
            if parent != "_self_":
                base.update(group(parent))
        return {**base, **cfg}

    return ExplorerSettings(**{**group(choice), **overrides})


def run(settings: ExplorerSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """Explore the sampler's DAGs (``inputs["sampler"].value``) over the servers' tools
    (``inputs["servers"].value``, tools.parquet) into ``ctx.out``; returns the metrics, with the LM
    usage when there is an LM. What the probe saw and repaired (``inputs["probe"]``, when it ran) feeds
    every DAG's arguments (:class:`.values.Knowledge`)."""
    knowledge = Knowledge.from_calls(inputs["probe"].value, value_of) if "probe" in inputs else None
    return with_lm_usage(shards.explore, ctx.lm)(ctx.executor, inputs["sampler"].value, inputs["servers"].value,
                                                   settings, ctx, knowledge)


def load(folder: Path, ctx: RunContext) -> tuple[list[dict], list[dict]]:
    """(trajectories by DAG index, the calls of their episodes in call order)."""
    return load_trajectories(folder)


def _params(settings: ExplorerSettings, ctx: RunContext) -> dict:
    # the LM is part of what the exploration is only when the proposer calls it
    return {"seed": ctx.seed, "lm": ctx.lm_identity if settings.kind == "dspy" else None}


STAGE = Stage("explorer", run, load, inputs=("sampler", "servers", "probe"), params=_params,
              code=(proposal, runtime, records, values, sys.modules[__name__]))
