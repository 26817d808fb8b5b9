"""The ``lookup`` evaluation baseline: what retrieval and reading the question achieve without planning.

Per task it ranks the offered tools (a tool the question names verbatim first, in the order named, then
BM25 of the question against each tool's name and description, :mod:`.lexical`), calls the best ones
whose required arguments the question holds, each with values read off the question (JSON literals,
quoted strings, path-like tokens, numbers, words naming an enum option), and answers each field with the
result leaf at the path its description writes out, or whose key is most like the field's name. It
never passes a value from one call to the next, so a task whose chain carries a value fails: the gap
between ``lookup`` and a trained policy is what a task needs beyond lookup. Deterministic: it draws
nothing at random.

    >>> lookup_arguments({"properties": {"value": {"type": "number"}, "unit": {"enum": ["cup", "liter"]}},
    ...                   "required": ["value", "unit"]}, "How much is 250 cups?")
    ({'value': 250, 'unit': 'cup'}, True)
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Callable, NamedTuple

from .lexical import BM25, stem, words
from .results import json_type, leaves, value_of

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|`([^`]+)`|(?<![A-Za-z0-9])\'([^\']+)\'(?![A-Za-z0-9])')
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*[A-Za-z_/])")
_PATHLIKE = re.compile(r"(?<![\w\"'`])(?:[\w.~:-]*/[\w./~:-]+|[\w-]+\.[A-Za-z][A-Za-z0-9]{0,4})(?![\w/])")
_IDENTIFIER = re.compile(r"[A-Za-z_][\w-]*")
_STATED_PATH = re.compile(r"(?:[A-Za-z_][\w-]*|\[\d+\])(?:\[\d+\]|\.[A-Za-z_][\w-]*)+")
_PATH_WORDS = {"path", "file", "filename", "dir", "directory", "folder", "url", "uri", "repo", "root"}
ANCHORED = 0.5    # an optional parameter is filled only from a value at least this surely its own (see _anchor)


class Value(NamedTuple):
    pos: int        # where it starts in the question (characters)
    kind: str       # json | quoted | path | number | enum
    value: Any


# -- the values a question states ------------------------------------------------------------------------


def _json_literals(question: str) -> list[tuple[int, int, Any]]:
    """The non-empty JSON objects and arrays written out in a question, as (start, end, value)."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while (i := next((j for j in range(i, len(question)) if question[j] in "{["), -1)) >= 0:
        try:
            value, end = decoder.raw_decode(question, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(value, (dict, list)) and value:
            found.append((i, end, value))
        i = max(end, i + 1)
    return found


def question_values(question: str) -> list[Value]:
    """The values a question states: JSON literals, quoted strings, path-like tokens and numbers, in order
    (nothing read twice: not a quote inside a JSON literal, nor a number inside a quote).

    >>> [v.value for v in question_values('Put 250 cups in "my notes" at /sandbox/a.txt, 1.5 times, {"k": 2}')]
    [250, 'my notes', '/sandbox/a.txt', 1.5, {'k': 2}]
    """
    spans = [(a, b) for a, b, _ in _json_literals(question)]
    found = [Value(a, "json", v) for a, _, v in _json_literals(question)]
    outside = lambda m: not any(a <= m.start() < b for a, b in spans)  # noqa: E731 - not read already
    for m in _QUOTED.finditer(question):
        if outside(m):
            found.append(Value(m.start(), "quoted", next(g for g in m.groups() if g is not None)))
            spans.append(m.span())
    found += [Value(m.start(), "path", m.group().rstrip(".:")) for m in _PATHLIKE.finditer(question) if outside(m)]
    found += [Value(m.start(), "number", float(m.group()) if "." in m.group() else int(m.group()))
              for m in _NUMBER.finditer(question) if outside(m)]
    return sorted(found, key=lambda v: v.pos)


def enum_hits(options: list, question: str) -> list[Value]:
    """Every place a question names an enum option as words (a plural too), in the question's order; where
    two overlap ("gallon (US)", "gallon") the longer one.

    >>> [v.value for v in enum_hits(["gallon", "gallon (US)", "liter"], "2 Gallons (US) in liters, not gallons")]
    ['gallon (US)', 'liter', 'gallon']
    """
    hits, taken = [], []
    for option in sorted(options, key=lambda o: -len(words(str(o)))):
        ws = words(str(option))
        if not ws:
            continue
        pattern = r"(?<![A-Za-z0-9])" + r"[\W_]+".join(re.escape(w) + "(?:e?s)?" for w in ws) + r"(?![A-Za-z0-9])"
        for m in re.finditer(pattern, question, re.I):
            if not any(a < m.end() and m.start() < b for a, b in taken):
                hits.append(Value(m.start(), "enum", option))
                taken.append(m.span())
    return sorted(hits, key=lambda v: v.pos)


# -- arguments ------------------------------------------------------------------------------------------


def _schema_type(schema: dict) -> str:
    """A parameter's one JSON type: the first non-null of a type list or an ``anyOf``; string when unsaid."""
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), None)
    if typ is None:
        typ = next((_schema_type(s) for s in schema.get("anyOf") or [] if isinstance(s, dict)
                    and s.get("type") not in (None, "null")), None)
    return typ or "string"


def _fits(value: Value, typ: str) -> bool:
    if typ == "integer":
        return value.kind == "number" and isinstance(value.value, int)
    if typ == "number":
        return value.kind == "number"
    if typ in ("object", "array"):
        return value.kind == "json" and isinstance(value.value, dict if typ == "object" else list)
    return typ == "string" and value.kind in ("quoted", "path")


def _candidates(schema: dict, question: str, values: list[Value]) -> list[tuple[Value, Any]]:
    """(the question's value, what the parameter would get) for each value that fits the parameter: an
    enum option it names, else a value of its type; for an array, one value of its items' type wrapped."""
    typ = _schema_type(schema)
    if schema.get("enum"):
        return [(v, v.value) for v in enum_hits(schema["enum"], question)]
    pool = [(v, v.value) for v in values if _fits(v, typ)]
    if not pool and typ == "array":
        pool = [(v, [given]) for v, given in _candidates(schema.get("items") or {}, question, values)]
    return pool


def _anchor(param: str, value: Value, question: str) -> float:
    """How surely the question gives ``value`` to ``param``: 3 when written ``param=value`` (or ``param:``),
    else the share of the parameter's words among the four words just before the value.

    >>> q = 'create branch_name="dev" from the base "main"'
    >>> [_anchor(p, v, q) for p in ("branch_name", "base_branch") for v in question_values(q)]
    [3.0, 0.0, 0.5, 0.5]
    """
    before = question[max(0, value.pos - 80):value.pos]
    if re.search(r"(?<![\w-])" + re.escape(param) + r"\s*[=:]\s*[\"'`“]?$", before):
        return 3.0
    name = {stem(w) for w in words(param)}
    return len(name & {stem(w) for w in words(before)[-4:]}) / max(len(name), 1)


def lookup_arguments(schema: dict, question: str, skip: frozenset = frozenset()) -> tuple[dict, bool]:
    """Arguments for one tool from the question alone, and whether every required parameter got one.
    Values go to the parameters they are most surely anchored to first (:func:`_anchor`), each place a
    value is written to one parameter; an optional parameter only from an anchored value. A required
    parameter left over takes the first value of its type not yet given (a path-like one first when its
    name says path or file), else its default, else the tool cannot be called from the question alone.
    A required flag is off. ``skip``: strings that are not inputs (the answer's keys)."""
    values = [v for v in question_values(question) if not (v.kind == "quoted" and v.value in skip)]
    props = {p: (s if isinstance(s, dict) else {}) for p, s in (schema.get("properties") or {}).items()}
    required = [p for p in props if p in set(schema.get("required") or [])]
    flags = [p for p in props if _schema_type(props[p]) == "boolean"]
    cands = {p: _candidates(props[p], question, values) for p in props if p not in flags}
    pairs = sorted(((-_anchor(p, v, question), i, v.pos, p, v, given) for i, p in enumerate(cands)
                    for v, given in cands[p]), key=lambda t: t[:3])
    args, taken = {}, set()
    for neg, _, _, p, v, given in pairs:
        if -neg >= ANCHORED and p not in args and v.pos not in taken:
            args[p] = given
            taken.add(v.pos)
    complete = True
    for p in (p for p in required if p not in args):
        pathish = bool({stem(w) for w in words(p)} & _PATH_WORDS)
        rest = sorted((c for c in cands.get(p, []) if c[0].pos not in taken),
                      key=lambda c: (pathish and "/" not in str(c[0].value), c[0].pos))
        if rest:
            args[p] = rest[0][1]
            taken.add(rest[0][0].pos)
        elif p in flags or "default" in props[p]:
            args[p] = props[p].get("default", False)
        else:
            complete = False
    return args, complete


# -- answers --------------------------------------------------------------------------------------------


def _leaf_words(path: str, tool: str) -> tuple[set, set]:
    """A result leaf's key words (its last key; the tool's name and ``result`` for a bare result) and all its
    words (every key and index of its path, and the tool's name), stemmed."""
    keys = [p for p in path.split(".") if p and not p.isdigit()]
    key = {stem(w) for w in (words(keys[-1]) if keys else words(tool) + ["result"])}
    return key, {stem(w) for w in words(path) + words(tool)} | key


def stated_paths(text: str) -> set[str]:
    """The result paths a text writes out, as :func:`~.results.leaves` names them (``rows[2].name`` ->
    ``rows.2.name``): a recipe question's field descriptions point at their leaves this way.

    >>> sorted(stated_paths("the name at [3].name, the result at length[27]"))
    ['3.name', 'length.27']
    """
    return {re.sub(r"\[(\d+)\]", r".\1", m.group()).lstrip(".") for m in _STATED_PATH.finditer(text or "")}


def lookup_answer(fields: dict, results: list[tuple[str, Any]]) -> dict:
    """Each answer field from the ``(tool, value)`` results, among the leaves of its type: the leaf at a path
    its description writes out (those fields first), else the leaf whose key shares most words with the
    field's name (then with its name and description, then the earliest); the first leaf of that type when
    no key shares a word. Each leaf answers one field (``name_2`` gets the next ``name``).

    >>> lookup_answer({"city": {"type": "string", "description": "the city"}}, [("t", {"n": 2, "city": "Oslo"})])
    {'city': 'Oslo'}
    """
    pool = [(i, path, v, *_leaf_words(path, tool)) for i, (tool, value) in enumerate(results)
            for path, v in leaves(value) if v is not None]
    paths = {name: stated_paths(spec.get("description") or "") for name, spec in fields.items()}
    held = {leaf[1] for leaf in pool}
    answer = {}
    for name in sorted(fields, key=lambda n: not paths[n] & held):
        typ = fields[name].get("type")
        same = [leaf for leaf in pool if json_type(leaf[2]) == typ
                or {json_type(leaf[2]), typ} <= {"integer", "number"}]
        base = {stem(w) for w in words(re.sub(r"_\d+$", "", name))}
        told = base | {stem(w) for w in words(fields[name].get("description") or "") if not w.isdigit()}
        best = min(same, key=lambda leaf: (leaf[1] not in paths[name], -len(base & leaf[3]), -len(told & leaf[4]),
                                           leaf[0]), default=None)
        answer[name] = best[2] if best is not None else None
        if best is not None:
            pool.remove(best)
    return {name: answer[name] for name in fields}


# -- the policy -----------------------------------------------------------------------------------------


def tool_index(offered: list[str], descriptions: dict[str, str]) -> BM25:
    """BM25 over the offered tools' names and descriptions, in offered order."""
    return BM25([words(t.split("/", 1)[1]) + words(descriptions.get(t, "")) for t in offered])


def rank_tools(question: str, offered: list[str], descriptions: dict[str, str], index: BM25 | None = None) -> list[str]:
    """The offered tools, best first: those the question names verbatim, in the order it names them, then
    the rest by BM25 of the question against the tool's name and description (ties in offered order).
    ``index``: :func:`tool_index` of the same ``offered`` (built here when not given)."""
    names = {t.split("/", 1)[1].lower(): t for t in offered}
    named = list(dict.fromkeys(names[w.lower()] for w in _IDENTIFIER.findall(question) if w.lower() in names))
    index = index if index is not None else tool_index(offered, descriptions)
    return named + [offered[i] for i in index.rank(words(question)) if offered[i] not in named]


def make_lookup_policy(tool_schemas: dict[str, dict], descriptions: dict[str, str]) -> Callable:
    """The ``lookup`` policy (module docstring): the top-ranked tools whose required arguments the question
    holds, as many as the gold chain has calls (the budget ``random`` gets too), each at most once, in rank
    order; then each answer field from their results."""
    indexes: dict[tuple, BM25] = {}   # many tasks are offered the same tools

    def lookup_policy(task: dict, episode, rng: random.Random | None = None) -> dict:
        skip = frozenset(task["answer_schema"])
        planned = []
        offered = tuple(task["tools"])
        if offered not in indexes:
            indexes[offered] = tool_index(list(offered), descriptions)
        for tool in rank_tools(task["question"], list(offered), descriptions, indexes[offered]):
            args, complete = lookup_arguments(tool_schemas[tool], task["question"], skip)
            if complete:
                planned.append((tool, args))
            if len(planned) == len(task["gold_calls"]):
                break
        results = []
        for tool, args in planned:
            server, name = tool.split("/", 1)
            result = episode.step(server, name, args)
            if not result["is_error"]:
                results.append((name, value_of(result)))
        return lookup_answer(task["answer_schema"], results)

    return lookup_policy
