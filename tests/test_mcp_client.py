"""Bad input: unknown servers, servers that do not start, tools that error, hang or crash."""

import asyncio
import sys
from pathlib import Path

import pytest

from firefly_exp.mcp_client import ServerHandle, ServerStartError
from firefly_exp.install import check_installed
from firefly_exp.settings import ConfigError, ServersSettings, load_settings

FLAKY = {"id": "flaky", "registry": "pypi", "command": sys.executable,
         "args": [str(Path(__file__).parent / "fixtures" / "flaky_server.py")], "stateful": False}


def test_unknown_server_is_a_one_line_error(config):
    with pytest.raises(ConfigError) as err:
        load_settings(config("servers.enabled=[time,nosuch]"))
    msg = str(err.value)
    assert "nosuch" in msg and "conf/servers/catalog.yaml" in msg and "\n" not in msg


def test_unknown_reset_mode_is_a_one_line_error(config):
    with pytest.raises(ConfigError) as err:
        load_settings(config("servers.catalog.git.reset=warm"))
    msg = str(err.value)
    assert "servers.catalog.git.reset" in msg and "files" in msg and "always" in msg and "\n" not in msg


def test_full_experiment_without_its_servers_is_a_one_line_error(config, tmp_path):
    """`+experiment=full` on a machine without the full catalog: one line, naming `make servers-full`."""
    cfg = config("+experiment=full", f"servers.install_dir={tmp_path}/nothing-installed")
    specs = load_settings(cfg).servers.specs()
    assert len(specs) >= 30
    with pytest.raises(ConfigError) as err:
        check_installed(specs, Path(cfg.servers.install_dir))
    msg = str(err.value)
    assert "make servers-full" in msg and "basic-memory" in msg and "\n" not in msg
    only_default = {sid: specs[sid] for sid in ("time", "git")}
    with pytest.raises(ConfigError, match=r"run `make servers`"):
        check_installed(only_default, Path(cfg.servers.install_dir))


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
