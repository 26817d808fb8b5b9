"""Scale-out benchmark: exploration with ``executor=ray`` (a local Ray instance, N workers) over
``executor=local``, on the same DAG set, in this one process.

    .venv/bin/python -m bench.ray                   # or: make bench
    .venv/bin/python -m bench.ray --dags 32 --workers 2 --repeats 3

On the smoke servers (conf/servers/smoke.yaml): the DAG set of ``bench/explore.py`` (stateless chains
and stateful ones: a fresh sandbox and fresh stateful servers per DAG), explored with the same
explorer settings (``--concurrency`` DAGs at once per process) locally and sharded across
``--workers`` Ray workers, each with its own server pool and sandbox, merged into one folder. After
one uncounted warm-up round of each, rounds alternate local / ray so that load from elsewhere hits
both; the median ratio counts.

- ``ray_speedup``: local wall time / ray wall time (sharding and merging included; the Ray instance is
  started once before, its start-up is ``ray_init_s``);
- ``same_trajectories``: every round's merged trajectories equal the local ones (DAG, status, calls).

Writes ``outputs/bench/ray.json`` and prints it, with the CPU count and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from bench.explore import SHAPES, _specs
from firefly_exp import PROJECT_ROOT, executor
from firefly_exp.explorer import shards
from firefly_exp.explorer import settings_from_yaml
from firefly_exp.servers import discover_tools, load_tools
from firefly_exp.stage import RunContext
from firefly_exp.store import read_jsonl, write_json_atomic


def _settings():
    """The smoke experiment's settings (seed 0, no LM): the run context explorer.shards.explore reads."""
    from hydra import compose, initialize_config_dir

    from firefly_exp.settings import load_settings

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return load_settings(compose(config_name="config", overrides=["+experiment=smoke"]))


def _run(runner, dags, tools, settings, ctx: RunContext) -> tuple[float, list]:
    """Explore ``dags`` into ``ctx.out`` (a fresh folder; the sandbox is ``ctx.run_dir``/sandbox)."""
    shutil.rmtree(ctx.run_dir, ignore_errors=True)
    ctx.out.mkdir(parents=True)
    t = time.perf_counter()
    shards.explore(runner, dags, tools, settings, ctx)
    wall = time.perf_counter() - t
    ordered = read_jsonl(ctx.out / "trajectories.ordered.jsonl")
    return wall, [(t["dag_id"], t["status"], [(c["tool"], c["arguments"]) for c in t["calls"]]) for t in ordered]


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dags", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=3, help="DAGs at once per process (explorer.concurrency)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs" / "bench")
    a = ap.parse_args()
    install_dir = PROJECT_ROOT / ".servers"
    specs = _specs()
    work = a.out / "ray-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    discover_tools(list(specs.values()), install_dir, work / "sb", work)
    tools = load_tools(work)
    known = set(tools["tool"].to_list())
    shapes = [s for s in SHAPES if all(n in known for n in s)]
    dags = [{"id": f"bench-{i:03d}", "index": i, "nodes": shapes[i % len(shapes)],
             "edges": [{"source": x, "target": y, "mapping": {}} for x, y in zip(shapes[i % len(shapes)],
                                                                                 shapes[i % len(shapes)][1:])]}
            for i in range(a.dags)]
    settings, full = settings_from_yaml(concurrency=a.concurrency), _settings()

    def context(name: str) -> RunContext:
        return RunContext(full, work / name, specs, out=work / name / "out")

    report = {"servers": sorted(specs), "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
              "dags": len(dags), "workers": a.workers, "concurrency_per_process": a.concurrency}
    local = executor.Executor()
    ray = executor.RayExecutor(num_workers=a.workers)
    t = time.perf_counter()
    ray._ensure_started()
    report["ray_init_s"] = round(time.perf_counter() - t, 3)
    walls_local, walls_ray, same = [], [], []
    try:
        for name, runner in (("local", local), ("ray", ray)):   # warm-up, not counted: first server starts, imports
            _run(runner, dags, tools, settings, context(name))
        for i in range(a.repeats):
            order = [("local", local), ("ray", ray)] if i % 2 == 0 else [("ray", ray), ("local", local)]
            got = {}
            for name, runner in order:
                wall, trajs = _run(runner, dags, tools, settings, context(name))
                (walls_local if name == "local" else walls_ray).append(wall)
                got[name] = trajs
            same.append(got["local"] == got["ray"])
    finally:
        ray.close()
    ratios = [lo / r for lo, r in zip(walls_local, walls_ray)]
    report.update({
        "local_s": [round(w, 3) for w in walls_local], "ray_s": [round(w, 3) for w in walls_ray],
        "ray_speedup": round(statistics.median(ratios), 4), "ray_speedup_repeats": [round(r, 4) for r in ratios],
        "same_trajectories": all(same), "loadavg_end": os.getloadavg(),
    })
    shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(a.out / "ray.json", report)
    print(json.dumps(report, indent=2))
    print(f"ray_speedup {report['ray_speedup']} ({a.workers} workers, {os.cpu_count()} CPUs, load "
          f"{report['loadavg_end'][0]:.1f}); same trajectories: {report['same_trajectories']} -> {a.out / 'ray.json'}")
    return report


if __name__ == "__main__":
    main()
