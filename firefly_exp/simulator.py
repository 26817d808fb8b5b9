"""Stage 6, simulator: an offline replay of every recorded call.

The cache key is (server, tool, canonical arguments, state fingerprint). Canonical arguments have
sorted keys, schema defaults filled in, integral floats as ints and trimmed strings. The state
fingerprint summarises the state-changing calls made earlier in the same episode, so a read after a
write replays what was read after that write, not a stale value. A call that is not in the cache,
an unknown tool or malformed arguments get an MCP-style error result, never an exception.

    sim = Simulator.from_calls(calls, tools)
    episode = sim.episode()
    episode.step("sqlite", "read_query", {"query": "SELECT 1"})   # {..., "hit": "exact"}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from .store import JsonlWriter, read_jsonl, stable_hash

MAX_ARG_BYTES = 100_000


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
        return {k: _canon_value(v) for k, v in sorted(value.items())}
    return value


def canonical_args(arguments: dict, input_schema: dict | None = None) -> str:
    """The canonical JSON of a call's arguments (defaults from the schema filled in)."""
    args = dict(arguments or {})
    for name, sub in ((input_schema or {}).get("properties") or {}).items():
        if name not in args and isinstance(sub, dict) and "default" in sub and sub["default"] is not None:
            args[name] = sub["default"]
    return json.dumps(_canon_value(args), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def next_fingerprint(fingerprint: str, server: str, tool: str, canon: str, is_error: bool) -> str:
    """The state fingerprint after a call of a state-changing tool (a failed call changes nothing)."""
    if is_error:
        return fingerprint
    return stable_hash([fingerprint, server, tool, canon])


SEED_STATE = "seed"


def error_result(message: str) -> dict:
    return {"content": [{"type": "text", "text": message}], "structured": None, "is_error": True}


class Episode:
    """One policy episode against the simulator: tracks the state fingerprint across its calls."""

    def __init__(self, sim: "Simulator"):
        self.sim = sim
        self.fingerprint = SEED_STATE
        self.calls: list[dict] = []

    def step(self, server: str, tool: str, arguments: Any) -> dict:
        result = self.sim.lookup(server, tool, arguments, self.fingerprint)
        info = self.sim.tools.get(f"{server}/{tool}")
        if info is not None and not info["read_only"] and result["hit"] != "invalid":
            canon = canonical_args(arguments if isinstance(arguments, dict) else {}, info["input_schema"])
            self.fingerprint = next_fingerprint(self.fingerprint, server, tool, canon, result["is_error"])
        self.calls.append({"server": server, "tool": tool, "arguments": arguments, "hit": result["hit"],
                           "is_error": result["is_error"]})
        return result


class Simulator:
    """The replay cache with its lookup cascade (exact, then a clear error)."""

    def __init__(self, entries: dict[tuple, dict], tools: dict[str, dict]):
        self.entries = entries
        self.tools = tools
        self.counts = {"exact": 0, "miss": 0, "invalid": 0}

    @classmethod
    def from_calls(cls, calls: list[dict], tools: pl.DataFrame) -> "Simulator":
        info = {r["tool"]: {"read_only": r["read_only"], "input_schema": json.loads(r["input_schema"])}
                for r in tools.to_dicts()}
        entries: dict[tuple, dict] = {}
        for c in calls:
            if c.get("error_kind") in ("timeout", "crash", "protocol"):
                continue  # transport failures say nothing about the tool
            schema = info.get(f"{c['server']}/{c['tool']}", {}).get("input_schema")
            key = (c["server"], c["tool"], canonical_args(c["arguments"], schema), c["fingerprint"])
            entries.setdefault(key, {"content": c["content"], "structured": c.get("structured"),
                                     "is_error": bool(c["is_error"])})
        return cls(entries, info)

    @classmethod
    def load(cls, folder: Path, tools: pl.DataFrame) -> "Simulator":
        info = {r["tool"]: {"read_only": r["read_only"], "input_schema": json.loads(r["input_schema"])}
                for r in tools.to_dicts()}
        entries = {(e["server"], e["tool"], e["args"], e["fingerprint"]): e["result"]
                   for e in read_jsonl(Path(folder) / "cache.jsonl")}
        return cls(entries, info)

    def save(self, folder: Path) -> None:
        with JsonlWriter(Path(folder) / "cache.jsonl") as out:
            for (server, tool, args, fp), result in sorted(self.entries.items(), key=lambda kv: kv[0]):
                out.write({"server": server, "tool": tool, "args": args, "fingerprint": fp, "result": result})

    def episode(self) -> Episode:
        return Episode(self)

    def lookup(self, server: str, tool: str, arguments: Any, fingerprint: str = SEED_STATE) -> dict:
        name = f"{server}/{tool}"
        info = self.tools.get(name)
        if info is None:
            self.counts["invalid"] += 1
            return {**error_result(f"Unknown tool: {name}. Call one of the tools listed for this task."),
                    "hit": "invalid"}
        if not isinstance(arguments, dict):
            self.counts["invalid"] += 1
            return {**error_result(f"Invalid arguments for {name}: expected a JSON object, got "
                                   f"{type(arguments).__name__}."), "hit": "invalid"}
        canon = canonical_args(arguments, info["input_schema"])
        if len(canon) > MAX_ARG_BYTES:
            self.counts["invalid"] += 1
            return {**error_result(f"Arguments for {name} are too large ({len(canon)} bytes)."), "hit": "invalid"}
        missing = [p for p in info["input_schema"].get("required") or [] if p not in arguments]
        if missing:
            self.counts["invalid"] += 1
            return {**error_result(f"Invalid arguments for {name}: missing required {', '.join(missing)}."),
                    "hit": "invalid"}
        hit = self.entries.get((server, tool, canon, fingerprint))
        if hit is not None:
            self.counts["exact"] += 1
            return {**hit, "hit": "exact"}
        self.counts["miss"] += 1
        return {**error_result(f"The offline simulator has no recorded result for {name} with these "
                               f"arguments in this state."), "hit": "miss"}


def build_simulator(calls: list[dict], tools: pl.DataFrame, out_dir: Path) -> dict:
    """Build the replay cache from the recorded calls and save it; returns the stage metrics."""
    sim = Simulator.from_calls(calls, tools)
    sim.save(out_dir)
    return {"cache_entries": len(sim.entries), "recorded_calls": len(calls),
            "tools_cached": len({(k[0], k[1]) for k in sim.entries}),
            "error_entries": sum(1 for e in sim.entries.values() if e["is_error"])}
