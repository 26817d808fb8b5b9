"""How the explorer builds each call's arguments: the proposer interface and the offline heuristic.

A proposer sees a :class:`NodeContext` (the DAG, the tool, the catalog hints, the earlier results)
and returns the arguments and where each value came from, or None when out of ideas. The choice
is a target (``explorer.proposer`` in conf/explorer/<name>.yaml): a factory ``(settings, ctx) ->
Proposer``, :func:`heuristic` here or ``programs.explorer.dspy_proposer`` (the LM).

The heuristic takes values along the DAG's field mappings from earlier outputs, then values
observed earlier in the DAG under the same name, then the catalog's hints, then the JSON schema
(const, default, examples, enum), then what the server itself says (:mod:`.values`: examples and
formats in the description, values its probe results held, the sandbox paths its launch and seed
name, a vocabulary of common kinds; an array or object built from its item schema), then a type
default. After a tool error it first mines the error for valid values (``repair``: kept for the rest
of the DAG, and from the probe for the run) and otherwise tries the next candidate; it never proposes
the same arguments twice in one node.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..results import get_path, leaves, looks_like_error  # noqa: F401 - looks_like_error: re-exported
from . import values as said

#: what a bare ``explorer.proposer`` name may pick (and, by dotted path, the LM proposer)
CHOICES = ("heuristic", "programs.explorer.dspy_proposer")


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
    knowledge: said.Knowledge | None = None   # what the probe saw and repaired (the same for every DAG)
    paths: tuple = ()                      # the server's sandbox paths (:func:`values.sandbox_paths`)
    repairs: dict = field(default_factory=dict)   # param -> values an error listed (this tool, this DAG)
    tried: list = field(default_factory=list)     # the arguments proposed so far for this node


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
        if item.get("type") in ("string", "integer", "number") or (item.get("type") == "object" and item.get("required")):
            return [_type_default(item)]   # one item, not an empty list that asks for nothing
        return []
    if typ == "object":   # its required properties, each its default or its type's
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {k: props[k]["default"] if "default" in props[k] else _type_default(props[k])
                for k in schema.get("required") or [] if isinstance(props.get(k), dict)}
    return "example"


def _short(value: Any) -> bool:
    return not isinstance(value, str) or (0 < len(value) <= 300)


def hinted_values(hints: dict, tool: str, param: str) -> list:
    """A catalog's hinted values for ``tool``'s ``param``: ``<tool>.<param>`` takes precedence over ``<param>``."""
    return list(hints.get(f"{tool}.{param}") or hints.get(param) or [])


def _edge_candidates(name: str, ctx: NodeContext) -> list[tuple[Any, str]]:
    """Values along the DAG edges into this node whose mapping names ``name``: a whole earlier result
    (``*``, a scalar on one line), a field of it, or that field of any of an array's first elements."""
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
            continue
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
    return out


def _confirmed_first(out: list[tuple[Any, str]], hinted: list, ctx: NodeContext) -> list[tuple[Any, str]]:
    """Confirmed flow first: a value known to be valid here (a hint) that an edge carries, then one
    that any earlier result holds (passed on), then the other edge values."""
    known = {h.strip() for h in hinted if isinstance(h, str) and len(h.strip()) >= 3}
    confirmed = []
    if known:
        for obs in reversed(ctx.observations):
            for path, v in leaves(obs["value"]):
                if isinstance(v, str) and v.strip() in known:
                    confirmed.append((v.strip(), f"pool:{obs['step']}:{path}"))
    edge_known = [c for c in out if isinstance(c[0], str) and c[0].strip() in known]
    return edge_known + confirmed + [c for c in out if c not in edge_known]


def _unique_fitting(out: list[tuple[Any, str]], schema: dict) -> list[tuple[Any, str]]:
    """The candidates coerced to the schema's type, those that fit it, each value once (first kept)."""
    seen, unique = set(), []
    for v, src in out:
        v = _coerce(v, schema)
        key = json.dumps(v, sort_keys=True, default=str)
        if key not in seen and _fits(v, schema):
            seen.add(key)
            unique.append((v, src))
    return unique


_PAIRED = re.compile(r"(^|_)(from|to|source|target|src|dst|input|output)(_|$)|^(from|to|source|target)(?=[A-Z])")


def _pair_key(name: str) -> str | None:
    """Parameters that name the two ends of one conversion (from_unit/to_unit, sourceTimezone/
    targetTimezone) share a key: they should not get the same value."""
    if not _PAIRED.search(name):
        return None
    return _PAIRED.sub(r"\1\3", name).lower().strip("_")


class HeuristicProposer:
    """Schema- and data-flow-guided argument builder (no LM): see the module docstring."""

    def candidates(self, name: str, schema: dict, required: bool, ctx: NodeContext,
                   depth: int = 0) -> list[tuple[Any, str]]:
        hinted = hinted_values(ctx.hints, ctx.tool["name"], name) if depth == 0 else []
        out = [(v, "repair") for v in ctx.repairs.get(name, [])] if depth == 0 else []
        out += [c for c in _edge_candidates(name, ctx) if passable(c[0], name, schema, hinted)] if depth == 0 else []
        out = _confirmed_first(out, hinted, ctx)
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
            enum = list(schema["enum"])
            if not hinted:   # no hint to prefer: any listed value, not always the first
                ctx.rng.shuffle(enum)
            out.extend((v, "schema") for v in enum)
        if not hinted:
            out.extend(self.said(name, schema, ctx, depth))
        if required and not out:
            out.append((_type_default(schema), "type_default"))
        return _unique_fitting(out, schema)

    def said(self, name: str, schema: dict, ctx: NodeContext, depth: int) -> list[tuple[Any, str]]:
        """What the server says about a parameter with no hint: the description's stated values, the
        probe's learnt and observed values, sandbox paths, the vocabulary, an array or object built
        from its item schema (:mod:`.values`)."""
        k, tool = ctx.knowledge, ctx.tool
        out = [(v, "description") for v in said.stated_values(
            schema.get("description") or said.sentences_naming(str(tool.get("description") or ""), name))]
        shaped: list = []
        if k is not None and depth == 0:
            out += [(v, "repair") for v in k.repaired.get(tool["tool"], {}).get(name, [])]
            named, shaped = k.values_for(tool["server"], tool["name"], name, schema)
            out += [(v, src) for v, src in named if _short(v) and passable(v, name, schema, [])]
            shaped = [(v, src) for v, src in shaped if _short(v) and passable(v, name, schema, [])]
        typ = schema.get("type")
        if typ in ("array", "object") or any(isinstance(schema.get(k), dict) for k in ("items", "properties")):
            return out + (self.built(name, schema, ctx, depth) if depth < 3 else [])   # made of its parts
        if said.is_pathlike(name, schema) and ctx.paths:
            out += [(p, "sandbox") for p in said.path_values(name, schema, list(ctx.paths),
                                                              str(tool.get("description") or ""), tool["name"])[:8]]
        out += shaped   # a value of the announced pattern only: after the sandbox's own paths
        out += [(v, "vocabulary") for v in said.vocabulary_values(name, schema, ctx.rng,
                                                                  k.tables() if k is not None else None)]
        if depth < 3:
            out += self.built(name, schema, ctx, depth)
        return out

    def built(self, name: str, schema: dict, ctx: NodeContext, depth: int) -> list[tuple[Any, str]]:
        """An array of one item, or an object of its required properties, made of candidates for the
        parts (source ``built``); nothing when a part has none but a type default."""
        typ = schema.get("type")
        items = schema.get("items") if isinstance(schema.get("items"), dict) else None
        if (typ == "array" or items) and items is not None:
            singular = re.sub(r"(ies)$", "y", name) if name.endswith("ies") else re.sub(r"s$", "", name)
            parts = [c for c in self.candidates(singular or name, items, True, ctx, depth + 1)
                     if c[1] != "type_default"]
            if not parts and singular != name:
                parts = [c for c in self.candidates(name, items, True, ctx, depth + 1) if c[1] != "type_default"]
            return [([v], "built") for v, _ in parts[:3]]
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else None
        if typ == "object" and props:
            obj, informed = {}, False
            for key in schema.get("required") or list(props):
                sub = props.get(key) if isinstance(props.get(key), dict) else {}
                cands = self.candidates(key, sub, True, ctx, depth + 1)
                if not cands:
                    return []
                told = [c for c in cands if c[1] != "type_default"]   # one of the first few, drawn per DAG:
                pick = told[ctx.rng.randrange(min(len(told), 4))] if told else cands[0]   # not one file forever
                obj[key] = pick[0]
                informed |= pick[1] != "type_default"
            return [(obj, "built")] if informed else []
        return []

    def _choices(self, ctx: NodeContext) -> dict[str, list] | None:
        """Per parameter to fill, its candidates; None when a required one has none."""
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
                if not cands or (cands[0][1] not in ("hint", "repair") and not cands[0][1].startswith("edge")):
                    continue
                if cands[0][1] == "hint" and name not in ctx.always_fill \
                        and ctx.rng.random() >= ctx.include_optional_prob:
                    continue
            chosen[name] = cands
        if required - set(chosen):
            return None
        return chosen

    @staticmethod
    def _apart(chosen: dict[str, list], picks: dict[str, int]) -> dict[str, int]:
        """Paired parameters (from/to) with the same picked value: the later one takes its next different value."""
        seen: dict[str, Any] = {}
        for n in list(picks):
            key = _pair_key(n)
            if key is None or chosen[n][picks[n]][1].startswith(("edge", "hint")):
                continue
            value = chosen[n][picks[n]][0]
            if key in seen and seen[key] == value:
                nxt = next((i for i in range(len(chosen[n])) if chosen[n][i][0] != value), None)
                if nxt is not None:
                    picks[n] = nxt
            seen.setdefault(key, chosen[n][picks[n]][0])
        return picks

    def propose(self, ctx: NodeContext, attempt: int, last_error: str | None) -> tuple[dict, dict] | None:
        if attempt > 0 and last_error and ctx.tried:
            args, sources = ctx.tried[-1]
            for n in said.repair_targets(last_error, args, sources):
                given = str(args.get(n))
                # a value that merely quotes the failed one back (the path it resolved) repairs nothing
                listed = [v for v in said.repair_values(last_error) if v != args.get(n)
                          and not (len(given) >= 3 and given in str(v))]
                if not listed and ctx.paths and isinstance(args.get(n), str):
                    listed = [v for v in said.kind_repair(last_error, list(ctx.paths)) if v != args.get(n)]
                if listed:
                    ctx.repairs[n] = listed + [v for v in ctx.repairs.get(n, []) if v not in listed]
        chosen = self._choices(ctx)
        if chosen is None:
            return None
        tried = {json.dumps(a, sort_keys=True, default=str) for a, _ in ctx.tried}
        for picks in self._pick_sets(chosen, last_error):
            picks = self._apart(chosen, picks)
            args = {n: chosen[n][i][0] for n, i in picks.items()}
            if json.dumps(args, sort_keys=True, default=str) in tried:
                continue
            sources = {n: chosen[n][i][1] for n, i in picks.items()}
            ctx.tried.append((args, sources))
            return args, sources
        return None

    @staticmethod
    def _pick_sets(chosen: dict[str, list], last_error: str | None):
        """Every parameter's first candidate, then one parameter at a time varied: those the error names
        first, then the others in turn (at most a few dozen sets)."""
        yield {n: 0 for n in chosen}
        varying = [n for n in chosen if len(chosen[n]) > 1]
        named = [n for n in varying if last_error and n in last_error]
        order = named + [n for n in varying if n not in named]
        for k in range(min(48, sum(len(chosen[n]) - 1 for n in order))):
            if not order:
                return
            target = order[k % len(order)]
            idx = k // len(order) + 1
            if idx < len(chosen[target]):
                picks = {n: 0 for n in chosen}
                picks[target] = idx
                yield picks


def heuristic(settings, ctx) -> HeuristicProposer:
    """``proposer: firefly_exp.explorer.proposal.heuristic``: the offline proposer (no LM)."""
    return HeuristicProposer()
