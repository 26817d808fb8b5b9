"""The one way this project launches and talks to an MCP server.

A server is described by its catalog entry (``conf/servers/catalog.yaml``). It is launched over
stdio with the official ``mcp`` client, with ``cwd`` and ``HOME`` inside a sandbox directory and
only the environment it declares. Paths inside the sandbox are shown to everything else as
``/sandbox/...`` (:data:`VIRTUAL_ROOT`): arguments are mapped to real paths on the way in and
results back to virtual ones on the way out, so recorded calls do not depend on where a run lives.

    async with ServerHandle(spec, install_dir, sandbox) as server:
        outcome = await server.call("git_log", {"repo_path": "/sandbox/repo"})
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIRTUAL_ROOT = "/sandbox"

# Some servers print banners on stdout (time-mcp, office-word); the SDK skips those lines but logs a
# full traceback for each. They are harmless: keep the log readable.
logging.getLogger("mcp.client.stdio").setLevel(logging.CRITICAL)


# Servers run offline and from a fresh HOME, where no "last checked" stamp survives: without these,
# every FastMCP server start asks PyPI for a newer FastMCP and draws a banner, and npm's
# update-notifier asks the registry too.
QUIET_ENV = {"FASTMCP_CHECK_FOR_UPDATES": "off", "FASTMCP_SHOW_SERVER_BANNER": "false", "NO_UPDATE_NOTIFIER": "1"}

# The same on every machine and in every process, unless a catalog entry says otherwise: local times
# in UTC, and a fixed string hash for Python servers (set and dict-of-hash order, hash()-based ids).
STABLE_ENV = {"TZ": "UTC", "PYTHONHASHSEED": "0"}

# A catalog entry's `clock` (an instant, UTC) stops the server's clock there with libfaketime
# (Debian package `faketime`): its clock reads answer the same on every run. Only the wall clock is
# stopped; the monotonic clock runs, so the server's timers and event loop work.
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1")


def faketime_lib() -> str | None:
    """The libfaketime found on this machine (``FIREFLY_FAKETIME_LIB`` first), or None."""
    for path in (os.environ.get("FIREFLY_FAKETIME_LIB"), *FAKETIME_LIBS):
        if path and Path(path).is_file():
            return path
    return None


def clock_env(instant: str) -> dict[str, str]:
    """The environment that stops a process's wall clock at ``instant`` ("YYYY-MM-DD HH:MM:SS", UTC); none
    without libfaketime (the run's settings then drop ``clock`` and say so: ServersSettings.specs)."""
    lib = faketime_lib()
    if lib is None:
        return {}
    return {"LD_PRELOAD": lib, "FAKETIME": instant, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "DONT_FAKE_MONOTONIC": "1"}


class ServerStartError(RuntimeError):
    """A server could not be launched or did not answer ``initialize``."""


@dataclass
class CallOutcome:
    """What one ``tools/call`` produced, in plain JSON-able form."""

    content: list[dict]
    structured: Any
    is_error: bool
    error_kind: str | None  # None, "tool_error", "timeout", "crash", "protocol"
    latency_ms: float

    def text(self) -> str:
        return "\n".join(c.get("text", "") for c in self.content if c.get("type") == "text")


def expand(value: Any, **places: str) -> Any:
    """Fill ``{env}``/``{sandbox}``-style placeholders in strings, lists and dicts."""
    if isinstance(value, str):
        for key, real in places.items():
            value = value.replace("{" + key + "}", real)
        return value
    if isinstance(value, (list, tuple)):
        return [expand(v, **places) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, **places) for k, v in value.items()}
    return value


def npm_group(spec: dict) -> str:
    """The npm prefix (and manifest ``servers/<group>/``) an npm server installs into.

    ``npm`` for the default catalog; servers only the full catalog uses declare
    ``npm_group: npm-full`` so that installing the default set never installs (or removes) them.
    """
    return str(spec.get("npm_group") or "npm")


def install_prefix(spec: dict, install_dir: Path) -> Path:
    """Where a server's own environment lives: a venv per PyPI server, one prefix per npm group."""
    if spec["registry"] == "npm":
        return Path(install_dir) / npm_group(spec)
    return Path(install_dir) / "pypi" / spec["id"]


def to_real(value: Any, sandbox: Path) -> Any:
    """Map ``/sandbox/...`` strings inside arguments to the real sandbox path."""
    if isinstance(value, str):
        if value == VIRTUAL_ROOT or value.startswith(VIRTUAL_ROOT + "/"):
            return str(sandbox) + value[len(VIRTUAL_ROOT):]
        return value.replace("file://" + VIRTUAL_ROOT, "file://" + str(sandbox))
    if isinstance(value, list):
        return [to_real(v, sandbox) for v in value]
    if isinstance(value, dict):
        return {k: to_real(v, sandbox) for k, v in value.items()}
    return value


def real_prefixes(sandbox: Path) -> tuple[str, ...]:
    """The spellings of a sandbox's real path (as given, symlinks resolved), longest first."""
    return tuple(sorted({str(sandbox), os.path.realpath(sandbox)}, key=len, reverse=True))


def to_virtual(value: Any, sandbox: Path, reals: tuple[str, ...] | None = None) -> Any:
    """Map real sandbox paths inside results back to ``/sandbox``.

    ``reals`` (from :func:`real_prefixes`) saves resolving the sandbox path again: a handle computes
    it once, since realpath costs a syscall per path component on every call.
    """
    if reals is None:
        reals = real_prefixes(sandbox)
    if isinstance(value, str):
        for real in reals:
            if real in value:
                value = value.replace(real, VIRTUAL_ROOT)
        return value
    if isinstance(value, list):
        return [to_virtual(v, sandbox, reals) for v in value]
    if isinstance(value, dict):
        return {to_virtual(k, sandbox, reals): to_virtual(v, sandbox, reals) for k, v in value.items()}
    return value


def launch_parameters(spec: dict, install_dir: Path, sandbox: Path):
    """StdioServerParameters for a catalog entry: command, args, cwd and a minimal environment."""
    from mcp import StdioServerParameters

    install_dir, sandbox = Path(install_dir).absolute(), Path(sandbox).absolute()
    places = {"env": str(install_prefix(spec, install_dir)), "sandbox": str(sandbox),
              "servers": str(Path(install_dir).absolute())}
    command = expand(spec["command"], **places)
    if not Path(command).exists():
        raise ServerStartError(
            f"server '{spec['id']}' is not installed ({command} is missing): run `make servers`"
        )
    # HOME and TMPDIR inside the sandbox: whatever a server writes "to its home" or to a temp file
    # stays in the sandbox; the SDK adds only PATH, USER, SHELL, TERM, LOGNAME (no API keys)
    env = {"HOME": str(Path(sandbox) / "home"), "TMPDIR": str(Path(sandbox) / "tmp"), **QUIET_ENV, **STABLE_ENV}
    env.update({k: str(v) for k, v in expand(dict(spec.get("env") or {}), **places).items()})
    if spec.get("clock"):
        env.update(clock_env(str(spec["clock"])))
    return StdioServerParameters(
        command=command, args=[str(a) for a in expand(list(spec.get("args") or []), **places)],
        env=env, cwd=str(sandbox),
    )


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(by_alias=True, mode="json", exclude_none=True)
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj   # parsed from JSON-RPC already (structured content): no copy needed
    return json.loads(json.dumps(obj, default=str))


def _child_pid(command: str, cwd: str) -> int | None:
    """The pid of our child process running ``command`` in ``cwd`` (the SDK does not expose it).

    Reads /proc (Linux); elsewhere None. ``cwd`` is unique per DAG sandbox and ``command`` per server,
    so the pair names one process.
    """
    me = os.getpid()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != me or os.readlink(f"/proc/{entry}/cwd") not in (cwd, os.path.realpath(cwd)):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
            if command in argv:
                return int(entry)
        except (OSError, ValueError, IndexError):
            continue
    return None


@dataclass
class ServerHandle:
    """A live MCP server session, owned by its own task so it can be used from any other.

    anyio requires a stdio client to be opened and closed in the same task; the handle runs the
    session in a background task and lets callers send requests through it.
    """

    spec: dict
    install_dir: Path
    sandbox: Path
    startup_timeout_s: float = 30.0
    call_timeout_s: float = 20.0
    log_dir: Path | None = None
    server_info: dict = field(default_factory=dict)
    session: Any = None
    _task: asyncio.Task | None = None
    _stop: asyncio.Event | None = None
    _failure: BaseException | None = None
    _pid: int | None = None
    _command: str | None = None
    _listed: bool = False

    def __post_init__(self) -> None:
        # the server runs with cwd=sandbox: relative paths would resolve against the wrong folder
        self.install_dir = Path(self.install_dir).absolute()
        self.sandbox = Path(self.sandbox).absolute()
        self._reals = real_prefixes(self.sandbox)

    @property
    def id(self) -> str:
        return self.spec["id"]

    async def start(self) -> "ServerHandle":
        params = launch_parameters(self.spec, self.install_dir, self.sandbox)
        self._command = params.command
        Path(self.sandbox, "home").mkdir(parents=True, exist_ok=True)
        Path(self.sandbox, "tmp").mkdir(parents=True, exist_ok=True)
        ready = asyncio.Event()
        self._stop = asyncio.Event()
        log_dir = Path(self.log_dir or Path(self.sandbox) / ".logs")
        log_dir.mkdir(parents=True, exist_ok=True)

        async def run() -> None:
            from mcp import ClientSession, stdio_client

            try:
                with open(log_dir / f"{self.id}.stderr.log", "a") as errlog:
                    async with stdio_client(params, errlog=errlog) as (read, write):
                        async with ClientSession(read, write) as session:
                            init = await session.initialize()
                            self.server_info = _jsonable(init.server_info)
                            await self._init_calls(session)
                            self.session = session
                            ready.set()
                            await self._stop.wait()
            except BaseException as exc:  # noqa: BLE001 - reported to the caller of start()/call()
                self._failure = exc
            finally:
                self.session = None
                ready.set()

        self._task = asyncio.create_task(run())
        try:
            await asyncio.wait_for(ready.wait(), self.startup_timeout_s)
        except asyncio.TimeoutError:
            await self.close()
            raise ServerStartError(
                f"server '{self.id}' did not answer initialize within {self.startup_timeout_s}s: "
                f"see {log_dir}/{self.id}.stderr.log, or raise servers.startup_timeout_s"
            ) from None
        if self.session is None:
            raise ServerStartError(
                f"server '{self.id}' failed to start ({type(self._failure).__name__}: {self._failure}): "
                f"see {log_dir}/{self.id}.stderr.log"
            )
        return self

    async def _init_calls(self, session) -> None:
        """The catalog's ``init_calls``: state a server keeps only in memory, set up after each start.

        E.g. tree-sitter's registered project or powerpoint's open presentation: every process of the
        server starts from the same state, as a seeded sandbox gives files. Not recorded as calls.
        """
        for step in self.spec.get("init_calls") or []:
            result = await asyncio.wait_for(
                session.call_tool(step["tool"], to_real(dict(step.get("arguments") or {}), self.sandbox)),
                self.startup_timeout_s)
            if result.is_error:
                text = " ".join(str(getattr(c, "text", "")) for c in result.content)[:200]
                raise ServerStartError(f"server '{self.id}' init call {step['tool']} failed: {text}")

    @property
    def pid(self) -> int | None:
        """The server process's id (Linux, while it runs), looked up on first use: for kills and tests."""
        if self._pid is None and self.alive and self._command:
            self._pid = _child_pid(self._command, str(self.sandbox))
        return self._pid

    @property
    def alive(self) -> bool:
        return self.session is not None and self._task is not None and not self._task.done()

    async def responsive(self, timeout_s: float = 3.0) -> bool:
        """Whether the server still answers a ping: tells a hung server from a slow tool."""
        if not self.alive:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await self.session.send_ping()
            return True
        except Exception:  # noqa: BLE001 - timeouts and broken pipes alike
            return False

    async def list_tools(self) -> list[dict]:
        tools, cursor = [], None
        while True:
            from mcp import types

            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await asyncio.wait_for(self.session.list_tools(params=params), self.call_timeout_s)
            tools.extend(_jsonable(t) for t in page.tools)
            cursor = getattr(page, "next_cursor", None)
            if not cursor:
                return tools

    async def call(self, tool: str, arguments: dict, timeout_s: float | None = None) -> CallOutcome:
        """Call a tool with virtual-path arguments; never raises for server-side trouble."""
        timeout = timeout_s or self.call_timeout_s
        started = time.perf_counter()
        if not self.alive:
            return CallOutcome([{"type": "text", "text": f"server '{self.id}' is not running"}],
                               None, True, "crash", 0.0)
        try:
            if not self._listed:
                # the SDK validates results against the listed output schemas and, for a tool it has
                # not seen listed, re-lists the tools before every call: with a paginated listing
                # (chuk-math's 642 tools) only the first page, so every later-page call re-listed
                # it. One full listing per process fills the SDK's cache.
                await self.list_tools()
                self._listed = True
                started = time.perf_counter()
            # asyncio.timeout, not wait_for: no extra task per call (the engine's per-call overhead)
            async with asyncio.timeout(timeout):
                result = await self.session.call_tool(tool, to_real(arguments, self.sandbox))
        except TimeoutError:
            return CallOutcome([{"type": "text", "text": f"timed out after {timeout}s"}], None, True,
                               "timeout", (time.perf_counter() - started) * 1000)
        except Exception as exc:  # noqa: BLE001 - JSON-RPC errors, broken pipes, bad results
            closed = "connection closed" in str(exc).lower() or isinstance(exc, (BrokenPipeError, EOFError))
            if closed:
                self.session = None  # the process is gone: callers restart it
            kind = "crash" if closed or not self.alive else "protocol"
            return CallOutcome([{"type": "text", "text": f"{type(exc).__name__}: {exc}"}], None, True,
                               kind, (time.perf_counter() - started) * 1000)
        latency = (time.perf_counter() - started) * 1000
        content = to_virtual([_jsonable(c) for c in result.content], self.sandbox, self._reals)
        structured = to_virtual(_jsonable(result.structured_content), self.sandbox, self._reals) \
            if result.structured_content is not None else None
        is_error = bool(result.is_error)
        return CallOutcome(content, structured, is_error, "tool_error" if is_error else None, latency)

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                self._task.cancel()
        self.session = None

    async def __aenter__(self) -> "ServerHandle":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()
