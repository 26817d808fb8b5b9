"""Stage 1, servers: launch each catalog server over stdio and record its tools.

``discover_tools(specs, ...)`` writes ``tools.parquet`` (one row per tool: server, name,
description, input/output schema, annotations, read-only / volatile flags, server name and version,
schema hash) and ``servers.json`` (per server: status, version, tool count, tool-schema hash). A
server that is missing or fails to start is skipped and reported, never fatal.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import polars as pl
from tqdm import tqdm

from .mcp_client import ServerHandle, ServerStartError
from .sandbox import seed_sandbox
from .settings import ServersSettings
from .stage import RunContext, Stage, StageResult
from .store import stable_hash, write_json_atomic

CONCURRENCY = 4   # servers started at once while listing tools (each is a process; startup dominates)

# Tools with these name prefixes only read, when a server does not annotate them.
_READ_PREFIXES = ("get", "list", "read", "search", "describe", "show", "open", "find", "query_info",
                  "directory_tree", "db_info", "current", "days_in", "relative", "convert", "calculate")


def is_read_only(spec: dict, tool: dict) -> bool:
    """Whether calling a tool leaves its server's state as it was."""
    if not spec.get("stateful"):
        return True
    name = tool["name"]
    if name in (spec.get("read_only_tools") or []):
        return True
    ann = tool.get("annotations") or {}
    if "readOnlyHint" in ann:
        return bool(ann["readOnlyHint"])
    if ann.get("destructiveHint") is True:
        return False
    return name.lower().replace("-", "_").startswith(_READ_PREFIXES)


def tool_id(server: str, name: str) -> str:
    return f"{server}/{name}"


async def _discover_one(spec: dict, install_dir: Path, sandbox: Path, startup_timeout_s: float,
                        call_timeout_s: float) -> tuple[dict, list[dict]]:
    report = {"id": spec["id"], "package": spec.get("package"), "registry": spec.get("registry"),
              "pinned_version": str(spec.get("version")), "domain": spec.get("domain"),
              "stateful": bool(spec.get("stateful"))}
    try:
        async with ServerHandle(spec, install_dir, sandbox, startup_timeout_s, call_timeout_s) as server:
            tools = await server.list_tools()
            report.update(status="ok", server_name=server.server_info.get("name"),
                          server_version=server.server_info.get("version"))
    except ServerStartError as exc:
        report.update(status="failed", reason=str(exc))
        return report, []
    except Exception as exc:  # noqa: BLE001 - a broken server is reported, not fatal
        report.update(status="failed", reason=f"server '{spec['id']}' broke while listing tools: "
                                              f"{type(exc).__name__}: {exc}")
        return report, []
    rows = []
    # a tool reading the clock is volatile unless the clock is stopped (`clock`, libfaketime present)
    volatile = set(spec.get("volatile_tools") or []) | (set() if spec.get("clock") else set(spec.get("clock_tools") or []))
    for tool in tools:
        schema = {"input": tool.get("inputSchema") or {}, "output": tool.get("outputSchema")}
        rows.append({
            "tool": tool_id(spec["id"], tool["name"]),
            "server": spec["id"],
            "name": tool["name"],
            "description": re.sub(r"\s+", " ", tool.get("description") or "").strip(),
            "input_schema": json.dumps(tool.get("inputSchema") or {}, sort_keys=True),
            "output_schema": json.dumps(tool.get("outputSchema"), sort_keys=True) if tool.get("outputSchema") else None,
            "annotations": json.dumps(tool.get("annotations") or {}, sort_keys=True),
            "read_only": is_read_only(spec, tool),
            "volatile": tool["name"] in volatile,
            "domain": spec.get("domain"),
            "stateful": bool(spec.get("stateful")),
            "server_name": report["server_name"],
            "server_version": report["server_version"],
            "schema_hash": stable_hash(schema),
        })
    report["n_tools"] = len(rows)
    report["tools_hash"] = stable_hash(sorted(r["schema_hash"] for r in rows))
    return report, rows


def discover_tools(specs: list[dict], install_dir: Path, sandbox_root: Path, out_dir: Path,
                   startup_timeout_s: float = 30, call_timeout_s: float = 15) -> dict:
    """List every server's tools (``CONCURRENCY`` servers at once); write tools.parquet and servers.json
    into ``out_dir``. The timeouts' defaults serve direct callers; the stage passes ``servers.*``."""
    sandbox = Path(sandbox_root) / "discovery"
    seed_sandbox(sandbox, specs)

    async def main() -> list[tuple[dict, list[dict]]]:
        gate = asyncio.Semaphore(CONCURRENCY)
        bar = tqdm(total=len(specs), desc="discover servers", unit="server")

        async def one(spec: dict):
            async with gate:
                out = await _discover_one(spec, install_dir, sandbox, startup_timeout_s, call_timeout_s)
                bar.update(1)
                return out

        results = await asyncio.gather(*(one(s) for s in specs))
        bar.close()
        return results

    results = asyncio.run(main())
    reports = [r for r, _ in results]
    rows = [row for _, rs in results for row in rs]
    for r in reports:
        if r["status"] != "ok":
            print(f"[servers] skipped: {r['reason']}")
    if not rows:
        raise RuntimeError("no server could be started: run `make servers`, then check outputs/runs/*/sandbox/**/.logs")
    frame = pl.DataFrame(rows).sort("tool")
    frame.write_parquet(Path(out_dir) / "tools.parquet")
    write_json_atomic(Path(out_dir) / "servers.json", reports)
    ok = [r for r in reports if r["status"] == "ok"]
    return {"servers": len(ok), "servers_failed": len(reports) - len(ok), "tools": frame.height,
            "domains": len({r["domain"] for r in ok}),
            "stateful_servers": sum(r["stateful"] for r in ok)}


def load_tools(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(Path(folder) / "tools.parquet")


# -- stage ---------------------------------------------------------------------------------------------------


def run(settings: ServersSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    return discover_tools(list(ctx.specs.values()), ctx.install_dir, ctx.sandbox_root, ctx.out,
                          settings.startup_timeout_s, settings.call_timeout_s)


VOLATILE = "volatile.json"   # in the probe's folder: the tools whose repeated probe answered differently


def catalog(inputs: dict[str, StageResult]) -> pl.DataFrame:
    """The tool catalog a stage reads: the servers stage's tools, each tool the probe found answering
    the same call differently (a clock, file times, fresh ids) marked ``volatile``, when it ran."""
    tools = inputs["servers"].value
    probe = inputs.get("probe")
    path = Path(probe.folder) / VOLATILE if probe is not None else None
    if path is None or not path.exists():
        return tools
    return tools.with_columns(volatile=pl.col("volatile") | pl.col("tool").is_in(json.loads(path.read_text())))


def load(folder: Path, ctx: RunContext) -> pl.DataFrame:
    """The tool catalog later stages read (the per-server reports stay in ``servers.json``)."""
    return load_tools(folder)


# the enabled catalog entries are the address (settings.servers.catalog lists every server, enabled or not)
STAGE = Stage("servers", run, load, artifacts=("tools.parquet", "servers.json"),
              params=lambda s, ctx: {"specs": ctx.specs})
