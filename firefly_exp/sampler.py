"""Stage 3, sampler: sub-DAGs of the tool graph for the explorer to execute.

Strategies: each is a function of one :class:`Draw` (``def name(draw) -> (nodes, edges)``) that a
``conf/sampler/<name>.yaml`` names by ``_target_``; a new sampler is one function and one YAML:

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

A strategy's DAGs start at ``draw.starts``: by default the tools :func:`confident_starts` finds; a
strategy sets its own rule as its ``starts`` attribute (``fan_in``: :func:`hub_starts`), and one
that ignores the graph sets ``walks = False`` (no walker, no start tools, no graph-based filters).
Attempt ``i`` draws from its own generator, ``rng_for(seed, "sampler", <function name>, i)``: a
strategy's DAGs depend on the seed and its name only.

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
(a fresh process per DAG that takes seconds of CPU to start). ``start_balance`` (graph-guided only):
``server`` (default) draws a DAG's first tool by drawing a server first (by its weight over one plus
the DAGs it already started, so kept DAGs spread over the servers), then one of its start tools, and a server none of whose tools meets the
start rule starts at its tools with any successor; ``tool`` draws among all start tools
alike, so a server with many tools (16 unit conversions) starts most DAGs. DAGs are deduplicated by content (nodes and edges). Every DAG records its
nodes in execution order, its edges with their field mappings, its shape (chain, fan_out, fan_in,
mixed; ``set`` for edge-less ones) and depth. ``cover_servers`` (graph-guided only): a server whose
answering tools end no drawn DAG gets up to that many one-tool DAGs at them (:func:`_covering_dags`). Writes ``dags.jsonl`` and ``shapes.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import networkx as nx

from .seeding import rng_for
from .settings import SamplerSettings, resolve
from .stage import RunContext, Stage, StageResult
from .store import read_jsonl, write_jsonl

CONFIDENT = ("high", "medium")


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


def _sinks(nodes: list[str], edges: list[dict]) -> list[str]:
    """The DAG's tools no edge leaves: where it ends."""
    sources = {e["source"] for e in edges}
    return [n for n in nodes if n not in sources]


def _answer_sink(graph: nx.DiGraph, nodes: list[str], edges: list[dict]) -> bool:
    """Whether a DAG ends in a tool whose probe result held answer material (node ``answers``; unknown,
    without a probe, counts as yes): a DAG whose last calls only write, echo or fail gives no task."""
    return any(graph.nodes[n].get("answers") is not False for n in _sinks(nodes, edges))


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


class Walker:
    """Adjacency of the tool graph as plain lists (fast to sample from), per-draw constraints, and how
    often the DAGs drawn so far used each tool and server (:func:`coverage`)."""

    def __init__(self, graph: nx.DiGraph, allowed: set[str], settings: SamplerSettings):
        probe_failed = settings.probe_failed
        # only edges that may bring their target in (:func:`_feeds`): a walk never steps onto a tool
        # that would fail for want of its precondition
        self.succ = {u: [(v, d) for v, d in graph[u].items() if v in allowed and _feeds(graph, u, v, d, probe_failed)]
                     for u in allowed}
        self.pred = {u: [(v, graph[v][u]) for v in graph.predecessors(u) if v in allowed] for u in allowed}
        self.unfed = {u for u in allowed if not _all_fed(graph, [u], [], probe_failed)}   # cannot be a root
        self.max_depth, self.max_servers = settings.max_depth, settings.max_servers
        self.level_weights = settings.level_weights
        self.server_weights = {str(k): float(v) for k, v in settings.server_weights.items()}
        self.usage: dict[str, int] = {}
        self.server_usage: dict[str, int] = {}
        self.start_usage: dict[str, int] = {}
        self.start_waste: dict[str, int] = {}   # draws started at a server that were rejected or seen before

    def server_weight(self, v: str) -> float:
        return self.server_weights.get(v.split("/")[0], 1.0)

    def score_weight(self, v: str, d: dict) -> float:
        """An edge's odds in a walk: its score squared (times its target server's weight)."""
        return d["score"] ** 2 * self.server_weight(v)

    def level_weight(self, v: str, d: dict) -> float:
        """An edge's odds by its confidence level (``level_weights``)."""
        return float(self.level_weights.get(d["confidence"], 0.05)) * self.server_weight(v)

    def coverage_weight(self, v: str, d: dict) -> float:
        """The score weight, lowered for tools and servers the DAGs so far used often."""
        w = d["score"] ** 2 * self.server_weight(v)
        w /= (1 + self.usage.get(v, 0)) * (1 + 0.2 * self.server_usage.get(v.split("/")[0], 0))
        return w

    def record(self, nodes: list[str]) -> None:
        """Count a kept DAG's tools and servers as used (and its first tool's server as a start)."""
        first = nodes[0].split("/")[0]
        self.start_usage[first] = self.start_usage.get(first, 0) + 1
        for u in nodes:
            self.usage[u] = self.usage.get(u, 0) + 1
            self.server_usage[u.split("/")[0]] = self.server_usage.get(u.split("/")[0], 0) + 1

    def waste(self, start: str) -> None:
        """Count a draw started at this tool's server that gave no new DAG (a server whose walks keep
        repeating or failing loses odds: its attempts do not crowd out the others)."""
        sv = start.split("/")[0]
        self.start_waste[sv] = self.start_waste.get(sv, 0) + 1

    def _fits(self, v: str, nodes: list[str], servers: set[str] | None = None) -> bool:
        servers = {n.split("/")[0] for n in nodes} if servers is None else servers
        return v not in nodes and (v.split("/")[0] in servers or len(servers) < self.max_servers)

    def walk(self, weight: Callable[[str, dict], float], start: str, rng: random.Random, size: int,
             branch_prob: float):
        """Grow from ``start`` along edges drawn by ``weight``; ``branch_prob`` gives fan-out and fan-in."""
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
            target, data = rng.choices(options, weights=[weight(v, d) for v, d in options])[0]
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


@dataclass(frozen=True)
class Draw:
    """One attempt at a sub-DAG: what a strategy function reads (its own generator and size)."""

    walker: Walker | None           # None for a strategy that ignores the graph (``walks = False``)
    starts: list[str]               # tools a DAG may start at (the strategy's ``starts`` rule)
    tools: list[str]                # every tool a DAG may use (``settings.servers`` applied), sorted
    settings: SamplerSettings
    rng: random.Random | None = None
    size: int = 0

    def start(self) -> str:
        """A start tool: a server first (``start_balance: server``; by ``server_weights``), then one of its
        start tools; or (``tool``) uniform over ``starts``, or by ``server_weights`` when some are set."""
        w = self.walker
        if self.settings.start_balance == "server":
            by_server: dict[str, list[str]] = {}
            for u in self.starts:
                by_server.setdefault(u.split("/")[0], []).append(u)
            names = sorted(by_server)
            # odds fall with the DAGs a server already started: one whose walks are rejected more often
            # (no answer sink, an unfed tool) is drawn more, so kept DAGs spread over the servers
            server = self.rng.choices(names, weights=[w.server_weights.get(n, 1.0) / (
                1 + w.start_usage.get(n, 0) + WASTE_WEIGHT * w.start_waste.get(n, 0)) for n in names])[0]
            return self.rng.choice(by_server[server])
        return (self.rng.choices(self.starts, weights=[w.server_weight(u) for u in self.starts])[0]
                if w.server_weights else self.rng.choice(self.starts))


Strategy = Callable[[Draw], tuple[list[str], list[dict]]]
WASTE_WEIGHT = 0.2   # a draw that gave no new DAG counts a fifth of a kept one against its server's odds


# -- start rules: which tools a strategy's DAGs may start at ---------------------------------------------


def confident_starts(walker: Walker, tools: list[str], settings: SamplerSettings, need: int = 1) -> list[str]:
    """``start_rule: firefly``: tools with ``min_confident_successors`` medium/high successors; else (or
    with ``any``) tools with ``need`` successors. A DAG's first tool has nothing to feed it: it must
    work on the seeded state (not ``unfed``)."""
    starts: list[str] = []
    if settings.start_rule == "firefly":
        confident = {u: sum(1 for _, d in walker.succ[u] if d["confidence"] in CONFIDENT) for u in tools}
        starts = [u for u in tools if confident[u] >= settings.min_confident_successors and u not in walker.unfed]
    if not starts:
        starts = [u for u in tools if len(walker.succ[u]) >= need and u not in walker.unfed]
    if settings.start_balance == "server":
        # a server none of whose tools meets the rule still starts DAGs: at its tools with a successor
        have = {u.split("/")[0] for u in starts}
        starts += [u for u in tools if u.split("/")[0] not in have and walker.succ[u] and u not in walker.unfed
                   and u not in starts]
    return starts


def fan_starts(walker: Walker, tools: list[str], settings: SamplerSettings) -> list[str]:
    """A fan-out's hub: as :func:`confident_starts`, falling back to tools with two successors."""
    return confident_starts(walker, tools, settings, need=2)


def hub_starts(walker: Walker, tools: list[str], settings: SamplerSettings) -> list[str]:
    """A fan-in's hub is its sink: tools that two predecessors able to start a DAG can feed."""
    return [u for u in tools if sum(v not in walker.unfed for v, _ in walker.pred[u]) >= 2]


# -- strategies (conf/sampler/<name>.yaml: `_target_: firefly_exp.sampler.<name>`) -------------------------


def random_walk(draw: Draw) -> tuple[list[str], list[dict]]:
    """A walk along edges weighted by score²."""
    w = draw.walker
    return w.walk(w.score_weight, draw.start(), draw.rng, draw.size, draw.settings.branch_prob)


def weighted(draw: Draw) -> tuple[list[str], list[dict]]:
    """A walk along edges weighted by confidence level (``level_weights``)."""
    w = draw.walker
    return w.walk(w.level_weight, draw.start(), draw.rng, draw.size, draw.settings.branch_prob)


def coverage(draw: Draw) -> tuple[list[str], list[dict]]:
    """A walk that starts, and steps, where the DAGs so far went least."""
    w = draw.walker
    pool = draw.rng.sample(draw.starts, min(8, len(draw.starts)))
    start = min(pool, key=lambda u: (w.usage.get(u, 0), w.server_usage.get(u.split("/")[0], 0)))
    return w.walk(w.coverage_weight, start, draw.rng, draw.size, draw.settings.branch_prob)


def forest_fire(draw: Draw) -> tuple[list[str], list[dict]]:
    """Every burning node lights 1 + Geometric(``burn_prob``) of its successors."""
    return draw.walker.forest_fire(draw.start(), draw.rng, draw.size, draw.settings.burn_prob)


def fan_out(draw: Draw) -> tuple[list[str], list[dict]]:
    """One tool and several of its successors."""
    return draw.walker.fan("out", draw.start(), draw.rng, draw.size)


def fan_in(draw: Draw) -> tuple[list[str], list[dict]]:
    """One tool and several of its predecessors."""
    return draw.walker.fan("in", draw.start(), draw.rng, draw.size)


def uniform(draw: Draw) -> tuple[list[str], list[dict]]:
    """Random tool sets that ignore the graph, executed in the drawn order."""
    return draw.rng.sample(draw.tools, min(draw.size, len(draw.tools))), []


fan_out.starts = fan_starts
fan_in.starts = hub_starts
uniform.walks = False

# the strategies of this module (every function of one ``draw``); conf/sampler/ picks among them
CHOICES = sorted(n for n, f in list(globals().items()) if inspect.isfunction(f) and f.__module__ == __name__
                 and list(inspect.signature(f).parameters) == ["draw"])


# -- drawing -----------------------------------------------------------------------------------------------


def sample_subdags(graph: nx.DiGraph, settings: SamplerSettings, seed: int, out_dir: Path) -> dict:
    """Draw ``settings.n_dags`` distinct sub-DAGs with the strategy ``settings.target`` names; writes
    dags.jsonl (and shapes.png) into ``out_dir`` and returns the stage metrics."""
    strategy: Strategy = resolve(settings.target, __name__)
    proto = _prototype(graph, strategy, settings)
    dags, counts = _draw_dags(graph, strategy, proto, seed)
    write_jsonl(Path(out_dir) / "dags.jsonl", dags)
    metrics = {**dag_metrics(dags, proto.tools), **counts}
    if settings.plot:
        plot_shapes(metrics, Path(out_dir) / "shapes.png", settings.strategy)
    return metrics


def _prototype(graph: nx.DiGraph, strategy: Strategy, settings: SamplerSettings) -> Draw:
    """The parts of a :class:`Draw` every attempt shares: the tools, the walker and the start tools."""
    tools = sorted(graph.nodes)
    if settings.servers:
        tools = [n for n in tools if n.split("/")[0] in set(settings.servers)]
    if not getattr(strategy, "walks", True):
        return Draw(None, [], tools, settings)
    walker = Walker(graph, set(tools), settings)
    starts = getattr(strategy, "starts", confident_starts)(walker, tools, settings)
    if not starts:
        raise ValueError("the tool graph has no edges to walk: lower graph.thresholds.low or use sampler=uniform")
    return Draw(walker, starts, tools, settings)


def _draw_dags(graph: nx.DiGraph, strategy: Strategy, proto: Draw, seed: int) -> tuple[list[dict], dict]:
    """Attempt after attempt (each its own generator) until ``n_dags`` distinct DAGs are kept."""
    s, walker = proto.settings, proto.walker
    dags: list[dict] = []
    seen: set[str] = set()
    attempt = 0
    rejected = {"rejected_no_answer_sink": 0, "rejected_unfed_probe_failed": 0}
    while len(dags) < s.n_dags and attempt < s.n_dags * s.max_attempts_factor:
        rng = rng_for(seed, "sampler", s.strategy, attempt)
        attempt += 1
        size = rng.randint(s.min_size, s.max_size)
        nodes, edges = strategy(dataclasses.replace(proto, rng=rng, size=size))
        reason = _rejection(graph, walker, nodes, edges, s)
        if reason:
            if reason in rejected:
                rejected[reason] += 1
            if walker is not None and nodes:
                walker.waste(nodes[0])
            continue
        dag = _make_dag(nodes, edges, seed, len(dags), s.strategy)
        if dag["id"] in seen:
            if walker is not None:
                walker.waste(nodes[0])
            continue
        seen.add(dag["id"])
        dags.append(dag)
        if walker is not None:
            walker.record(nodes)
    covering = _covering_dags(graph, proto, dags, seed) if walker is not None and s.cover_servers else []
    return dags + covering, {"attempts": attempt, **rejected, "covering_dags": len(covering)}


def _covering_dags(graph: nx.DiGraph, proto: Draw, dags: list[dict], seed: int) -> list[dict]:
    """``cover_servers``: a server none of whose answering tools (the graph's node ``answers``: its probe
    result held something a task could ask for) ends a drawn DAG (no edge led to them) still gets up to
    ``cover_servers`` one-tool DAGs at those tools, picked with the seed: each server that can answer
    anything is asked, if only alone."""
    s = proto.settings
    reached = {n.split("/")[0] for d in dags for n in _sinks(d["nodes"], d["edges"]) if graph.nodes[n].get("answers")}
    out: list[dict] = []
    by_server: dict[str, list[str]] = {}
    for u in proto.tools:
        if graph.nodes[u].get("answers") and graph.nodes[u].get("probe_ok") is not False:
            by_server.setdefault(u.split("/")[0], []).append(u)
    for server in sorted(by_server):
        if server in reached:
            continue
        rng = rng_for(seed, "sampler", "cover", server)
        for u in rng.sample(by_server[server], min(s.cover_servers, len(by_server[server]))):
            out.append(_make_dag([u], [], seed, len(dags) + len(out), s.strategy))
    return out


def _rejection(graph: nx.DiGraph, walker: Walker | None, nodes: list[str], edges: list[dict],
               s: SamplerSettings) -> str | None:
    """Why a drawn DAG is not kept (a metrics key for the graph-based reasons), or None."""
    n_servers = len({n.split("/")[0] for n in nodes})
    if len(nodes) < s.min_size or n_servers < s.min_servers or (s.require_cross_server and n_servers < 2):
        return "size"
    if s.answer_sink and walker is not None and not _answer_sink(graph, nodes, edges):
        return "rejected_no_answer_sink"
    if walker is not None and not _all_fed(graph, nodes, edges, s.probe_failed):
        return "rejected_unfed_probe_failed"   # a fan-in's hub whose preds could not feed it, a fan-out root
    return None


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


# -- stage ---------------------------------------------------------------------------------------------------


def run(settings: SamplerSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    return sample_subdags(inputs["graph"].value, settings, ctx.seed, ctx.out)


def load(folder: Path, ctx: RunContext) -> list[dict]:
    return read_jsonl(Path(folder) / "dags.jsonl")


STAGE = Stage("sampler", run, load, inputs=("graph",), artifacts=("dags.jsonl", "shapes.png"),
              params=lambda s, ctx: {"seed": ctx.seed}, code=(run, rng_for))
