"""Synthesis split across the executor's workers (``executor=ray``): the trajectories are cut into
contiguous chunks; each worker generates and verifies its chunk's tasks against the replay
simulator (loaded from its folder), and the driver deduplicates them in order, then judges,
removes near-duplicates and splits (:func:`finish_tasks`): the same tasks as locally.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import answers
from ..executor import Executor, summed_lm_usage

if TYPE_CHECKING:
    from ..settings import SynthesizerSettings
    from . import Recorded


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
    def recorded(self) -> "Recorded":
        from . import Recorded   # noqa: F811 - the package imports this module

        return Recorded(self.trajectories, self.calls, self.tools, self.constants)


def synthesize(executor: Executor, job: SynthesisJob, out_dir: Path) -> dict:
    """:func:`synthesize_tasks`, in this process or with the per-trajectory part (task generation and
    verification against the replay simulator) split across the executor's workers."""
    from .. import synthesizer   # the package: its API calls these shards, lazily
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
            **summed_lm_usage(usage for _, _, usage in results), "shards": n}


def _chunk(job: SynthesisJob, chunk: list[dict]) -> SynthesisJob:
    """A worker's part of ``job``: its trajectories and their calls, no live objects."""
    episodes = {t.get("episode") for t in chunk}
    return dataclasses.replace(job, trajectories=chunk, calls=[c for c in job.calls if c["episode"] in episodes],
                               simulator=None, writer=None, judge=None, live_check=None)


def _synthesize_chunk(job: SynthesisJob) -> tuple[list[dict], dict, dict]:
    """One worker: generate and verify the tasks of a chunk of trajectories (exact replay only, as locally)."""
    from ..simulator import Simulator
    from .. import synthesizer   # the package: its API calls these shards, lazily

    from programs.lm import configure_lm, lm_usage

    lm = writer = None
    if job.settings.kind == "dspy":
        from programs.synthesizer import TaskWriter

        lm = configure_lm(job.lm_conf)
        writer = TaskWriter(lm)
    sim = Simulator.load(Path(job.simulator_folder), job.tools_frame)
    found = synthesizer.candidate_tasks(job.recorded, sim, job.settings, job.seed, writer)
    return found.tasks, dict(found.rejected), lm_usage(lm) if lm else {}


