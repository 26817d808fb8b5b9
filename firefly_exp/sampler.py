"""Stage 3, sampler: sub-DAGs of the tool graph for the explorer to execute.

- ``random_walk`` (default): start at a tool with at least ``min_confident_successors`` medium/high
  successors (FireFly's start rule), then grow by following edges weighted by score; with
  probability ``branch_prob`` a new node hangs off an earlier node instead of the last one, which
  yields fan-out and fan-in shapes as well as chains.
- ``uniform``: random tool sets that ignore the graph (the ablation baseline), executed in the
  drawn order without field mappings.

Every DAG records its nodes in execution order, its edges with their field mappings and its shape.
Writes ``dags.jsonl``.
"""

from __future__ import annotations

import random
from pathlib import Path

import networkx as nx

from .store import JsonlWriter, stable_hash


def rng_for(seed: int, *coords) -> random.Random:
    """A generator derived from the run seed and an item's coordinates."""
    return random.Random(stable_hash([seed, *coords]))


def dag_shape(nodes: list[str], edges: list[dict]) -> str:
    if len(nodes) == 1:
        return "single"
    outd = {n: 0 for n in nodes}
    ind = {n: 0 for n in nodes}
    for e in edges:
        outd[e["source"]] += 1
        ind[e["target"]] += 1
    fan_out, fan_in = max(outd.values()) >= 2, max(ind.values()) >= 2
    if fan_out and fan_in:
        return "mixed"
    if fan_out:
        return "fan_out"
    if fan_in:
        return "fan_in"
    return "chain" if edges else "set"


def _make_dag(nodes: list[str], edges: list[dict], seed: int, index: int, sampler: str) -> dict:
    order = list(nx.topological_sort(_digraph(nodes, edges))) if edges else list(nodes)
    body = {"nodes": order, "edges": sorted(edges, key=lambda e: (e["source"], e["target"]))}
    return {"id": "dag-" + stable_hash(body, 12), **body, "shape": dag_shape(order, edges),
            "depth": _depth(order, edges), "servers": sorted({n.split("/")[0] for n in order}),
            "sampler": sampler, "seed": seed, "index": index}


def _digraph(nodes, edges) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((e["source"], e["target"]) for e in edges)
    return g


def _depth(nodes, edges) -> int:
    return nx.dag_longest_path_length(_digraph(nodes, edges)) + 1 if edges else 1


def _walk(graph: nx.DiGraph, starts: list[str], rng: random.Random, size: int, max_depth: int,
          branch_prob: float, max_servers: int) -> tuple[list[str], list[dict]]:
    nodes = [rng.choice(starts)]
    edges: list[dict] = []
    depth = {nodes[0]: 1}
    tries = 0
    while len(nodes) < size and tries < 8 * size:
        tries += 1
        anchor = nodes[-1] if rng.random() >= branch_prob else rng.choice(nodes)
        if depth[anchor] >= max_depth:
            continue
        servers = {n.split("/")[0] for n in nodes}
        options = [(v, d) for v, d in graph[anchor].items()
                   if v not in nodes and (v.split("/")[0] in servers or len(servers) < max_servers)]
        if not options:
            continue
        weights = [d["score"] ** 2 for _, d in options]
        target, data = rng.choices(options, weights=weights)[0]
        nodes.append(target)
        depth[target] = depth[anchor] + 1
        edges.append({"source": anchor, "target": target, "score": data["score"],
                      "confidence": data["confidence"], "mapping": data["mapping"]})
        # fan-in: another node already in the DAG may also feed the new one
        for other in nodes[:-1]:
            if other != anchor and graph.has_edge(other, target) and depth[other] < max_depth \
                    and rng.random() < branch_prob / 2:
                depth[target] = max(depth[target], depth[other] + 1)
                d = graph[other][target]
                edges.append({"source": other, "target": target, "score": d["score"],
                              "confidence": d["confidence"], "mapping": d["mapping"]})
                break
    return nodes, edges


def sample_subdags(graph: nx.DiGraph, out_dir: Path, seed: int, strategy: str = "random_walk",
                   n_dags: int = 200, min_size: int = 2, max_size: int = 4, max_depth: int = 4,
                   max_servers: int = 3, branch_prob: float = 0.3, min_confident_successors: int = 2,
                   max_attempts_factor: int = 30, servers: list[str] | None = None) -> dict:
    """Draw ``n_dags`` distinct sub-DAGs; writes dags.jsonl and returns the stage metrics."""
    nodes_all = sorted(graph.nodes)
    if servers:
        nodes_all = [n for n in nodes_all if n.split("/")[0] in set(servers)]
    if strategy == "random_walk":
        confident = {u: sum(1 for _, _, d in graph.out_edges(u, data=True) if d["confidence"] in ("high", "medium"))
                     for u in nodes_all}
        starts = [u for u in nodes_all if confident[u] >= min_confident_successors]
        if not starts:
            starts = [u for u in nodes_all if graph.out_degree(u) > 0]
        if not starts:
            raise ValueError("the tool graph has no edges to walk: lower graph.thresholds.low or use sampler=uniform")
    elif strategy != "uniform":
        raise ValueError(f"unknown sampler strategy '{strategy}': use random_walk or uniform")
    dags: list[dict] = []
    seen: set[str] = set()
    attempt = 0
    while len(dags) < n_dags and attempt < n_dags * max_attempts_factor:
        rng = rng_for(seed, "sampler", strategy, attempt)
        attempt += 1
        size = rng.randint(min_size, max_size)
        if strategy == "random_walk":
            nodes, edges = _walk(graph, starts, rng, size, max_depth, branch_prob, max_servers)
            if len(nodes) < min_size:
                continue
        else:
            nodes, edges = rng.sample(nodes_all, min(size, len(nodes_all))), []
        dag = _make_dag(nodes, edges, seed, len(dags), strategy)
        if dag["id"] in seen:
            continue
        seen.add(dag["id"])
        dags.append(dag)
    with JsonlWriter(Path(out_dir) / "dags.jsonl") as out:
        for dag in dags:
            out.write(dag)
    shapes: dict[str, int] = {}
    for d in dags:
        shapes[d["shape"]] = shapes.get(d["shape"], 0) + 1
    used = {n for d in dags for n in d["nodes"]}
    return {"dags": len(dags), "attempts": attempt, "tools_covered": len(used),
            "tool_coverage": round(len(used) / max(len(nodes_all), 1), 4),
            "cross_server_fraction": round(sum(len(d["servers"]) > 1 for d in dags) / max(len(dags), 1), 4),
            "mean_size": round(sum(len(d["nodes"]) for d in dags) / max(len(dags), 1), 3),
            **{f"shape_{k}": v for k, v in sorted(shapes.items())}}
