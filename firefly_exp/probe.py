"""Stage 1b, probe: call every tool once on a freshly seeded sandbox to see what it returns.

Most MCP tools declare no output schema, so before the graph is built each tool is explored alone
(a one-node DAG, arguments from the catalog hints and the schema, the explorer's own machinery,
retries and sandboxes included). The graph stage reads these calls to infer output schemas and to
find *value* evidence: a tool whose result holds a value known to be valid for another tool's
parameter (a catalog hint, e.g. a table name, a file path, a commit hash) can feed that tool.

Every tool starts from the seeded files (the sandbox slot is restored between tools), and each
stateful server runs as one process for all its tools (a *probe session*, whatever its ``reset``):
servers with state in memory keep it from one probed tool to the next, which saves a
restart per tool (basic-memory takes ~5 s to start) and only ever adds context to a probe.

    calls = probe_tools(tools, specs, install_dir, sandbox_root, out, seed, settings)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl

from . import explorer


def probe_dags(tools: pl.DataFrame) -> list[dict]:
    """One single-node DAG per tool, in a stable order."""
    return [{"id": f"probe-{row['tool']}", "index": i, "nodes": [row["tool"]], "edges": [], "shape": "single",
             "servers": [row["server"]], "depth": 1}
            for i, row in enumerate(tools.sort("tool").to_dicts())]


def probe_tools(tools: pl.DataFrame, specs: dict, install_dir: Path, sandbox_root: Path, out_dir: Path,
                seed: int, settings: explorer.ExploreSettings) -> dict:
    """Explore every tool alone (``calls.jsonl``/``trajectories.jsonl`` in ``out_dir``, resumable);
    returns the stage metrics."""
    session = dataclasses.replace(settings, warm_stateful=True, warm_all=True)
    metrics = explorer.explore(probe_dags(tools), tools, specs, install_dir, Path(sandbox_root) / "probe", out_dir,
                               seed, explorer.HeuristicProposer(), session)
    _, calls = explorer.load_trajectories(out_dir)
    answered = {f"{c['server']}/{c['tool']}" for c in calls if not c["is_error"]}
    return {**{k: v for k, v in metrics.items() if k in ("calls", "errors", "wall_s")},
            "tools": len(tools), "tools_answered": len(answered),
            "answered_fraction": round(len(answered) / max(len(tools), 1), 4)}


def tool_hints(specs: dict, tools: pl.DataFrame) -> dict[str, dict[str, list]]:
    """Per tool, per parameter, the catalog's hinted values (``<tool>.<param>`` over ``<param>``)."""
    out: dict[str, dict[str, list]] = {}
    for row in tools.to_dicts():
        hints = (specs.get(row["server"]) or {}).get("hints") or {}
        name = row["tool"].split("/", 1)[1]
        params = (json.loads(row["input_schema"]) or {}).get("properties") or {}
        found = {p: explorer.hinted_values(hints, name, p) for p in params}
        found = {p: v for p, v in found.items() if v}
        if found:
            out[row["tool"]] = found
    return out
