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

from . import PROJECT_ROOT
from .settings import resolve

if TYPE_CHECKING:
    from .settings import ExecutorSettings, LMSettings

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


def worker_lm_conf(lm: LMSettings) -> dict:
    """What configures a worker's LM (``programs.lm.configure_lm``): the lm group less its runtime
    fields (the start-up check's timeout is no LiteLLM keyword)."""
    runtime = {f.alias or n for n, f in type(lm).model_fields.items() if (f.json_schema_extra or {}).get("runtime")}
    return {k: v for k, v in lm.plain().items() if k not in runtime}


def summed_lm_usage(usages) -> dict:
    """The workers' LM calls, tokens and cost, added up (empty without an LM)."""
    total: dict = {}
    for usage in usages:
        for k, v in usage.items():
            total[k] = round(total.get(k, 0) + v, 6)
    return total


def describe(executor: Executor) -> dict:
    """What ``summary.json`` records about the executor (``executor``)."""
    return {"kind": executor.kind, "workers": executor.workers}

