"""The simulator as a real MCP server (stdio or streamable HTTP), so any MCP client can use it in
place of the live servers. Each connection is one episode (its own state fingerprints).

With ``server`` set, it serves that server's recorded tools under their original names and
schemas; otherwise all recorded tools, named ``<server>__<tool>``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
import polars as pl

from . import Episode, Simulator, error_result

SEPARATOR = "__"


def build_server(sim: Simulator, tools: pl.DataFrame, server: str | None = None):
    from mcp.server.lowlevel import Server

    rows = [r for r in tools.sort("tool").to_dicts() if server is None or r["server"] == server]
    if not rows:
        raise ValueError(f"no recorded tools for server '{server}': pick one of "
                         f"{', '.join(sorted(set(tools['server'].to_list())))}")
    exposed: dict[str, tuple[str, str]] = {}
    listed = []
    for r in rows:
        name = r["name"] if server else f"{r['server']}{SEPARATOR}{r['name']}"
        exposed[name] = (r["server"], r["name"])
        spec = {"name": name, "description": r["description"], "inputSchema": json.loads(r["input_schema"])}
        if r["output_schema"]:
            spec["outputSchema"] = json.loads(r["output_schema"])
        listed.append(types.Tool.model_validate(spec))
    episodes: dict[str, Episode] = {}

    async def on_list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def on_call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        episode = episodes.setdefault(_connection(ctx), sim.episode())
        target = exposed.get(params.name)
        if target is None:
            result: dict[str, Any] = error_result(f"Unknown tool: {params.name}.")
        else:
            # lookups may run a live fallback (its own event loop): keep them off this loop
            result = await anyio.to_thread.run_sync(episode.step, target[0], target[1], params.arguments or {})
        # the recorded structured content may not validate against a changed output schema: send text only then
        return types.CallToolResult.model_validate(
            {"content": result["content"], "isError": bool(result["is_error"]),
             **({"structuredContent": result["structured"]} if isinstance(result.get("structured"), dict) else {})})

    return Server("firefly-simulator" + (f"-{server}" if server else ""), version="1",
                  on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def _connection(ctx) -> str:
    """Which connection a request belongs to: the HTTP session id, or the one stdio connection."""
    request = getattr(ctx, "request", None)
    headers = getattr(request, "headers", None)
    return (headers.get("mcp-session-id") if headers is not None else None) or "stdio"


def serve_stdio(app) -> None:
    from mcp.server.stdio import stdio_server

    async def main() -> None:
        async with stdio_server() as (read, write):
            await app.run(read, write, app.create_initialization_options())

    anyio.run(main)


def serve_http(app, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(app.streamable_http_app(host=host), host=host, port=port, log_level="warning")
