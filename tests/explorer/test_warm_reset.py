"""Warm stateful servers: a sandbox folder restored in place after each DAG, and the processes of
`reset: files` servers kept running across DAGs, give exactly the calls fresh processes give."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, catalog_spec, installed
from firefly_exp import PROJECT_ROOT
from firefly_exp.explorer import Exploration, HeuristicProposer, explore, load_trajectories, settings_from_yaml
from firefly_exp.probe import probe_dags
from firefly_exp.sandbox import copy_sandbox, fingerprint, restore_sandbox, seed_sandbox, snapshot
from firefly_exp.servers import discover_tools, load_tools

# one of each kind of state: a git repo, a sqlite file (opened per query), a JSONL memory store
WARM = ("git", "sqlite", "memory")


def test_restore_brings_a_changed_sandbox_back_to_the_seeded_state(tmp_path):
    specs = [catalog_spec(s) for s in ("git", "sqlite", "filesystem", "memory")]
    template = tmp_path / "template"
    seed_sandbox(template, specs)
    manifest, seeded = snapshot(template), fingerprint(template)
    dest = copy_sandbox(template, tmp_path / "slot")
    (dest / "shop.db").write_bytes(b"not a database any more")           # changed
    (dest / "files" / "new" / "deep").mkdir(parents=True)                # added, nested
    (dest / "files" / "new" / "deep" / "x.txt").write_text("x")
    shutil.rmtree(dest / "repo" / ".git" / "refs")                       # deleted folder
    (dest / "memory.jsonl").unlink()                                     # deleted file
    (dest / ".logs").mkdir(exist_ok=True)
    (dest / ".logs" / "server.log").write_text("kept")                   # server logs stay
    assert fingerprint(dest) != seeded
    assert restore_sandbox(template, dest, manifest) > 0
    assert fingerprint(dest) == seeded
    assert (dest / ".logs" / "server.log").read_text() == "kept"
    assert restore_sandbox(template, dest, manifest) == 0                # nothing left to change


def _calls(out: Path) -> dict:
    """(DAG, step, attempt, tool, arguments) -> what the call returned, for every call of an exploration."""
    _, calls = load_trajectories(out)
    return {(c["dag_id"], c["step"], c["attempt"], c["tool"], json.dumps(c["arguments"], sort_keys=True)):
            (c["is_error"], json.dumps(c["content"], sort_keys=True), json.dumps(c["structured"], sort_keys=True))
            for c in calls}


@pytest.mark.servers
def test_warm_servers_answer_exactly_as_fresh_ones(tmp_path):
    """Every tool of git, sqlite and memory (writes included), run twice over on one warm slot, returns
    what it returns on a fresh process and a fresh sandbox: a warm server carries nothing across DAGs."""
    missing = [s for s in WARM if not installed(s)]
    if missing:
        pytest.skip(f"servers not installed: {missing} (make servers)")
    specs = {s: catalog_spec(s) for s in WARM}
    assert all(spec.get("reset") == "files" for spec in specs.values())
    discover_tools(list(specs.values()), PROJECT_ROOT / ".servers", tmp_path / "disc", tmp_path)
    tools = load_tools(tmp_path)
    once = probe_dags(tools)
    # pass 1 runs on the warm slot and processes after every tool of pass 0 ran there; the cold run
    # gives each DAG a fresh process and sandbox (DAG ids alike: the proposer's choices follow them)
    twice = [{**d, "id": f"{d['id']}#{p}", "index": p * len(once) + d["index"]} for p in (0, 1) for d in once]
    results = {}
    for warm in (False, True):
        out = tmp_path / f"warm-{warm}"
        out.mkdir()
        settings = settings_from_yaml(concurrency=1 if warm else 3, warm_stateful=warm)
        metrics = explore(twice, Exploration(tools, specs, PROJECT_ROOT / ".servers", tmp_path / f"sb-{warm}",
                                             settings, 0, HeuristicProposer()), out)
        results[warm] = _calls(out)
        if warm:  # one process per server, reused by every other DAG
            assert metrics["warm_starts"] == len(WARM)
            assert metrics["warm_reuses"] == len(twice) - len(WARM)
    cold, warm = results[False], results[True]
    assert sum(not err for err, *_ in cold.values()) > len(once)
    writes = {key[3] for key in cold if key[3] in ("git_commit", "git_add", "git_create_branch", "write_query",
                                                   "create_table", "create_entities", "add_observations",
                                                   "delete_entities")}
    assert len(writes) >= 4, writes   # state-changing tools ran, so leftovers would show
    assert warm.keys() == cold.keys()
    assert [k for k in cold if warm[k] != cold[k]] == []


@pytest.mark.parametrize("reset", ["restart", "always", "files"])
def test_in_memory_state_and_the_reset_modes(tmp_path, reset):
    """A server with state in memory only (tests/fixtures/counter_server.py): `restart` keeps its process
    across read-only DAGs and replaces it after a DAG that changed it; `always` starts one per DAG;
    `files` (wrong for such a server) would carry the change over, which is what the modes are for."""
    import sys

    spec = {"id": "counter", "command": sys.executable, "args": [str(FIXTURES / "counter_server.py")],
            "registry": "pypi", "stateful": True, "reset": reset}
    discover_tools([spec], tmp_path, tmp_path / "disc", tmp_path)
    tools = load_tools(tmp_path)
    assert dict(zip(tools["tool"], tools["read_only"])) == {"counter/bump": False, "counter/get_count": True}
    plan = [["counter/get_count"], ["counter/get_count"], ["counter/bump", "counter/get_count"], ["counter/get_count"]]
    dags = [{"id": f"d{i}", "index": i, "nodes": nodes, "edges": []} for i, nodes in enumerate(plan)]
    (tmp_path / "out").mkdir()
    explore(dags, Exploration(tools, {"counter": spec}, tmp_path, tmp_path / "sb", settings_from_yaml(concurrency=1),
                              0, HeuristicProposer()), tmp_path / "out")
    trajectories, calls = load_trajectories(tmp_path / "out")
    seen = [json.loads(c["content"][0]["text"]) for c in calls if c["tool"] == "get_count"]
    assert [s["count"] for s in seen[:3]] == [0, 0, 1]
    pids = [s["pid"] for s in seen]
    if reset == "restart":
        assert pids[0] == pids[1] == pids[2] != pids[3] and seen[3]["count"] == 0
    elif reset == "always":
        assert len(set(pids)) == 4 and seen[3]["count"] == 0
    else:
        assert len(set(pids)) == 1 and seen[3]["count"] == 1
