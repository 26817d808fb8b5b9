"""The content-addressed stage store: one folder per (stage, parameters, inputs, code).

A stage's address is a hash of its name, its resolved parameters, the addresses of the stages it
reads and the source of its module. ``manifest.json`` is written last: a folder without one is
unfinished (a stage may resume from what it holds) and a folder with one is reused as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short sha256 of a JSON-able object, independent of key order."""
    data = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:n]


def code_version(*objects: Any) -> str:
    """A hash of the source of the modules that implement a stage."""
    sources = [inspect.getsource(inspect.getmodule(o) or o) for o in objects]
    return stable_hash(sources)


class StageStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def address(self, stage: str, params: Any, inputs: dict[str, str], code: str) -> str:
        return stable_hash({"stage": stage, "params": params, "inputs": inputs, "code": code})

    def folder(self, stage: str, key: str) -> Path:
        path = self.root / stage / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest(self, folder: Path) -> dict | None:
        path = Path(folder) / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def finish(self, folder: Path, manifest: dict) -> None:
        write_json_atomic(Path(folder) / MANIFEST, manifest)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def write_jsonl(path: Path, records) -> int:
    """Write a whole JSONL artifact at once (temp file, one fsync, rename): for outputs that are
    complete only together, unlike the append-only records of :class:`JsonlWriter`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    n = 0
    with os.fdopen(fd, "w") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return n


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL record file, skipping a torn last line left by a killed writer."""
    rows = []
    if not Path(path).exists():
        return rows
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class JsonlWriter:
    """Append-only JSONL, flushed per record and fsynced per record (``fsync=True``) or on :meth:`sync`.

    Flushing hands each record to the OS, so killing the process loses nothing; fsync guards
    against a machine crash and costs milliseconds, so high-rate writers fsync per unit of work.
    """

    def __init__(self, path: Path, fsync: bool = True):
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._fh = open(self.path, "a")

    def _repair(self) -> None:
        # A process killed mid-write leaves a partial last line: cut it so appends stay valid.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def sync(self) -> None:
        """fsync what was written; no flush (every write flushed already), so another thread may call it."""
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created), released by the OS if the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
