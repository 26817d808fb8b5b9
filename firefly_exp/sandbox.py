"""The sandbox: one directory that every server of an exploration sees as ``/sandbox``.

Each catalog entry lists ``seed`` steps that put its data there (a git repo, a sqlite file, a
folder of documents, a memory store). Seeding is deterministic: the same specs give the same
bytes every time (fixed git identities and dates, no clocks), so recorded calls replay exactly.

Step kinds, each a one-key mapping plus options, paths relative to the sandbox root:

    {mkdir: rel}                               make a directory (and parents)
    {write: rel, text: "..."}                  write a UTF-8 text file (parents made)
    {sqlite: rel, sql: "script"}               run an SQL script with sqlite3.executescript
    {zip: rel, members: {name: "text", ...}}   write a zip archive of UTF-8 text members, in the
                                               order given, with a fixed date: Office files
                                               (.xlsx, .docx, .pptx are zipped XML) byte-identical
    {run: [argv...], cwd: rel, env: {...}}     run a program inside the sandbox

Servers that share data (two sqlite servers on one db file, filesystem + text-editor on one
folder) list the same steps; an identical step already run for another server is skipped, and a
different step writing the same path is an error, so shared data can never silently diverge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

STEP_KINDS = ("mkdir", "write", "sqlite", "zip", "run")

# Fixed identity and clock for every `run` step: git commits (and anything else that stamps an
# author or a date) come out byte-identical on every machine and every run.
FIXED_DATE = "2024-01-15T12:00:00+00:00"
DETERMINISTIC_ENV = {
    "GIT_AUTHOR_NAME": "Firefly Seed",
    "GIT_AUTHOR_EMAIL": "seed@firefly.invalid",
    "GIT_AUTHOR_DATE": FIXED_DATE,
    "GIT_COMMITTER_NAME": "Firefly Seed",
    "GIT_COMMITTER_EMAIL": "seed@firefly.invalid",
    "GIT_COMMITTER_DATE": FIXED_DATE,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "TZ": "UTC",
    "LC_ALL": "C",
    "LANG": "C",
    "SOURCE_DATE_EPOCH": "1705320000",
}

_ZIP_DATE = (2024, 1, 15, 12, 0, 0)

# Every seeded file and folder gets this mtime and atime (2026-01-01T00:00:00Z), so tools that report
# them (file info, a database's "last modified") answer the same in every run; restores keep it.
SEED_MTIME = 1767225600

# Left out of fingerprints: per-process scratch (HOME, server logs) and git's stat cache, which
# records inode numbers and ctimes and is rewritten by read-only commands such as `git status`.
_SKIP_TOP = {"home", "tmp", ".logs"}


class SeedError(ValueError):
    """A seed step is malformed, escapes the sandbox, conflicts with another, or failed."""


def _where(server: str, index: int, step: Any) -> str:
    return f"server '{server}' seed step {index + 1} ({json.dumps(step, default=str)[:120]})"


def _inside(root: Path, rel: Any, where: str) -> Path:
    """The real path of a sandbox-relative path; refuses absolute paths and `..`."""
    if not isinstance(rel, str) or not rel.strip():
        raise SeedError(f"{where}: path must be a non-empty relative string")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("~") or ".." in pure.parts:
        raise SeedError(f"{where}: path '{rel}' escapes the sandbox (use a relative path without '..')")
    path = root.joinpath(*pure.parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise SeedError(f"{where}: path '{rel}' resolves outside the sandbox (through a symlink)")
    return path


def _step_kind(step: Any, where: str) -> str:
    if not isinstance(step, dict):
        raise SeedError(f"{where}: a step must be a mapping with one of {', '.join(STEP_KINDS)}")
    kinds = [k for k in STEP_KINDS if k in step]
    if len(kinds) != 1:
        raise SeedError(f"{where}: a step needs exactly one of {', '.join(STEP_KINDS)}")
    return kinds[0]


def _plain(value: Any) -> Any:
    """OmegaConf containers (and tuples) to plain JSON-able Python."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a project dependency
        pass
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _run_env(root: Path, extra: dict | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "SANDBOX": str(root),
        **DETERMINISTIC_ENV,
    }
    for key, value in (extra or {}).items():
        env[str(key)] = str(value).replace("{sandbox}", str(root))
    return env


def seed_sandbox(root: Path, specs: list[dict], mtime: float | None = None) -> None:
    """Run every spec's ``seed`` steps into ``root`` (created, with ``root/home`` and ``root/tmp``, the
    servers' HOME and TMPDIR: a restored sandbox slot keeps them, so warm servers can still write there).
    Then every path's mtime and atime is set to ``mtime`` (default :data:`SEED_MTIME`): no clock of the
    seeding run reaches a result."""
    root = Path(root).absolute()
    (root / "home").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}  # canonical step -> server that ran it
    owner: dict[str, tuple[str, str]] = {}  # written path -> (canonical step, server)
    for spec in specs:
        server = str(spec.get("id", "?"))
        steps = _plain(spec.get("seed") or [])
        if not isinstance(steps, list):
            raise SeedError(f"server '{server}': seed must be a list of steps")
        for index, step in enumerate(steps):
            where = _where(server, index, step)
            kind = _step_kind(step, where)
            key = json.dumps(step, sort_keys=True)
            if key in done:
                continue  # the same data, already seeded for another server
            if kind in ("write", "sqlite", "zip"):
                rel = str(PurePosixPath(str(step[kind])))
                if rel in owner and owner[rel][1] != server and owner[rel][0] != key:
                    raise SeedError(
                        f"{where}: '{rel}' is already seeded differently by server "
                        f"'{owner[rel][1]}' (servers sharing a path must seed identical content)")
                owner[rel] = (key, server)
            _run_step(root, kind, step, where)
            done[key] = server
    pin_times(root, SEED_MTIME if mtime is None else mtime)


def pin_times(root: Path, when: float = SEED_MTIME) -> None:
    """Set the atime and mtime of ``root`` and of everything under it (symlinks themselves) to ``when``."""
    root = Path(root)
    ns = int(when * 1_000_000_000)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, followlinks=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(ns, ns))


def _run_step(root: Path, kind: str, step: dict, where: str) -> None:
    if kind == "mkdir":
        _inside(root, step["mkdir"], where).mkdir(parents=True, exist_ok=True)
    elif kind == "write":
        path = _inside(root, step["write"], where)
        if "text" not in step or not isinstance(step["text"], str):
            raise SeedError(f"{where}: a write step needs `text: <string>`")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(step["text"].encode("utf-8"))
    elif kind == "sqlite":
        path = _inside(root, step["sqlite"], where)
        if not isinstance(step.get("sql"), str):
            raise SeedError(f"{where}: a sqlite step needs `sql: <script>`")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        try:
            conn.executescript(step["sql"])
            conn.commit()
        except sqlite3.Error as exc:
            raise SeedError(f"{where}: sqlite failed: {exc}") from None
        finally:
            conn.close()
    elif kind == "zip":
        path = _inside(root, step["zip"], where)
        members = step.get("members")
        if not isinstance(members, dict) or not members or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in members.items()):
            raise SeedError(f"{where}: a zip step needs `members: {{name: text, ...}}` (text members)")
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as archive:
            for name, text in members.items():
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, text.encode("utf-8"))
    elif kind == "run":
        argv = step["run"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, (str, int, float)) for a in argv):
            raise SeedError(f"{where}: `run` needs a non-empty list of arguments")
        argv = [str(a).replace("{sandbox}", str(root)) for a in argv]
        cwd = _inside(root, step.get("cwd", "."), where)
        cwd.mkdir(parents=True, exist_ok=True)
        if shutil.which(argv[0], path=_run_env(root, None)["PATH"]) is None and not Path(argv[0]).exists():
            raise SeedError(f"{where}: program '{argv[0]}' is not installed")
        try:
            proc = subprocess.run(argv, cwd=cwd, env=_run_env(root, step.get("env")),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=float(step.get("timeout_s", 60)))
        except subprocess.TimeoutExpired:
            raise SeedError(f"{where}: timed out") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise SeedError(f"{where}: exited with {proc.returncode}: {tail[0][:200]}")


def copy_sandbox(template: Path, dest: Path) -> Path:
    """A fresh copy of a seeded sandbox (symlinks kept as links); ``dest`` is replaced."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, dest, symlinks=True)
    return dest


def _skipped(rel: PurePosixPath) -> bool:
    if rel.parts and rel.parts[0] in _SKIP_TOP:
        return True
    # git's stat cache (inode numbers, ctimes) and lock files change without any content change
    return ".git" in rel.parts[:-1] and rel.name in ("index", "index.lock")


def fingerprint(root: Path) -> str:
    """sha256 over relative paths, kinds and bytes of everything in the sandbox.

    Skips ``home/``, ``tmp/`` and ``.logs/`` (per-process scratch) and ``.git/index`` (a stat cache that
    read-only git commands rewrite). Equal fingerprints mean equal content.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if _skipped(rel):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            if path.is_symlink():
                digest.update(b"L\0" + str(rel).encode() + b"\0" + os.readlink(path).encode() + b"\0")
            elif path.is_dir():
                digest.update(b"D\0" + str(rel).encode() + b"\0")
            elif path.is_file():
                digest.update(b"F\0" + str(rel).encode() + b"\0")
                file_digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        file_digest.update(chunk)
                digest.update(file_digest.digest())
    return digest.hexdigest()


def snapshot(root: Path) -> dict[str, tuple]:
    """What :func:`restore_sandbox` compares against: relative path -> kind, size and mtime (ns) of a
    file, mtime (ns) of a folder."""
    root = Path(root)
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            kind = "L" if path.is_symlink() else "D" if path.is_dir() else "F"
            entries[rel] = ((kind, st.st_size, st.st_mtime_ns) if kind == "F" else
                            (kind, st.st_mtime_ns) if kind == "D" else (kind,))
    return entries


def restore_sandbox(template: Path, dest: Path, manifest: dict[str, tuple] | None = None,
                    keep: tuple[str, ...] = (".logs",)) -> int:
    """Put ``dest`` (a copy of ``template`` some tool calls have changed) back into the template's state
    in place: changed files are copied over, added ones deleted, deleted ones brought back.

    Servers keep running in ``dest`` meanwhile (warm servers whose state lives only in these files),
    so it is updated path by path rather than replaced. A file whose size and mtime (ns) equal the
    template's (``copy2`` keeps both) is unchanged. ``keep``: top-level folders left alone (server logs).
    Returns the number of paths changed.
    """
    template, dest = Path(template), Path(dest)
    manifest = snapshot(template) if manifest is None else manifest
    current = snapshot(dest)
    changed = 0
    # first what is not in the template (deepest first), or is there as another kind
    for rel in sorted(current, key=lambda r: -r.count("/")):
        if rel.split("/")[0] in keep:
            continue
        want = manifest.get(rel)
        if want is not None and want[0] == current[rel][0]:
            continue
        path = dest / rel
        if current[rel][0] == "D" and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        changed += 1
    for rel in sorted(manifest, key=lambda r: r.count("/")):  # parents before children
        want = manifest[rel]
        if current.get(rel) == want:   # a removed folder's children are never in the template
            continue
        src, path = template / rel, dest / rel
        if want[0] == "D":
            path.mkdir(parents=True, exist_ok=True)
            continue
        if want[0] == "L":
            if not path.is_symlink():
                path.symlink_to(os.readlink(src))
                changed += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, path)   # the same bytes and mtime as the template
        changed += 1
    # folders last (adding or removing an entry stamps its folder with the clock): the template's mtimes
    for rel, want in [("", ("D", Path(template).stat().st_mtime_ns))] + list(manifest.items()):
        if want[0] == "D" and len(want) > 1 and (not rel or rel.split("/")[0] not in keep):
            path = dest / rel
            try:
                if path.lstat().st_mtime_ns != want[1]:
                    os.utime(path, ns=(want[1], want[1]), follow_symlinks=False)
            except OSError:
                pass
    return changed
