"""``summary.json``: a run's headline figures, built from its stage results (keys: docs/summary-keys.md)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from .stage import RunContext, StageResult


def start(ctx: RunContext, hydra: dict) -> dict:
    """The summary's opening keys, before any stage ran."""
    return {"name": ctx.settings.name, "seed": ctx.seed, "run_dir": str(ctx.run_dir), "version": _version(),
            "choices": hydra["choices"], "overrides": hydra["overrides"], "sweep": hydra["sweep"],
            "executor": {"kind": ctx.executor.kind, "workers": ctx.executor.workers},
            "lm": ctx.settings.lm.model, "stages": {}, "started": time.perf_counter()}


def finish(ctx: RunContext, results: dict[str, StageResult]) -> dict:
    """Add the counts, task statistics, eval scores, simulator fidelity and LM cost to the summary."""
    s, r = ctx.summary, results
    s["wall_s"] = round(time.perf_counter() - s.pop("started"), 3)
    s["servers"] = server_yield(ctx, r)
    held_out = [t for t in r["synthesizer"].value if t["split"] == ctx.settings.eval.split]
    s["counts"] = {"servers": r["servers"].metrics["servers"], "tools": r["servers"].metrics["tools"],
                   "edges": r["graph"].metrics["edges"], "dags": r["sampler"].metrics["dags"],
                   "calls": r["explorer"].metrics["calls"], "verified_tasks": r["synthesizer"].metrics["tasks"],
                   "test_tasks": len(held_out),
                   "tasks_per_dag": round(r["synthesizer"].metrics["tasks"] / max(r["explorer"].metrics["dags"], 1), 4),
                   "edge_validity": r["flow"].metrics["edge_validity"]}
    s["tasks"], s["dataset"] = r["dataset"].metrics, str(r["dataset"].folder)
    s["eval"] = r["eval"].metrics["policies"]
    fid = r["fidelity"].metrics
    s["simulator"] = {"reward_flip_rate": fid["calls"]["reward_flip_rate"],
                      "reward_flip_rate_trajectories": fid["trajectories"]["reward_flip_rate"],
                      "hits": r["eval"].metrics["simulator_hits"], "fidelity": fid}
    stages = [st.get("metrics", {}) for st in s["stages"].values()]
    s["cost"] = {"lm_cost_usd": round(sum(m.get("lm_cost_usd") or 0 for m in stages), 6),
                 "lm_calls": sum(m.get("lm_calls") or 0 for m in stages)}
    return s


def server_yield(ctx: RunContext, r: dict[str, StageResult]) -> dict:
    """``servers.<id>``: each server's launch report and what it gave at every stage (tools, tools the probe
    got an answer from, explored calls and errors, verified tasks using it), so the server that needs
    attention shows at once, and ``clock``, the instant its wall clock was stopped at (null: the real clock);
    ``servers.hint_free``: the enabled servers whose catalog entry has no hints."""
    probe = r["probe"].metrics.get("answered_by_server", {}) if "probe" in r else {}
    calls, errors = (r["explorer"].metrics.get(k, {}) for k in ("calls_by_server", "errors_by_server"))
    tasks = Counter(sv for t in r["synthesizer"].value for sv in {c["server"] for c in t["gold_calls"]})
    out: dict = {}
    for rep in json.loads((r["servers"].folder / "servers.json").read_text()):
        sv = rep["id"]
        out[sv] = {**{k: rep.get(k) for k in ("status", "server_version", "n_tools", "tools_hash", "reason")},
                   "probe_answered_tools": probe.get(sv, 0) if "probe" in r else None,
                   "explored_calls": calls.get(sv, 0), "explored_errors": errors.get(sv, 0),
                   "verified_tasks": tasks.get(sv, 0), "clock": (ctx.specs.get(sv) or {}).get("clock")}
    out["hint_free"] = sorted(sv for sv, spec in ctx.specs.items() if not spec.get("hints"))
    return out


def headline(summary: dict) -> dict:
    """The parent run's MLflow metrics."""
    return {**{f"count.{k}": v for k, v in summary["counts"].items()},
            **{f"tasks.{k}": v for k, v in summary["tasks"].items()},
            **{f"eval.{p}.{m}": x for p, ms in summary["eval"].items() for m, x in ms.items()},
            **{f"simulator.{k}": summary["simulator"][k] for k in
               ("reward_flip_rate", "reward_flip_rate_trajectories", "hits")},
            **{f"cost.{k}": v for k, v in summary["cost"].items()},
            "stages_reused": sum(bool(st.get("reused")) for st in summary["stages"].values()),
            "wall_s": summary["wall_s"]}


def _version() -> str:
    from . import __version__

    return __version__


def point_latest(outputs: Path, run_dir: Path) -> None:
    """``outputs/latest`` -> this run's folder (atomically replaced)."""
    link = outputs / "latest"
    tmp = outputs / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(run_dir, outputs))
        os.replace(tmp, link)
    except OSError as exc:
        print(f"[firefly] could not update {link}: {exc}", file=sys.stderr)


def print_summary(summary: dict) -> None:
    c = summary["counts"]
    print("\n== firefly_exp run:", summary["run_dir"])
    print(f"servers {c['servers']} | tools {c['tools']} | edges {c['edges']} | DAGs {c['dags']} | "
          f"calls {c['calls']} | verified tasks {c['verified_tasks']} (held out {c['test_tasks']})")
    print(f"edge validity {c.get('edge_validity', 0):.3f} | verified tasks per explored DAG {c.get('tasks_per_dag', 0):.3f}")
    t = summary.get("tasks") or {}
    if t:
        print(f"  tasks: {t['verified']} verified ({t['splits']}, split {t['split_strategy']}), "
              f"calls/task {t['calls_per_task_mean']} {t['calls_per_task_hist']}, fields/task "
              f"{t['answer_fields_mean']}, multi-server {t['multi_server_fraction']:.1%}, yield/DAG "
              f"{t['yield_per_dag']}; dataset: {summary['dataset']}")
    for name, st in summary["stages"].items():
        if "wall_s" in st:
            print(f"  {name:<12} {'reused' if st['reused'] else 'ran   '} {st['wall_s']:>8.1f}s")
    for policy, m in summary["eval"].items():
        print(f"  eval {policy:<8} pass@1 {m['pass@1']:.3f}  field accuracy {m['field_accuracy']:.3f}  "
              f"calls/task {m['calls_per_task']:.2f}")
    sim = summary["simulator"]
    print(f"  simulator: reward-flip rate {sim['reward_flip_rate']:.3f} on held-out calls "
          f"({sim['reward_flip_rate_trajectories']:.3f} on held-out DAGs); eval hits {sim['hits']}")
    ml = summary["mlflow"]
    print(f"MLflow run {ml['run_id']} in {ml['tracking_uri']}")
    print(f"  look at it: .venv/bin/mlflow ui --backend-store-uri {ml['tracking_uri']}  (then open http://127.0.0.1:5000)")
    print(f"summary: {summary['run_dir']}/summary.json (also outputs/latest/summary.json)")
