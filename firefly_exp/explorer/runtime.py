"""Running DAGs on the live servers: sandbox slots, server pools, one DAG attempt, a whole exploration.

Nodes run in topological order; with ``verify_writes``, a DAG whose last write on a server no later
call read gets one read-only call of that server appended (:func:`_verify_write`). Each DAG starts
from the seeded sandbox: with ``warm_stateful`` it takes one of ``concurrency`` sandbox slots,
restored in place after every DAG, whose stateful server processes stay up as their catalog
``reset`` allows (``files``: always; ``restart``: until a DAG calls a state-changing tool;
``always``: never); otherwise a fresh copy and fresh processes per DAG. Stateless servers stay up
in a shared pool.

A crashed server, or a hung one (a call timed out and a ping gets no answer), is restarted and the
DAG rerun from its seeded sandbox, up to ``dag_retries`` times; after that the DAG is recorded
``failed`` with the reason. Every call is appended to ``calls.jsonl`` as it returns, flushed per
call and fsynced before its DAG's line is appended to ``trajectories.jsonl``: an interrupted
exploration (SIGINT, kill -9) resumes, finished DAGs kept, unfinished ones rerun under a new episode
id (their partial calls stay on disk but are not used).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from tqdm import tqdm

from ..mcp_client import ServerHandle, ServerStartError
from ..results import error_shaped, looks_like_error, result_text, value_of
from ..seeding import rng_for
from ..sandbox import copy_sandbox, restore_sandbox, seed_sandbox, snapshot
from ..simulator import SEED_STATE, canonical_args, next_fingerprint
from ..store import JsonlWriter, read_jsonl
from .proposal import HeuristicProposer, NodeContext, Proposer
from .values import Knowledge, sandbox_paths
from .records import exploration_metrics, new_trajectory, timed_out, write_ordered

if TYPE_CHECKING:
    from ..settings import ExplorerSettings


@dataclass(frozen=True)
class Exploration:
    """What every DAG of one exploration shares (the per-run constants)."""

    tools: pl.DataFrame        # tools.parquet (the servers stage)
    specs: dict                # catalog entries by server id, each with its id
    install_dir: Path          # where the servers are installed
    sandbox_root: Path         # template, slots, pool, per-DAG folders and logs go under it
    settings: ExplorerSettings
    seed: int
    proposer: Proposer
    knowledge: Knowledge | None = None   # what the probe saw and repaired (values.Knowledge), for every DAG


@dataclass
class _Slot:
    """A sandbox folder that DAGs take turns in, restored to the seeded state after each DAG.

    It keeps warm processes of the stateful servers whose whole state lives in their sandbox files
    (catalog ``reset: files``): restoring the files resets them, so they need no restart per DAG.
    The other stateful servers (``reset: restart``, state in memory or in open database handles)
    stay up only as long as the DAGs made no state-changing call on them (their read-only tools
    leave that state as it was); after one that did, the next DAG gets a fresh process. Servers
    marked ``reset: always`` get a fresh process for every DAG.
    """

    path: Path
    handles: dict = field(default_factory=dict)


@dataclass
class _Pool:
    """Stateless servers stay up for the whole exploration; restarted when they crash."""

    specs: dict
    install_dir: Path
    sandbox: Path
    settings: ExplorerSettings
    log_dir: Path
    handles: dict = field(default_factory=dict)
    locks: dict = field(default_factory=dict)
    restarts: int = 0
    template: Path | None = None
    slot_root: Path | None = None
    idle_slots: list = field(default_factory=list)
    all_slots: list = field(default_factory=list)
    manifest: dict | None = None
    warm_starts: int = 0
    warm_reuses: int = 0

    async def take_slot(self) -> _Slot:
        if self.idle_slots:
            return self.idle_slots.pop()
        if self.manifest is None:
            self.manifest = await asyncio.to_thread(snapshot, self.template)
        slot = _Slot(self.slot_root / f"slot-{len(self.all_slots)}")
        self.all_slots.append(slot)
        await asyncio.to_thread(copy_sandbox, self.template, slot.path)
        return slot

    async def give_back(self, slot: _Slot, discard_servers: bool) -> None:
        """Restore the slot's files to the seeded state and make it available again."""
        if discard_servers:  # their state is unknown (a crash, a timeout, a cancelled DAG)
            await asyncio.gather(*(h.close() for h in slot.handles.values()), return_exceptions=True)
            slot.handles.clear()
        await asyncio.to_thread(restore_sandbox, self.template, slot.path, self.manifest)
        self.idle_slots.append(slot)

    async def get(self, server: str) -> ServerHandle:
        lock = self.locks.setdefault(server, asyncio.Lock())
        async with lock:
            h = self.handles.get(server)
            if h is not None and not h.alive:
                await h.close()
                self.restarts += 1
                h = None
            if h is None:
                h = ServerHandle(self.specs[server], self.install_dir, self.sandbox, self.settings.startup_timeout_s,
                                 self.settings.call_timeout_s, log_dir=self.log_dir)
                await h.start()
                self.handles[server] = h
            return h

    async def invalidate(self, handle: ServerHandle) -> None:
        """Stop a crashed or hung server so that the next :meth:`get` starts a fresh one."""
        lock = self.locks.setdefault(handle.id, asyncio.Lock())
        async with lock:
            if self.handles.get(handle.id) is handle:
                del self.handles[handle.id]
                self.restarts += 1
        await handle.close()

    async def close(self) -> None:
        handles = list(self.handles.values()) + [h for slot in self.all_slots for h in slot.handles.values()]
        await asyncio.gather(*(h.close() for h in handles), return_exceptions=True)
        for slot in self.all_slots:
            slot.handles.clear()
            if not self.settings.keep_sandboxes:
                await asyncio.to_thread(shutil.rmtree, slot.path, True)


@dataclass
class _Session:
    """One running exploration: its constants, tool rows, server pool, calls file and live counts."""

    run: Exploration
    tools: dict                # tool rows by name, input_schema parsed
    pool: _Pool
    calls_out: JsonlWriter
    live: dict = field(default_factory=dict)   # per server [calls, errors], shown while the run goes
    paths: dict = field(default_factory=dict)  # per server, its sandbox paths (:func:`_paths`)

    @property
    def settings(self) -> ExplorerSettings:
        return self.run.settings


@dataclass
class _Attempt:
    """One attempt at one DAG: its sandbox, servers, record and the state it has reached."""

    dag: dict
    episode: str
    record: dict
    stateful: list[str]        # the DAG's stateful servers: processes of its own (or its slot's)
    slot: _Slot | None
    sandbox: Path
    handles: dict = field(default_factory=dict)
    mutated: set = field(default_factory=set)   # servers this DAG called a state-changing tool of
    fingerprint: str = SEED_STATE
    seq: int = 0
    repairs: dict = field(default_factory=dict)   # tool -> param -> values an error listed (this DAG)


async def _server_failure(server: str, handle: ServerHandle, outcome, stateful: bool, pool: _Pool) -> str | None:
    """Why a crash or timeout makes this DAG attempt unusable (and the server restarted), or None.

    A stateful server's state is unknown after either, so its DAG reruns on fresh servers. A pooled
    stateless server that crashed, or that timed out and no longer answers a ping (hung), is restarted
    and the DAG rerun; one that still answers just had a slow call, an ordinary error.
    """
    if outcome.error_kind == "timeout" and not stateful and await handle.responsive():
        return None
    if not stateful:
        await pool.invalidate(handle)
    state = "crashed" if outcome.error_kind == "crash" else "hung (call timed out)"
    return f"server '{server}' {state}: {outcome.text()[:200]}"


async def _run_dag(dag: dict, s: _Session, episode: str) -> dict:
    """One attempt at ``dag``: its trajectory record (its calls are in ``calls.jsonl`` already)."""
    started = time.perf_counter()
    stateful = sorted({s.tools[n]["server"] for n in dag["nodes"] if s.run.specs[s.tools[n]["server"]].get("stateful")})
    # cold: one folder per attempt (a timed-out attempt's server may still be writing into its own);
    # warm: a slot, restored to the seeded state after the DAG, its servers kept as their `reset` allows
    slot = await s.pool.take_slot() if stateful and s.settings.warm_stateful else None
    sandbox = slot.path if slot is not None else s.run.sandbox_root / "dags" / dag["id"] / episode
    a = _Attempt(dag, episode, new_trajectory(dag, episode), stateful, slot, sandbox)
    clean = False
    try:
        await _start_stateful(a, s)
        await _run_nodes(a, s)
        clean = not a.record.get("server_failure")
    except ServerStartError as exc:
        # often load (a startup timeout) rather than a broken install: worth one more attempt
        a.record.update(status="failed", reason=str(exc)[:300], server_failure=str(exc)[:300])
    finally:
        await _release(a, s, clean)
    a.record["wall_s"] = round(time.perf_counter() - started, 3)
    return a.record


async def _start_stateful(a: _Attempt, s: _Session) -> None:
    """The attempt's stateful servers: its slot's warm processes where alive, else fresh ones."""
    if a.stateful and a.slot is None:
        # file copying off the event loop: other DAGs' calls go on meanwhile
        await asyncio.to_thread(copy_sandbox, s.pool.template, a.sandbox)
    for server in a.stateful:
        h = a.slot.handles.get(server) if a.slot is not None else None
        if h is not None and h.alive:
            s.pool.warm_reuses += 1
        else:
            h = ServerHandle(s.run.specs[server], s.run.install_dir, a.sandbox, s.settings.startup_timeout_s,
                             s.settings.call_timeout_s, log_dir=a.sandbox / ".logs")
            await h.start()
            if a.slot is not None:
                a.slot.handles[server] = h
                s.pool.warm_starts += 1
        a.handles[server] = h


async def _run_nodes(a: _Attempt, s: _Session) -> None:
    """The DAG's nodes in order, each until a call succeeds; the first that fails ends the attempt."""
    observations: list[dict] = []
    step_of = {n: i for i, n in enumerate(a.dag["nodes"])}
    for step, node in enumerate(a.dag["nodes"]):
        tool = s.tools[node]
        spec = s.run.specs[tool["server"]]
        in_edges = [{**e, "source_step": step_of[e["source"]]} for e in a.dag["edges"] if e["target"] == node]
        ctx = NodeContext(a.dag, step, tool, dict(spec.get("hints") or {}), observations, in_edges,
                          rng_for(s.run.seed, "explore", a.dag["id"], step), s.settings.include_optional_prob,
                          frozenset(spec.get("always_fill") or ()), s.run.knowledge, _paths(s, tool["server"]),
                          a.repairs.setdefault(node, {}))
        success, last_error = await _run_node(a, ctx, s)
        if success is None:
            a.record.update(status="partial" if a.record["steps"] else "failed",
                            reason=f"{node}: {a.record.get('server_failure') or last_error or 'no arguments could be built'}"[:300])
            return
        observations.append({"step": step, "tool": node, "arguments": success["arguments"],
                             "value": value_of(success)})
        a.record["steps"].append({"node": node, "seq": success["seq"]})
    a.record.update(status="complete", reason=None)
    if s.settings.verify_writes:
        await _verify_write(a, s, observations)


def _paths(s: _Session, server: str) -> tuple:
    """The sandbox paths the server's catalog entry names (launch first, then seeded files), cached."""
    if server not in s.paths:
        s.paths[server] = tuple(sandbox_paths(s.run.specs[server]))
    return s.paths[server]


def _unverified_write(a: _Attempt, s: _Session) -> str | None:
    """The server of the attempt's last successful state-changing call, when no successful read-only
    call of that server came after it; else None."""
    server = None
    for st in a.record["steps"]:
        row = s.tools[st["node"]]
        if not row["read_only"]:
            server = row["server"]
        elif row["server"] == server:
            server = None
    return server


def _known_inputs(ctx: NodeContext) -> bool:
    """Whether every required parameter of the context's tool has a value known to fit: from the
    catalog's hints, an earlier result, the schema or the description, not a type default or the vocabulary."""
    schema = ctx.tool["input_schema"]
    props = schema.get("properties") or {}
    return all(any(src not in ("type_default", "vocabulary") for _, src in HeuristicProposer().candidates(
        name, props[name] if isinstance(props.get(name), dict) else {}, True, ctx))
        for name in schema.get("required") or [])


async def _verify_write(a: _Attempt, s: _Session, observations: list[dict]) -> None:
    """``explorer.verify_writes``: after a DAG whose last write on a server no later call read, call one
    read-only, non-volatile tool of that server whose inputs are known (:func:`_known_inputs`), picked
    with ``rng_for(seed, "verify", dag id)``, so that a task can ask about the state the write left
    (add a row, then count the rows). Recorded like any other call, its step marked ``verify``; the
    DAG stays complete whether or not it succeeds."""
    server = _unverified_write(a, s)
    if server is None:
        return
    spec, step = s.run.specs[server], len(a.dag["nodes"])

    def context(row: dict) -> NodeContext:
        return NodeContext(a.dag, step, row, dict(spec.get("hints") or {}), observations, [],
                           rng_for(s.run.seed, "verify", a.dag["id"], row["tool"]), s.settings.include_optional_prob,
                           frozenset(spec.get("always_fill") or ()), s.run.knowledge, _paths(s, server),
                           a.repairs.setdefault(row["tool"], {}))

    reads = [row for _, row in sorted(s.tools.items()) if row["server"] == server and row["read_only"]
             and not row["volatile"] and _known_inputs(context(row))]
    if not reads:
        return
    row = rng_for(s.run.seed, "verify", a.dag["id"]).choice(reads)
    success, _ = await _run_node(a, context(row), s)
    if success is not None:
        observations.append({"step": step, "tool": row["tool"], "arguments": success["arguments"],
                             "value": value_of(success)})
        a.record["steps"].append({"node": row["tool"], "seq": success["seq"], "verify": True})


async def _run_node(a: _Attempt, ctx: NodeContext, s: _Session) -> tuple[dict | None, str | None]:
    """Propose, call, and after a tool error repair, within ``max_retries``: (the successful call or
    None, the last error)."""
    proposer, server = s.run.proposer, ctx.tool["server"]
    last_error = None
    for attempt in range(s.settings.max_retries + 1):
        if getattr(proposer, "blocking", False):  # an LM call: keep the other DAGs' calls moving
            proposal = await asyncio.to_thread(proposer.propose, ctx, attempt, last_error)
        else:
            proposal = proposer.propose(ctx, attempt, last_error)
        if proposal is None:
            break
        handle = a.handles.get(server) or await s.pool.get(server)
        outcome, call = await _call(a, ctx, attempt, proposal, handle, s)
        if not outcome.is_error:
            return call, last_error
        a.record["n_errors"] += 1
        last_error = result_text({"content": outcome.content})[:500]
        if outcome.error_kind in ("crash", "timeout"):
            failure = await _server_failure(server, handle, outcome, server in a.handles, s.pool)
            if failure:
                a.record["server_failure"] = failure
                break
    return None, last_error


async def _call(a: _Attempt, ctx: NodeContext, attempt: int, proposal: tuple[dict, dict], handle: ServerHandle,
                s: _Session) -> tuple:
    """Make one call and record it (``calls.jsonl``, the counts, the state fingerprint)."""
    (args, sources), tool, server = proposal, ctx.tool, ctx.tool["server"]
    outcome = await handle.call(tool["name"], args)
    if not outcome.is_error and (looks_like_error(outcome.text()) or (
            s.run.specs[server].get("error_shapes", True)
            and error_shaped(value_of({"content": outcome.content, "structured": outcome.structured})))):
        # some servers report failures as ordinary results ("Error: ...", {"status": "error", ...},
        # {"success": false}): count them as errors (retried, never answers); catalog `error_shapes: false`
        # keeps a server's shaped results as data
        outcome.is_error, outcome.error_kind = True, "tool_error"
    canon = canonical_args(args, tool["input_schema"])
    call = {"episode": a.episode, "dag_id": a.dag["id"], "dag_index": a.dag["index"], "step": ctx.step,
            "attempt": attempt, "seq": a.seq, "server": server, "tool": tool["name"],
            "arguments": args, "arg_sources": sources, "content": outcome.content,
            "structured": outcome.structured, "is_error": outcome.is_error,
            "error_kind": outcome.error_kind, "latency_ms": round(outcome.latency_ms, 3),
            "fingerprint": a.fingerprint, "mutating": not tool["read_only"]}
    s.calls_out.write(call)
    counts = s.live.setdefault(server, [0, 0])
    counts[0] += 1
    counts[1] += int(outcome.is_error)
    a.seq += 1
    a.record["n_calls"] += 1
    if not tool["read_only"]:
        a.mutated.add(server)
        a.fingerprint = next_fingerprint(a.fingerprint, server, tool["name"], canon, outcome.is_error)
    return outcome, call


async def _release(a: _Attempt, s: _Session, clean: bool) -> None:
    """After an attempt: a slot restored and given back (its stale processes stopped), or the
    attempt's own processes stopped and its folder removed."""
    settings, specs = s.settings, s.run.specs
    if a.slot is not None:   # every process started here belongs to the slot
        # a `reset: restart` server keeps its process only while no DAG changed its (in-memory) state
        stale = [sv for sv in a.stateful if not settings.warm_all and (
            specs[sv].get("reset") == "always" or (sv in a.mutated and specs[sv].get("reset") != "files"))]
        await asyncio.gather(*(a.slot.handles.pop(sv).close() for sv in stale if sv in a.slot.handles),
                             return_exceptions=True)
        if settings.keep_sandboxes:
            await asyncio.to_thread(shutil.copytree, a.sandbox, s.run.sandbox_root / "dags" / a.dag["id"] / a.episode,
                                    symlinks=True)
        await s.pool.give_back(a.slot, discard_servers=not clean)
        return
    await asyncio.gather(*(h.close() for h in a.handles.values()), return_exceptions=True)
    if not settings.keep_sandboxes and a.sandbox.exists():
        await asyncio.to_thread(shutil.rmtree, a.sandbox, True)
        try:
            a.sandbox.parent.rmdir()   # the DAG's folder, once its last attempt's is gone
        except OSError:
            pass


async def _explore_dag(dag: dict, s: _Session) -> dict:
    """A DAG's attempts (a rerun after a server crashed or hung, within ``dag_retries``): the last one's record."""
    retries = []
    for attempt in range(s.settings.dag_retries + 1):
        episode = uuid.uuid4().hex[:12]
        try:
            rec = await asyncio.wait_for(_run_dag(dag, s, episode), s.settings.dag_timeout_s)
        except asyncio.TimeoutError:
            rec = timed_out(dag, episode, s.settings.dag_timeout_s)
        if not rec.get("server_failure") or attempt == s.settings.dag_retries:
            break
        # the attempt's calls stay in calls.jsonl under its episode (counted in the live error
        # metrics) but its trajectory is replaced by the rerun's
        retries.append({"episode": rec["episode"], "reason": rec["server_failure"]})
    rec["retries"] = retries
    return rec


def _show(bar: tqdm, live: dict) -> None:
    bar.update(1)
    worst = max(live.items(), key=lambda kv: kv[1][1] / kv[1][0], default=None)
    if worst:
        bar.set_postfix_str(f"calls {sum(c for c, _ in live.values())} errors {sum(e for _, e in live.values())} "
                            f"worst {worst[0]} {worst[1][1] / worst[1][0]:.0%}", refresh=False)


async def _explore_all(todo: list[dict], run: Exploration, tools: dict, out_dir: Path) -> dict:
    """Explore ``todo``, ``concurrency`` DAGs at once; returns the pool's counts."""
    root = Path(run.sandbox_root)
    pool = _Pool(run.specs, run.install_dir, root / "pool", run.settings, root / "logs", template=root / "template",
                 slot_root=root / "slots")
    gate = asyncio.Semaphore(run.settings.concurrency)
    bar = tqdm(total=len(todo), desc="explore DAGs", unit="dag")
    # calls are flushed per call and fsynced before their DAG's trajectory line, so a trajectory
    # on disk always has its calls on disk; fsync per call would dominate fast tools' latency
    with JsonlWriter(out_dir / "calls.jsonl", fsync=False) as calls_out, \
            JsonlWriter(out_dir / "trajectories.jsonl") as traj_out:
        session, committing = _Session(run, tools, pool, calls_out), threading.Lock()

        def commit(rec: dict) -> None:
            # in a worker thread: fsync waits on the disk, the event loop must not
            with committing:
                calls_out.sync()
                traj_out.write(rec)

        async def one(dag: dict) -> None:
            async with gate:
                rec = await _explore_dag(dag, session)
                await asyncio.to_thread(commit, rec)
                _show(bar, session.live)

        try:
            await asyncio.gather(*(one(d) for d in todo))
        finally:
            bar.close()
            await pool.close()
    return {"pool_restarts": pool.restarts, "warm_starts": pool.warm_starts, "warm_reuses": pool.warm_reuses}


def explore(dags: list[dict], run: Exploration, out_dir: Path) -> dict:
    """Run every DAG (resuming a previous partial run in ``out_dir``); returns the stage metrics."""
    out_dir = Path(out_dir)
    tools = run.tools
    tool_rows = {r["tool"]: {**r, "input_schema": json.loads(r["input_schema"])} for r in tools.to_dicts()}
    known_servers = set(tools["server"].unique().to_list())
    runnable = [d for d in dags if all(n in tool_rows for n in d["nodes"])]
    used_specs = [run.specs[s] for s in sorted(known_servers) if s in run.specs]
    template = Path(run.sandbox_root) / "template"
    if template.exists():
        shutil.rmtree(template)
    seed_sandbox(template, used_specs, run.settings.seed_mtime)
    pool_dir = Path(run.sandbox_root) / "pool"
    copy_sandbox(template, pool_dir) if not pool_dir.exists() else None
    done = {t["dag_id"]: t for t in read_jsonl(out_dir / "trajectories.jsonl")}
    todo = [d for d in runnable if d["id"] not in done]
    if done:
        print(f"[explorer] resuming: {len(done)} DAGs already explored, {len(todo)} to go")
    wall = time.perf_counter()
    extra = asyncio.run(_explore_all(todo, run, tool_rows, out_dir))
    wall = time.perf_counter() - wall
    write_ordered(out_dir)
    return exploration_metrics(out_dir, len(dags) - len(runnable), wall, **extra)
