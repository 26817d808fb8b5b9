"""The simulator's optional last resort: run a call on the real server, in a fresh sandbox in which
the episode's state-changing calls so far have been replayed first (local servers only)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from ..mcp_client import ServerHandle, ServerStartError
from ..sandbox import copy_sandbox, seed_sandbox


class LiveFallback:
    def __init__(self, specs: dict[str, dict], install_dir: Path, workdir: Path | None = None,
                 call_timeout_s: float = 15.0, startup_timeout_s: float = 30.0):
        self.specs, self.install_dir = specs, Path(install_dir)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="firefly-live-"))
        self.template = self.workdir / "template"
        self.call_timeout_s, self.startup_timeout_s = call_timeout_s, startup_timeout_s
        self.executed = 0

    @classmethod
    def for_run(cls, ctx, name: str) -> "LiveFallback":
        """The fallback of a run (``ctx``: its :class:`~firefly_exp.stage.RunContext`): its enabled servers
        and timeouts, working in ``<run>/sandbox/<name>``."""
        servers = ctx.settings.servers
        return cls(ctx.specs, ctx.install_dir, ctx.sandbox_root / name, servers.call_timeout_s,
                   servers.startup_timeout_s)

    def _ensure_template(self) -> None:
        if not self.template.exists():
            seed_sandbox(self.template, list(self.specs.values()))

    async def _run(self, server: str, tool: str, arguments: dict, prefix: list[dict]) -> dict:
        self._ensure_template()
        sandbox = Path(tempfile.mkdtemp(dir=self.workdir, prefix="call-"))
        shutil.rmtree(sandbox)
        copy_sandbox(self.template, sandbox)
        needed = sorted({server} | {m["server"] for m in prefix})
        handles = {}
        try:
            for sid in needed:
                handles[sid] = await ServerHandle(self.specs[sid], self.install_dir, sandbox, self.startup_timeout_s,
                                                  self.call_timeout_s).start()
            for m in prefix:  # the episode's writes, in order, so the call sees the same state
                await handles[m["server"]].call(m["tool"], m["arguments"])
            out = await handles[server].call(tool, arguments)
            result = {"content": out.content, "structured": out.structured, "is_error": out.is_error}
            if out.error_kind in ("timeout", "crash", "protocol"):
                result["transport_error"] = out.error_kind
            return result
        finally:
            await asyncio.gather(*(h.close() for h in handles.values()), return_exceptions=True)
            shutil.rmtree(sandbox, ignore_errors=True)

    def execute(self, server: str, tool: str, arguments: dict, prefix: list[dict]) -> dict | None:
        """The live result, or None when the server is not in the catalog or cannot start."""
        if server not in self.specs or any(m["server"] not in self.specs for m in prefix):
            return None
        try:
            result = asyncio.run(self._run(server, tool, arguments, prefix))
        except ServerStartError as exc:
            print(f"[simulator] live fallback unavailable: {exc}")
            return None
        self.executed += 1
        return result


def changed_fields(tasks: list[dict], specs: dict[str, dict], install_dir: Path, workdir: Path | None = None,
                   call_timeout_s: float = 15.0, startup_timeout_s: float = 30.0,
                   concurrency: int = 4) -> dict[str, list[str]]:
    """Re-execute gold chains live, each in a fresh copy of the seeded sandbox, and return per task id
    the answer fields whose value at their provenance differs from the label (volatile: timestamps,
    random ids, ...). Tasks of one DAG share a chain prefix, so each DAG's longest chain runs once.
    A chain that cannot run (server missing or failing to start) marks every field of its tasks."""
    from ..results import answers_match, get_path, value_of

    work = Path(workdir or tempfile.mkdtemp(prefix="firefly-determinism-"))
    template = work / "template"
    if not template.exists():
        seed_sandbox(template, list(specs.values()))
    longest: dict[str, dict] = {}
    for t in tasks:
        if len(t["gold_calls"]) > len(longest.get(t["dag_id"], {"gold_calls": []})["gold_calls"]):
            longest[t["dag_id"]] = t

    async def rerun(dag_id: str, chain: list[dict], gate: asyncio.Semaphore) -> tuple[str, list | None]:
        async with gate:
            if any(c["server"] not in specs for c in chain):
                return dag_id, None
            sandbox = work / f"dag-{abs(hash(dag_id))}"
            await asyncio.to_thread(copy_sandbox, template, sandbox)
            handles = {}
            try:
                for sid in sorted({c["server"] for c in chain}):
                    handles[sid] = await ServerHandle(specs[sid], install_dir, sandbox, startup_timeout_s,
                                                      call_timeout_s).start()
                outs = []
                for c in chain:
                    out = await handles[c["server"]].call(c["tool"], c["arguments"])
                    outs.append({"content": out.content, "structured": out.structured, "is_error": out.is_error})
                return dag_id, outs
            except Exception:  # noqa: BLE001 - a chain that cannot be re-executed counts as volatile
                return dag_id, None
            finally:
                await asyncio.gather(*(h.close() for h in handles.values()), return_exceptions=True)
                await asyncio.to_thread(shutil.rmtree, sandbox, True)

    async def run_all():
        gate = asyncio.Semaphore(concurrency)
        return dict(await asyncio.gather(*(rerun(d, t["gold_calls"], gate) for d, t in longest.items())))

    reruns = asyncio.run(run_all())
    changed: dict[str, list[str]] = {}
    for t in tasks:
        outs = reruns.get(t["dag_id"])
        names = [name for name, prov in t["provenance"].items()
                 if outs is None or not answers_match(t["answer"][name],
                                                      get_path(value_of(outs[prov["step"]]), prov["path"], None))]
        if names:
            changed[t["id"]] = names
    shutil.rmtree(work, ignore_errors=True)
    return changed
