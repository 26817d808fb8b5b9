"""Exploration sharded across the executor's workers (``executor=ray``): the DAGs are dealt
round-robin to ``executor.num_workers`` shards; each worker explores its shard with its own server
pool and sandbox (``<run>/sandbox/shard-<i>``) into ``<explorer folder>/shards/<i>/`` (resumable,
like a local exploration) and sends its records back; the driver merges them into the stage
folder. A trajectory depends only on its DAG, the seed and the servers, so the merged folder holds
the same trajectories as a local exploration (and is reused by it: the executor is in no address).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..executor import Executor, summed_lm_usage, worker_lm_conf
from ..settings import resolve
from ..store import read_jsonl, write_jsonl
from .records import exploration_metrics, write_ordered
from .runtime import Exploration, explore as explore_here

if TYPE_CHECKING:
    from ..settings import ExplorerSettings
    from ..stage import RunContext


def explore(executor: Executor, dags: list[dict], tools, settings: ExplorerSettings, ctx: RunContext,
            knowledge=None) -> dict:
    """:func:`~.runtime.explore` of ``dags`` into ``ctx.out``, in this process or sharded across the
    executor's workers. ``ctx`` (the stage's run context) gives the specs, install folder, sandbox
    root, seed and LM; ``settings.proposer`` names the factory of the proposer; ``knowledge`` what the
    probe learnt (:class:`.values.Knowledge`), the same for every shard."""
    # built here even when the workers build their own: a missing LM fails in one line, not in a worker
    proposer = resolve(settings.proposer)(settings, ctx)
    run = Exploration(tools, ctx.specs, ctx.install_dir, ctx.sandbox_root, settings, ctx.seed, proposer, knowledge)
    if executor.workers < 2:
        return explore_here(dags, run, ctx.out)
    out_dir = Path(ctx.out)
    done = {t["dag_id"] for t in read_jsonl(out_dir / "trajectories.jsonl")}   # an earlier partial run
    todo = [d for d in dags if d["id"] not in done]
    n = min(executor.workers, max(len(todo), 1))
    # what travels to a worker: no live objects (the LM, the executor); a worker configures its own LM
    lm_conf = worker_lm_conf(ctx.settings.lm) if getattr(proposer, "lm", None) is not None else None
    bare = dataclasses.replace(ctx, lm=None, executor=None)
    jobs = [(todo[i::n], dataclasses.replace(run, sandbox_root=Path(ctx.sandbox_root) / f"shard-{i}", proposer=None),
             out_dir / "shards" / str(i), bare, lm_conf) for i in range(n)]
    started = time.perf_counter()
    results = executor.map(_explore_shard, jobs)
    wall = time.perf_counter() - started
    trajs = read_jsonl(out_dir / "trajectories.jsonl") + [t for r in results for t in r["trajectories"]]
    calls = read_jsonl(out_dir / "calls.jsonl") + [c for r in results for c in r["calls"]]
    merge_exploration(out_dir, trajs, calls)
    known = set(tools["tool"].to_list())
    runnable = sum(all(node in known for node in d["nodes"]) for d in dags)
    return {**exploration_metrics(out_dir, len(dags) - runnable, wall,
                                           pool_restarts=sum(r["metrics"].get("pool_restarts", 0) for r in results)),
            **summed_lm_usage(r["lm_usage"] for r in results), "shards": n}


def _explore_shard(dags: list[dict], run: Exploration, out_dir: Path, ctx: RunContext,
                   lm_conf: dict | None) -> dict:
    """One worker: explore a shard of the DAGs with its own server pool and sandbox; return its records."""
    from programs.lm import configure_lm, lm_usage

    lm = configure_lm(lm_conf)
    proposer = resolve(run.settings.proposer)(run.settings, dataclasses.replace(ctx, lm=lm))
    metrics = explore_here(dags, dataclasses.replace(run, proposer=proposer), out_dir)
    return {"metrics": metrics, "trajectories": read_jsonl(Path(out_dir) / "trajectories.jsonl"),
            "calls": read_jsonl(Path(out_dir) / "calls.jsonl"), "lm_usage": lm_usage(lm) if lm else {}}


def merge_exploration(out_dir: Path, trajectories: list[dict], calls: list[dict]) -> None:
    """Write the shards' records into the stage folder, each DAG once (a rerun after an interrupted
    merge finds some records twice), then ``trajectories.ordered.jsonl``."""
    kept: dict[str, dict] = {}
    for t in trajectories:
        kept.setdefault(t["dag_id"], t)
    seen, unique_calls = set(), []
    for c in calls:
        key = (c["episode"], c["seq"])
        if key not in seen:
            seen.add(key)
            unique_calls.append(c)
    write_jsonl(Path(out_dir) / "calls.jsonl", unique_calls)
    write_jsonl(Path(out_dir) / "trajectories.jsonl", sorted(kept.values(), key=lambda t: t["index"]))
    write_ordered(out_dir)


