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

import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import PROJECT_ROOT, answers, explorer, synthesizer
from .settings import resolve
from .store import read_jsonl, write_jsonl

if TYPE_CHECKING:
    from .settings import ExecutorSettings, ExplorerSettings, LMSettings, SynthesizerSettings
    from .stage import RunContext

#: the executors ``executor._target_`` may name by bare name
CHOICES = ("Executor", "RayExecutor")


class Executor:
    """Runs a list of independent jobs: here, one after the other."""

    kind = "local"
    workers = 1

    def __init__(self, **_options):
        """The local executor has no options (the Ray ones of the executor group do not apply)."""

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


def make_executor(settings: ExecutorSettings) -> Executor:
    """The executor ``executor._target_`` names (conf/executor/<name>.yaml), built from the group's
    other keys (``kind`` is its label in the summary)."""
    options = {k: v for k, v in settings.plain().items() if k not in ("_target_", "kind")}
    return resolve(settings.target, __name__)(**options)


# -- exploration -------------------------------------------------------------------------------------

def explore(executor: Executor, dags: list[dict], tools, settings: ExplorerSettings, ctx: RunContext) -> dict:
    """:func:`explorer.explore` of ``dags`` into ``ctx.out``, in this process or sharded across the
    executor's workers. ``ctx`` (the stage's run context) gives the specs, install folder, sandbox
    root, seed and LM; ``settings.proposer`` names the factory of the proposer."""
    # built here even when the workers build their own: a missing LM fails in one line, not in a worker
    proposer = resolve(settings.proposer)(settings, ctx)
    run = explorer.Exploration(tools, ctx.specs, ctx.install_dir, ctx.sandbox_root, settings, ctx.seed, proposer)
    if executor.workers < 2:
        return explorer.explore(dags, run, ctx.out)
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
    return {**explorer.exploration_metrics(out_dir, len(dags) - runnable, wall,
                                           pool_restarts=sum(r["metrics"].get("pool_restarts", 0) for r in results)),
            **_summed_lm_usage(r["lm_usage"] for r in results), "shards": n}


def _explore_shard(dags: list[dict], run: explorer.Exploration, out_dir: Path, ctx: RunContext,
                   lm_conf: dict | None) -> dict:
    """One worker: explore a shard of the DAGs with its own server pool and sandbox; return its records."""
    from programs.lm import configure_lm, lm_usage

    lm = configure_lm(lm_conf)
    proposer = resolve(run.settings.proposer)(run.settings, dataclasses.replace(ctx, lm=lm))
    metrics = explorer.explore(dags, dataclasses.replace(run, proposer=proposer), out_dir)
    return {"metrics": metrics, "trajectories": read_jsonl(Path(out_dir) / "trajectories.jsonl"),
            "calls": read_jsonl(Path(out_dir) / "calls.jsonl"), "lm_usage": lm_usage(lm) if lm else {}}


def worker_lm_conf(lm: LMSettings) -> dict:
    """What configures a worker's LM (``programs.lm.configure_lm``): the lm group less its runtime
    fields (the start-up check's timeout is no LiteLLM keyword)."""
    runtime = {f.alias or n for n, f in type(lm).model_fields.items() if (f.json_schema_extra or {}).get("runtime")}
    return {k: v for k, v in lm.plain().items() if k not in runtime}


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

@dataclass(frozen=True)
class SynthesisJob:
    """What one synthesis reads (the synthesizer stage builds it); a worker gets a chunk of it, less
    the live objects (simulator, writer, judge, live check), and loads the simulator from its folder."""

    trajectories: list[dict]
    calls: list[dict]
    tools: dict                        # tool rows by name
    simulator: Any                     # the loaded replay simulator (this process)
    simulator_folder: Path             # where a worker loads it from
    tools_frame: Any                   # tools.parquet as a DataFrame (Simulator.load reads it)
    seed: int
    settings: SynthesizerSettings
    lm_conf: dict | None = None        # configures a worker's LM (see worker_lm_conf)
    writer: Any = None
    judge: Any = None
    live_check: Any = None
    constants: dict | None = None      # answers.constant_paths over all the calls (a worker sees its share)

    @property
    def recorded(self) -> "synthesizer.Recorded":
        return synthesizer.Recorded(self.trajectories, self.calls, self.tools, self.constants)


def synthesize(executor: Executor, job: SynthesisJob, out_dir: Path) -> dict:
    """:func:`synthesizer.synthesize_tasks`, in this process or with the per-trajectory part (task
    generation and verification against the replay simulator) split across the executor's workers."""
    programs = synthesizer.Programs(job.writer, job.judge, job.live_check)
    if executor.workers < 2:
        return synthesizer.synthesize_tasks(job.recorded, job.simulator, job.settings, job.seed, out_dir, programs)
    synthesizer.check_options(job.settings, programs)
    if job.settings.informative:   # a tool's constant result paths are a fact of the whole exploration
        job = dataclasses.replace(job, constants=answers.constant_paths(job.calls))
    n = min(executor.workers, max(len(job.trajectories), 1))
    size = -(-len(job.trajectories) // n)
    jobs = [(_chunk(job, job.trajectories[i * size:(i + 1) * size]),) for i in range(n)]
    candidates: list[dict] = []
    rejected: Counter = Counter()
    results = executor.map(_synthesize_chunk, jobs)
    for tasks, counts, _ in results:   # in chunk order: deduplication keeps the first, as locally
        candidates.extend(tasks)
        rejected.update(counts)
    return {**synthesizer.finish_tasks(synthesizer.Candidates(candidates, rejected, len(job.trajectories)),
                                       job.settings, job.seed, out_dir, programs),
            **_summed_lm_usage(usage for _, _, usage in results), "shards": n}


def _chunk(job: SynthesisJob, chunk: list[dict]) -> SynthesisJob:
    """A worker's part of ``job``: its trajectories and their calls, no live objects."""
    episodes = {t.get("episode") for t in chunk}
    return dataclasses.replace(job, trajectories=chunk, calls=[c for c in job.calls if c["episode"] in episodes],
                               simulator=None, writer=None, judge=None, live_check=None)


def _synthesize_chunk(job: SynthesisJob) -> tuple[list[dict], dict, dict]:
    """One worker: generate and verify the tasks of a chunk of trajectories (exact replay only, as locally)."""
    from .simulator import Simulator

    from programs.lm import configure_lm, lm_usage

    lm = writer = None
    if job.settings.kind == "dspy":
        from programs.synthesizer import TaskWriter

        lm = configure_lm(job.lm_conf)
        writer = TaskWriter(lm)
    sim = Simulator.load(Path(job.simulator_folder), job.tools_frame)
    found = synthesizer.candidate_tasks(job.recorded, sim, job.settings, job.seed, writer)
    return found.tasks, dict(found.rejected), lm_usage(lm) if lm else {}


def describe(executor: Executor) -> dict:
    """What ``summary.json`` records about the executor (``executor``)."""
    return {"kind": executor.kind, "workers": executor.workers}

