"""Observed data flow: which values exploration really passed from one tool to another.

The explorer records, per argument, where its value came from (``arg_sources``): ``edge:<step>:<path>``
(along a DAG edge's field mapping) or ``pool:<step>:<path>`` (a same-named value an earlier step
returned). A value "passed along" A->B when a successful call of B used a value taken from A's output.

- ``observed_flow(calls)``: every (source tool, target tool) pair that passed a value, with how often
  and the mapping used; the graph stage's ``observed`` evidence (``graph.observed_from``).
- ``edge_validity(dags, calls)``: the fraction of sampled edges along which a value really passed
  (for edge-less DAGs, e.g. ``sampler=uniform``, the consecutive pairs of their execution order).

>>> calls = [{"episode": "e", "dag_id": "d", "step": 0, "server": "fs", "tool": "list", "is_error": False,
...           "arg_sources": {}},
...          {"episode": "e", "dag_id": "d", "step": 1, "server": "fs", "tool": "read", "is_error": False,
...           "arg_sources": {"path": "edge:0:files.0.path"}}]
>>> observed_flow(calls)
{('fs/list', 'fs/read'): {'n': 1, 'mapping': {'path': 'files.0.path'}}}
>>> edge_validity([{"id": "d", "nodes": ["fs/list", "fs/read"], "edges": [{"source": "fs/list", "target": "fs/read"}]}], calls)["edge_validity"]
1.0
"""

from __future__ import annotations

import re
from pathlib import Path

from .stage import RunContext, Stage, StageResult
from .store import write_json_atomic

# an argument value taken from an earlier result: edge:<step>:<path> or pool:<step>:<path>
SOURCE = re.compile(r"^(edge|pool):(\d+):(.*)$")


def _passes(calls: list[dict]):
    """(dag_id, source step, target step, source tool, target tool, param, generic path) per passed value."""
    tool_at: dict[tuple, str] = {}
    for c in calls:
        tool_at[(c["episode"], c["step"])] = f"{c['server']}/{c['tool']}"
    for c in calls:
        if c.get("is_error"):
            continue
        for param, src in (c.get("arg_sources") or {}).items():
            m = SOURCE.match(str(src))
            if not m:
                continue
            step = int(m.group(2))
            source = tool_at.get((c["episode"], step))
            if source is None or step == c["step"]:
                continue
            path = re.sub(r"\.\d+\.", ".0.", m.group(3)) or "*"
            yield c["dag_id"], step, c["step"], source, f"{c['server']}/{c['tool']}", param, path


def observed_flow(calls: list[dict]) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for _, _, _, src, tgt, param, path in _passes(calls):
        entry = out.setdefault((src, tgt), {"n": 0, "mapping": {}})
        entry["n"] += 1
        entry["mapping"].setdefault(param, path)
    return out


def edge_validity(dags: list[dict], calls: list[dict]) -> dict:
    """Per explored DAG, its edges (or consecutive pairs) and whether a value passed along each."""
    passed: dict[str, set] = {}
    for dag_id, _, _, src, tgt, _, _ in _passes(calls):
        passed.setdefault(dag_id, set()).add((src, tgt))
    explored = {c["dag_id"] for c in calls}
    n_edges = n_valid = dags_with_flow = n_dags = 0
    for d in dags:
        if d["id"] not in explored:
            continue
        n_dags += 1
        pairs = [(e["source"], e["target"]) for e in d["edges"]] or list(zip(d["nodes"], d["nodes"][1:]))
        ok = passed.get(d["id"], set())
        n_edges += len(pairs)
        n_valid += sum(p in ok for p in pairs)
        dags_with_flow += bool(ok)
    return {"edge_validity": round(n_valid / max(n_edges, 1), 4), "edges_checked": n_edges,
            "edges_valid": n_valid, "dags_with_flow": round(dags_with_flow / max(n_dags, 1), 4),
            "dags_explored": n_dags}


# -- stage ---------------------------------------------------------------------------------------------------


def run(settings: None, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """Edge validity of the sampled DAGs the explorer ran (``flow.json``): along how many sampled edges
    exploration really passed a value. The calls are read from the explorer's folder."""
    from .explorer import load_trajectories

    _, calls = load_trajectories(inputs["explorer"].folder)
    metrics = edge_validity(inputs["sampler"].value, calls)
    write_json_atomic(Path(ctx.out) / "flow.json", metrics)
    return metrics


STAGE = Stage("flow", run, inputs=("sampler", "explorer"), artifacts=("flow.json",))
