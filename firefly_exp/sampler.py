"""Stage 3, sampler: sub-DAGs of the tool graph for the explorer to execute.

Strategies (``conf/sampler/<strategy>.yaml``):

- ``random_walk``: grow from a start tool by following edges weighted by score²; with probability
  ``branch_prob`` a new node hangs off an earlier node instead of the last one (fan-out), and an
  earlier node may also feed the new one (fan-in), so chains, fan-outs and fan-ins all appear.
- ``weighted``: the same walk, edges weighted by their confidence level (``level_weights``).
- ``forest_fire``: BFS-style expansion: every burning node lights a geometric number of its
  successors (``burn_prob``) until the DAG has its size.
- ``fan_out``: one tool and several of its successors (one output feeds several tools).
- ``fan_in``: one tool and several of its predecessors (several outputs feed one tool).
- ``coverage``: the walk, preferring tools and servers the DAGs drawn so far used least.
- ``uniform``: random tool sets that ignore the graph (the ablation baseline), executed in the
  drawn order without field mappings.

``start_rule: firefly`` starts graph-guided DAGs only at tools with at least
``min_confident_successors`` medium/high successors (FireFly's rule); ``any`` at any tool with a
successor. Constraints: ``min_size``/``max_size``, ``max_depth``, ``min_servers``/``max_servers``,
``require_cross_server``; ``answer_sink`` (graph-guided only) keeps a DAG only if one of its sinks is a
tool whose probe result held answer material (the graph's node ``answers``), since a DAG that ends
in writes, echoes or failures gives no task. ``probe_failed`` (graph-guided only): a tool whose probe
call failed (the graph's node ``probe_ok``; it needs a precondition, such as a name another call
creates or a session id another call returns) joins a DAG only when fed: ``same_server`` (default)
only through a mapped edge from a tool of its own server, ``skip`` never, ``allow`` like any tool.
``server_weights`` (graph-guided only): ``{server: factor}`` multiplies the odds of that server's
tools at every draw (start, step, branch): below 1 for servers whose DAGs cost far more than others
(a fresh process per DAG that takes seconds of CPU to start). DAGs are deduplicated by content (nodes and edges). Every DAG records its
nodes in execution order, its edges with their field mappings, its shape (chain, fan_out, fan_in,
mixed; ``set`` for edge-less ones) and depth. Writes ``dags.jsonl`` and ``shapes.png``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import networkx as nx

from .store import write_jsonl

STRATEGIES = ("random_walk", "weighted", "forest_fire", "fan_out", "fan_in", "coverage", "uniform")
CONFIDENT = ("high", "medium")


def rng_for(seed: int, *coords) -> random.Random:
    """A generator derived from the run seed and an item's coordinates (scalars: ids, indices).

    >>> rng_for(0, "explore", "dag-1", 2).random() == rng_for(0, "explore", "dag-1", 2).random()
    True
    """
    # random.Random hashes a str seed with SHA-512: cheap, and the same on every machine
    return random.Random("\x1f".join(str(c) for c in (seed, *coords)))


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


def _order_and_depth(nodes: list[str], edges: list[dict]) -> tuple[list[str], int]:
    """A topological order (Kahn's, ties in insertion order) and the longest path in nodes."""
    if not edges:
        return list(nodes), 1
    indeg = {n: 0 for n in nodes}
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        indeg[e["target"]] += 1
        succ[e["source"]].append(e["target"])
    ready = [n for n in nodes if indeg[n] == 0]
    order, level = [], {n: 1 for n in nodes}
    while ready:
        u = ready.pop(0)
        order.append(u)
        for v in succ[u]:
            level[v] = max(level[v], level[u] + 1)
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    return order, max(level.values())


def _make_dag(nodes: list[str], edges: list[dict], seed: int, index: int, sampler: str) -> dict:
    order, depth = _order_and_depth(nodes, edges)
    body = {"nodes": order, "edges": sorted(edges, key=lambda e: (e["source"], e["target"]))}
    # the id hashes the structure only: an edge's score and mapping follow from its two tools
    dag_id = "dag-" + hashlib.sha256("\x1f".join(order + [f"{e['source']}>{e['target']}" for e in body["edges"]])
                                      .encode()).hexdigest()[:12]
    return {"id": dag_id, **body, "shape": dag_shape(order, edges), "depth": depth,
            "servers": sorted({n.split("/")[0] for n in order}), "sampler": sampler, "seed": seed, "index": index}


def _edge(u: str, v: str, d: dict) -> dict:
    return {"source": u, "target": v, "score": d["score"], "confidence": d["confidence"], "mapping": d["mapping"]}


def _answer_sink(graph: nx.DiGraph, nodes: list[str], edges: list[dict]) -> bool:
    """Whether a DAG ends in a tool whose probe result held answer material (node ``answers``; unknown,
    without a probe, counts as yes): a DAG whose last calls only write, echo or fail gives no task."""
    sources = {e["source"] for e in edges}
    return any(graph.nodes[n].get("answers") is not False for n in nodes if n not in sources)


PROBE_FAILED = ("same_server", "skip", "allow")


def _feeds(graph: nx.DiGraph, u: str, v: str, d: dict, probe_failed: str) -> bool:
    """Whether the edge u -> v may bring v into a DAG: v's probe call succeeded (or there was no probe),
    or (``same_server``) u is a tool of v's own server whose output maps onto v's parameters."""
    if graph.nodes[v].get("probe_ok") is not False or probe_failed == "allow":
        return True
    return probe_failed == "same_server" and bool(d.get("mapping")) and u.split("/")[0] == v.split("/")[0]


def _all_fed(graph: nx.DiGraph, nodes: list[str], edges: list[dict], probe_failed: str) -> bool:
    """Every node of the DAG either passed its probe or has an in-edge that may feed it (:func:`_feeds`)."""
    fed = {e["target"] for e in edges if _feeds(graph, e["source"], e["target"], e, probe_failed)}
    return all(n in fed or graph.nodes[n].get("probe_ok") is not False or probe_failed == "allow" for n in nodes)


class _Walker:
    """Adjacency of the tool graph as plain lists (fast to sample from) and per-draw constraints."""

    def __init__(self, graph: nx.DiGraph, allowed: set[str], max_depth: int, max_servers: int,
                 level_weights: dict | None, probe_failed: str = "same_server", server_weights: dict | None = None):
        # only edges that may bring their target in (:func:`_feeds`): a walk never steps onto a tool
        # that would fail for want of its precondition
        self.succ = {u: [(v, d) for v, d in graph[u].items() if v in allowed and _feeds(graph, u, v, d, probe_failed)]
                     for u in allowed}
        self.pred = {u: [(v, graph[v][u]) for v in graph.predecessors(u) if v in allowed] for u in allowed}
        self.unfed = {u for u in allowed if not _all_fed(graph, [u], [], probe_failed)}   # cannot be a root
        self.max_depth, self.max_servers = max_depth, max_servers
        self.level_weights = level_weights or {"high": 1.0, "medium": 0.5, "low": 0.15}
        self.server_weights = {str(k): float(v) for k, v in (server_weights or {}).items()}
        self.usage: dict[str, int] = {}
        self.server_usage: dict[str, int] = {}

    def server_weight(self, v: str) -> float:
        return self.server_weights.get(v.split("/")[0], 1.0)

    def weight(self, strategy: str, v: str, d: dict) -> float:
        if strategy == "weighted":
            return float(self.level_weights.get(d["confidence"], 0.05)) * self.server_weight(v)
        w = d["score"] ** 2 * self.server_weight(v)
        if strategy == "coverage":
            w /= (1 + self.usage.get(v, 0)) * (1 + 0.2 * self.server_usage.get(v.split("/")[0], 0))
        return w

    def _fits(self, v: str, nodes: list[str], servers: set[str] | None = None) -> bool:
        servers = {n.split("/")[0] for n in nodes} if servers is None else servers
        return v not in nodes and (v.split("/")[0] in servers or len(servers) < self.max_servers)

    def walk(self, strategy: str, start: str, rng: random.Random, size: int, branch_prob: float):
        nodes, edges, depth = [start], [], {start: 1}
        tries = 0
        while len(nodes) < size and tries < 8 * size:
            tries += 1
            anchor = nodes[-1] if rng.random() >= branch_prob else rng.choice(nodes)
            if depth[anchor] >= self.max_depth:
                continue
            servers = {n.split("/")[0] for n in nodes}
            options = [(v, d) for v, d in self.succ[anchor] if self._fits(v, nodes, servers)]
            if not options:
                continue
            target, data = rng.choices(options, weights=[self.weight(strategy, v, d) for v, d in options])[0]
            nodes.append(target)
            depth[target] = depth[anchor] + 1
            edges.append(_edge(anchor, target, data))
            # fan-in: another node already in the DAG may also feed the new one
            for other in nodes[:-1]:
                if other != anchor and depth[other] < self.max_depth and rng.random() < branch_prob / 2:
                    d = next((d for v, d in self.succ[other] if v == target), None)
                    if d is not None:
                        depth[target] = max(depth[target], depth[other] + 1)
                        edges.append(_edge(other, target, d))
                        break
        return nodes, edges

    def forest_fire(self, start: str, rng: random.Random, size: int, burn_prob: float):
        nodes, edges, depth, frontier = [start], [], {start: 1}, [start]
        while frontier and len(nodes) < size:
            u = frontier.pop(0)
            if depth[u] >= self.max_depth:
                continue
            options = [(v, d) for v, d in self.succ[u] if self._fits(v, nodes)]
            rng.shuffle(options)
            if self.server_weights:
                options.sort(key=lambda o: -self.server_weight(o[0]) * rng.random())
            burn = 1
            while rng.random() < burn_prob:
                burn += 1
            for v, d in options[:burn]:
                if len(nodes) >= size or not self._fits(v, nodes):
                    break
                nodes.append(v)
                depth[v] = depth[u] + 1
                edges.append(_edge(u, v, d))
                frontier.append(v)
        return nodes, edges

    def fan(self, direction: str, hub: str, rng: random.Random, size: int):
        nodes, edges = [hub], []
        options = list(self.succ[hub] if direction == "out" else self.pred[hub])
        rng.shuffle(options)
        options.sort(key=lambda o: -o[1]["score"] * self.server_weight(o[0]) * rng.random())
        for v, d in options:
            if len(nodes) >= size:
                break
            if self._fits(v, nodes) and (direction == "out" or v not in self.unfed):
                nodes.append(v)
                edges.append(_edge(hub, v, d) if direction == "out" else _edge(v, hub, d))
        return nodes, edges


def sample_subdags(graph: nx.DiGraph, out_dir: Path, seed: int, strategy: str = "random_walk",
                   n_dags: int = 200, min_size: int = 2, max_size: int = 4, max_depth: int = 4,
                   max_servers: int = 3, min_servers: int = 1, require_cross_server: bool = False,
                   branch_prob: float = 0.3, burn_prob: float = 0.5, start_rule: str = "firefly",
                   min_confident_successors: int = 2, level_weights: dict | None = None,
                   max_attempts_factor: int = 30, servers: list[str] | None = None, answer_sink: bool = True,
                   probe_failed: str = "same_server", server_weights: dict | None = None,
                   plot: bool = True) -> dict:
    """Draw ``n_dags`` distinct sub-DAGs; writes dags.jsonl (and shapes.png) and returns the stage metrics."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampler strategy '{strategy}': use one of {', '.join(STRATEGIES)}")
    if start_rule not in ("firefly", "any"):
        raise ValueError(f"unknown sampler.start_rule '{start_rule}': use firefly or any")
    if probe_failed not in PROBE_FAILED:
        raise ValueError(f"unknown sampler.probe_failed '{probe_failed}': use one of {', '.join(PROBE_FAILED)}")
    nodes_all = sorted(graph.nodes)
    if servers:
        nodes_all = [n for n in nodes_all if n.split("/")[0] in set(servers)]
    walker = (_Walker(graph, set(nodes_all), max_depth, max_servers, level_weights, probe_failed, server_weights)
              if strategy != "uniform" else None)
    starts: list[str] = []
    if walker is not None:
        unfed = walker.unfed   # a DAG's first tool has nothing to feed it: it must work on the seeded state
        if strategy == "fan_in":   # the hub is the sink; its predecessors are the roots
            starts = [u for u in nodes_all if sum(v not in unfed for v, _ in walker.pred[u]) >= 2]
        else:
            confident = {u: sum(1 for _, d in walker.succ[u] if d["confidence"] in CONFIDENT) for u in nodes_all}
            if start_rule == "firefly":
                starts = [u for u in nodes_all if confident[u] >= min_confident_successors and u not in unfed]
            if not starts:
                need = 2 if strategy == "fan_out" else 1
                starts = [u for u in nodes_all if len(walker.succ[u]) >= need and u not in unfed]
        if not starts:
            raise ValueError("the tool graph has no edges to walk: lower graph.thresholds.low or use sampler=uniform")
    dags: list[dict] = []
    seen: set[str] = set()
    attempt = rejected_sink = rejected_unfed = 0
    while len(dags) < n_dags and attempt < n_dags * max_attempts_factor:
        rng = rng_for(seed, "sampler", strategy, attempt)
        attempt += 1
        size = rng.randint(min_size, max_size)
        if walker is None:
            nodes, edges = rng.sample(nodes_all, min(size, len(nodes_all))), []
        else:
            if strategy == "coverage":  # start where the DAGs so far went least
                pool = rng.sample(starts, min(8, len(starts)))
                start = min(pool, key=lambda u: (walker.usage.get(u, 0), walker.server_usage.get(u.split("/")[0], 0)))
            else:
                start = (rng.choices(starts, weights=[walker.server_weight(u) for u in starts])[0]
                         if walker.server_weights else rng.choice(starts))
            if strategy in ("random_walk", "weighted", "coverage"):
                nodes, edges = walker.walk(strategy, start, rng, size, branch_prob)
            elif strategy == "forest_fire":
                nodes, edges = walker.forest_fire(start, rng, size, burn_prob)
            else:
                nodes, edges = walker.fan("out" if strategy == "fan_out" else "in", start, rng, size)
        n_servers = len({n.split("/")[0] for n in nodes})
        if len(nodes) < min_size or n_servers < min_servers or (require_cross_server and n_servers < 2):
            continue
        if answer_sink and walker is not None and not _answer_sink(graph, nodes, edges):
            rejected_sink += 1
            continue
        if walker is not None and not _all_fed(graph, nodes, edges, probe_failed):
            rejected_unfed += 1   # a fan-in's hub whose preds could not feed it, a fan-out root
            continue
        dag = _make_dag(nodes, edges, seed, len(dags), strategy)
        if dag["id"] in seen:
            continue
        seen.add(dag["id"])
        dags.append(dag)
        if walker is not None:
            for u in nodes:
                walker.usage[u] = walker.usage.get(u, 0) + 1
                walker.server_usage[u.split("/")[0]] = walker.server_usage.get(u.split("/")[0], 0) + 1
    write_jsonl(Path(out_dir) / "dags.jsonl", dags)
    metrics = dag_metrics(dags, nodes_all)
    metrics["attempts"] = attempt
    metrics["rejected_no_answer_sink"] = rejected_sink
    metrics["rejected_unfed_probe_failed"] = rejected_unfed
    if plot:
        plot_shapes(metrics, Path(out_dir) / "shapes.png", strategy)
    return metrics


def dag_metrics(dags: list[dict], nodes_all: list[str]) -> dict:
    """Coverage of tools and servers, shapes, cross-server fraction, distinct tool sets."""
    shapes: dict[str, int] = {}
    for d in dags:
        shapes[d["shape"]] = shapes.get(d["shape"], 0) + 1
    used = {n for d in dags for n in d["nodes"]}
    servers_all = {n.split("/")[0] for n in nodes_all}
    servers_used = {s for d in dags for s in d["servers"]}
    k = max(len(dags), 1)
    return {"dags": len(dags), "tools_covered": len(used), "tool_coverage": round(len(used) / max(len(nodes_all), 1), 4),
            "servers_covered": len(servers_used), "server_coverage": round(len(servers_used) / max(len(servers_all), 1), 4),
            "cross_server_fraction": round(sum(len(d["servers"]) > 1 for d in dags) / k, 4),
            "distinct_tool_sets": len({tuple(sorted(d["nodes"])) for d in dags}),
            "mean_size": round(sum(len(d["nodes"]) for d in dags) / k, 3),
            "mean_depth": round(sum(d["depth"] for d in dags) / k, 3),
            "mean_edges": round(sum(len(d["edges"]) for d in dags) / k, 3),
            **{f"shape_{s}": v for s, v in sorted(shapes.items())}}


def plot_shapes(metrics: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = ["chain", "fan_out", "fan_in", "mixed", "set", "single"]
    counts = [metrics.get(f"shape_{s}", 0) for s in shapes]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(shapes, counts, color="#4c72b0")
    ax.set_ylabel("DAGs")
    ax.set_title(f"DAG shapes ({title}, {metrics['dags']} DAGs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
