"""A catalog entry's ``clock`` stops its server's wall clock (libfaketime): the clock-reading tool answers
the stopped instant and is no longer volatile; without ``clock`` it is volatile and answers the real time."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from conftest import FIXTURES
from firefly_exp.explorer import Exploration, HeuristicProposer, explore, load_trajectories, settings_from_yaml
from firefly_exp.mcp_client import faketime_lib, launch_parameters
from firefly_exp.probe import probe_tools
from firefly_exp.servers import discover_tools, load_tools
from firefly_exp.settings import ServerSpec

SPEC = {"id": "clock", "registry": "pypi", "command": sys.executable, "args": [str(FIXTURES / "clock_server.py")],
        "seed": [], "stateful": False, "clock_tools": ["now"]}
INSTANT = "2024-01-15 14:30:00"

needs_faketime = pytest.mark.skipif(faketime_lib() is None, reason="libfaketime is not installed (make servers "
                                                                    "installs it: apt-get install faketime)")


def _now(spec: dict, tmp_path) -> tuple[str, bool]:
    discover_tools([spec], tmp_path, tmp_path / "sb", tmp_path)
    tools = load_tools(tmp_path)
    settings = settings_from_yaml(concurrency=1, call_timeout_s=10, dag_timeout_s=60, max_retries=0)
    dag = {"id": "dag-now", "index": 0, "nodes": ["clock/now"], "edges": []}
    explore([dag], Exploration(tools, {"clock": spec}, tmp_path, tmp_path / "run", settings, 0, HeuristicProposer()),
            tmp_path / "out")
    call = load_trajectories(tmp_path / "out")[1][0]
    assert not call["is_error"], call
    return call["content"][0]["text"], bool(tools.row(0, named=True)["volatile"])


@needs_faketime
def test_a_stopped_clock_answers_its_instant_and_is_not_volatile(tmp_path):
    text, volatile = _now({**SPEC, "clock": INSTANT}, tmp_path)
    assert text == "2024-01-15T14:30:00+00:00"
    assert not volatile


def test_without_a_clock_the_tool_reads_the_real_time_and_is_volatile(tmp_path):
    text, volatile = _now(SPEC, tmp_path)
    assert not text.startswith("2024-01-15")
    assert volatile


@needs_faketime
def test_the_stopped_clock_leaves_the_monotonic_clock_running(tmp_path):
    env = launch_parameters({**SPEC, "clock": INSTANT}, tmp_path, tmp_path).env
    assert env["FAKETIME"] == INSTANT and env["LD_PRELOAD"] == faketime_lib()
    assert env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"   # timers and event loops keep working


def test_a_clock_that_is_no_instant_is_refused_with_the_format():
    with pytest.raises(ValueError, match="YYYY-MM-DD HH:MM:SS"):
        ServerSpec(package="p", version="1", registry="pypi", command="c", clock="tomorrow")


@pytest.mark.parametrize("clock", [None, INSTANT])
def test_the_probe_finds_a_running_clock_volatile_and_a_stopped_one_not(tmp_path, clock):
    """No catalog help (no ``clock_tools``): the probe's repeat, a second later, tells them apart."""
    if clock and faketime_lib() is None:
        pytest.skip("libfaketime is not installed (make servers installs it: apt-get install faketime)")
    spec = {**SPEC, "clock_tools": [], "clock": clock}
    discover_tools([spec], tmp_path, tmp_path / "sb", tmp_path)
    ctx = SimpleNamespace(specs={"clock": spec}, install_dir=tmp_path, sandbox_root=tmp_path / "sb", seed=0,
                          out=tmp_path / "probe")
    metrics = probe_tools(load_tools(tmp_path), ctx, settings_from_yaml(concurrency=1, call_timeout_s=10,
                                                                        dag_timeout_s=60, max_retries=0))
    assert metrics["tools_answered"] == 1
    assert metrics["volatile_tools"] == ([] if clock else ["clock/now"])
