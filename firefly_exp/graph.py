"""Stage 2, graph: a directed tool graph, edge A->B when A's output can plausibly feed B's input.

Evidence per ordered pair (weights from ``conf/graph``):
- ``flow``: data-flow compatibility, an output field of A (declared output schema, or the whole text
  result when A declares none) whose name and type match an input parameter of B;
- ``similarity``: cosine similarity of the two tools' descriptions, embedded offline with
  all-MiniLM-L6-v2;
- ``lm_judge`` (only when an LM is configured): the DSPy program ``programs.edge_judge`` re-judges
  the highest-ranked candidate pairs and sets the confidence and field mapping.

Writes ``edges.parquet`` (source, target, score, confidence, evidence, mapping), ``graph.json``
(networkx node-link) and ``graph.png``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import networkx as nx
import numpy as np
import polars as pl

from .store import write_json_atomic

FREE_TEXT_PARAMS = {"query", "text", "content", "contents", "expression", "observations", "input",
                    "sql", "value", "message", "body", "data", "description", "note", "search"}


def _tokens(name: str) -> set[str]:
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    return {t for t in re.split(r"[^a-zA-Z0-9]+", name.lower()) if t}


def output_fields(output_schema: dict | None) -> list[tuple[str, str]]:
    """(path, type) of every field an output schema declares; [('*', 'string')] when none."""
    if not output_schema:
        return [("*", "string")]
    out: list[tuple[str, str]] = []

    def walk(schema: dict, prefix: str) -> None:
        props = schema.get("properties") or {}
        for key, sub in props.items():
            path = f"{prefix}.{key}" if prefix else key
            typ = sub.get("type", "string") if isinstance(sub, dict) else "string"
            if isinstance(typ, list):
                typ = next((t for t in typ if t != "null"), "string")
            out.append((path, typ))
            if isinstance(sub, dict):
                if typ == "object":
                    walk(sub, path)
                elif typ == "array" and isinstance(sub.get("items"), dict):
                    walk(sub["items"], path + ".0")

    walk(output_schema, "")
    return out or [("*", "string")]


def input_params(input_schema: dict) -> list[tuple[str, str, bool]]:
    required = set(input_schema.get("required") or [])
    out = []
    for name, sub in (input_schema.get("properties") or {}).items():
        typ = sub.get("type", "string") if isinstance(sub, dict) else "string"
        if isinstance(typ, list):
            typ = next((t for t in typ if t != "null"), "string")
        out.append((name, typ, name in required))
    return out


def _types_fit(out_type: str, in_type: str) -> bool:
    numeric = {"integer", "number"}
    return out_type == in_type or (out_type in numeric and in_type in numeric) or \
        (in_type == "string" and out_type in numeric)


def flow_score(outputs: list[tuple[str, str]], params: list[tuple[str, str, bool]]) -> tuple[float, dict]:
    """Best name/type match of A's output fields against B's parameters, and the field mapping
    ``{input parameter: output path}`` ('*' for the whole text result)."""
    mapping: dict[str, str] = {}
    best = 0.0
    for pname, ptype, required in params:
        ptoks = _tokens(pname)
        p_best, p_field = 0.0, None
        for fpath, ftype in outputs:
            if fpath == "*":
                s = 0.35 if (ptoks & FREE_TEXT_PARAMS and ptype == "string") else 0.1 if ptype == "string" else 0.0
            else:
                fname = fpath.split(".")[-1]
                ftoks = _tokens(fname)
                if fname.lower() == pname.lower():
                    s = 1.0
                elif ftoks and ptoks and len(ftoks & ptoks) / len(ftoks | ptoks) >= 0.5:
                    s = 0.75
                elif ftoks & ptoks - {"name", "id", "type", "value"}:
                    s = 0.5
                else:
                    s = 0.0
                if s and not _types_fit(ftype, ptype):
                    s *= 0.5
            s *= 1.0 if required else 0.8
            if s > p_best:
                p_best, p_field = s, fpath
        if p_field is not None and p_best >= 0.3:
            mapping[pname] = p_field
        best = max(best, p_best)
    return best, mapping


def _tool_text(row: dict, side: str) -> str:
    if side == "out":
        fields = [f for f, _ in output_fields(json.loads(row["output_schema"]) if row["output_schema"] else None)]
        return f"{row['name']}: {row['description']} Returns: {', '.join(fields)}"
    params = json.loads(row["input_schema"]).get("properties") or {}
    described = [f"{k} ({(v or {}).get('description', '')})" for k, v in params.items() if isinstance(v, dict)]
    return f"{row['name']}: {row['description']} Takes: {'; '.join(described)}"


def confidence_level(score: float, thresholds: dict) -> str | None:
    if score >= thresholds["high"]:
        return "high"
    if score >= thresholds["medium"]:
        return "medium"
    if score >= thresholds["low"]:
        return "low"
    return None


def build_graph(tools: pl.DataFrame, out_dir: Path, weights: dict, thresholds: dict,
                max_out_degree: int = 12, lm_judge: dict | None = None, lm=None) -> dict:
    """Score every ordered pair of tools, keep the edges, save them; returns the stage metrics."""
    rows = tools.sort("tool").to_dicts()
    n = len(rows)
    sim = np.zeros((n, n), dtype=np.float32)
    if weights.get("similarity", 0) > 0 and n:
        from .embeddings import embed

        out_vecs = embed([_tool_text(r, "out") for r in rows])
        in_vecs = embed([_tool_text(r, "in") for r in rows])
        sim = np.clip(out_vecs @ in_vecs.T, 0.0, 1.0)
    outs = [output_fields(json.loads(r["output_schema"]) if r["output_schema"] else None) for r in rows]
    ins = [input_params(json.loads(r["input_schema"])) for r in rows]
    wf, ws = float(weights.get("flow", 0.6)), float(weights.get("similarity", 0.4))
    candidates = []
    for i in range(n):
        scored = []
        for j in range(n):
            if i == j or not ins[j]:
                continue
            flow, mapping = flow_score(outs[i], ins[j])
            score = (wf * flow + ws * float(sim[i, j])) / max(wf + ws, 1e-9)
            if confidence_level(score, thresholds) and mapping:
                evidence = [k for k, v in (("flow", flow > 0), ("similarity", ws > 0)) if v]
                scored.append((score, j, flow, float(sim[i, j]), mapping, evidence))
        scored.sort(key=lambda t: (-t[0], rows[t[1]]["tool"]))
        for score, j, flow, s, mapping, evidence in scored[:max_out_degree]:
            candidates.append({"source": rows[i]["tool"], "target": rows[j]["tool"], "score": round(score, 4),
                               "flow": round(flow, 4), "similarity": round(s, 4),
                               "confidence": confidence_level(score, thresholds), "evidence": evidence,
                               "mapping": mapping})
    judged = 0
    if lm is not None and lm_judge and lm_judge.get("enabled", True):
        from programs.edge_judge import judge_edges

        by_tool = {r["tool"]: r for r in rows}
        top = sorted(candidates, key=lambda e: -e["score"])[: int(lm_judge.get("max_pairs", 200))]
        for edge, verdict in zip(top, judge_edges(top, by_tool, lm)):
            if verdict is None:
                continue
            judged += 1
            edge["confidence"] = verdict["confidence"]
            edge["mapping"] = verdict["mapping"] or edge["mapping"]
            edge["evidence"] = edge["evidence"] + ["lm_judge"]
        candidates = [e for e in candidates if e["confidence"] != "none"]
    graph = nx.DiGraph()
    for r in rows:
        graph.add_node(r["tool"], server=r["server"], domain=r["domain"])
    for e in candidates:
        graph.add_edge(e["source"], e["target"], score=e["score"], confidence=e["confidence"],
                       mapping=json.dumps(e["mapping"]))
    frame = pl.DataFrame(
        [{**e, "evidence": ",".join(e["evidence"]), "mapping": json.dumps(e["mapping"], sort_keys=True),
          "cross_server": e["source"].split("/")[0] != e["target"].split("/")[0]} for e in candidates],
        schema={"source": pl.Utf8, "target": pl.Utf8, "score": pl.Float64, "flow": pl.Float64,
                "similarity": pl.Float64, "confidence": pl.Utf8, "evidence": pl.Utf8, "mapping": pl.Utf8,
                "cross_server": pl.Boolean})
    frame.write_parquet(Path(out_dir) / "edges.parquet")
    write_json_atomic(Path(out_dir) / "graph.json", nx.node_link_data(graph, edges="edges"))
    _plot(graph, Path(out_dir) / "graph.png")
    levels = {lvl: int((frame["confidence"] == lvl).sum()) if frame.height else 0 for lvl in ("high", "medium", "low")}
    confident_out = {u: sum(1 for _, _, d in graph.out_edges(u, data=True) if d["confidence"] in ("high", "medium"))
                     for u in graph.nodes}
    return {"tools": n, "edges": frame.height, **{f"edges_{k}": v for k, v in levels.items()},
            "pair_fraction": round(frame.height / max(n * (n - 1), 1), 4),
            "cross_server_edges": int(frame["cross_server"].sum()) if frame.height else 0,
            "start_tools": sum(1 for v in confident_out.values() if v >= 2), "lm_judged": judged}


def load_graph(folder: Path) -> nx.DiGraph:
    data = json.loads((Path(folder) / "graph.json").read_text())
    graph = nx.node_link_graph(data, edges="edges")
    for _, _, d in graph.edges(data=True):
        d["mapping"] = json.loads(d["mapping"]) if isinstance(d.get("mapping"), str) else d.get("mapping", {})
    return graph


def _plot(graph: nx.DiGraph, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = sorted({d["server"] for _, d in graph.nodes(data=True)})
    cmap = plt.get_cmap("tab20")
    colour = {s: cmap(i % 20) for i, s in enumerate(servers)}
    fig, ax = plt.subplots(figsize=(11, 9))
    pos = nx.spring_layout(graph, seed=0, k=0.6)
    strong = [(u, v) for u, v, d in graph.edges(data=True) if d["confidence"] in ("high", "medium")]
    nx.draw_networkx_edges(graph, pos, edgelist=strong, alpha=0.15, arrows=False, ax=ax)
    nx.draw_networkx_nodes(graph, pos, node_size=60, ax=ax,
                           node_color=[colour[graph.nodes[n]["server"]] for n in graph.nodes])
    for s in servers:
        ax.scatter([], [], color=colour[s], label=s)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(f"tool graph: {graph.number_of_nodes()} tools, {graph.number_of_edges()} edges "
                 f"({len(strong)} medium/high shown)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
