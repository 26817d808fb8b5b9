"""What a stage is, and how one runs at its content address.

A stage module ends with its declaration::

    def run(settings: SamplerSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
        return sample_subdags(inputs["graph"].value, settings, ctx.seed, ctx.out)   # metrics

    def load(folder: Path, ctx: RunContext) -> list[dict]:
        return read_jsonl(folder / "dags.jsonl")

    STAGE = Stage("sampler", run, load, inputs=("graph",), artifacts=("dags.jsonl", "shapes.png"))

``run`` writes its artifacts into ``ctx.out`` and returns its metrics; ``load`` turns a finished
folder into what later stages read (``inputs[name].value``). The address of a stage's folder is a
hash of its settings (less their runtime fields), its ``params`` (seed, LM identity, ...), the
addresses of its inputs and the source of its modules: an unchanged address is reused.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .settings import Settings
from .store import StageStore, code_version, file_lock


@dataclass
class RunContext:
    """What every stage of one run shares."""

    settings: Settings
    run_dir: Path
    specs: dict[str, dict]            # enabled catalog entries, each with its id
    lm: Any = None                    # the configured DSPy LM, or None
    executor: Any = None              # firefly_exp.executor.Executor
    out: Optional[Path] = None        # the running stage's folder
    summary: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def sandbox_root(self) -> Path:
        return self.run_dir / "sandbox"

    @property
    def install_dir(self) -> Path:
        return Path(self.settings.servers.install_dir)

    @property
    def outputs(self) -> Path:
        return Path(self.settings.paths.outputs)

    @property
    def lm_identity(self) -> dict | None:
        return self.settings.lm.identity()

    def for_stage(self, folder: Path) -> "RunContext":
        return dataclasses.replace(self, out=folder)


@dataclass
class StageResult:
    name: str
    key: str
    folder: Path
    metrics: dict
    reused: bool
    wall_s: float
    value: Any = None                 # the loaded artifact (Stage.load)


def _folder(folder: Path, ctx: RunContext) -> Path:
    return folder


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Any, dict, RunContext], dict]
    load: Callable[[Path, RunContext], Any] = _folder
    inputs: tuple[str, ...] = ()            # stages whose results this one reads (absent ones are skipped)
    artifacts: tuple[str, ...] = ()         # files logged to MLflow
    group: Optional[str] = None             # the settings group it reads (default: its name)
    params: Callable[[Any, RunContext], dict] = lambda settings, ctx: {}   # more of the address
    skip: Callable[[Settings], Optional[str]] = lambda settings: None     # a reason not to run, or None
    code: tuple = ()                        # modules whose source is in the address (default: run's)
    log: Optional[Callable[[Path], None]] = None

    def settings_of(self, settings: Settings) -> Any:
        return getattr(settings, self.group or self.name, None)


class Stages:
    """Runs stages at their content addresses and logs each as a nested MLflow run."""

    def __init__(self, store: StageStore, resume: bool, summary: dict):
        self.store, self.resume, self.summary = store, resume, summary

    def address(self, stage: Stage, settings: Any, inputs: dict[str, StageResult], ctx: RunContext) -> tuple[dict, str]:
        params = {**(settings.store_params() if hasattr(settings, "store_params") else {}),
                  **stage.params(settings, ctx)}
        code = stage.code or (sys.modules[stage.run.__module__],)
        key = self.store.address(stage.name, params, {k: v.key for k, v in inputs.items()}, code_version(*code))
        return params, key

    def run(self, stage: Stage, inputs: dict[str, StageResult], ctx: RunContext) -> StageResult:
        from . import __version__

        settings = stage.settings_of(ctx.settings)
        params, key = self.address(stage, settings, inputs, ctx)
        # one process computes a folder at a time: parallel sweep jobs that need the same stage wait
        # for the first, then reuse what it finished
        with file_lock(self.store.root / stage.name / f".{key}.lock"):
            folder = self.store.folder(stage.name, key)
            manifest = self.store.manifest(folder)
            if manifest is not None and not self.resume:
                shutil.move(str(folder), f"{folder}.old-{int(time.time())}")
                folder, manifest = self.store.folder(stage.name, key), None
            started = time.perf_counter()
            if manifest is not None:
                metrics, reused, wall = manifest["metrics"], True, manifest["wall_s"]
                print(f"[{stage.name}] reused {folder.relative_to(self.store.root.parent)} (inputs and config unchanged)")
            else:
                print(f"[{stage.name}] running -> {folder.relative_to(self.store.root.parent)}")
                metrics = stage.run(settings, inputs, ctx.for_stage(folder))
                wall, reused = round(time.perf_counter() - started, 3), False
                self.store.finish(folder, {"stage": stage.name, "key": key, "params": params, "metrics": metrics,
                                           "inputs": {k: v.key for k, v in inputs.items()}, "wall_s": wall,
                                           "code_version": __version__, "finished": time.time()})
        result = StageResult(stage.name, key, folder, metrics, reused, wall)
        _log_stage(stage, result, params)
        self.summary["stages"][stage.name] = {"key": key, "folder": str(folder), "reused": reused, "wall_s": wall,
                                              "metrics": metrics}
        result.value = stage.load(folder, ctx)
        return result


def _log_stage(stage: Stage, result: StageResult, params: dict) -> None:
    import mlflow

    from . import tracking

    with mlflow.start_run(run_name=stage.name, nested=True):
        mlflow.set_tags({"stage": stage.name, "store_key": result.key, "reused": str(result.reused)})
        tracking.log_params(params)
        tracking.log_metrics({**result.metrics, "wall_s": result.wall_s, "reused": float(result.reused)})
        tracking.log_artifacts(result.folder, list(stage.artifacts) + ["manifest.json"], stage.name)
        if stage.log is not None:  # stage-specific logging inside the nested run (e.g. mlflow.data inputs)
            stage.log(result.folder)


def with_lm_usage(fn: Callable[..., dict], lm: Any) -> Callable[..., dict]:
    """A stage builder whose metrics also hold the LM calls, tokens and cost it spent (with an LM)."""
    if lm is None:
        return fn
    from programs.lm import history_ids, lm_usage

    def run(*args, **kwargs) -> dict:
        before = history_ids(lm)
        metrics = fn(*args, **kwargs)   # with executor=ray it already holds the workers' LM usage: add ours
        return {**metrics, **{k: round(metrics.get(k, 0) + v, 6) for k, v in lm_usage(lm, before).items()}}

    return run
