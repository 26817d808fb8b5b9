"""Install the catalog's MCP servers, each in its own environment, offline-runnable afterwards.

    python -m firefly_exp.install                 # every server in conf/servers/catalog.yaml
    python -m firefly_exp.install git sqlite      # just these
    python -m firefly_exp.install --config smoke  # the `enabled` list of conf/servers/smoke.yaml

PyPI servers get one virtual environment each (``<install_dir>/pypi/<id>``, the interpreter the
entry asks for), made with ``uv`` when it is available and ``venv`` + ``pip`` otherwise: their
pins of ``mcp``, ``fastmcp`` and ``pydantic`` conflict, so they never share one. npm servers all
go into ``<install_dir>/npm`` from the committed, locked manifest ``servers/npm/`` (``npm ci``).

Installs are idempotent: each prefix gets ``.firefly-installed.json`` holding a hash of what was
installed, written last, and a later run skips every prefix whose hash still matches.

Installed is not enough: each server is then started once in a throwaway seeded sandbox and asked for
its tools (:func:`smoke_check`). A server that dies (an ``ImportError`` from a too-new dependency, a
missing native module) is reported FAILED with the last line of its stderr, and the install exits 1
naming every failed server. A passed check is remembered in ``<install_dir>/.firefly-started.json``
(per server, with a hash of the install and the launch entry) and not repeated until either changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from firefly_exp.mcp_client import expand, install_prefix, npm_group

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "conf" / "servers" / "catalog.yaml"
NPM_MANIFEST = ROOT / "servers" / "npm"
MARKER = ".firefly-installed.json"
STARTED = ".firefly-started.json"
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 120

_print_lock = threading.Lock()


class InstallError(RuntimeError):
    """One server could not be installed; the message says why in one line."""


def _say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def load_catalog(path: Path = CATALOG) -> dict[str, dict]:
    """The catalog as plain dicts, each with its ``id``."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    catalog = raw.get("catalog", raw)
    return {key: {**entry, "id": key} for key, entry in catalog.items()}


def enabled_ids(config: str) -> list[str]:
    """The ``enabled`` list of ``conf/servers/<config>.yaml``."""
    from omegaconf import OmegaConf

    return list(OmegaConf.load(ROOT / "conf" / "servers" / f"{config}.yaml").get("enabled") or [])


# --------------------------------------------------------------------------------------- helpers

def _run(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"`{' '.join(argv[:3])} ...` timed out after {INSTALL_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines
        raise InstallError(f"`{' '.join(argv[:4])} ...` failed: {' | '.join(errors[-3:])[:400]}")
    return proc.stdout


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _read_marker(prefix: Path) -> dict:
    try:
        return json.loads((prefix / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _write_marker(prefix: Path, data: dict) -> None:
    tmp = prefix / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(prefix / MARKER)


def command_path(spec: dict, install_dir: Path) -> Path:
    """The server's executable as installed under ``install_dir`` (exists once it is installed)."""
    return Path(expand(spec["command"], env=str(install_prefix(spec, install_dir)), sandbox="/nonexistent",
                       servers=str(Path(install_dir).absolute())))


def find_uv() -> str | None:
    """The ``uv`` executable: next to this interpreter, on PATH, or from the ``uv`` package."""
    here = Path(sys.executable).parent / "uv"
    if here.exists():
        return str(here)
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # type: ignore

        return find_uv_bin()
    except Exception:  # noqa: BLE001 - not installed, or a broken install: fall back to pip
        return None


def _pyenv_python(version: str) -> str | None:
    """A pyenv-installed python<version> even when `pyenv global` does not enable it."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = sorted(root.glob(f"{version}.*/bin/python{version}"),
                   key=lambda p: [int(x) if x.isdigit() else -1 for x in p.parts[-3].split(".")])
    return str(found[-1]) if found else None


def find_python(version: str) -> str:
    """The real executable of ``python<version>`` (pyenv shims resolved)."""
    reasons = []
    for candidate in (shutil.which(f"python{version}"), _pyenv_python(version)):
        if candidate is None:
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.executable)"], capture_output=True,
                                 text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(str(exc))
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
        reasons.append(" ".join((out.stderr or "").split())[:160])
    raise InstallError(f"python{version} is not available"
                       + (f" ({reasons[0]})" if reasons else "")
                       + f": install it (e.g. `pyenv install {version}`) or change `python:` in the catalog")


# ------------------------------------------------------------------------------------------ PyPI

def pypi_fingerprint(spec: dict) -> dict:
    """What an installed PyPI server depends on; hints, seeds and args may change freely."""
    return {"registry": "pypi", "package": spec["package"], "version": str(spec["version"]),
            "python": str(spec.get("python", "3.11")), "requirements": list(spec.get("requirements") or [])}


def install_pypi(spec: dict, install_dir: Path) -> tuple[str, str]:
    """(status, installed version) for one PyPI server."""
    prefix = install_prefix(spec, install_dir)
    want = _digest(pypi_fingerprint(spec))
    if _read_marker(prefix).get("hash") == want and command_path(spec, install_dir).exists():
        return "up to date", _read_marker(prefix).get("version", "?")
    python = find_python(str(spec.get("python", "3.11")))
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    wanted = [f"{spec['package']}=={spec['version']}", *[str(r) for r in spec.get("requirements") or []]]
    uv = find_uv()
    venv_python = str(prefix / "bin" / "python")
    if uv:
        env = {**os.environ, "UV_NO_PROGRESS": "1", "VIRTUAL_ENV": ""}
        env.pop("VIRTUAL_ENV")
        _run([uv, "venv", "--quiet", "--python", python, str(prefix)], env=env)
        _run([uv, "pip", "install", "--quiet", "--python", venv_python, *wanted], env=env)
    else:
        _run([python, "-m", "venv", str(prefix)])
        _run([venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted])
    command = command_path(spec, install_dir)
    if not command.exists():
        raise InstallError(f"installed, but its command {command} is missing (check `command` in the catalog)")
    version = _run([venv_python, "-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
                    spec["package"]]).strip()
    if version != str(spec["version"]):
        raise InstallError(f"asked for {spec['version']} but {version} was installed")
    _write_marker(prefix, {"hash": want, "version": version, "spec": pypi_fingerprint(spec),
                           "installer": "uv" if uv else "pip", "installed_at": time.time()})
    return "installed", version


# ------------------------------------------------------------------------------------------- npm

def _npm_versions(prefix: Path, specs: list[dict]) -> dict[str, str]:
    versions = {}
    for spec in specs:
        meta = prefix / "node_modules" / spec["package"] / "package.json"
        try:
            versions[spec["id"]] = json.loads(meta.read_text())["version"]
        except (OSError, ValueError, KeyError):
            versions[spec["id"]] = "?"
    return versions


def pinned_manifest(manifest: dict | None, group: str, specs: list[dict]) -> dict:
    """The group's ``package.json``: the committed one (its other entries kept: helper packages,
    ``allowScripts``) with every spec's package pinned at the catalog's version; a new one when none.

    >>> pinned_manifest(None, "npm-extra", [{"package": "time-mcp", "version": "1.0.6"}])["dependencies"]
    {'time-mcp': '1.0.6'}
    >>> old = {"name": "x", "dependencies": {"b": "1", "a": "0.1"}}
    >>> pinned_manifest(old, "npm", [{"package": "a", "version": "0.2"}])["dependencies"]
    {'a': '0.2', 'b': '1'}
    """
    out = dict(manifest or {"name": f"firefly-exp-{group}-servers", "private": True,
                            "description": f"The {group} MCP servers of conf/servers/catalog.yaml, pinned; written "
                                           f"by `python -m firefly_exp.install`, installed with `npm ci`."})
    deps = dict(out.get("dependencies") or {})
    deps.update({s["package"]: str(s["version"]) for s in specs})
    out["dependencies"] = dict(sorted(deps.items()))
    return out


def install_npm(specs: list[dict], install_dir: Path, manifest_dir: Path | None = None) -> dict[str, tuple[str, str]]:
    """Install npm servers of one group into its prefix; {id: (status, version)} (raises for all).

    The group (``npm_group`` of the specs, default ``npm``) names both the prefix
    ``<install_dir>/<group>`` and the committed manifest ``servers/<group>/``. A spec the manifest
    does not pin (a new catalog entry, a changed version) is pinned there (:func:`pinned_manifest`) and
    the lock regenerated (``npm install --package-lock-only``), to be committed; then ``npm ci``.
    """
    group = npm_group(specs[0]) if specs else "npm"
    manifest_dir = Path(manifest_dir) if manifest_dir is not None else ROOT / "servers" / group
    prefix = Path(install_dir) / group
    manifest_path, lock_path = manifest_dir / "package.json", manifest_dir / "package-lock.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    manifest = pinned_manifest(old, group, specs)
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise InstallError("node/npm are not on PATH")
    if manifest != old or not lock_path.exists():
        # one catalog entry is enough: its group's manifest and lock are written here (commit them)
        manifest_dir.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        _run([npm, "install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
             cwd=manifest_dir, env={**os.environ, "npm_config_update_notifier": "false"})
        shown = manifest_dir.relative_to(ROOT) if manifest_dir.is_relative_to(ROOT) else manifest_dir
        _say(f"  wrote {shown}/package.json and package-lock.json for the catalog's {group} servers: commit both")
    node_version = _run([node, "--version"]).strip()
    lock = lock_path.read_bytes() if lock_path.exists() else b""
    want = _digest({"manifest": manifest_path.read_text(), "lock": hashlib.sha256(lock).hexdigest(),
                    "node": node_version})
    marker = _read_marker(prefix)
    if marker.get("hash") == want and all(command_path(s, install_dir).exists() for s in specs):
        versions = _npm_versions(prefix, specs)
        return {s["id"]: ("up to date", versions[s["id"]]) for s in specs}
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / MARKER).unlink(missing_ok=True)
    shutil.copyfile(manifest_path, prefix / "package.json")
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false", "PUPPETEER_SKIP_DOWNLOAD": "1"}
    if lock:
        shutil.copyfile(lock_path, prefix / "package-lock.json")
        _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=prefix, env=env)
    else:
        _run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=prefix, env=env)
    versions = _npm_versions(prefix, specs)
    outcome: dict[str, tuple[str, str]] = {}
    for spec in specs:
        if not command_path(spec, install_dir).exists():
            outcome[spec["id"]] = (f"FAILED: installed, but its command {command_path(spec, install_dir)} is missing", "?")
        elif versions[spec["id"]] != str(spec["version"]):
            outcome[spec["id"]] = (f"FAILED: asked for {spec['version']} but {versions[spec['id']]} was installed", "?")
        else:
            outcome[spec["id"]] = ("installed", versions[spec["id"]])
    _write_marker(prefix, {"hash": want, "node": node_version, "versions": versions,
                           "installed_at": time.time()})
    return outcome


# ------------------------------------------------------------------------------------ smoke check

def _launch_digest(spec: dict, install_dir: Path) -> str:
    """What a started server depends on: its install marker and its launch entry (not its hints)."""
    launch = {k: spec.get(k) for k in ("command", "args", "env", "seed", "init_calls", "package", "version")}
    return _digest({"launch": launch, "installed": _read_marker(install_prefix(spec, install_dir)).get("hash")})


def _last_stderr_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


async def _start_and_list(spec: dict, install_dir: Path, sandbox: Path) -> int:
    from firefly_exp.mcp_client import ServerHandle
    from firefly_exp.sandbox import seed_sandbox

    seed_sandbox(sandbox, [spec])
    handle = ServerHandle(spec, install_dir, sandbox, START_TIMEOUT_S, START_TIMEOUT_S, log_dir=sandbox / ".logs")
    try:
        await handle.start()
        return len(await handle.list_tools())
    finally:
        await handle.close()


def smoke_start(spec: dict, install_dir: Path) -> tuple[int | None, str]:
    """Start one installed server in a throwaway seeded sandbox and list its tools: (its number of tools,
    "") when it starts and lists some, else (None, why not, with the last line of its stderr)."""
    import asyncio
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"firefly-start-{spec['id']}-") as tmp:
        sandbox = Path(tmp) / "sandbox"
        try:
            n = asyncio.run(_start_and_list(spec, Path(install_dir), sandbox))
        except Exception as exc:  # noqa: BLE001 - any failure to start is the finding
            last = _last_stderr_line(sandbox / ".logs" / f"{spec['id']}.stderr.log")
            why = last or " ".join(str(exc).split())[:300]
            return None, f"installed, but it does not start: {why}"
    if n == 0:
        return None, "installed and started, but it lists no tools"
    return n, ""


def smoke_check(specs: list[dict], install_dir: Path, jobs: int = 3, force: bool = False) -> dict[str, tuple[bool, str]]:
    """:func:`smoke_start` for every spec whose passed check is not remembered (``force``: all);
    {id: (ok, detail)}. Passed checks are written to ``<install_dir>/.firefly-started.json``."""
    install_dir = Path(install_dir).absolute()
    record_path = install_dir / STARTED
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    out: dict[str, tuple[bool, str]] = {}
    todo = []
    for spec in specs:
        digest = _launch_digest(spec, install_dir)
        known = record.get(spec["id"]) or {}
        if not force and known.get("hash") == digest:
            out[spec["id"]] = (True, f"{known.get('tools')} tools (checked before)")
        else:
            todo.append((spec, digest))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for (spec, digest), (n, why) in zip(todo, pool.map(lambda t: smoke_start(t[0], install_dir), todo)):
            out[spec["id"]] = (n is not None, f"{n} tools" if n is not None else why)
            if n is not None:
                record[spec["id"]] = {"hash": digest, "tools": n}
            else:
                record.pop(spec["id"], None)
    if todo:
        install_dir.mkdir(parents=True, exist_ok=True)
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(record_path)
    return out


# -------------------------------------------------------------------------------------- together

def install_servers(specs: list[dict], install_dir: Path, jobs: int = 3, check: bool = True,
                    force_check: bool = False) -> dict[str, str]:
    """Install every spec (PyPI in parallel, npm as one job), then start each installed one once
    (:func:`smoke_check`, unless ``check`` is false); {id: status}, never raises for one server.

    A status is ``installed``, ``up to date`` or ``FAILED: <reason>``; one line per server is printed.
    """
    install_dir = Path(install_dir).absolute()
    install_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, str] = {}
    started = time.perf_counter()

    def report(sid: str, status: str, version: str, seconds: float) -> None:
        status = " ".join(status.split())  # one line per server
        results[sid] = status
        shown = status if status.startswith("FAILED") else f"{status} ({version})"
        _say(f"  {sid:<18} {shown}  [{seconds:.1f}s]")

    def pypi_job(spec: dict) -> None:
        t0 = time.perf_counter()
        try:
            status, version = install_pypi(spec, install_dir)
        except Exception as exc:  # noqa: BLE001 - one server's failure must not stop the others
            status, version = f"FAILED: {exc}", "?"
        report(spec["id"], status, version, time.perf_counter() - t0)

    def npm_job(group: list[dict]) -> None:
        t0 = time.perf_counter()
        try:
            outcome = install_npm(group, install_dir)
        except Exception as exc:  # noqa: BLE001
            outcome = {s["id"]: (f"FAILED: {exc}", "?") for s in group}
        for spec in group:
            status, version = outcome[spec["id"]]
            report(spec["id"], status, version, time.perf_counter() - t0)

    by_registry: dict[str, list[dict]] = {}
    for spec in specs:
        by_registry.setdefault(spec.get("registry", "?"), []).append(spec)
    _say(f"installing {len(specs)} MCP server(s) into {install_dir} "
         f"({'uv' if find_uv() else 'venv + pip'} for PyPI, {max(1, jobs)} at a time)")
    for registry, group in by_registry.items():
        if registry not in ("pypi", "npm"):
            for spec in group:
                report(spec["id"], f"FAILED: unknown registry '{registry}' (pypi | npm)", "?", 0.0)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = []
        npm_groups: dict[str, list[dict]] = {}
        for spec in by_registry.get("npm", []):
            npm_groups.setdefault(npm_group(spec), []).append(spec)
        for group in npm_groups.values():
            futures.append(pool.submit(npm_job, group))  # the longest jobs go first
        futures += [pool.submit(pypi_job, spec) for spec in by_registry.get("pypi", [])]
        for future in futures:
            future.result()
    if check:
        ready = [spec for spec in specs if not results[spec["id"]].startswith("FAILED")]
        _say(f"starting {len(ready)} installed server(s) once to list their tools")
        for sid, (ok, detail) in smoke_check(ready, install_dir, jobs=jobs, force=force_check).items():
            if not ok:
                results[sid] = f"FAILED: {detail}"
            _say(f"  {sid:<18} {'started: ' + detail if ok else 'FAILED: ' + detail}")
    failed = [sid for sid, status in results.items() if status.startswith("FAILED")]
    _say(f"{len(results) - len(failed)}/{len(results)} server(s) ready in {time.perf_counter() - started:.1f}s"
         + (f"; FAILED: {', '.join(sorted(failed))}" if failed else ""))
    return results


def ensure_faketime(specs: list[dict]) -> bool:
    """Install libfaketime (Debian package ``faketime``) when an entry stops its clock (``clock``) and it is
    missing, where this machine allows (root or password-less sudo, apt-get); else one line saying the run
    will use the real clock. True when it is there."""
    from .mcp_client import faketime_lib

    if not any(s.get("clock") for s in specs) or faketime_lib():
        return True
    apt = shutil.which("apt-get")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt and sudo is not None:
        for argv in ([*sudo, apt, "install", "-y", "-q", "--no-install-recommends", "faketime"],
                     [*sudo, apt, "update", "-q"],
                     [*sudo, apt, "install", "-y", "-q", "--no-install-recommends", "faketime"]):
            try:
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            except (OSError, subprocess.TimeoutExpired):
                break
            if faketime_lib():
                print("installed libfaketime (apt-get install faketime): clock-reading servers answer the same "
                      "on every run")
                return True
    print("warning: libfaketime is missing and could not be installed (apt-get install faketime): servers with "
          "a `clock` will run on the real clock, their clock reads volatile", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firefly_exp.install", description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="catalog ids to install (default: every catalog entry)")
    parser.add_argument("--all", action="store_true", help="every catalog entry (the default without ids)")
    parser.add_argument("--config", help="install the `enabled` list of conf/servers/<CONFIG>.yaml")
    parser.add_argument("--install-dir", type=Path, default=ROOT / ".servers",
                        help="where environments go (default: <project>/.servers)")
    parser.add_argument("--jobs", type=int, default=3, help="installs run in parallel (default 3)")
    parser.add_argument("--no-check", action="store_true", help="do not start each server once after installing")
    parser.add_argument("--recheck", action="store_true", help="start every server again, even one checked before")
    parser.add_argument("--catalog", type=Path, default=CATALOG, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    catalog = load_catalog(args.catalog)
    ids = list(catalog) if args.all else (args.ids or (enabled_ids(args.config) if args.config else list(catalog)))
    unknown = [i for i in ids if i not in catalog]
    if unknown:
        parser.error(f"unknown server id(s): {', '.join(unknown)} (catalog has: {', '.join(catalog)})")
    ensure_faketime([catalog[i] for i in ids])
    results = install_servers([catalog[i] for i in ids], args.install_dir, jobs=args.jobs, check=not args.no_check,
                              force_check=args.recheck)
    failed = sorted(sid for sid, status in results.items() if status.startswith("FAILED"))
    if failed:   # one failed server fails the install (make servers-full used to exit 0 with 7 of 31 failed)
        print(f"install failed for {len(failed)} server(s): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


def check_installed(specs: dict[str, dict], install_dir: Path) -> None:
    """A one-line error naming the enabled servers that are not installed, and the command that installs them."""
    from .settings import ConfigError

    missing = [sid for sid, spec in specs.items() if not command_path(spec, install_dir).exists()]
    if not missing:
        return
    target = "make servers" if set(missing) <= set(enabled_ids("default")) else "make servers-full"
    raise ConfigError(f"{len(missing)} enabled server(s) not installed in {install_dir}: {', '.join(missing)}: "
                      f"run `{target}` (or `python -m firefly_exp.install {' '.join(missing)}`)")
