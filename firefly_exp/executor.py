"""Where exploration and synthesis run: in this process (``executor=local``) or sharded across Ray
workers (``executor=ray``), merged into the same store folder so every later stage is identical.

    python -m firefly_exp executor=ray                                  # a local Ray instance, 2 workers
    python -m firefly_exp executor=ray executor.address=auto executor.num_workers=16   # a running cluster

With Ray, the DAGs are dealt round-robin to ``num_workers`` shards; each worker explores its shard
with its own server pool and its own sandbox (``<run>/sandbox/shard-<i>``) into
``<explorer folder>/shards/<i>/`` (resumable, like a local exploration) and sends its records back;
the driver merges them into the stage folder's ``calls.jsonl`` / ``trajectories.jsonl``. A
trajectory depends only on its DAG, the seed and the servers, so the merged folder holds the same
trajectories as a local exploration. Synthesis splits the trajectories into contiguous chunks; each
worker generates and verifies its chunk's tasks against the replay simulator, and the driver
deduplicates them in order, then judges, removes near-duplicates and splits
(:func:`~.synthesizer.finish_tasks`): the same tasks as locally.

The executor is not part of any stage's store address: it changes where a stage runs, not what it
produces, so a folder made with one executor is reused by the other.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import PROJECT_ROOT, explorer, synthesizer
from .store import read_jsonl, write_jsonl

KINDS = ("local", "ray")


class Executor:
    """Runs a list of independent jobs: here, one after the other."""

    kind = "local"
    workers = 1

    def map(self, fn, jobs: list) -> list:
        return [fn(*job) for job in jobs]

    def close(self) -> None:
        pass


class RayExecutor(Executor):
    """Runs jobs as Ray tasks: a local instance (``address`` null) or a cluster (``address`` set)."""

    kind = "ray"

    def __init__(self, address: str | None = None, num_workers: int = 2, num_cpus: int | None = None,
                 object_store_memory_mb: int | None = 256, runtime_env: dict | None = None):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no usage-stats prompt or upload
        import ray

        self.ray, self.workers = ray, int(num_workers)
        self.address, self._started = address, False
        self._init = {"address": address, "include_dashboard": False, "log_to_driver": False,
                      "logging_level": "ERROR"}
        env = dict(runtime_env or {})
        if address is None:
            # a local instance: workers import this checkout (not another install of the package)
            path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
            env["env_vars"] = {"PYTHONPATH": path, **(env.get("env_vars") or {})}
            self._init.update(num_cpus=num_cpus or self.workers, object_store_memory=(
                object_store_memory_mb * 1024 * 1024 if object_store_memory_mb else None))
        self._init["runtime_env"] = env or None

    def _ensure_started(self) -> None:
        # started on first use: a run whose sharded stages are all reused never starts Ray
        if not self.ray.is_initialized():
            self.ray.init(**self._init)
            self._started = True

    def map(self, fn, jobs: list) -> list:
        self._ensure_started()
        remote = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        return self.ray.get([remote.remote(*job) for job in jobs])

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def make_executor(conf: dict | None) -> Executor:
    """The executor of ``conf/executor/<kind>.yaml``; a one-line error names a bad kind."""
    conf = dict(conf or {"kind": "local"})
    kind = conf.pop("kind", "local")
    if kind == "local":
        return Executor()
    if kind == "ray":
        return RayExecutor(**conf)
    raise ValueError(f"executor.kind={kind!r}: choose from {', '.join(KINDS)} (conf/executor/)")


# -- exploration -------------------------------------------------------------------------------------

def explore(executor: Executor, dags: list[dict], tools, specs: dict, install_dir: Path, sandbox_root: Path,
            out_dir: Path, seed: int, proposer_kind: str, lm_conf: dict | None, lm: Any,
            settings: explorer.ExploreSettings) -> dict:
    """:func:`explorer.explore`, in this process or sharded across the executor's workers."""
    if executor.kind == "local" or executor.workers < 2:
        return explorer.explore(dags, tools, specs, install_dir, sandbox_root, out_dir, seed,
                                explorer.make_proposer(proposer_kind, lm), settings)
    explorer.make_proposer(proposer_kind, lm)   # a missing LM fails here, in one line, not in a worker
    out_dir = Path(out_dir)
    done = {t["dag_id"] for t in read_jsonl(out_dir / "trajectories.jsonl")}   # an earlier partial run
    todo = [d for d in dags if d["id"] not in done]
    n = min(executor.workers, max(len(todo), 1))
    jobs = [(todo[i::n], tools, specs, str(install_dir), str(Path(sandbox_root) / f"shard-{i}"),
             str(out_dir / "shards" / str(i)), seed, proposer_kind, lm_conf, settings) for i in range(n)]
    started = time.perf_counter()
    results = executor.map(_explore_shard, jobs)
    wall = time.perf_counter() - started
    trajs = read_jsonl(out_dir / "trajectories.jsonl") + [t for r in results for t in r["trajectories"]]
    calls = read_jsonl(out_dir / "calls.jsonl") + [c for r in results for c in r["calls"]]
    merge_exploration(out_dir, trajs, calls)
    known = set(tools["tool"].to_list())
    runnable = sum(all(node in known for node in d["nodes"]) for d in dags)
    return {**explorer.exploration_metrics(out_dir, len(dags) - runnable, wall,
                                           pool_restarts=sum(r["metrics"].get("pool_restarts", 0) for r in results)),
            **_summed_lm_usage(r["lm_usage"] for r in results), "shards": n}


def _explore_shard(dags, tools, specs, install_dir, sandbox_root, out_dir, seed, proposer_kind, lm_conf,
                   settings) -> dict:
    """One worker: explore a shard of the DAGs with its own server pool and sandbox; return its records."""
    from programs.lm import configure_lm, lm_usage

    lm = configure_lm(lm_conf) if proposer_kind == "dspy" else None
    metrics = explorer.explore(dags, tools, specs, Path(install_dir), Path(sandbox_root), Path(out_dir), seed,
                               explorer.make_proposer(proposer_kind, lm), settings)
    return {"metrics": metrics, "trajectories": read_jsonl(Path(out_dir) / "trajectories.jsonl"),
            "calls": read_jsonl(Path(out_dir) / "calls.jsonl"), "lm_usage": lm_usage(lm) if lm else {}}


def _summed_lm_usage(usages) -> dict:
    """The workers' LM calls, tokens and cost, added up (empty without an LM)."""
    total: dict = {}
    for usage in usages:
        for k, v in usage.items():
            total[k] = round(total.get(k, 0) + v, 6)
    return total


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
    explorer.write_ordered(out_dir)


# -- synthesis ---------------------------------------------------------------------------------------

def synthesize(executor: Executor, trajectories: list[dict], calls: list[dict], dags: dict[str, dict],
               tools: dict, simulator, simulator_folder: Path, tools_frame, out_dir: Path, seed: int,
               settings, lm_conf: dict | None, writer=None, judge=None, live_check=None) -> dict:
    """:func:`synthesizer.synthesize_tasks`, in this process or with the per-trajectory part (task
    generation and verification against the replay simulator) split across the executor's workers."""
    programs = synthesizer.Programs(writer, judge, live_check)
    if executor.kind == "local" or executor.workers < 2:
        return synthesizer.synthesize_tasks(synthesizer.Recorded(trajectories, calls, tools), simulator, settings,
                                            seed, out_dir, programs)
    synthesizer.check_options(settings, programs)
    n = min(executor.workers, max(len(trajectories), 1))
    size = -(-len(trajectories) // n)
    chunks = [trajectories[i * size:(i + 1) * size] for i in range(n)]
    jobs = []
    for chunk in chunks:
        episodes = {t.get("episode") for t in chunk}
        chunk_calls = [c for c in calls if c["episode"] in episodes]
        chunk_dags = {t["dag_id"]: dags[t["dag_id"]] for t in chunk if t["dag_id"] in dags}
        jobs.append((chunk, chunk_calls, chunk_dags, tools, str(simulator_folder), tools_frame, seed, settings,
                     lm_conf))
    candidates: list[dict] = []
    rejected: Counter = Counter()
    results = executor.map(_synthesize_chunk, jobs)
    for tasks, counts, _ in results:   # in chunk order: deduplication keeps the first, as locally
        candidates.extend(tasks)
        rejected.update(counts)
    return {**synthesizer.finish_tasks(synthesizer.Candidates(candidates, rejected, len(trajectories)), settings,
                                       seed, out_dir, programs),
            **_summed_lm_usage(usage for _, _, usage in results), "shards": n}


def _synthesize_chunk(trajectories, calls, dags, tools, simulator_folder, tools_frame, seed, settings,
                      lm_conf) -> tuple[list[dict], dict, dict]:
    """One worker: generate and verify the tasks of a chunk of trajectories (exact replay only, as locally)."""
    from .simulator import Simulator

    from programs.lm import configure_lm, lm_usage

    lm = writer = None
    if settings.kind == "dspy":
        from programs.synthesizer import TaskWriter

        lm = configure_lm(lm_conf)
        writer = TaskWriter(lm)
    sim = Simulator.load(Path(simulator_folder), tools_frame)
    found = synthesizer.candidate_tasks(synthesizer.Recorded(trajectories, calls, tools), sim, settings, seed, writer)
    return found.tasks, dict(found.rejected), lm_usage(lm) if lm else {}


def describe(executor: Executor) -> dict:
    """What ``summary.json`` records about the executor (``executor``)."""
    return {"kind": executor.kind, "workers": executor.workers}

