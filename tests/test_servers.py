"""The server catalog and its install (pins, the install check), sandbox seeding, and the installed
servers themselves.

Tests marked ``servers`` launch the real MCP servers: run ``python -m firefly_exp.install`` (or
``make servers``) first; a server that is not installed is skipped with a message saying so.
``test_every_hint_succeeds`` (also ``slow``) calls every hinted tool of every enabled server on a
freshly seeded sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from firefly_exp.install import check_installed, command_path, load_catalog, pypi_fingerprint
from firefly_exp.mcp_client import VIRTUAL_ROOT, ServerHandle
from firefly_exp.sandbox import SeedError, copy_sandbox, fingerprint, seed_sandbox
from firefly_exp.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]
INSTALL_DIR = Path(os.environ.get("FIREFLY_SERVERS_DIR", ROOT / ".servers"))
CATALOG = load_catalog(ROOT / "conf" / "servers" / "catalog.yaml")
ENABLED = list(OmegaConf.load(ROOT / "conf" / "servers" / "default.yaml").enabled)
SMOKE = list(OmegaConf.load(ROOT / "conf" / "servers" / "smoke.yaml").enabled)

# one call per server whose result must show seeded (or well-known) content
CHECKS: dict[str, tuple[str, dict, list[str]]] = {
    "time": ("convert_time", {"source_timezone": "America/New_York", "time": "16:30",
                              "target_timezone": "Asia/Tokyo"}, ["Asia/Tokyo", "+14.0h"]),
    "time-node": ("convert_time", {"sourceTimezone": "Europe/London", "targetTimezone": "America/Los_Angeles",
                                   "time": "2025-06-01 09:00:00"}, ["2025-06-01 01:00:00"]),
    "calculator": ("calculate", {"expression": "(17 * 23) / 4 + 2**10"}, ["1121.75"]),
    "unit-converter": ("convert_length", {"value": 26.2, "from_unit": "mile", "to_unit": "kilometer"}, ["42.16"]),
    "git": ("git_log", {"repo_path": "/sandbox/repo"}, ["Add changelog", "Initial commit"]),
    "sqlite": ("read_query", {"query": "SELECT name, city FROM customers ORDER BY id LIMIT 3"},
               ["Ada", "London", "Chen"]),
    "mcp-sqlite": ("read_records", {"table": "customers", "conditions": {"city": "Oslo"}}, ["Bo", "Freya"]),
    "filesystem": ("read_text_file", {"path": "/sandbox/files/docs/hello.txt"}, ["second line"]),
    "text-editor": ("get_text_file_contents",
                    {"files": [{"file_path": "/sandbox/files/docs/notes.md", "ranges": [{"start": 1, "end": None}]}]},
                    ["Oslo warehouse", "/sandbox/files/docs/notes.md"]),
    "memory": ("read_graph", {}, ["Charles Babbage", "wrote programs for"]),
}


def installed(spec: dict) -> bool:
    return command_path(spec, INSTALL_DIR).exists()


def require_installed(spec: dict) -> None:
    if not installed(spec):
        pytest.skip(f"server '{spec['id']}' is not installed in {INSTALL_DIR}: "
                    f"run `python -m firefly_exp.install {spec['id']}`")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One sandbox seeded for every catalog server, as an exploration seeds it."""
    root = tmp_path_factory.mktemp("template") / "sandbox"
    seed_sandbox(root, list(CATALOG.values()))
    return root


# ------------------------------------------------------------------------------------ catalog

def test_catalog_shape():
    assert len(CATALOG) >= 10
    assert len({spec["domain"] for spec in CATALOG.values()}) >= 6
    keys = {"package", "version", "registry", "domain", "stateful", "command", "args", "env", "seed",
            "hints", "volatile_tools", "read_only_tools"}
    for sid, spec in CATALOG.items():
        assert keys <= set(spec), f"{sid} lacks {keys - set(spec)}"
        assert spec["registry"] in ("pypi", "npm"), sid
        if spec["registry"] == "pypi":
            assert spec.get("python"), sid
            pypi_fingerprint(spec)
        assert not any(ch in str(spec["version"]) for ch in "^~<>*= "), f"{sid}: pin an exact version"
        for key, values in spec["hints"].items():
            assert isinstance(values, list) and values, f"{sid}.hints.{key} must be a non-empty list"
    assert set(ENABLED) <= set(CATALOG) and set(SMOKE) <= set(CATALOG)
    assert any(CATALOG[s]["stateful"] for s in SMOKE)


def test_npm_pins_match_manifest():
    for spec in CATALOG.values():
        if spec["registry"] == "npm":
            group = spec.get("npm_group") or "npm"
            manifest = json.loads((ROOT / "servers" / group / "package.json").read_text())
            lock = json.loads((ROOT / "servers" / group / "package-lock.json").read_text())
            assert manifest["dependencies"].get(spec["package"]) == spec["version"], spec["id"]
            assert lock["packages"][f"node_modules/{spec['package']}"]["version"] == spec["version"], spec["id"]


def test_zip_seed_step_is_byte_identical_and_readable(tmp_path):
    """Office files seeded as zipped XML: the same bytes on every seeding, members as written."""
    import zipfile

    excel = CATALOG["excel"]
    seed_sandbox(tmp_path / "a", [excel])
    seed_sandbox(tmp_path / "b", [excel])
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")
    xlsx = tmp_path / "a" / "files" / "office" / "sales.xlsx"
    with zipfile.ZipFile(xlsx) as archive:
        assert archive.namelist()[0] == "[Content_Types].xml"
        assert "Widget" in archive.read("xl/worksheets/sheet1.xml").decode()
    with pytest.raises(SeedError, match="members"):
        seed_sandbox(tmp_path / "c", [{"id": "bad", "seed": [{"zip": "x.zip", "members": {"a": 1}}]}])


def test_default_servers_install_apart_from_the_full_catalog():
    """`make servers` (the default list) never installs a full-catalog-only server, nor its npm group."""
    full = list(OmegaConf.load(ROOT / "conf" / "servers" / "full.yaml").enabled)
    assert set(ENABLED) < set(full) and set(full) <= set(CATALOG) and len(full) >= 30
    assert all((CATALOG[s].get("npm_group") or "npm") == "npm" for s in ENABLED)
    default_npm = json.loads((ROOT / "servers" / "npm" / "package.json").read_text())["dependencies"]
    assert set(default_npm) == {CATALOG[s]["package"] for s in ENABLED if CATALOG[s]["registry"] == "npm"}


@pytest.mark.parametrize("group", sorted(p.name for p in (ROOT / "servers").iterdir() if p.is_dir()))
def test_committed_npm_locks_are_in_sync_with_the_catalog(group):
    """What `npm ci` checks before it installs (the full catalog's lock once fell out of sync and
    `make servers-full` failed on a fresh machine): the lock's root holds exactly the manifest's pins,
    each locked at that version, and the manifest pins every catalog entry of the group at its version."""
    from firefly_exp.install import pinned_manifest

    manifest = json.loads((ROOT / "servers" / group / "package.json").read_text())
    lock = json.loads((ROOT / "servers" / group / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == manifest["dependencies"]
    for package, version in manifest["dependencies"].items():
        assert lock["packages"][f"node_modules/{package}"]["version"] == version, package
    entries = [s for s in CATALOG.values() if s.get("registry") == "npm" and (s.get("npm_group") or "npm") == group]
    assert entries and pinned_manifest(manifest, group, entries) == manifest   # the installer would write nothing


def test_no_hints_experiment_drops_every_hand_written_help(config):
    """+experiment=no_hints: the default servers with package, command, env and seed only."""
    hinted = load_settings(config()).servers.specs()
    bare = load_settings(config("+experiment=no_hints")).servers.specs()
    assert set(bare) == set(hinted) and any(s["hints"] for s in hinted.values())
    for sid, spec in bare.items():
        assert spec["hints"] == {} and spec["init_calls"] == [] and spec["always_fill"] == []
        assert {k: v for k, v in spec.items() if k not in ("hints", "init_calls", "always_fill")} == \
            {k: v for k, v in hinted[sid].items() if k not in ("hints", "init_calls", "always_fill")}


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


def test_install_check_catches_a_server_that_dies_at_import(tmp_path, capsys, monkeypatch):
    """Installed is not started: a server whose import fails is FAILED with its stderr's last line, a
    working one passes and is remembered, and the installer's exit status names the failure."""
    import sys

    from firefly_exp import install

    fixtures = Path(__file__).parent / "fixtures"
    broken = {"id": "broken", "registry": "pypi", "command": sys.executable, "args": [str(fixtures / "dies_at_import.py")]}
    working = {"id": "counter", "registry": "pypi", "command": sys.executable, "args": [str(fixtures / "counter_server.py")]}
    out = install.smoke_check([broken, working], tmp_path)
    ok, why = out["broken"]
    assert not ok and "ImportError: cannot import name 'model_validator'" in why and "\n" not in why
    assert out["counter"][0] and out["counter"][1].endswith("tools")
    record = json.loads((tmp_path / install.STARTED).read_text())
    assert set(record) == {"counter"}                               # a failure is never remembered as passed
    again = install.smoke_check([broken, working], tmp_path)        # the passed check is not repeated
    assert "checked before" in again["counter"][1] and not again["broken"][0]
    # through the installer's command line (the install itself stubbed: both entries are local scripts)
    monkeypatch.setattr(install, "install_pypi", lambda spec, install_dir: ("installed", "0"))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(json.dumps({"catalog": {s["id"]: {k: v for k, v in s.items() if k != "id"}
                                               for s in (broken, working)}}))
    code = install.main(["--catalog", str(catalog), "--install-dir", str(tmp_path), "--recheck"])
    printed = capsys.readouterr()
    assert code == 1 and "install failed for 1 server(s): broken" in printed.err
    assert "broken" in printed.out and "does not start: ImportError" in printed.out


def test_servers_config_composes():
    from hydra import compose, initialize_config_dir

    if not OmegaConf.has_resolver("firefly.root"):
        OmegaConf.register_new_resolver("firefly.root", lambda: str(ROOT))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[]) if _full_config_composes() else None
    if cfg is None:  # other groups still missing: compose the servers group on its own
        paths = OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml")
        servers = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "servers" / "catalog.yaml"),
                                  OmegaConf.load(ROOT / "conf" / "servers" / "default.yaml"))
        servers.pop("defaults")
        cfg = OmegaConf.create({"paths": paths, "servers": servers})
    assert cfg.servers.catalog.git.command == "{env}/bin/mcp-server-git"
    assert cfg.servers.install_dir == str(ROOT / ".servers")
    assert list(cfg.servers.enabled) == ENABLED
    assert cfg.servers.catalog["text-editor"].seed == cfg.servers.catalog.filesystem.seed


def _full_config_composes() -> bool:
    from hydra import compose

    try:
        compose(config_name="config")
        return True
    except Exception:  # noqa: BLE001 - another stage's group is not written yet
        return False


# ------------------------------------------------------------------------------------ sandbox

def test_seeding_is_deterministic(tmp_path):
    specs = list(CATALOG.values())
    seed_sandbox(tmp_path / "a", specs)
    seed_sandbox(tmp_path / "b", specs)
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")
    assert (tmp_path / "a" / "home").is_dir()
    head = (tmp_path / "a" / "repo" / ".git" / "refs" / "heads" / "main").read_text()
    assert head == (tmp_path / "b" / "repo" / ".git" / "refs" / "heads" / "main").read_text()
    (tmp_path / "b" / "files" / "docs" / "hello.txt").write_text("changed\n")
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "b")


def test_fingerprint_ignores_home_and_logs(tmp_path):
    seed_sandbox(tmp_path, [CATALOG["memory"]])
    before = fingerprint(tmp_path)
    (tmp_path / "home" / ".cache").mkdir()
    (tmp_path / ".logs").mkdir()
    (tmp_path / ".logs" / "memory.stderr.log").write_text("noise")
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("step", [
    {"write": "../escape.txt", "text": "x"},
    {"write": "/etc/owned", "text": "x"},
    {"mkdir": "files/../../up"},
    {"sqlite": "~/db.sqlite", "sql": "SELECT 1"},
    {"run": ["true"], "cwd": "../"},
])
def test_escaping_seed_step_is_rejected(tmp_path, step):
    spec = {"id": "evil", "seed": [step]}
    with pytest.raises(SeedError, match=r"server 'evil' seed step 1 .*(escapes|outside)"):
        seed_sandbox(tmp_path / "sb", [spec])
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "up").exists()


def test_symlink_escape_is_rejected(tmp_path):
    (tmp_path / "sb").mkdir()
    (tmp_path / "sb" / "link").symlink_to(tmp_path)
    with pytest.raises(SeedError, match="outside the sandbox"):
        seed_sandbox(tmp_path / "sb", [{"id": "evil", "seed": [{"write": "link/x.txt", "text": "x"}]}])


def test_malformed_and_conflicting_steps(tmp_path):
    with pytest.raises(SeedError, match="exactly one of"):
        seed_sandbox(tmp_path / "a", [{"id": "s", "seed": [{"write": "a", "mkdir": "b", "text": ""}]}])
    with pytest.raises(SeedError, match="exited with"):
        seed_sandbox(tmp_path / "b", [{"id": "s", "seed": [{"run": ["false"]}]}])
    one = {"id": "one", "seed": [{"write": "shared.txt", "text": "a"}]}
    two = {"id": "two", "seed": [{"write": "shared.txt", "text": "b"}]}
    with pytest.raises(SeedError, match="server 'two'.*already seeded differently by server 'one'"):
        seed_sandbox(tmp_path / "c", [one, two])
    same = {"id": "three", "seed": [{"write": "shared.txt", "text": "a"}]}
    seed_sandbox(tmp_path / "d", [one, same])  # identical shared content: seeded once
    assert (tmp_path / "d" / "shared.txt").read_text() == "a"


def test_shared_seeds_run_once(tmp_path):
    # sqlite + mcp-sqlite share shop.db, filesystem + text-editor share files/
    seed_sandbox(tmp_path, [CATALOG["sqlite"], CATALOG["mcp-sqlite"], CATALOG["filesystem"], CATALOG["text-editor"]])
    import sqlite3

    with sqlite3.connect(tmp_path / "shop.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 6


def test_copy_sandbox_keeps_content_and_links(tmp_path, template):
    (template.parent / "extra").mkdir(exist_ok=True)
    copy = copy_sandbox(template, tmp_path / "copy")
    assert fingerprint(copy) == fingerprint(template)
    (copy / "files" / "latest").symlink_to("docs/hello.txt")
    again = copy_sandbox(copy, tmp_path / "again")
    assert (again / "files" / "latest").is_symlink()
    assert os.readlink(again / "files" / "latest") == "docs/hello.txt"
    copy_sandbox(template, tmp_path / "again")  # replaces an existing copy
    assert not (tmp_path / "again" / "files" / "latest").exists()


# ------------------------------------------------------------------------------------ servers

async def _launch_and_check(spec: dict, sandbox: Path) -> None:
    tool, args, expected = CHECKS[spec["id"]]
    async with ServerHandle(spec, INSTALL_DIR, sandbox, startup_timeout_s=60, call_timeout_s=30) as server:
        tools = await server.list_tools()
        assert tools, f"{spec['id']} lists no tools"
        assert tool in {t["name"] for t in tools}
        outcome = await server.call(tool, args)
    text = outcome.text() + json.dumps(outcome.structured or "")
    assert not outcome.is_error, f"{spec['id']}.{tool}: {text[:500]}"
    for needle in expected:
        assert needle in text, f"{spec['id']}.{tool}: {needle!r} not in {text[:500]}"
    assert str(sandbox) not in text  # results show /sandbox, never the real path


@pytest.mark.servers
@pytest.mark.parametrize("sid", ENABLED)
def test_server_starts_and_answers(sid, tmp_path, template):
    spec = CATALOG[sid]
    require_installed(spec)
    assert sid in CHECKS, f"add a check for {sid} to CHECKS"
    sandbox = copy_sandbox(template, tmp_path / "sandbox")
    asyncio.run(_launch_and_check(spec, sandbox))


# --------------------------------------------------------------------------------- every hint

def hint_values(spec: dict, tool: str, param: str) -> list:
    hints = spec.get("hints") or {}
    return list(hints.get(f"{tool}.{param}") or hints.get(param) or [])


def hint_calls(spec: dict, tool: dict) -> list[dict] | str:
    """Argument sets that together use every hint of a tool once (or why it cannot be called)."""
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") or {}
    base = {}
    for name in schema.get("required") or []:
        values = hint_values(spec, tool["name"], name)
        prop = props.get(name, {})
        if values:
            base[name] = values[0]
        elif "default" in prop:
            base[name] = prop["default"]
        elif prop.get("enum"):
            base[name] = prop["enum"][0]
        else:
            return f"no hint for required parameter '{name}'"
    calls = [base]
    for name in props:
        for value in hint_values(spec, tool["name"], name):
            args = {**base, name: value}
            if args not in calls:
                calls.append(args)
    return calls


def read_only(spec: dict, tool: dict) -> bool:
    return tool["name"] in (spec.get("read_only_tools") or []) or \
        bool((tool.get("annotations") or {}).get("readOnlyHint"))


async def _every_hint(spec: dict, template: Path, work: Path) -> list[str]:
    """Call every hinted tool variant; a stateful server gets a fresh sandbox (and process) per call."""
    problems: list[str] = []
    sandbox = copy_sandbox(template, work / "sandbox")
    shared = await ServerHandle(spec, INSTALL_DIR, sandbox, startup_timeout_s=60).start()
    try:
        tools = await shared.list_tools()
        for tool in tools:
            calls = hint_calls(spec, tool)
            if isinstance(calls, str):
                problems.append(f"{tool['name']}: {calls}")
                continue
            for args in calls:
                if not spec["stateful"]:
                    outcome = await shared.call(tool["name"], args)
                    changed = False
                else:
                    sandbox = copy_sandbox(template, work / "sandbox-call")
                    before = fingerprint(sandbox)
                    async with ServerHandle(spec, INSTALL_DIR, sandbox, startup_timeout_s=60) as server:
                        outcome = await server.call(tool["name"], args)
                    changed = fingerprint(sandbox) != before
                if outcome.is_error:
                    problems.append(f"{tool['name']}({json.dumps(args)[:200]}): {outcome.text()[:300]}")
                elif read_only(spec, tool) and changed:
                    problems.append(f"{tool['name']} is marked read-only but changed the sandbox")
    finally:
        await shared.close()
    return problems


@pytest.mark.servers
@pytest.mark.slow
@pytest.mark.parametrize("sid", ENABLED)
def test_every_hint_succeeds(sid, tmp_path, template):
    spec = CATALOG[sid]
    require_installed(spec)
    problems = asyncio.run(_every_hint(spec, template, tmp_path))
    assert not problems, f"{sid}:\n  " + "\n  ".join(problems)


def test_hints_use_virtual_paths():
    for sid, spec in CATALOG.items():
        text = json.dumps(spec["hints"])
        assert "/tmp/" not in text and str(ROOT) not in text, sid
        for path in [v for v in _strings(spec["hints"]) if v.startswith("/")]:
            assert path == VIRTUAL_ROOT or path.startswith(VIRTUAL_ROOT + "/"), f"{sid}: {path}"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
