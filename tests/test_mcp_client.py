"""The MCP client on bad input: servers that are not installed or do not start, tools that error, hang
or crash (on tests/fixtures/flaky_server.py, a real stdio MCP server)."""

import asyncio
import sys

import pytest

from conftest import FIXTURES
from firefly_exp.mcp_client import ServerHandle, ServerStartError

FLAKY = {"id": "flaky", "registry": "pypi", "command": sys.executable,
         "args": [str(FIXTURES / "flaky_server.py")], "stateful": False}


def test_missing_server_binary_says_how_to_fix(tmp_path):
    spec = {**FLAKY, "command": "{env}/bin/not-installed"}
    with pytest.raises(ServerStartError, match="make servers"):
        asyncio.run(ServerHandle(spec, tmp_path, tmp_path / "sb").start())


def test_server_that_exits_at_start_is_reported(tmp_path):
    spec = {**FLAKY, "args": ["-c", "import sys; sys.exit(1)"]}
    with pytest.raises(ServerStartError, match="failed to start|did not answer"):
        asyncio.run(ServerHandle(spec, tmp_path, tmp_path / "sb", startup_timeout_s=10).start())


def test_tool_errors_timeouts_and_crashes_are_recorded_not_raised(tmp_path):
    async def main():
        async with ServerHandle(FLAKY, tmp_path, tmp_path / "sb", call_timeout_s=10) as s:
            ok = await s.call("echo", {"text": "/sandbox/x/y.txt"})
            err = await s.call("fail", {"reason": "because"})
            slow = await s.call("hang", {"seconds": 20}, timeout_s=1.0)
            dead = await s.call("crash", {})
            after = await s.call("echo", {"text": "still there?"})
            return ok, err, slow, dead, after

    ok, err, slow, dead, after = asyncio.run(main())
    assert not ok.is_error and ok.text() == "/sandbox/x/y.txt"   # mapped to the real path and back
    assert err.is_error and err.error_kind == "tool_error" and "failing on purpose: because" in err.text()
    assert slow.is_error and slow.error_kind == "timeout" and slow.latency_ms < 5000
    assert dead.is_error and dead.error_kind in ("crash", "protocol")
    assert after.is_error and after.error_kind == "crash"
