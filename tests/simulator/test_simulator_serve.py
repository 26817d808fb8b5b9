"""The simulator served as a real MCP server, driven over stdio by the official `mcp` client."""

import asyncio
import json
import sys
import threading

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firefly_exp import PROJECT_ROOT
from firefly_exp.mcp_client import ServerHandle
from firefly_exp.simulator import Simulator

from test_simulator_cascade import _recorded

TOOLS = pl.DataFrame([
    {"tool": "kv/get", "server": "kv", "name": "get", "description": "Get a value", "read_only": True,
     "input_schema": json.dumps({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}),
     "output_schema": None},
    {"tool": "kv/put", "server": "kv", "name": "put", "description": "Put a value", "read_only": False,
     "input_schema": json.dumps({"type": "object", "properties": {"key": {}, "value": {}}, "required": ["key", "value"]}),
     "output_schema": None},
    {"tool": "notes/find", "server": "notes", "name": "find", "description": "Find notes", "read_only": True,
     "input_schema": json.dumps({"type": "object", "properties": {"text": {"type": "string"}, "limit": {"type": "integer"}},
                                 "required": ["text"]}), "output_schema": None},
])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("served")
    (run / "servers").mkdir()
    (run / "sim").mkdir()
    TOOLS.write_parquet(run / "servers" / "tools.parquet")
    Simulator.from_calls(_recorded(), TOOLS).save(run / "sim")
    (run / "summary.json").write_text(json.dumps({"run_dir": str(run), "stages": {
        "servers": {"folder": str(run / "servers")}, "simulator": {"folder": str(run / "sim")}}}))
    (run / "config.yaml").write_text("simulator:\n  cascade: [exact, state_aware, retrieval]\n")
    return run


class Client:
    """The official stdio client in a background event loop, so sync tests can send many requests."""

    def __init__(self, run, server=None):
        args = ["-m", "firefly_exp.simulator", "serve", "--run", str(run)] + (["--server", server] if server else [])
        spec = {"id": "simulator", "registry": "pypi", "command": sys.executable, "args": args,
                "env": {"PYTHONPATH": str(PROJECT_ROOT)}}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.handle = ServerHandle(spec, PROJECT_ROOT, run / "sandbox", startup_timeout_s=60, call_timeout_s=20)
        self.run(self.handle.start())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self):
        self.run(self.handle.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def client(run_dir):
    c = Client(run_dir)
    yield c
    c.close()


def test_serves_recorded_tools_with_their_schemas(client):
    tools = {t["name"]: t for t in client.run(client.handle.list_tools())}
    assert set(tools) == {"kv__get", "kv__put", "notes__find"}
    assert tools["notes__find"]["inputSchema"]["required"] == ["text"]
    out = client.run(client.handle.call("kv__get", {"key": "a"}))
    assert not out.is_error and out.text() == "1"
    miss = client.run(client.handle.call("kv__get", {"key": "zzz"}))
    assert miss.is_error and "no recorded result" in miss.text()


def test_one_server_under_its_original_names(run_dir):
    c = Client(run_dir, server="kv")
    try:
        assert {t["name"] for t in c.run(c.handle.list_tools())} == {"get", "put"}
        # a connection is an episode: the write changes what the next read returns
        assert c.run(c.handle.call("get", {"key": "a"})).text() == "1"
        assert not c.run(c.handle.call("put", {"key": "a", "value": 2})).is_error
        assert c.run(c.handle.call("get", {"key": "a"})).text() == "2"
    finally:
        c.close()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=50), lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
requests = st.tuples(
    st.sampled_from(["kv__get", "kv__put", "notes__find", "nope", "", "kv__", "__get"]) | st.text(max_size=30),
    st.dictionaries(st.sampled_from(["key", "value", "text", "limit"]) | st.text(max_size=10), json_values, max_size=5)
    | st.builds(lambda n: {"key": "x" * n}, st.integers(0, 300_000)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.lists(requests, min_size=20, max_size=50))
def test_random_and_malformed_requests_never_break_the_server(client, batch):
    for name, args in batch:
        out = client.run(client.handle.call(name, args))
        assert out.error_kind in (None, "tool_error"), out.text()   # an answer, never a transport failure
        assert out.content and out.text()
    assert client.handle.alive


def test_streamable_http_transport(run_dir):
    import socket
    import subprocess
    import time

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "firefly_exp.simulator", "serve", "--run", str(run_dir),
                             "--transport", "http", "--port", str(port)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def main():
        async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                names = {t.name for t in (await session.list_tools()).tools}
                got = await session.call_tool("kv__get", {"key": "a"})
                return names, got

    try:
        for _ in range(100):  # wait for the port to open, at most ~20 s
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        names, got = asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "kv__put" in names
    assert not got.is_error and got.content[0].text == "1"


def test_in_memory_client_drives_the_served_simulator():
    """The SDK's in-process client against ``serve.build_server``: no subprocess, same answers as stdio."""
    import anyio
    from mcp import Client as SDKClient

    from firefly_exp.simulator.serve import build_server

    app = build_server(Simulator.from_calls(_recorded(), TOOLS), TOOLS, server="kv")

    async def main():
        with anyio.fail_after(30):
            return await session()

    async def session():
        async with SDKClient(app) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            first = await c.call_tool("get", {"key": "a"})
            wrote = await c.call_tool("put", {"key": "a", "value": 2})
            second = await c.call_tool("get", {"key": "a"})
            unknown = await c.call_tool("nope", {})
            return names, first, wrote, second, unknown

    names, first, wrote, second, unknown = anyio.run(main)
    assert names == {"get", "put"}
    assert not first.is_error and first.content[0].text == "1"
    assert not wrote.is_error and second.content[0].text == "2"   # one connection, one episode
    assert unknown.is_error and "Unknown tool" in unknown.content[0].text
