"""Stage 6, simulator: a retrieval-augmented, state-aware offline replay of every recorded call.

Lookup cascade (``simulator.cascade`` picks and orders the steps; each hit is counted by kind):

1. ``exact``: server, tool, canonical arguments (sorted keys, schema defaults filled in, integral
   floats as ints, trimmed strings) and the episode's state fingerprint, a hash of every
   state-changing call made so far in the episode.
2. ``state_aware``: the same, with the fingerprint of the call's *state scope* only (the servers
   that share its data, ``state_scope`` in the catalog; by default the server itself), so writes
   to one server's store do not hide what another server recorded. A read after a write still
   returns what was read after that write, never a stale value.
3. ``retrieval``: the nearest cached call of the same tool in the same scope state (BM25 over
   argument tokens, re-ranked by structured argument similarity) above ``retrieval_threshold``;
   ``adapted`` when a DSPy program (``programs/adapter.py``, needs an LM) rewrites that result.
4. ``live`` (optional): replay the episode's state-changing prefix in a fresh sandbox and run the
   call on the real server; the result joins the cache.
5. ``miss``: a clear MCP error result. Unknown tools, malformed or oversized arguments get MCP
   errors too (``invalid``), never an exception.

    sim = Simulator.from_calls(calls, tools)
    episode = sim.episode()
    episode.step("sqlite", "read_query", {"query": "SELECT 1"})   # {..., "hit": "exact"}
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl

from ..settings import SimulatorSettings
from ..stage import RunContext, Stage
from ..store import MANIFEST, read_jsonl, stable_hash, write_json_atomic, write_jsonl

MAX_ARG_BYTES = 100_000
SEED_STATE = "seed"
HIT_KINDS = ("exact", "state_aware", "retrieval", "adapted", "live", "miss", "invalid")


def _canon_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return [_canon_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon_value(v) for k, v in value.items()}  # json.dumps sorts the keys
    return value


_BOOL, _DICT, _LIST = "\x00b", "\x00d", "\x00l"


def frozen_args(value: Any) -> Any:
    """A hashable form of arguments, equal exactly when their canonical JSON is equal (the lookup key:
    building it is several times cheaper than dumping JSON on the hot path)."""
    if value is True or value is False:
        return (_BOOL, value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        return (_DICT, tuple(sorted((str(k), frozen_args(v)) for k, v in value.items())))
    if isinstance(value, list):
        return (_LIST, tuple(frozen_args(v) for v in value))
    return value


def schema_defaults(input_schema: dict | None) -> dict:
    return {name: sub["default"] for name, sub in ((input_schema or {}).get("properties") or {}).items()
            if isinstance(sub, dict) and sub.get("default") is not None}


def canonical_args(arguments: dict, input_schema: dict | None = None, defaults: dict | None = None) -> str:
    """The canonical JSON of a call's arguments (defaults from the schema filled in)."""
    defaults = schema_defaults(input_schema) if defaults is None else defaults
    args = {**defaults, **arguments} if defaults else (arguments or {})
    return json.dumps(_canon_value(args), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def next_fingerprint(fingerprint: str, server: str, tool: str, canon: str, is_error: bool) -> str:
    """The state fingerprint after a call of a state-changing tool (a failed call changes nothing)."""
    if is_error:
        return fingerprint
    return stable_hash([fingerprint, server, tool, canon])


def error_result(message: str) -> dict:
    return {"content": [{"type": "text", "text": message}], "structured": None, "is_error": True}


def tool_info(tools: pl.DataFrame) -> dict[str, dict]:
    return {r["tool"]: {"read_only": r["read_only"], "input_schema": json.loads(r["input_schema"])}
            for r in tools.to_dicts()}


class Episode:
    """One policy episode against the simulator: tracks the state fingerprints across its calls."""

    def __init__(self, sim: "Simulator"):
        self.sim = sim
        self.fingerprint = SEED_STATE
        self.scope_fingerprints: dict[str, str] = {}
        self.calls: list[dict] = []
        self.mutations: list[dict] = []   # successful state-changing calls, for the live fallback

    def scope_fingerprint(self, server: str) -> str:
        return self.scope_fingerprints.get(self.sim.scope(server), SEED_STATE)

    def step(self, server: str, tool: str, arguments: Any) -> dict:
        result = self.sim.lookup(server, tool, arguments, self)
        info = self.sim.tools.get(f"{server}/{tool}")
        if info is not None and not info["read_only"] and result["hit"] != "invalid" and not result["is_error"]:
            canon = canonical_args(arguments, info["input_schema"])
            self.fingerprint = next_fingerprint(self.fingerprint, server, tool, canon, False)
            scope = self.sim.scope(server)
            self.scope_fingerprints[scope] = next_fingerprint(self.scope_fingerprint(server), server, tool, canon,
                                                              False)
            self.mutations.append({"server": server, "tool": tool, "arguments": arguments})
        self.calls.append({"server": server, "tool": tool, "arguments": arguments, "hit": result["hit"],
                           "is_error": result["is_error"]})
        return result


class Simulator:
    """The replay cache and its lookup cascade (see the module docstring)."""

    def __init__(self, entries: list[dict], tools: dict[str, dict], scopes: dict[str, str] | None = None,
                 cascade: tuple[str, ...] = ("exact", "state_aware", "retrieval"),
                 retrieval_threshold: float = 0.8, adapter: Callable | None = None, live=None):
        self.tools = tools
        for info in tools.values():  # precomputed once: lookups are on the hot path of training
            info.setdefault("defaults", schema_defaults(info["input_schema"]))
            info.setdefault("required", tuple(info["input_schema"].get("required") or ()))
        self.scopes = dict(scopes or {})
        self.cascade = tuple(cascade)
        unknown = [c for c in self.cascade if c not in ("exact", "state_aware", "retrieval", "live")]
        if unknown:
            raise ValueError(f"unknown simulator cascade step(s) {unknown}: use exact, state_aware, retrieval, live")
        self.retrieval_threshold = retrieval_threshold
        self.adapter, self.live = adapter, live
        self.counts = {k: 0 for k in HIT_KINDS}
        self.exact: dict[tuple, dict] = {}
        self.scoped: dict[tuple, dict] = {}
        self._retrieval_rows: dict[tuple, list] = defaultdict(list)
        self._indexes: dict[tuple, Any] = {}
        self.entries: list[dict] = []
        for e in entries:
            self.add(e)

    def scope(self, server: str) -> str:
        return self.scopes.get(server, server)

    def add(self, entry: dict) -> None:
        """Add one cache entry: server, tool, args (canonical JSON), fingerprint, scope_fingerprint, result."""
        key = (entry["server"], entry["tool"], frozen_args(json.loads(entry["args"])))
        if (*key, entry["fingerprint"]) in self.exact:
            return
        self.entries.append(entry)
        self.exact[(*key, entry["fingerprint"])] = entry["result"]
        self.scoped.setdefault((*key, entry["scope_fingerprint"]), entry["result"])
        rkey = (entry["server"], entry["tool"], entry["scope_fingerprint"])
        self._retrieval_rows[rkey].append(entry)
        self._indexes.pop(rkey, None)

    @classmethod
    def from_calls(cls, calls: list[dict], tools: pl.DataFrame, scopes: dict[str, str] | None = None,
                   **kwargs) -> "Simulator":
        """Build the cache from recorded calls (transport failures are left out: they say nothing
        about the tool)."""
        info = tool_info(tools)
        scopes = dict(scopes or {})
        entries = []
        by_episode: dict[Any, list[dict]] = defaultdict(list)
        for c in calls:
            by_episode[c.get("episode")].append(c)
        for episode, ecalls in by_episode.items():
            ecalls.sort(key=lambda c: c.get("seq", 0))
            scope_fp: dict[str, str] = {}
            for c in ecalls:
                schema = info.get(f"{c['server']}/{c['tool']}", {}).get("input_schema")
                canon = canonical_args(c["arguments"], schema)
                scope = scopes.get(c["server"], c["server"])
                sfp = scope_fp.get(scope, SEED_STATE) if episode is not None else c["fingerprint"]
                if c.get("error_kind") not in ("timeout", "crash", "protocol"):
                    entries.append({"server": c["server"], "tool": c["tool"], "args": canon,
                                    "fingerprint": c["fingerprint"], "scope_fingerprint": sfp,
                                    "result": {"content": c["content"], "structured": c.get("structured"),
                                               "is_error": bool(c["is_error"])}})
                if c.get("mutating", not info.get(f"{c['server']}/{c['tool']}", {}).get("read_only", True)):
                    scope_fp[scope] = next_fingerprint(sfp, c["server"], c["tool"], canon, bool(c["is_error"]))
        return cls(entries, info, scopes, **kwargs)

    @classmethod
    def load(cls, folder: Path, tools: pl.DataFrame, **kwargs) -> "Simulator":
        meta = json.loads((Path(folder) / "meta.json").read_text()) if (Path(folder) / "meta.json").exists() else {}
        kwargs.setdefault("scopes", meta.get("scopes"))
        for key in ("cascade", "retrieval_threshold"):
            if key in meta:
                kwargs.setdefault(key, meta[key])
        return cls(read_jsonl(Path(folder) / "cache.jsonl"), tool_info(tools), **kwargs)

    def save(self, folder: Path) -> None:
        write_jsonl(Path(folder) / "cache.jsonl",
                    sorted(self.entries, key=lambda e: (e["server"], e["tool"], e["args"], e["fingerprint"])))
        write_json_atomic(Path(folder) / "meta.json", {"scopes": self.scopes, "cascade": list(self.cascade),
                                                       "retrieval_threshold": self.retrieval_threshold})

    def episode(self) -> Episode:
        return Episode(self)

    def _index(self, server: str, tool: str, scope_fp: str):
        key = (server, tool, scope_fp)
        if key not in self._indexes:
            rows = self._retrieval_rows.get(key)
            if not rows:
                return None
            from .retrieval import RetrievalIndex, args_of

            self._indexes[key] = RetrievalIndex([args_of(r["args"]) for r in rows], rows)
        return self._indexes[key]

    def _count(self, result: dict, hit: str) -> dict:
        self.counts[hit] += 1
        return {**result, "hit": hit}

    def lookup(self, server: str, tool: str, arguments: Any, episode: Episode | None = None) -> dict:
        """The simulated result of one call (never raises); ``hit`` says which step answered."""
        episode = episode or Episode(self)
        name = f"{server}/{tool}"
        info = self.tools.get(name)
        if info is None:
            return self._count(error_result(f"Unknown tool: {name}. Call one of the tools listed for this task."),
                               "invalid")
        if not isinstance(arguments, dict):
            return self._count(error_result(f"Invalid arguments for {name}: expected a JSON object, got "
                                            f"{type(arguments).__name__}."), "invalid")
        missing = [p for p in info["required"] if p not in arguments]
        if missing:
            return self._count(error_result(f"Invalid arguments for {name}: missing required "
                                            f"{', '.join(map(str, missing))}."), "invalid")
        frozen = frozen_args({**info["defaults"], **arguments} if info["defaults"] else arguments)
        scope_fp = episode.scope_fingerprint(server)
        # the cheap steps first: recorded calls are small, so an oversized call can only miss them
        for step in self.cascade:
            if step == "exact":
                hit = self.exact.get((server, tool, frozen, episode.fingerprint))
                if hit is not None:
                    return self._count(hit, "exact")
            elif step == "state_aware":
                hit = self.scoped.get((server, tool, frozen, scope_fp))
                if hit is not None:
                    return self._count(hit, "state_aware")
        try:
            canon = canonical_args(arguments, defaults=info["defaults"])
        except (TypeError, ValueError) as exc:
            return self._count(error_result(f"Invalid arguments for {name}: {exc}."), "invalid")
        if len(canon) > MAX_ARG_BYTES:
            return self._count(error_result(f"Arguments for {name} are too large ({len(canon)} bytes)."), "invalid")
        for step in self.cascade:
            if step in ("exact", "state_aware"):
                continue
            if step == "retrieval":
                index = self._index(server, tool, scope_fp)
                found = index.nearest(arguments) if index is not None else None
                if found and found[1] >= self.retrieval_threshold:
                    entry, _ = found
                    if self.adapter is not None:
                        adapted = self.adapter(name, arguments, json.loads(entry["args"]), entry["result"])
                        if adapted is not None:
                            return self._count(adapted, "adapted")
                    return self._count(entry["result"], "retrieval")
            elif step == "live" and self.live is not None:
                result = self.live.execute(server, tool, arguments, episode.mutations)
                if result is not None:
                    if not result.get("transport_error"):
                        self.add({"server": server, "tool": tool, "args": canon, "fingerprint": episode.fingerprint,
                                  "scope_fingerprint": scope_fp, "result": result})
                    return self._count(result, "live")
        return self._count(error_result(f"The offline simulator has no recorded result for {name} with these "
                                        f"arguments in this state."), "miss")


def build_simulator(calls: list[dict], tools: pl.DataFrame, out_dir: Path, scopes: dict[str, str] | None = None,
                    cascade: tuple[str, ...] = ("exact", "state_aware", "retrieval"),
                    retrieval_threshold: float = 0.8) -> dict:
    """Build the replay cache from the recorded calls and save it; returns the stage metrics."""
    sim = Simulator.from_calls(calls, tools, scopes, cascade=tuple(cascade), retrieval_threshold=retrieval_threshold)
    sim.save(out_dir)
    return {"cache_entries": len(sim.entries), "recorded_calls": len(calls),
            "tools_cached": len({(e["server"], e["tool"]) for e in sim.entries}),
            "error_entries": sum(1 for e in sim.entries if e["result"]["is_error"]),
            "state_changed_entries": sum(1 for e in sim.entries if e["fingerprint"] != SEED_STATE)}


# -- the stage ------------------------------------------------------------------------------------------


def state_scopes(specs: dict[str, dict]) -> dict[str, str]:
    """Each enabled server's state scope (``state_scope`` in the catalog; by default the server itself)."""
    return {sid: spec.get("state_scope") or sid for sid, spec in specs.items()}


@dataclass(frozen=True)
class SimulatorFactory:
    """What later stages read of a finished simulator folder: :meth:`make` gives a fresh
    :class:`Simulator` configured as the run says (LM adapter, live fallback); ``folder`` and
    ``tools`` let a worker process load its own (exact replay only)."""

    folder: Path
    tools: pl.DataFrame
    options: dict = field(default_factory=dict)   # Simulator keywords: adapter, live, cascade

    def make(self) -> Simulator:
        return Simulator.load(self.folder, self.tools, **self.options)


def simulator_options(settings: SimulatorSettings, ctx: RunContext) -> dict:
    """The Simulator keywords of this run: the ``ResultAdapter`` for retrieved results (an LM and
    ``adapt``) and the live fallback behind the cascade (``live``)."""
    options: dict = {}
    if ctx.lm is not None and settings.adapt:
        from programs.adapter import ResultAdapter

        options["adapter"] = ResultAdapter(ctx.lm)
    if settings.live:
        from .live import LiveFallback

        options["live"] = LiveFallback.for_run(ctx, "live")
        options["cascade"] = tuple(settings.cascade) + ("live",)
    return options


def run(settings: SimulatorSettings, inputs: dict, ctx: RunContext) -> dict:
    """The simulator stage: the replay cache of the explored calls (cache.jsonl, meta.json)."""
    _, calls = inputs["explorer"].value
    return build_simulator(calls, inputs["servers"].value, ctx.out, state_scopes(ctx.specs), settings.cascade,
                           settings.retrieval_threshold)


def load(folder: Path, ctx: RunContext) -> SimulatorFactory:
    from ..servers import load_tools

    # the tools this cache was built against: the servers folder its manifest names as an input
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    tools = load_tools(Path(ctx.settings.paths.store) / "servers" / manifest["inputs"]["servers"])
    return SimulatorFactory(Path(folder), tools, simulator_options(ctx.settings.simulator, ctx))


from . import retrieval  # noqa: E402 - the cascade's retrieval step (imported lazily on the hot path)

STAGE = Stage("simulator", run, load, inputs=("explorer", "servers"), artifacts=("meta.json",),
              params=lambda settings, ctx: {"scopes": state_scopes(ctx.specs)},
              code=(sys.modules[__name__], retrieval))
