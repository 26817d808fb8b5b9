"""The orchestrator: the table of stages and the loop that runs them.

    servers --> tools --graph--> tool graph --sampler--> DAGs --explorer--> trajectories
    trajectories --simulator--> replay cache --synthesizer--> verified tasks --dataset--> parquet/JSONL + card
    verified tasks + simulator --train--> policy --eval--> scores

Each stage module declares its ``STAGE`` (firefly_exp/stage.py): name, inputs, artifacts and a
builder ``run(settings, inputs, ctx)``. This module validates the settings before anything runs,
opens the run (folder, servers check, LM check, executor), runs each stage at its content address
(a finished folder is reused), logs a nested MLflow run per stage and writes ``summary.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from . import dataset, evaluate, explorer, graph, hydra_info, observed, probe, sampler, servers, simulator
from . import summary as summaries, synthesizer, tracking, train
from .settings import ConfigError, Settings, load_settings, redacted
from .simulator import fidelity
from .stage import RunContext, Stages
from .store import StageStore, write_json_atomic

__all__ = ["ConfigError", "STAGES", "STAGE_ORDER", "run", "open_run"]

STAGES = (servers.STAGE, probe.STAGE, graph.STAGE, sampler.STAGE, explorer.STAGE, observed.STAGE,
          simulator.STAGE, synthesizer.STAGE, fidelity.STAGE, dataset.STAGE, train.STAGE, evaluate.STAGE)
STAGE_ORDER = tuple(stage.name for stage in STAGES)


def run(cfg, run_dir: Path | None = None) -> dict:
    """Run the whole experiment described by ``cfg`` (a composed config); returns the summary."""
    ctx = open_run(load_settings(cfg), run_dir)
    try:
        with tracking.parent_run(ctx) as summary:
            stages, results = Stages(StageStore(ctx.settings.paths.store), ctx.settings.resume, summary), {}
            for stage in STAGES:
                reason = stage.skip(ctx.settings)
                if reason:
                    summary["stages"][stage.name] = {"skipped": True, "reason": reason}
                    continue
                results[stage.name] = stages.run(stage, {n: results[n] for n in stage.inputs if n in results}, ctx)
            summaries.finish(ctx, results)
            write_json_atomic(ctx.run_dir / "summary.json", summary)
            tracking.log_summary(summary, ctx.run_dir / "summary.json", summaries.headline(summary))
    finally:
        ctx.executor.close()
    summaries.point_latest(ctx.outputs, ctx.run_dir)
    return summary


def open_run(settings: Settings, run_dir: Path | None = None) -> RunContext:
    """The run's folder and saved config, installed servers, a checked LM and the executor."""
    from programs.lm import check_lm, configure_lm

    from .executor import make_executor
    from .install import check_installed

    run_dir = Path(run_dir or hydra_info.output_dir() or
                   Path(settings.paths.outputs) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{settings.name}")
    specs = settings.servers.specs()
    unfrozen = settings.servers.real_clock()
    if unfrozen:
        print(f"warning: libfaketime not found, so {', '.join(unfrozen)} run on the real clock and their clock "
              f"reads are volatile (never answers): apt-get install faketime (make servers does it where it can)",
              file=sys.stderr)
    check_installed(specs, Path(settings.servers.install_dir))
    lm = configure_lm(settings.lm)
    check_lm(lm, settings.lm)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(redacted(settings.plain())))
    ctx = RunContext(settings, run_dir, specs, lm, make_executor(settings.executor))
    ctx.summary = summaries.start(ctx, {"choices": hydra_info.choices(), "overrides": hydra_info.overrides(),
                                        "sweep": hydra_info.sweep()})
    return ctx
