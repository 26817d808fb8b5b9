"""The simulator from the command line.

    python -m firefly_exp.simulator serve [--run outputs/latest] [--server sqlite] [--transport stdio|http]
    python -m firefly_exp.simulator recheck [--run outputs/latest] [--limit N]

``serve`` exposes a finished run's recorded tools as an MCP server; ``recheck`` re-executes the
gold chains of the run's tasks against the live servers and retires the tasks whose outputs drifted
(written to ``<run>/recheck.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

import polars as pl
from omegaconf import OmegaConf

from .. import PROJECT_ROOT
from ..store import read_jsonl, write_json_atomic
from . import Simulator


def load_run(run: str | Path) -> tuple[dict, dict]:
    run = Path(run)
    if not (run / "summary.json").exists():
        raise SystemExit(f"error: no summary.json in {run}: give --run a finished run folder (e.g. outputs/latest)")
    summary = json.loads((run / "summary.json").read_text())
    conf = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    return summary, conf


def _specs(conf: dict) -> dict[str, dict]:
    """The enabled catalog entries of a run's saved config."""
    from ..settings import ServersSettings

    return ServersSettings(**conf["servers"]).specs()


def run_simulator(summary: dict, conf: dict, live: bool = False) -> tuple[Simulator, pl.DataFrame]:
    tools = pl.read_parquet(Path(summary["stages"]["servers"]["folder"]) / "tools.parquet")
    kwargs = {}
    if live:
        from .live import LiveFallback

        kwargs["live"] = LiveFallback(_specs(conf), Path(conf["servers"]["install_dir"]))
        kwargs["cascade"] = tuple(conf["simulator"]["cascade"]) + ("live",)
    return Simulator.load(Path(summary["stages"]["simulator"]["folder"]), tools, **kwargs), tools


def recheck(summary: dict, conf: dict, limit: int | None = None) -> dict:
    """Re-execute every task's gold chain live in a fresh sandbox; retire tasks whose outputs drifted."""
    from ..mcp_client import ServerHandle
    from ..sandbox import copy_sandbox, seed_sandbox

    specs = _specs(conf)
    install_dir = Path(conf["servers"]["install_dir"])
    tasks = read_jsonl(Path(summary["stages"]["synthesizer"]["folder"]) / "tasks.jsonl")[:limit]
    work = Path(tempfile.mkdtemp(prefix="firefly-recheck-"))
    seed_sandbox(work / "template", list(specs.values()))

    async def one(task: dict) -> str | None:
        sandbox = work / task["id"]
        copy_sandbox(work / "template", sandbox)
        handles = {}
        try:
            for sid in sorted({g["server"] for g in task["gold_calls"]}):
                handles[sid] = await ServerHandle(specs[sid], install_dir, sandbox).start()
            for i, (g, rec) in enumerate(zip(task["gold_calls"], task["gold_results"])):
                out = await handles[g["server"]].call(g["tool"], g["arguments"])
                if out.content != rec["content"] or out.structured != rec.get("structured"):
                    return f"step {i + 1} ({g['tool']}) output changed"
            return None
        except Exception as exc:  # noqa: BLE001 - a server that no longer starts retires its tasks
            return f"{type(exc).__name__}: {exc}"[:200]
        finally:
            await asyncio.gather(*(h.close() for h in handles.values()), return_exceptions=True)
            shutil.rmtree(sandbox, ignore_errors=True)

    retired = []
    for task in tasks:
        reason = asyncio.run(one(task))
        if reason:
            retired.append({"task_id": task["id"], "reason": reason})
    shutil.rmtree(work, ignore_errors=True)
    report = {"checked": len(tasks), "retired": len(retired), "kept": len(tasks) - len(retired),
              "retired_tasks": retired}
    write_json_atomic(Path(summary["run_dir"]) / "recheck.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firefly_exp.simulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a run's recorded tools as an MCP server")
    s.add_argument("--run", default=str(PROJECT_ROOT / "outputs" / "latest"))
    s.add_argument("--server", default=None, help="serve one server's tools under their original names")
    s.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--live", action="store_true", help="add the live fallback to the cascade (local servers)")
    r = sub.add_parser("recheck", help="re-execute gold chains live and retire drifted tasks")
    r.add_argument("--run", default=str(PROJECT_ROOT / "outputs" / "latest"))
    r.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    summary, conf = load_run(args.run)
    if args.command == "serve":
        from .serve import build_server, serve_http, serve_stdio

        sim, tools = run_simulator(summary, conf, live=args.live)
        try:
            app = build_server(sim, tools, args.server)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        serve_stdio(app) if args.transport == "stdio" else serve_http(app, args.host, args.port)
        return 0
    report = recheck(summary, conf, args.limit)
    print(f"rechecked {report['checked']} tasks against the live servers: {report['retired']} retired "
          f"(outputs drifted), {report['kept']} kept -> {summary['run_dir']}/recheck.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
