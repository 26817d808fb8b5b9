"""Simulator speed: exact lookups per second and retrieval latency at 1k, 10k and 100k cached calls,
next to a plain dict lookup in the same process. Writes outputs/bench/simulator.json.

    .venv/bin/python bench/simulator.py
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import polars as pl

from firefly_exp import PROJECT_ROOT
from firefly_exp.simulator import SEED_STATE, Simulator, canonical_args

WORDS = ("alpha beta gamma delta sales orders customers invoices paris oslo berlin london report summary "
         "meeting notes budget quarter north south east west red green blue").split()
N_TOOLS = 10


def _tools() -> pl.DataFrame:
    schema = {"type": "object", "properties": {"query": {"type": "string"}, "city": {"type": "string"},
                                               "limit": {"type": "integer", "default": 10}}, "required": ["query"]}
    return pl.DataFrame([{"tool": f"srv/tool{i}", "read_only": True, "input_schema": json.dumps(schema)}
                         for i in range(N_TOOLS)])


def _args(rng: random.Random, i: int) -> dict:
    return {"query": " ".join(rng.choices(WORDS, k=4)) + f" #{i}", "city": rng.choice(WORDS),
            "limit": rng.randint(1, 50)}


def build(n: int, rng: random.Random, schema: dict) -> tuple[Simulator, list[tuple[str, dict]]]:
    calls, entries = [], []
    for i in range(n):
        tool, args = f"tool{i % N_TOOLS}", _args(rng, i)
        calls.append((tool, args))
        entries.append({"server": "srv", "tool": tool, "args": canonical_args(args, schema), "fingerprint": SEED_STATE,
                        "scope_fingerprint": SEED_STATE,
                        "result": {"content": [{"type": "text", "text": f"result {i}"}], "structured": None,
                                   "is_error": False}})
    tools = _tools()
    info = {r["tool"]: {"read_only": True, "input_schema": schema} for r in tools.to_dicts()}
    return Simulator(entries, info, cascade=("exact", "state_aware", "retrieval"), retrieval_threshold=0.0), calls


def main() -> dict:
    rng = random.Random(0)
    schema = json.loads(_tools()["input_schema"][0])
    out: dict = {"tools": N_TOOLS}
    for n in (1_000, 10_000, 100_000):
        sim, calls = build(n, rng, schema)
        episode = sim.episode()
        probe = [calls[rng.randrange(n)] for _ in range(50_000)]
        t = time.perf_counter()
        for tool, args in probe:
            sim.lookup("srv", tool, args, episode)
        exact_rate = len(probe) / (time.perf_counter() - t)
        assert sim.counts["exact"] == len(probe)
        table = {("srv", tool, canonical_args(args, schema), SEED_STATE): i for i, (tool, args) in enumerate(calls)}
        keys = [("srv", tool, canonical_args(args, schema), SEED_STATE) for tool, args in probe]
        t = time.perf_counter()
        for key in keys:
            table[key]
        dict_rate = len(keys) / (time.perf_counter() - t)
        # retrieval: unseen arguments near a cached call (first lookups also build the per-tool index)
        for tool in range(N_TOOLS):
            sim.lookup("srv", f"tool{tool}", {"query": "warm up", "city": "x"}, episode)
        lat = []
        for _ in range(2_000):
            tool, args = calls[rng.randrange(n)]
            near = {**args, "query": args["query"].replace("#", "no. "), "limit": args["limit"] + 1}
            t = time.perf_counter()
            r = sim.lookup("srv", tool, near, episode)
            lat.append((time.perf_counter() - t) * 1000)
            assert r["hit"] == "retrieval"
        lat.sort()
        key = {1_000: "1k", 10_000: "10k", 100_000: "100k"}[n]
        out[f"exact_lookups_per_s_{key}"] = round(exact_rate)
        out[f"dict_lookups_per_s_{key}"] = round(dict_rate)
        out[f"retrieval_p50_ms_{key}"] = round(statistics.median(lat), 4)
        out[f"retrieval_p99_ms_{key}"] = round(lat[int(0.99 * len(lat)) - 1], 4)
        print(f"{n:>7} cached calls: exact {exact_rate:,.0f}/s (dict {dict_rate:,.0f}/s, "
              f"ratio {exact_rate / dict_rate:.3f}) | retrieval p50 {out[f'retrieval_p50_ms_{key}']:.3f} ms, "
              f"p99 {out[f'retrieval_p99_ms_{key}']:.3f} ms")
    out["exact_lookups_per_s"] = out["exact_lookups_per_s_100k"]
    out["dict_lookups_per_s"] = out["dict_lookups_per_s_100k"]
    out["exact_vs_dict_ratio"] = round(out["exact_lookups_per_s"] / out["dict_lookups_per_s"], 4)
    path = PROJECT_ROOT / "outputs" / "bench" / "simulator.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"-> {path}")
    return out


if __name__ == "__main__":
    main()
