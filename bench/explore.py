"""Exploration engine benchmark: per-call overhead vs the bare mcp SDK, and concurrency speed-up.

    .venv/bin/python -m bench.explore              # or: make bench
    .venv/bin/python -m bench.explore --calls 400 --dags 24 --concurrency 4

On the smoke servers (conf/servers/smoke.yaml), in this one process:

- ``call_overhead_ratio``: seconds per ``tools/call`` through the engine (``ServerHandle.call``: path
  mapping both ways, timeout, JSON-able results) over a bare ``mcp`` ``ClientSession.call_tool`` loop
  on a second process of the same server; rounds alternate between the two and the median round
  counts, so load from elsewhere on the machine hits both alike.
- ``recording_overhead_ratio``: seconds per call through the whole explorer (one-call DAGs on a pooled
  server: proposer, call, record flushed per call and fsynced per DAG) over the bare loop.
- ``concurrency_speedup``: DAGs/s of one DAG set explored with ``explorer.concurrency=N`` over the same
  set explored one DAG at a time (both as in a run: warm ``reset: files`` servers, sandboxes restored).
- ``warm_speedup``: DAGs/s of that set at concurrency N with warm stateful servers
  (``explorer.warm_stateful=true``: processes kept, sandbox files restored between DAGs) over the
  same set with a fresh sandbox copy and fresh stateful server processes per DAG (``false``).

Writes ``outputs/bench/explore.json`` and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from omegaconf import OmegaConf

from firefly_exp import PROJECT_ROOT
from firefly_exp.explorer import Exploration, HeuristicProposer, explore, settings_from_yaml
from firefly_exp.mcp_client import ServerHandle, launch_parameters
from firefly_exp.servers import discover_tools, load_tools
from firefly_exp.store import write_json_atomic

CALL = ("calculator", "calculate", {"expression": "(17 * 23) / 4 + 2**10"})
# DAG shapes over the smoke servers: stateless chains and stateful ones (fresh sandbox + servers)
SHAPES = [["calculator/calculate"],
          ["sqlite/list_tables", "sqlite/describe_table", "sqlite/read_query"],
          ["time/convert_time", "calculator/calculate"],
          ["memory/read_graph", "memory/search_nodes", "memory/open_nodes"]]


def _specs() -> dict:
    cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(PROJECT_ROOT / "conf/servers/catalog.yaml"),
                                                 OmegaConf.load(PROJECT_ROOT / "conf/servers/smoke.yaml")))
    return {s: {**cfg["catalog"][s], "id": s} for s in cfg["enabled"]}


async def _per_call(spec: dict, install_dir: Path, sandbox: Path, calls: int, rounds: int) -> dict:
    from mcp import ClientSession, stdio_client

    _, tool, args = CALL
    params = launch_parameters(spec, install_dir, sandbox)
    (sandbox / "home").mkdir(parents=True, exist_ok=True)
    (sandbox / "tmp").mkdir(parents=True, exist_ok=True)
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as bare, \
                ServerHandle(spec, install_dir, sandbox) as engine:
            await bare.initialize()

            async def bare_loop() -> float:
                t = time.perf_counter()
                for _ in range(calls):
                    result = await bare.call_tool(tool, args)
                    assert not result.is_error
                return (time.perf_counter() - t) / calls

            async def engine_loop() -> float:
                t = time.perf_counter()
                for _ in range(calls):
                    outcome = await engine.call(tool, args)
                    assert not outcome.is_error, outcome.text()
                return (time.perf_counter() - t) / calls

            await bare_loop(), await engine_loop()   # warm both
            bare_s, engine_s = [], []
            for i in range(rounds):
                order = (bare_loop, engine_loop) if i % 2 == 0 else (engine_loop, bare_loop)
                for loop in order:
                    (bare_s if loop is bare_loop else engine_s).append(await loop())
    ratios = [e / b for e, b in zip(engine_s, bare_s)]
    return {"bare_ms_per_call": round(statistics.median(bare_s) * 1000, 4),
            "engine_ms_per_call": round(statistics.median(engine_s) * 1000, 4),
            "call_overhead_ratio": round(statistics.median(ratios), 4),
            "call_overhead_ratio_rounds": [round(r, 4) for r in ratios]}


def _explore(dags, tools, specs, install_dir, work: Path, concurrency: int, warm: bool = True) -> tuple[float, dict]:
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    t = time.perf_counter()
    settings = settings_from_yaml(concurrency=concurrency, warm_stateful=warm)
    metrics = explore(dags, Exploration(tools, specs, install_dir, work / "sb", settings, 0, HeuristicProposer()),
                      work / "out")
    return time.perf_counter() - t, metrics


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=40, help="calls per round of the per-call loops (short rounds: load spikes hit both)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dags", type=int, default=16, help="DAGs in the concurrency set")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="sequential/concurrent pairs (the median counts)")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs" / "bench")
    a = ap.parse_args()
    install_dir = PROJECT_ROOT / ".servers"
    specs = _specs()
    work = a.out / "explore-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    discover_tools(list(specs.values()), install_dir, work / "sb", work)
    tools = load_tools(work)

    report = {"servers": sorted(specs), "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()}
    report.update(asyncio.run(_per_call(specs[CALL[0]], install_dir, work / "calls-sb", a.calls, a.rounds)))

    # the explorer's recording path: one-call DAGs on the pooled calculator, one at a time
    one_call = [{"id": f"call-{i:04d}", "index": i, "nodes": ["calculator/calculate"], "edges": []}
                for i in range(100)]
    wall, _ = _explore(one_call, tools, specs, install_dir, work / "recording", 1)
    report["explorer_ms_per_call"] = round(wall / len(one_call) * 1000, 4)
    report["recording_overhead_ratio"] = round(wall / len(one_call) / (report["bare_ms_per_call"] / 1000), 4)

    known = set(tools["tool"].to_list())
    shapes = [s for s in SHAPES if all(n in known for n in s)]
    dags = [{"id": f"bench-{i:03d}", "index": i, "nodes": shapes[i % len(shapes)],
             "edges": [{"source": x, "target": y, "mapping": {}} for x, y in zip(shapes[i % len(shapes)],
                                                                                 shapes[i % len(shapes)][1:])]}
            for i in range(a.dags)]
    seq, par, cold = [], [], []
    for _ in range(a.repeats):   # alternate, so drifting load elsewhere hits all three alike
        wall_1, m1 = _explore(dags, tools, specs, install_dir, work / "seq", 1)
        wall_n, mn = _explore(dags, tools, specs, install_dir, work / "par", a.concurrency)
        wall_c, mc = _explore(dags, tools, specs, install_dir, work / "cold", a.concurrency, warm=False)
        assert m1["dags"] == mn["dags"] == mc["dags"] == len(dags) and m1["calls"] == mn["calls"] == mc["calls"]
        seq.append(len(dags) / wall_1)
        par.append(len(dags) / wall_n)
        cold.append(len(dags) / wall_c)
    report.update({
        "dags": len(dags), "concurrency": a.concurrency,
        "dags_per_s_sequential": round(statistics.median(seq), 4),
        "dags_per_s_concurrent": round(statistics.median(par), 4),
        "concurrency_speedup": round(statistics.median(p / s for p, s in zip(par, seq)), 4),
        "concurrency_speedup_repeats": [round(p / s, 4) for p, s in zip(par, seq)],
        "dags_per_s_cold": round(statistics.median(cold), 4),
        "warm_speedup": round(statistics.median(p / c for p, c in zip(par, cold)), 4),
        "warm_speedup_repeats": [round(p / c, 4) for p, c in zip(par, cold)],
        "loadavg_end": os.getloadavg(),
    })
    shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(a.out / "explore.json", report)
    print(json.dumps(report, indent=2))
    print(f"call_overhead_ratio {report['call_overhead_ratio']}  concurrency_speedup {report['concurrency_speedup']}"
          f"  warm_speedup {report['warm_speedup']}"
          f"  -> {a.out / 'explore.json'}")
    return report


if __name__ == "__main__":
    main()
