"""Every destructive tool of the default catalog (and, `slow`, of the full one), explored live: nothing
outside the sandbox changes; no server sees a secret of our environment.

Snapshots (paths, sizes, mtimes, content hashes) of the project tree (less outputs/, .servers/, .git
and caches) and the top level of HOME, taken before and after exploring one DAG per non-read-only
tool of every server in conf/servers/default.yaml with the catalog's hints; no real /sandbox may
appear (an unmapped path), and no new /tmp entry may carry a name the calls or seeds used. /tmp is
shared with every other process of the machine, so other new entries there are only printed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import installed
from firefly_exp import PROJECT_ROOT
from firefly_exp.explorer import Exploration, HeuristicProposer, explore, load_trajectories, settings_from_yaml
from firefly_exp.sandbox import fingerprint
from firefly_exp.servers import discover_tools, load_tools

pytestmark = pytest.mark.servers

_SKIP_DIRS = {"outputs", ".servers", ".git", "__pycache__", ".pytest_cache", ".venv"}


def _file_state(path: Path) -> tuple:
    st = path.lstat()
    if path.is_symlink():
        return ("link", os.readlink(path))
    return ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = _file_state(path)
    return out


def _top_level(root: Path) -> dict[str, tuple]:
    out = {}
    for entry in root.iterdir():
        try:
            out[entry.name] = _file_state(entry) if entry.is_file() or entry.is_symlink() else ("dir",)
        except OSError:  # vanished meanwhile, or unreadable: another process's business
            continue
    return out


def _snapshot() -> dict:
    return {"project": _tree(PROJECT_ROOT), "home": _top_level(Path.home()), "tmp": _top_level(Path("/tmp")),
            "root_sandbox": Path("/sandbox").exists()}


def _diff(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def _strings(value, path=""):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, path)


def _servers_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(PROJECT_ROOT / "conf/servers/catalog.yaml"),
                                                  OmegaConf.load(PROJECT_ROOT / f"conf/servers/{name}.yaml")))


def test_destructive_tools_change_nothing_outside_the_sandbox(tmp_path):
    _explore_every_destructive_tool("default", tmp_path, {"git", "sqlite", "mcp-sqlite", "filesystem",
                                                          "text-editor", "memory"}, min_success=0.8)


@pytest.mark.slow
def test_full_catalog_destructive_tools_change_nothing_outside_the_sandbox(tmp_path):
    """The same guarantee for all 31 servers of conf/servers/full.yaml (minutes: `make test-all`)."""
    _explore_every_destructive_tool("full", tmp_path, {
        "git", "git-cyanheads", "sqlite", "dbhub-sqlite", "duckdb", "csv-database", "filesystem", "excel",
        "word", "powerpoint", "kglite", "todo", "memory-keeper", "basic-memory"}, min_success=0.5,
        make_target="make servers-full")


def _explore_every_destructive_tool(config: str, tmp_path: Path, must_cover: set[str], min_success: float,
                                    make_target: str = "make servers") -> None:
    cfg = _servers_config(config)
    missing = [s for s in cfg["enabled"] if not installed(s)]
    if missing:
        pytest.skip(f"servers not installed: {missing} (run `{make_target}`)")
    specs = {s: {**cfg["catalog"][s], "id": s} for s in cfg["enabled"]}
    install_dir = PROJECT_ROOT / ".servers"
    before = _snapshot()

    discover_tools(list(specs.values()), install_dir, tmp_path / "sb", tmp_path,
                   startup_timeout_s=cfg.get("startup_timeout_s", 30))
    tools = load_tools(tmp_path)
    destructive = tools.filter(~tools["read_only"])["tool"].to_list()
    assert len(destructive) >= 15 and {t.split("/")[0] for t in destructive} >= must_cover
    dags = [{"id": f"destroy-{i:02d}", "index": i, "nodes": [t], "edges": []} for i, t in enumerate(destructive)]
    # each destructive tool alone: no read appended after it (explorer.verify_writes)
    settings = settings_from_yaml(concurrency=3, max_retries=3, include_optional_prob=1.0, verify_writes=False,
                                  startup_timeout_s=cfg.get("startup_timeout_s", 30))
    metrics = explore(dags, Exploration(tools, specs, install_dir, tmp_path / "sb", settings, 0, HeuristicProposer()),
                      tmp_path / "explore")
    template_after = fingerprint(tmp_path / "sb" / "template")

    after = _snapshot()
    for part in ("project", "home"):
        assert not _diff(before[part], after[part]), f"changed outside the sandbox ({part}): {_diff(before[part], after[part])}"
    assert not after["root_sandbox"], "a server wrote to a real /sandbox: a path was not mapped"

    trajs, calls = load_trajectories(tmp_path / "explore")
    new_tmp = set(after["tmp"]) - set(before["tmp"])
    used = {Path(v).name for c in calls for _, v in _strings(c["arguments"])} | \
        {Path(str(step.get("write") or step.get("sqlite") or "x")).parts[0] for sp in specs.values()
         for step in sp.get("seed") or []} | {"sandbox", "home", "shop.db", "memory.jsonl"}
    assert not new_tmp & used, f"a server wrote to /tmp: {sorted(new_tmp & used)}"
    if new_tmp:
        print(f"new in /tmp meanwhile (other processes of this machine): {sorted(new_tmp)}")
    called = {c["server"] + "/" + c["tool"] for c in calls}
    assert called == set(destructive)                       # every destructive tool was really called
    succeeded = {c["server"] + "/" + c["tool"] for c in calls if not c["is_error"]}
    assert len(succeeded) >= min_success * len(destructive), sorted(set(destructive) - succeeded)
    assert metrics["errors_crash"] == 0 and metrics["dags"] == len(dags)
    # each DAG ran on its own copy: the seeded template is what it was before any destructive call
    from firefly_exp.sandbox import seed_sandbox
    seed_sandbox(tmp_path / "fresh", list(specs.values()))
    assert template_after == fingerprint(tmp_path / "fresh")


# ------------------------------------------------------------------------------- environment

_SECRET = "sk-firefly-test-secret-0123456789"


def test_servers_get_only_their_declared_environment(monkeypatch):
    """No server is handed our environment: only HOME/TMPDIR in its sandbox, its declared `env` and the
    SDK's PATH/USER/SHELL/TERM/LOGNAME; a secret in ours never reaches it."""
    from mcp.client.stdio import get_default_environment

    from firefly_exp.mcp_client import QUIET_ENV, STABLE_ENV, clock_env, launch_parameters

    monkeypatch.setenv("OPENAI_API_KEY", _SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", _SECRET)
    cfg = _servers_config("full")
    checked = 0
    for sid, entry in cfg["catalog"].items():
        spec = {**entry, "id": sid}
        if not installed(sid):
            continue
        params = launch_parameters(spec, PROJECT_ROOT / ".servers", Path("/tmp/firefly-env-check"))
        # the quiet switches only turn registry update checks and banners off; the stable ones pin TZ and hashing;
        # an entry with a `clock` gets libfaketime's switches (the instant, not ours)
        clock = set(clock_env(spec["clock"])) if spec.get("clock") else set()
        assert set(params.env) <= {"HOME", "TMPDIR", *QUIET_ENV, *STABLE_ENV, *(spec.get("env") or {}), *clock}, sid
        assert _SECRET not in repr(params.env), sid
        checked += 1
    assert checked >= 10
    assert _SECRET not in repr(get_default_environment())


def test_everything_get_env_reveals_no_secret(tmp_path, monkeypatch):
    """@modelcontextprotocol/server-everything's get-env returns its whole environment: ours must not be in it."""
    import asyncio

    from firefly_exp.mcp_client import ServerHandle

    if not installed("everything"):
        pytest.skip("server 'everything' is not installed (run `make servers-full`)")
    monkeypatch.setenv("OPENAI_API_KEY", _SECRET)
    spec = {**_servers_config("full")["catalog"]["everything"], "id": "everything"}

    async def call() -> str:
        async with ServerHandle(spec, PROJECT_ROOT / ".servers", tmp_path / "sb") as server:
            return (await server.call("get-env", {})).text()

    text = asyncio.run(call())
    assert '"PATH"' in text and "/sandbox/home" in text     # it did print its environment, paths virtual
    assert _SECRET not in text and "OPENAI_API_KEY" not in text
