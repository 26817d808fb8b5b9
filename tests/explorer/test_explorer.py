"""The exploration engine on the fixture server (tests/fixtures/flaky_server.py, a real stdio MCP server):
a server killed mid-run, a run killed and resumed, what a server's environment holds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import FIXTURES
from firefly_exp.explorer import ORDERED, Exploration, HeuristicProposer, explore, load_trajectories, settings_from_yaml
from firefly_exp.mcp_client import QUIET_ENV, STABLE_ENV, ServerHandle
from firefly_exp.servers import discover_tools, load_tools
from firefly_exp.store import read_jsonl

sys.path.insert(0, str(FIXTURES))
from explore_run import SPECS, dags  # noqa: E402


@pytest.fixture(scope="module")
def fixture_tools(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tools")
    discover_tools(list(SPECS.values()), folder, folder / "sb", folder)
    return folder


def _children_in(cwd: Path) -> list[int]:
    """Our child processes whose working directory is in ``cwd`` (the folder of the sandbox slots)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and Path(os.readlink(f"/proc/{entry}/cwd")).parent == cwd.resolve():
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_server_killed_mid_dag_is_restarted_and_the_dag_retried(tmp_path, fixture_tools):
    """SIGKILL a stateful server while its DAG naps: the run finishes, that DAG reruns on fresh
    servers and completes, a pooled server that crashes every time is restarted and its DAG recorded
    failed with the reason, and no other trajectory is lost."""
    tools = load_tools(fixture_tools)
    # the always-crashing tool gets its own pooled server: a shared one would also fail the calls of
    # concurrent DAGs (they would be retried too, which this test does not count on)
    crashy = tools.filter(tools["server"] == "pool").with_columns(
        tool=pl.col("tool").str.replace("pool/", "crashy/"), server=pl.lit("crashy"))
    tools = pl.concat([tools, crashy])
    nap = {"id": "dag-kill", "index": 1, "nodes": ["flaky/echo", "flaky/nap"], "edges": []}
    crash = {"id": "dag-crash", "index": 2, "nodes": ["crashy/crash"], "edges": []}
    others = [{"id": f"dag-ok{i}", "index": 10 + i, "nodes": ["pool/echo", "pool/nap"], "edges": []} for i in range(4)]
    specs = {k: {**v, "hints": {"text": ["hi"], "seconds": [1.5]}} for k, v in SPECS.items()}
    specs["crashy"] = {**specs["pool"], "id": "crashy"}
    out = tmp_path / "explore"
    result: dict = {}
    settings = settings_from_yaml(concurrency=3, call_timeout_s=10, dag_timeout_s=60, dag_retries=1)
    runner = threading.Thread(target=lambda: result.update(explore(
        [nap, crash, *others], Exploration(tools, specs, fixture_tools, tmp_path / "sb", settings, 0,
                                           HeuristicProposer()), out)))
    runner.start()
    killed, deadline = None, time.time() + 30
    while killed is None and time.time() < deadline:   # the first echo of dag-kill is on disk: it naps now
        if any(c["dag_id"] == "dag-kill" for c in read_jsonl(out / "calls.jsonl")):
            pids = _children_in(tmp_path / "sb" / "slots")   # dag-kill's is the one stateful server
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
        time.sleep(0.02)
    runner.join(90)
    assert killed and not runner.is_alive()
    trajs = {t["dag_id"]: t for t in read_jsonl(out / "trajectories.jsonl")}
    assert sorted(trajs) == sorted(d["id"] for d in [nap, crash, *others])   # nothing lost, nothing twice
    assert trajs["dag-kill"]["status"] == "complete"
    assert len(trajs["dag-kill"]["retries"]) == 1 and "crashed" in trajs["dag-kill"]["retries"][0]["reason"]
    assert trajs["dag-crash"]["status"] == "failed" and "crashed" in trajs["dag-crash"]["reason"]
    assert len(trajs["dag-crash"]["retries"]) == 1
    assert all(trajs[d["id"]]["status"] == "complete" for d in others)
    assert result["errors_crash"] >= 3 and result["pool_restarts"] >= 2 and result["dags_retried"] == 2
    assert result["dags_complete"] == 5 and result["dags_failed"] == 1


def _explore_process(tools: Path, out: Path, sandbox: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(FIXTURES / "explore_run.py"), str(tools), str(out), str(sandbox)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _content(folder: Path) -> list[tuple]:
    """What a run found, without episode ids, timings or scheduling order."""
    rows = []
    for line in (folder / ORDERED).read_text().splitlines():
        t = json.loads(line)
        rows.append((t["dag_id"], t["status"], [s["node"] for s in t["steps"]],
                     [(c["tool"], c["arguments"], c["content"], c["is_error"]) for c in t["calls"]]))
    return rows


def test_killed_run_resumes_to_the_same_trajectories(tmp_path, fixture_tools):
    """kill -9 the whole exploring process after a few trajectories, rerun it: the same trajectories
    as an uninterrupted run, none duplicated."""
    whole = _explore_process(fixture_tools, tmp_path / "whole", tmp_path / "sb-whole")
    assert whole.wait(120) == 0
    out = tmp_path / "cut"
    proc = _explore_process(fixture_tools, out, tmp_path / "sb-cut")
    deadline = time.time() + 60
    while len(read_jsonl(out / "trajectories.jsonl")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    partial = read_jsonl(out / "trajectories.jsonl")
    assert 3 <= len(partial) < len(dags()), "the kill came too late to interrupt anything"
    again = _explore_process(fixture_tools, out, tmp_path / "sb-cut")
    assert again.wait(120) == 0
    ids = [t["dag_id"] for t in read_jsonl(out / "trajectories.jsonl")]
    assert len(ids) == len(set(ids)) == len(dags())
    assert {t["episode"] for t in partial} <= {t["episode"] for t in load_trajectories(out)[0]}  # kept, not redone
    assert _content(out) == _content(tmp_path / "whole")


def test_server_sees_no_secrets_only_declared_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREFLY_TEST_SECRET", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    spec = {**SPECS["pool"], "env": {"DECLARED_FOR_SERVER": "yes {sandbox}"}}

    async def main():
        async with ServerHandle(spec, tmp_path, tmp_path / "sb") as server:
            assert server.pid and server.pid != os.getpid()
            return json.loads((await server.call("environ", {})).text())

    seen = asyncio.run(main())
    env = seen["env"]
    assert "FIREFLY_TEST_SECRET" not in env and "OPENAI_API_KEY" not in env
    assert "hunter2" not in json.dumps(seen) and "sk-test" not in json.dumps(seen)
    # results show the sandbox as /sandbox: the server's HOME, TMPDIR and cwd all lie inside it
    assert env["DECLARED_FOR_SERVER"] == "yes /sandbox"
    assert env["HOME"] == "/sandbox/home" and env["TMPDIR"] == "/sandbox/tmp" and seen["cwd"] == "/sandbox"
    assert set(env) <= {"HOME", "TMPDIR", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "DECLARED_FOR_SERVER",
                        "LC_CTYPE", "PWD", *QUIET_ENV, *STABLE_ENV}   # LC_CTYPE, PWD: set by Python / the process itself
    assert env["FASTMCP_CHECK_FOR_UPDATES"] == "off"   # no server asks a registry for updates


# -- the stage, its settings and the executor -----------------------------------------------------------


def _context(tmp_path: Path, install_dir: Path, runner, lm_model: str | None = None):
    """A run context holding what the explorer stage reads of the settings (seed, install folder, LM)."""
    from firefly_exp.settings import LMSettings, ServersSettings, Settings
    from firefly_exp.stage import RunContext

    settings = Settings.model_construct(seed=0, lm=LMSettings(model=lm_model),
                                        servers=ServersSettings.model_construct(install_dir=str(install_dir)))
    return RunContext(settings, tmp_path / "run", SPECS, None, runner)


def _stage_run(tmp_path: Path, fixture_tools: Path, runner, name: str) -> tuple[dict, Path]:
    from firefly_exp.explorer import STAGE
    from firefly_exp.stage import StageResult

    tools = load_tools(fixture_tools)
    inputs = {"sampler": StageResult("sampler", "k", tmp_path, {}, False, 0.0, dags()),
              "servers": StageResult("servers", "k", fixture_tools, {}, False, 0.0, tools)}
    out = tmp_path / name
    ctx = _context(tmp_path / f"ctx-{name}", fixture_tools, runner).for_stage(out)
    settings = settings_from_yaml(concurrency=2, call_timeout_s=10, dag_timeout_s=60)
    return STAGE.run(settings, inputs, ctx), out


def test_the_stage_explores_the_sampled_dags_as_explore_does(tmp_path, fixture_tools):
    """STAGE.run on the sampler's DAGs and the servers' tools (the local executor) finds what a direct
    explore() finds; STAGE.load gives (trajectories by DAG index, their calls)."""
    from firefly_exp.executor import Executor
    from firefly_exp.explorer import STAGE

    metrics, out = _stage_run(tmp_path, fixture_tools, Executor(), "stage")
    assert metrics["dags"] == metrics["dags_complete"] == len(dags())
    trajs, calls = STAGE.load(out, None)
    assert [t["index"] for t in trajs] == sorted(d["index"] for d in dags()) and len(calls) == metrics["calls"]
    whole = tmp_path / "whole"
    explore(dags(), Exploration(load_tools(fixture_tools), SPECS, fixture_tools, tmp_path / "sb-whole",
                                settings_from_yaml(concurrency=2, call_timeout_s=10, dag_timeout_s=60), 0,
                                HeuristicProposer()), whole)
    assert _content(out) == _content(whole)
    assert STAGE.inputs == ("sampler", "servers", "probe")   # the probe feeds what it learnt (values.Knowledge)


@pytest.mark.slow
def test_sharded_across_ray_workers_the_stage_finds_the_same(tmp_path, fixture_tools):
    """executor=ray (a local instance, 2 workers): the shards merged into the stage folder hold what
    the local executor's run holds (pytest -m slow)."""
    from firefly_exp.executor import Executor, RayExecutor

    ray = RayExecutor(num_workers=2)
    try:
        sharded, out = _stage_run(tmp_path, fixture_tools, ray, "ray")
    finally:
        ray.close()
    local, local_out = _stage_run(tmp_path, fixture_tools, Executor(), "local")
    assert sharded["shards"] == 2 and sorted(p.name for p in (out / "shards").iterdir()) == ["0", "1"]
    assert _content(out) == _content(local_out)
    assert {k: v for k, v in sharded.items() if k in ("dags", "dags_complete", "calls", "errors")} == \
        {k: v for k, v in local.items() if k in ("dags", "dags_complete", "calls", "errors")}


def test_explorer_settings_name_the_proposer_and_keep_runtime_fields_out_of_the_address(tmp_path):
    from pydantic import ValidationError

    from firefly_exp.explorer import STAGE
    from firefly_exp.settings import resolve

    heuristic, dspy = settings_from_yaml(), settings_from_yaml("dspy")
    assert isinstance(resolve(heuristic.proposer)(heuristic, None), HeuristicProposer)
    assert dspy.proposer == "programs.explorer.dspy_proposer" and dspy.concurrency == 2   # dspy.yaml over heuristic
    assert not {"concurrency", "keep_sandboxes", "warm_stateful", "warm_all"} & set(heuristic.store_params())
    with pytest.raises(ValidationError, match="no explorer proposer named 'nope'"):
        settings_from_yaml(proposer="nope")
    ctx = _context(tmp_path, tmp_path, None, lm_model="openai/some-model")
    assert STAGE.params(heuristic, ctx) == {"seed": 0, "lm": None}   # the LM is not what a heuristic run is
    assert STAGE.params(dspy, ctx) == {"seed": 0, "lm": {"model": "openai/some-model", "api_base": None}}


def test_the_executor_is_the_class_its_target_names():
    import yaml
    from pydantic import ValidationError

    from firefly_exp import PROJECT_ROOT
    from firefly_exp.executor import Executor, RayExecutor, make_executor
    from firefly_exp.settings import ExecutorSettings, resolve

    local = ExecutorSettings(**yaml.safe_load((PROJECT_ROOT / "conf/executor/local.yaml").read_text()))
    ray = ExecutorSettings(**yaml.safe_load((PROJECT_ROOT / "conf/executor/ray.yaml").read_text()))
    assert type(make_executor(local)) is Executor and make_executor(local).workers == 1
    assert resolve(ray.target) is RayExecutor and ray.kind == RayExecutor.kind
    with pytest.raises(ValidationError, match="runs kind 'ray', not 'local'"):
        ExecutorSettings(**{"_target_": "firefly_exp.executor.RayExecutor", "kind": "local"})
    with pytest.raises(ValidationError, match="no executor named"):
        ExecutorSettings(**{"_target_": "firefly_exp.executor.Dask", "kind": "local"})


def test_a_synthesis_job_chunk_travels_without_live_objects():
    import yaml

    from firefly_exp import PROJECT_ROOT
    from firefly_exp.synthesizer.shards import SynthesisJob, _chunk
    from firefly_exp.settings import SynthesizerSettings

    conf = yaml.safe_load((PROJECT_ROOT / "conf/synthesizer/template.yaml").read_text())
    trajs = [{"dag_id": f"d{i}", "episode": f"e{i}"} for i in range(4)]
    calls = [{"episode": f"e{i}", "seq": 0} for i in range(4)]
    job = SynthesisJob(trajs, calls, {}, object(), Path("sim"), None, 0, SynthesizerSettings(**conf),
                       writer=object(), judge=object(), live_check=print)
    part = _chunk(job, trajs[1:3])
    assert [t["dag_id"] for t in part.trajectories] == ["d1", "d2"]
    assert [c["episode"] for c in part.calls] == ["e1", "e2"] and part.recorded.trajectories == part.trajectories
    assert part.simulator is part.writer is part.judge is part.live_check is None and part.settings is job.settings
