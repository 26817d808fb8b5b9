"""The one way this project logs to MLflow: a parent run per experiment job, a nested run per stage."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import mlflow

from .store import file_lock


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested config into MLflow params (dotted keys, values cut to MLflow's limit)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and len(json.dumps(obj, default=str)) > 500:
        out[prefix] = json.dumps(obj, default=str)[:5990]
    else:
        out[prefix] = json.dumps(obj, default=str)[:5990] if not isinstance(obj, str) else obj[:5990]
    return out


def setup(tracking_uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists (race-free across jobs).

    Artifacts go to ``artifact_location`` (by default ``outputs/mlartifacts``), never to ./mlruns."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = db.with_suffix(".lock")
    else:
        lock = Path(os.environ.get("TMPDIR", "/tmp")) / "firefly_mlflow.lock"
    mlflow.set_tracking_uri(tracking_uri)
    with file_lock(lock):
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = Path(artifact_location).resolve().as_uri() if artifact_location else None
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_params(params: dict) -> None:
    flat = flatten(params)
    items = list(flat.items())
    for i in range(0, len(items), 90):  # MLflow takes at most 100 params per batch
        mlflow.log_params(dict(items[i:i + 90]))


def log_metrics(metrics: dict, step: int | None = None) -> None:
    # MLflow names allow alphanumerics and _-. :/ only: pass@1 is logged as pass_at_1
    clean = {re.sub(r"[^0-9A-Za-z_\-. :/]", "_", k.replace("@", "_at_")): float(v)
             for k, v in flatten_numbers(metrics).items()}
    if clean:
        mlflow.log_metrics(clean, step=step)


def flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, bool):
        out[prefix] = float(obj)
    elif isinstance(obj, (int, float)) and obj == obj:
        out[prefix] = float(obj)
    return out


def log_artifacts(folder: Path, names: list[str], artifact_path: str) -> None:
    for name in names:
        path = Path(folder) / name
        if path.is_file() and path.stat().st_size < 50 * 1024 * 1024:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextlib.contextmanager
def parent_run(ctx) -> Iterator[dict]:
    """The experiment job's MLflow parent run: tags, choices and the config; yields the summary to fill."""
    s, summary = ctx.settings, ctx.summary
    exp_id = setup(s.mlflow.tracking_uri, s.mlflow.experiment, s.mlflow.artifact_location)
    with mlflow.start_run(run_name=f"{s.name}-{ctx.run_dir.name}") as parent:
        summary["mlflow"] = {"tracking_uri": s.mlflow.tracking_uri, "experiment_id": exp_id,
                             "run_id": parent.info.run_id}
        sweep = summary["sweep"]
        mlflow.set_tags({"experiment": s.name, "run_dir": str(ctx.run_dir), "seed": str(s.seed),
                         "overrides": " ".join(summary["overrides"]), "executor": summary["executor"]["kind"],
                         **({"sweep_dir": sweep["dir"], "sweep_job": str(sweep["job"])} if sweep else {}),
                         **{f"choice.{k}": str(v) for k, v in summary["choices"].items()}})
        log_params({"seed": s.seed, "name": s.name, **{f"choice.{k}": v for k, v in summary["choices"].items()}})
        mlflow.log_artifact(str(ctx.run_dir / "config.yaml"))
        yield summary


def log_summary(summary: dict, path: Path, metrics: dict) -> None:
    """Into the open parent run: the headline metrics, the servers table and ``summary.json``."""
    mlflow.log_dict(summary["servers"], "servers.json")
    log_metrics(metrics)
    mlflow.log_artifact(str(path))
