"""Stage 4, explorer: execute each sampled sub-DAG against the live servers and record every call.

Nodes run in topological order. Each DAG starts from the seeded sandbox: with ``warm_stateful`` it
takes one of ``concurrency`` sandbox slots, restored in place after every DAG, whose stateful server
processes stay up as their catalog ``reset`` allows (``files``: always; ``restart``: until a DAG calls
a state-changing tool; ``always``: never); otherwise a fresh copy and fresh processes per DAG.
Stateless servers stay up in a shared pool. A proposer builds each call's arguments:

- ``heuristic`` (offline default, no LM): values along the DAG's field mappings from earlier
  outputs, then values observed earlier in the DAG under the same name, then the catalog's hints,
  then the JSON schema (enum, default, examples), then a type default; after a tool error it tries
  the next candidate, within ``max_retries``.
- ``dspy``: the DSPy program ``programs.explorer.CallProposer`` with the configured LM; the tool
  reaches it as a ``dspy.Tool`` made by DSPy's MCP support, the call is made here.

A crashed server, or a hung one (a call timed out and a ping gets no answer), is restarted and the
DAG rerun from its seeded sandbox, up to ``dag_retries`` times; after that the DAG is recorded
``failed`` with the reason. Every call is appended to ``calls.jsonl`` as it returns (server, tool,
arguments and where each came from, result, error kind, latency, DAG position, state fingerprint),
flushed per call and fsynced before its DAG's line is appended to ``trajectories.jsonl``. An
interrupted exploration (SIGINT, kill -9) resumes: finished DAGs are kept, unfinished ones rerun
under a new episode id (their partial calls stay on disk but are not used). At the end,
``trajectories.ordered.jsonl`` holds each trajectory with its calls, by DAG index.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
from tqdm import tqdm

from .mcp_client import ServerHandle, ServerStartError
from .results import get_path, leaves, result_text, value_of
from .sampler import rng_for
from .sandbox import copy_sandbox, restore_sandbox, seed_sandbox, snapshot
from .simulator import SEED_STATE, canonical_args, next_fingerprint
from .store import JsonlWriter, read_jsonl


@dataclass
class NodeContext:
    """What a proposer knows when it builds the arguments of one node's call."""

    dag: dict
    step: int
    tool: dict                 # tools.parquet row, with input_schema parsed
    hints: dict                # the server's catalog hints
    observations: list[dict]   # earlier successful calls of this DAG: {step, tool, arguments, value}
    in_edges: list[dict]       # DAG edges into this node, with their field mappings
    rng: Any
    include_optional_prob: float = 0.5
    always_fill: frozenset = frozenset()   # optional parameters the server needs in practice (catalog)


class Proposer(Protocol):
    def propose(self, ctx: NodeContext, attempt: int, last_error: str | None) -> tuple[dict, dict] | None:
        """Arguments and, per argument, where its value came from; None when out of ideas."""


def _coerce(value: Any, schema: dict) -> Any:
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), None)
    try:
        if typ == "integer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if typ == "integer" and isinstance(value, float) and value.is_integer():
            return int(value)
        if typ == "number" and isinstance(value, str):
            return float(value)
        if typ == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if typ == "array" and not isinstance(value, list):
            return [value]
    except ValueError:
        return value
    return value


def _fits(value: Any, schema: dict) -> bool:
    typ = schema.get("type")
    if isinstance(typ, list):
        return any(_fits(value, {**schema, "type": t}) for t in typ)
    checks = {"string": lambda v: isinstance(v, str), "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "boolean": lambda v: isinstance(v, bool), "array": lambda v: isinstance(v, list),
              "object": lambda v: isinstance(v, dict), "null": lambda v: v is None}
    if typ in checks and not checks[typ](value):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    return _within(value, schema)


def _within(value: Any, schema: dict) -> bool:
    """The schema's bounds: minimum/maximum, string lengths and pattern, array lengths.

    >>> _within(0, {"minimum": 1}), _within([], {"minItems": 1}), _within("Sales", {"pattern": "^[A-Z]"})
    (False, False, True)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = (("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
                  ("exclusiveMinimum", lambda b: value > b), ("exclusiveMaximum", lambda b: value < b))
        return all(ok(schema[k]) for k, ok in bounds if isinstance(schema.get(k), (int, float))
                   and not isinstance(schema.get(k), bool))
    if isinstance(value, str):
        if len(value) < int(schema.get("minLength") or 0) or len(value) > int(schema.get("maxLength") or 1 << 30):
            return False
        if isinstance(schema.get("pattern"), str):
            try:
                return re.search(schema["pattern"], value) is not None
            except re.error:   # a dialect Python's re does not read: not ours to judge
                return True
        return True
    if isinstance(value, list):
        return int(schema.get("minItems") or 0) <= len(value) <= int(schema.get("maxItems") or 1 << 30)
    return True


_PATHLIKE = ("path", "file", "dir", "folder")
_FILE_NAME = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value).strip())
        return True
    except ValueError:
        return False


def passable(value: Any, name: str, schema: dict, hinted: list) -> bool:
    """Whether a value taken from an earlier result suits a string parameter, beyond its JSON type:
    a number never names a path, nor fills a parameter whose hinted values are all words; a path
    parameter takes a path or a file name, on one line.

    >>> [passable(v, "path", {"type": "string"}, []) for v in (1.0, "4.0", "/sandbox/a.xlsx", "notes.md", "main")]
    [False, False, True, True, False]
    >>> passable(12, "target", {"type": "string"}, ["main"]), passable(12, "query", {"type": "string"}, [])
    (False, True)
    """
    typ = schema.get("type")
    types = set(typ) if isinstance(typ, list) else {typ}
    if "string" not in types or types & {"number", "integer"}:
        return True
    pathlike = any(t in name.lower() for t in _PATHLIKE)
    if _numeric(value):
        return not pathlike and (not hinted or any(_numeric(h) for h in hinted))
    if pathlike and isinstance(value, str):
        v = value.strip()
        return "\n" not in v and ("/" in v or "\\" in v or bool(_FILE_NAME.search(v)))
    return True


def _type_default(schema: dict) -> Any:
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "string")
    if typ == "integer":
        return int(schema.get("minimum", 1))
    if typ == "number":
        return float(schema.get("minimum", 1))
    if typ == "boolean":
        return False
    if typ == "array":
        item = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [_type_default(item)] if item.get("type") in ("string", "integer", "number") else []
    if typ == "object":
        return {}
    return "example"


def _short(value: Any) -> bool:
    return not isinstance(value, str) or (0 < len(value) <= 300)


def hinted_values(hints: dict, tool: str, param: str) -> list:
    """A catalog's hinted values for ``tool``'s ``param``: ``<tool>.<param>`` takes precedence over ``<param>``."""
    return list(hints.get(f"{tool}.{param}") or hints.get(param) or [])


class HeuristicProposer:
    """Schema- and data-flow-guided argument builder (no LM): see the module docstring."""

    def candidates(self, name: str, schema: dict, required: bool, ctx: NodeContext) -> list[tuple[Any, str]]:
        out: list[tuple[Any, str]] = []
        by_step = {o["step"]: o for o in ctx.observations}
        for edge in ctx.in_edges:
            path = (edge.get("mapping") or {}).get(name)
            src = by_step.get(edge["source_step"])
            if path is None or src is None:
                continue
            if path == "*":
                value = src["value"] if not isinstance(src["value"], (dict, list)) else None
                if isinstance(value, str) and "\n" in value.strip():
                    value = None
                if value is not None:
                    out.append((value, f"edge:{src['step']}:"))
            else:
                generic = path.replace(".0.", ".{i}.").split(".{i}.")
                # an array path ("rows.0.name") may be satisfied by any element
                if len(generic) == 2:
                    arr = get_path(src["value"], generic[0], None)
                    if isinstance(arr, list):
                        for i, item in enumerate(arr[:5]):
                            v = get_path(item, generic[1], None)
                            if v is not None and not isinstance(v, (dict, list)):
                                out.append((v, f"edge:{src['step']}:{generic[0]}.{i}.{generic[1]}"))
                else:
                    v = get_path(src["value"], path, None)
                    if v is not None and not isinstance(v, (dict, list)):
                        out.append((v, f"edge:{src['step']}:{path}"))
        hinted = hinted_values(ctx.hints, ctx.tool["name"], name)
        out = [c for c in out if passable(c[0], name, schema, hinted)]
        # confirmed flow: an earlier result holds a value known to be valid here (a hint), so pass it on
        known = {h.strip() for h in hinted if isinstance(h, str) and len(h.strip()) >= 3}
        confirmed = []
        if known:
            for obs in reversed(ctx.observations):
                for path, v in leaves(obs["value"]):
                    if isinstance(v, str) and v.strip() in known:
                        confirmed.append((v.strip(), f"pool:{obs['step']}:{path}"))
        edge_known = [c for c in out if isinstance(c[0], str) and c[0].strip() in known]
        out = edge_known + confirmed + [c for c in out if c not in edge_known]
        for obs in reversed(ctx.observations):  # values seen earlier under the same name
            for path, v in leaves(obs["value"]):
                if path.split(".")[-1] == name and v is not None and _short(v) and passable(v, name, schema, hinted):
                    out.append((v, f"pool:{obs['step']}:{path}"))
        ctx.rng.shuffle(hinted)
        out.extend((v, "hint") for v in hinted)
        for key in ("const", "default"):
            if key in schema and schema[key] is not None:
                out.append((schema[key], "schema"))
        for v in schema.get("examples") or []:
            out.append((v, "schema"))
        if schema.get("enum"):
            out.extend((v, "schema") for v in schema["enum"])
        if required and not out:
            out.append((_type_default(schema), "type_default"))
        seen, unique = set(), []
        for v, src in out:
            v = _coerce(v, schema)
            key = json.dumps(v, sort_keys=True, default=str)
            if key not in seen and _fits(v, schema):
                seen.add(key)
                unique.append((v, src))
        return unique

    def propose(self, ctx: NodeContext, attempt: int, last_error: str | None) -> tuple[dict, dict] | None:
        schema = ctx.tool["input_schema"]
        required = set(schema.get("required") or [])
        props = schema.get("properties") or {}
        chosen: dict[str, list] = {}
        for name, sub in props.items():
            sub = sub if isinstance(sub, dict) else {}
            cands = self.candidates(name, sub, name in required, ctx)
            if not cands:
                continue
            if name not in required:
                # optional parameters: filled along a DAG edge, or sometimes from a hint; never from a
                # same-named value seen elsewhere, which too often has another meaning
                cands = [c for c in cands if not c[1].startswith("pool")]
                if not cands or (cands[0][1] != "hint" and not cands[0][1].startswith("edge")):
                    continue
                if cands[0][1] == "hint" and name not in ctx.always_fill \
                        and ctx.rng.random() >= ctx.include_optional_prob:
                    continue
            chosen[name] = cands
        if required - set(chosen):
            return None
        if attempt == 0:
            picks = {n: 0 for n in chosen}
        else:
            # vary the parameters the error names first, then the others in turn
            varying = [n for n in chosen if len(chosen[n]) > 1]
            if not varying:
                return None
            named = [n for n in varying if last_error and n in last_error]
            order = named + [n for n in varying if n not in named]
            target = order[(attempt - 1) % len(order)]
            idx = (attempt - 1) // len(order) + 1
            if idx >= len(chosen[target]):
                return None
            picks = {n: 0 for n in chosen}
            picks[target] = idx
        args = {n: chosen[n][i][0] for n, i in picks.items()}
        sources = {n: chosen[n][i][1] for n, i in picks.items()}
        return args, sources


_ERROR_OPENING = re.compile(r"^\W*(?:[\w-]+\s+){0,2}(?:error|exception|traceback)\b|^\W*(?:failed to|invalid)\b",
                            re.IGNORECASE)


def looks_like_error(text: str) -> bool:
    """A result whose text opens like an error message.

    >>> [looks_like_error(t) for t in ("Error: Only SELECT", "Database error: near", "3 rows", "No errors found")]
    [True, True, False, False]
    """
    return bool(_ERROR_OPENING.match(text.strip()))


def make_proposer(kind: str, lm=None, **kwargs) -> Proposer:
    if kind == "heuristic":
        return HeuristicProposer()
    if kind == "dspy":
        if lm is None:
            raise ValueError("explorer=dspy needs an LM: set lm=<choice> (see conf/lm/) or use explorer=heuristic")
        from programs.explorer import DSPyProposer

        return DSPyProposer(lm, fallback=HeuristicProposer(), **kwargs)
    raise ValueError(f"unknown explorer '{kind}': use heuristic or dspy")


@dataclass
class ExploreSettings:
    concurrency: int = 3
    max_retries: int = 3
    dag_retries: int = 1          # reruns of a DAG whose server crashed or hung (fresh sandbox, fresh servers)
    call_timeout_s: float = 15.0
    dag_timeout_s: float = 120.0
    startup_timeout_s: float = 30.0
    include_optional_prob: float = 0.5
    keep_sandboxes: bool = False
    warm_stateful: bool = True    # sandbox slots restored between DAGs; stateful processes kept as `reset` allows
    warm_all: bool = False        # keep every stateful process, whatever its `reset` (the probe's one session per server)
    seed_mtime: float | None = None   # the seeded files' mtime (None: sandbox.SEED_MTIME; the probe's repeat shifts it)


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
    settings: ExploreSettings
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


async def _run_dag(dag: dict, tools: dict, specs: dict, pool: _Pool, template: Path, sandboxes: Path,
                   proposer: Proposer, settings: ExploreSettings, seed: int, install_dir: Path,
                   calls_out: JsonlWriter, episode: str, live: dict | None = None) -> dict:
    started = time.perf_counter()
    stateful = sorted({tools[n]["server"] for n in dag["nodes"] if specs[tools[n]["server"]].get("stateful")})
    # cold: one folder per attempt (a timed-out attempt's server may still be writing into its own);
    # warm: a slot, restored to the seeded state after the DAG, its servers kept as their `reset` allows
    slot = await pool.take_slot() if stateful and settings.warm_stateful else None
    sandbox = slot.path if slot is not None else sandboxes / dag["id"] / episode
    handles: dict[str, ServerHandle] = {}
    record = {"dag_id": dag["id"], "index": dag["index"], "episode": episode, "steps": [], "n_calls": 0,
              "n_errors": 0}
    clean = False
    mutated: set[str] = set()   # servers this DAG called a state-changing tool of
    try:
        if stateful and slot is None:
            # file copying off the event loop: other DAGs' calls go on meanwhile
            await asyncio.to_thread(copy_sandbox, template, sandbox)
        for server in stateful:
            h = slot.handles.get(server) if slot is not None else None
            if h is not None and h.alive:
                pool.warm_reuses += 1
            else:
                h = ServerHandle(specs[server], install_dir, sandbox, settings.startup_timeout_s,
                                 settings.call_timeout_s, log_dir=sandbox / ".logs")
                await h.start()
                if slot is not None:
                    slot.handles[server] = h
                    pool.warm_starts += 1
            handles[server] = h
        fingerprint = SEED_STATE
        observations: list[dict] = []
        step_of = {n: i for i, n in enumerate(dag["nodes"])}
        seq = 0
        for step, node in enumerate(dag["nodes"]):
            tool = tools[node]
            server = tool["server"]
            in_edges = [{**e, "source_step": step_of[e["source"]]} for e in dag["edges"] if e["target"] == node]
            ctx = NodeContext(dag, step, tool, dict(specs[server].get("hints") or {}), observations, in_edges,
                              rng_for(seed, "explore", dag["id"], step), settings.include_optional_prob,
                              frozenset(specs[server].get("always_fill") or ()))
            last_error, success = None, None
            for attempt in range(settings.max_retries + 1):
                if getattr(proposer, "blocking", False):  # an LM call: keep the other DAGs' calls moving
                    proposal = await asyncio.to_thread(proposer.propose, ctx, attempt, last_error)
                else:
                    proposal = proposer.propose(ctx, attempt, last_error)
                if proposal is None:
                    break
                args, sources = proposal
                handle = handles.get(server) or await pool.get(server)
                outcome = await handle.call(tool["name"], args)
                if not outcome.is_error and looks_like_error(outcome.text()):
                    # some servers report failures as ordinary text ("Error: ..."): count them as errors
                    outcome.is_error, outcome.error_kind = True, "tool_error"
                canon = canonical_args(args, tool["input_schema"])
                call = {"episode": episode, "dag_id": dag["id"], "dag_index": dag["index"], "step": step,
                        "attempt": attempt, "seq": seq, "server": server, "tool": tool["name"],
                        "arguments": args, "arg_sources": sources, "content": outcome.content,
                        "structured": outcome.structured, "is_error": outcome.is_error,
                        "error_kind": outcome.error_kind, "latency_ms": round(outcome.latency_ms, 3),
                        "fingerprint": fingerprint, "mutating": not tool["read_only"]}
                calls_out.write(call)
                if not tool["read_only"]:
                    mutated.add(server)
                if live is not None:  # per-server [calls, errors], shown while the run goes
                    counts = live.setdefault(server, [0, 0])
                    counts[0] += 1
                    counts[1] += int(outcome.is_error)
                seq += 1
                record["n_calls"] += 1
                if not tool["read_only"]:
                    fingerprint = next_fingerprint(fingerprint, server, tool["name"], canon, outcome.is_error)
                if not outcome.is_error:
                    success = call
                    break
                record["n_errors"] += 1
                last_error = result_text({"content": outcome.content})[:500]
                if outcome.error_kind in ("crash", "timeout"):
                    failure = await _server_failure(server, handle, outcome, server in handles, pool)
                    if failure:
                        record["server_failure"] = failure
                        break
            if success is None:
                record.update(status="partial" if record["steps"] else "failed",
                              reason=f"{node}: {record.get('server_failure') or last_error or 'no arguments could be built'}"[:300])
                break
            observations.append({"step": step, "tool": node, "arguments": success["arguments"],
                                 "value": value_of(success)})
            record["steps"].append({"node": node, "seq": success["seq"]})
        else:
            record.update(status="complete", reason=None)
        clean = not record.get("server_failure")
    except ServerStartError as exc:
        # often load (a startup timeout) rather than a broken install: worth one more attempt
        record.update(status="failed", reason=str(exc)[:300], server_failure=str(exc)[:300])
    finally:
        if slot is not None:   # every process started here belongs to the slot
            # a `reset: restart` server keeps its process only while no DAG changed its (in-memory) state
            stale = [sv for sv in stateful if not settings.warm_all and (
                specs[sv].get("reset") == "always" or (sv in mutated and specs[sv].get("reset") != "files"))]
            await asyncio.gather(*(slot.handles.pop(sv).close() for sv in stale if sv in slot.handles),
                                 return_exceptions=True)
            if settings.keep_sandboxes:
                await asyncio.to_thread(shutil.copytree, sandbox, sandboxes / dag["id"] / episode, symlinks=True)
            await pool.give_back(slot, discard_servers=not clean)
        else:
            await asyncio.gather(*(h.close() for h in handles.values()), return_exceptions=True)
            if not settings.keep_sandboxes and sandbox.exists():
                await asyncio.to_thread(shutil.rmtree, sandbox, True)
                try:
                    sandbox.parent.rmdir()   # the DAG's folder, once its last attempt's is gone
                except OSError:
                    pass
    record["wall_s"] = round(time.perf_counter() - started, 3)
    return record


def explore(dags: list[dict], tools: pl.DataFrame, specs: dict, install_dir: Path, sandbox_root: Path,
            out_dir: Path, seed: int, proposer: Proposer, settings: ExploreSettings) -> dict:
    """Run every DAG (resuming a previous partial run in ``out_dir``); returns the stage metrics."""
    out_dir = Path(out_dir)
    tool_rows = {r["tool"]: {**r, "input_schema": json.loads(r["input_schema"])} for r in tools.to_dicts()}
    known_servers = set(tools["server"].unique().to_list())
    runnable = [d for d in dags if all(n in tool_rows for n in d["nodes"])]
    used_specs = [specs[s] for s in sorted(known_servers) if s in specs]
    template = Path(sandbox_root) / "template"
    if template.exists():
        shutil.rmtree(template)
    seed_sandbox(template, used_specs, settings.seed_mtime)
    pool_dir = Path(sandbox_root) / "pool"
    copy_sandbox(template, pool_dir) if not pool_dir.exists() else None
    done = {t["dag_id"]: t for t in read_jsonl(out_dir / "trajectories.jsonl")}
    todo = [d for d in runnable if d["id"] not in done]
    if done:
        print(f"[explorer] resuming: {len(done)} DAGs already explored, {len(todo)} to go")

    async def main() -> None:
        pool = _Pool(specs, install_dir, pool_dir, settings, Path(sandbox_root) / "logs", template=template,
                     slot_root=Path(sandbox_root) / "slots")
        gate = asyncio.Semaphore(settings.concurrency)
        bar = tqdm(total=len(todo), desc="explore DAGs", unit="dag")
        live: dict[str, list[int]] = {}
        # calls are flushed per call and fsynced before their DAG's trajectory line, so a trajectory
        # on disk always has its calls on disk; fsync per call would dominate fast tools' latency
        with JsonlWriter(out_dir / "calls.jsonl", fsync=False) as calls_out, \
                JsonlWriter(out_dir / "trajectories.jsonl") as traj_out:
            committing = threading.Lock()

            def commit(rec: dict) -> None:
                # in a worker thread: fsync waits on the disk, the event loop must not
                with committing:
                    calls_out.sync()
                    traj_out.write(rec)

            async def one(dag: dict) -> None:
                async with gate:
                    retries = []
                    for attempt in range(settings.dag_retries + 1):
                        episode = uuid.uuid4().hex[:12]
                        try:
                            rec = await asyncio.wait_for(
                                _run_dag(dag, tool_rows, specs, pool, template, Path(sandbox_root) / "dags",
                                         proposer, settings, seed, install_dir, calls_out, episode, live),
                                settings.dag_timeout_s)
                        except asyncio.TimeoutError:
                            reason = f"DAG timed out after {settings.dag_timeout_s}s (explorer.dag_timeout_s)"
                            rec = {"dag_id": dag["id"], "index": dag["index"], "episode": episode, "steps": [],
                                   "n_calls": 0, "n_errors": 0, "status": "failed", "reason": reason,
                                   "server_failure": reason, "wall_s": settings.dag_timeout_s}
                        if not rec.get("server_failure") or attempt == settings.dag_retries:
                            break
                        # the attempt's calls stay in calls.jsonl under its episode (counted in the
                        # live error metrics) but its trajectory is replaced by the rerun's
                        retries.append({"episode": rec["episode"], "reason": rec["server_failure"]})
                    rec["retries"] = retries
                    await asyncio.to_thread(commit, rec)
                    bar.update(1)
                    worst = max(live.items(), key=lambda kv: kv[1][1] / kv[1][0], default=None)
                    if worst:
                        bar.set_postfix_str(f"calls {sum(c for c, _ in live.values())} "
                                            f"errors {sum(e for _, e in live.values())} "
                                            f"worst {worst[0]} {worst[1][1] / worst[1][0]:.0%}", refresh=False)

            try:
                await asyncio.gather(*(one(d) for d in todo))
            finally:
                bar.close()
                await pool.close()
        metrics_extra.update(pool_restarts=pool.restarts, warm_starts=pool.warm_starts, warm_reuses=pool.warm_reuses)

    metrics_extra: dict = {}
    wall = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - wall
    write_ordered(out_dir)
    return exploration_metrics(out_dir, len(dags) - len(runnable), wall, **metrics_extra)


ORDERED = "trajectories.ordered.jsonl"


def load_trajectories(folder: Path) -> tuple[list[dict], list[dict]]:
    """Finished trajectories (by DAG index) and the calls of their episodes (in call order)."""
    trajs = sorted(read_jsonl(Path(folder) / "trajectories.jsonl"), key=lambda t: t["index"])
    episodes = {t["episode"] for t in trajs if t.get("episode")}
    calls = [c for c in read_jsonl(Path(folder) / "calls.jsonl") if c["episode"] in episodes]
    calls.sort(key=lambda c: (c["dag_index"], c["seq"]))
    return trajs, calls


def write_ordered(folder: Path) -> Path:
    """``trajectories.ordered.jsonl``: each finished trajectory with its calls, by DAG index.

    The append-only files are in completion order, which depends on scheduling; this one depends
    only on the DAGs and the servers, so two runs (or an interrupted and resumed one) compare equal.
    Written whole and atomically at the end of an exploration.
    """
    trajs, calls = load_trajectories(folder)
    by_episode: dict[str, list[dict]] = {}
    for c in calls:
        by_episode.setdefault(c["episode"], []).append(c)
    path = Path(folder) / ORDERED
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for t in trajs:
            fh.write(json.dumps({**t, "calls": by_episode.get(t["episode"], [])}, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def exploration_metrics(folder: Path, skipped: int = 0, wall_s: float | None = None, **extra) -> dict:
    """Counts of the kept trajectories, and error kinds / failure rates over every live call made
    (retried attempts included: a crash that was retried away still happened)."""
    trajs = sorted(read_jsonl(Path(folder) / "trajectories.jsonl"), key=lambda t: t["index"])
    final = {t["episode"] for t in trajs if t.get("episode")}
    retried = {r["episode"] for t in trajs for r in t.get("retries") or []}
    all_calls = [c for c in read_jsonl(Path(folder) / "calls.jsonl") if c["episode"] in final | retried]
    calls = [c for c in all_calls if c["episode"] in final]
    status = {s: sum(t["status"] == s for t in trajs) for s in ("complete", "partial", "failed")}
    kinds: dict[str, int] = {}
    per_server: dict[str, list[int]] = {}
    for c in all_calls:
        if c["error_kind"]:
            kinds[c["error_kind"]] = kinds.get(c["error_kind"], 0) + 1
        per_server.setdefault(c["server"], [0, 0])
        per_server[c["server"]][0] += 1
        per_server[c["server"]][1] += int(c["is_error"])
    lat = np.array([c["latency_ms"] for c in all_calls]) if all_calls else np.zeros(1)
    out = {"dags": len(trajs), "dags_skipped_unknown_tools": skipped, **{f"dags_{k}": v for k, v in status.items()},
           "dags_retried": sum(bool(t.get("retries")) for t in trajs), "dag_retries": len(retried),
           "calls": len(calls), "calls_live": len(all_calls),
           "errors": sum(kinds.values()), **{f"errors_{k}": kinds.get(k, 0) for k in ERROR_KINDS},
           "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
           "latency_ms_p95": round(float(np.percentile(lat, 95)), 3),
           "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
           **{f"failure_rate.{s}": round(e / n, 4) for s, (n, e) in sorted(per_server.items())}, **extra}
    if wall_s:
        out["dags_per_s"] = round(len(trajs) / wall_s, 3) if trajs else 0.0
    return out


ERROR_KINDS = ("tool_error", "timeout", "crash", "protocol")
