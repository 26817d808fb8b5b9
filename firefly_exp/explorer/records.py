"""What an exploration leaves on disk, and reading it back.

``calls.jsonl`` (append-only, completion order) holds every live call, a :class:`CallRecord`;
``trajectories.jsonl`` one :class:`TrajectoryRecord` per finished DAG (its last attempt: a rerun's
earlier attempts are listed in ``retries``, their calls stay in ``calls.jsonl`` under their own
episode). ``trajectories.ordered.jsonl`` is written at the end: each trajectory with its calls, by
DAG index, a file that depends only on the DAGs and the servers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional, TypedDict

import numpy as np

from ..store import read_jsonl

ERROR_KINDS = ("tool_error", "timeout", "crash", "protocol")


class CallRecord(TypedDict):
    """One line of ``calls.jsonl``: one live call, as it returned."""

    episode: str            # the DAG attempt it belongs to
    dag_id: str
    dag_index: int
    step: int               # the node's position in the DAG
    attempt: int            # argument repairs before it (0: the first proposal)
    seq: int                # the call's position in its episode
    server: str
    tool: str               # the tool's name on its server
    arguments: dict
    arg_sources: dict       # per argument, where its value came from (edge:..., pool:..., hint, schema, lm)
    content: list           # the MCP result's content blocks
    structured: Any         # its structuredContent
    is_error: bool
    error_kind: Optional[str]   # one of ERROR_KINDS, or None
    latency_ms: float       # timing: differs from run to run
    fingerprint: str        # the state of the DAG's stateful servers before the call
    mutating: bool          # the tool is not read-only


class TrajectoryRecord(TypedDict, total=False):
    """One line of ``trajectories.jsonl``: a DAG's final attempt."""

    dag_id: str
    index: int
    episode: str
    steps: list             # per completed node: {node, seq of its successful call}
    n_calls: int
    n_errors: int
    status: str             # complete, partial (some nodes ran) or failed
    reason: Optional[str]   # why not complete
    server_failure: str     # a crash, a hang or a failed start: what made the attempt unusable
    wall_s: float           # timing
    retries: list           # earlier attempts: {episode, reason}


def new_trajectory(dag: dict, episode: str) -> dict:
    """The record of a DAG attempt before its first call."""
    return {"dag_id": dag["id"], "index": dag["index"], "episode": episode, "steps": [], "n_calls": 0,
            "n_errors": 0}


def timed_out(dag: dict, episode: str, timeout_s: float) -> dict:
    """The record of an attempt cut at ``explorer.dag_timeout_s``."""
    reason = f"DAG timed out after {timeout_s}s (explorer.dag_timeout_s)"
    return {**new_trajectory(dag, episode), "status": "failed", "reason": reason, "server_failure": reason,
            "wall_s": timeout_s}


ORDERED = "trajectories.ordered.jsonl"


def load_trajectories(folder: Path) -> tuple[list[dict], list[dict]]:
    """Finished trajectories (by DAG index) and the calls of their episodes (in call order)."""
    trajs = sorted(read_jsonl(Path(folder) / "trajectories.jsonl"), key=lambda t: t["index"])
    episodes = {t["episode"] for t in trajs if t.get("episode")}
    calls = [c for c in read_jsonl(Path(folder) / "calls.jsonl") if c["episode"] in episodes]
    calls.sort(key=lambda c: (c["dag_index"], c["seq"]))
    return trajs, calls


def write_ordered(folder: Path) -> Path:
    """``trajectories.ordered.jsonl``: each finished trajectory with its calls, by DAG index.

    The append-only files are in completion order, which depends on scheduling; this one depends
    only on the DAGs and the servers, so two runs (or an interrupted and resumed one) compare equal.
    Written whole and atomically at the end of an exploration.
    """
    trajs, calls = load_trajectories(folder)
    by_episode: dict[str, list[dict]] = {}
    for c in calls:
        by_episode.setdefault(c["episode"], []).append(c)
    path = Path(folder) / ORDERED
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for t in trajs:
            fh.write(json.dumps({**t, "calls": by_episode.get(t["episode"], [])}, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def exploration_metrics(folder: Path, skipped: int = 0, wall_s: float | None = None, **extra) -> dict:
    """Counts of the kept trajectories, and error kinds / failure rates over every live call made
    (retried attempts included: a crash that was retried away still happened)."""
    trajs = sorted(read_jsonl(Path(folder) / "trajectories.jsonl"), key=lambda t: t["index"])
    final = {t["episode"] for t in trajs if t.get("episode")}
    retried = {r["episode"] for t in trajs for r in t.get("retries") or []}
    all_calls = [c for c in read_jsonl(Path(folder) / "calls.jsonl") if c["episode"] in final | retried]
    calls = [c for c in all_calls if c["episode"] in final]
    status = {s: sum(t["status"] == s for t in trajs) for s in ("complete", "partial", "failed")}
    kinds: dict[str, int] = {}
    per_server: dict[str, list[int]] = {}
    for c in all_calls:
        if c["error_kind"]:
            kinds[c["error_kind"]] = kinds.get(c["error_kind"], 0) + 1
        per_server.setdefault(c["server"], [0, 0])
        per_server[c["server"]][0] += 1
        per_server[c["server"]][1] += int(c["is_error"])
    lat = np.array([c["latency_ms"] for c in all_calls]) if all_calls else np.zeros(1)
    out = {"dags": len(trajs), "dags_skipped_unknown_tools": skipped, **{f"dags_{k}": v for k, v in status.items()},
           "dags_retried": sum(bool(t.get("retries")) for t in trajs), "dag_retries": len(retried),
           "calls": len(calls), "calls_live": len(all_calls),
           "errors": sum(kinds.values()), **{f"errors_{k}": kinds.get(k, 0) for k in ERROR_KINDS},
           "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
           "latency_ms_p95": round(float(np.percentile(lat, 95)), 3),
           "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
           **{f"failure_rate.{s}": round(e / n, 4) for s, (n, e) in sorted(per_server.items())},
           # per server, over the kept trajectories' calls (summary.json servers.<id>)
           "calls_by_server": dict(sorted(Counter(c["server"] for c in calls).items())),
           "errors_by_server": dict(sorted(Counter(c["server"] for c in calls if c["is_error"]).items())), **extra}
    if wall_s:
        out["dags_per_s"] = round(len(trajs) / wall_s, 3) if trajs else 0.0
    return out
