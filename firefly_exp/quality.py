"""Task quality checks: does a question state a goal, and does its answer carry information?

A task that names its tools, numbers its steps and points at values by JSON path teaches a policy to
copy a recipe; an answer that is a write confirmation or an echo of an argument teaches nothing. Each
check below is computed per task from the task alone (plus the run's tool catalog), and
:func:`quality_by_split` turns them into rates per split (``train``, ``test``, ``all``): the dataset
stage puts them in ``stats.json``, the dataset card and ``summary.json`` (``tasks.quality.<split>.*``,
see docs/summary-keys.md). They apply to any synthesizer's tasks, so recipe and goal wordings are
compared on one scale.

The rules, precisely (each function's docstring has examples):

- **tool name leak**: the question holds, as a whole token (case-insensitive, not inside a longer
  word, ``_`` or ``-`` run), the name of an offered tool (``task["tools"]`` and the gold tools), its
  ``server/tool`` or ``server__tool`` form, or a server id of those tools; ``_`` and ``-`` are
  interchangeable (``convert-volume`` counts for ``convert_volume``). Only *identifier* names count:
  ones with ``_``, ``-``, ``/``, a digit or an inner capital. A plain word (``calculate``, ``query``,
  server ids ``git``, ``time``, ``memory``) cannot be told from ordinary speech ("What time is it in
  Tokyo?"), and neither can the words of a name written apart ("list the tables" for
  ``list_tables``): a user asking plainly says them, so they do not count.
- **step structure**: ``Step 1``/``step two``, ``the first step``, a numbered list item (``1.`` or
  ``1)`` opening the question or a sentence), or a sequencing word followed by an instruction to call
  (``first call``, ``then call``, ``next, invoke``, ``finally run``). "Convert 250 cups to liters, then
  report ..." is a goal, not a step.
- **path leak**: a bracket index (``[0].name``, ``rows[2]``), a dotted key path of one of the task's
  gold results (``source.timezone``, ``rows.0.name``; keys that are identifiers, two parts or more),
  a ``key=value`` whose key is a parameter of a gold call (``from_unit="cup"``), or JSON-schema text
  (``"type": "string"``, ``"properties":``, ``inputSchema``). Answer-format hints such as
  ``"city" (string)`` are not schema text.
- **confirmation answer**: an answer field whose source call (its ``provenance`` step) is a
  state-changing tool (catalog ``read_only`` false) and whose value is a boolean, a status text
  (``Successfully wrote to ...``, ``Created branch 'x' from 'main'``, ``Records updated
  successfully``, ``OK``) or sits under a status key (``message``, ``success``, ``status``, ...).
  The id of a created record is not a confirmation.
- **echo answer**: an answer field whose value, normalised (:func:`firefly_exp.results.normalise`),
  equals a scalar inside an argument of any gold call. Booleans are left out: one of two values,
  equal by chance.
- **tool recall@5**: the run's tools ranked by BM25 of the question against each tool's name and
  description (ties by tool id); the share of the task's distinct gold tools in the top 5. A question
  that hides the names must still point at its tools, or it cannot be solved.

Rates: ``*_leak_rate``/``step_structure_rate``/``single_call_share`` over tasks;
``confirmation_answer_rate``/``echo_answer_rate`` over answer fields, with ``confirmation_task_rate``/
``echo_task_rate`` the share of tasks with at least one such field; ``error_answer_rate`` the share of
answer fields that read as an error message and ``placeholder_task_rate`` the share of tasks whose every
argument is a type default (:func:`placeholder_task`); means over tasks. A split with no task has
``None`` rates.
"""

from __future__ import annotations

import functools

import json
import re
from typing import Any, Iterable

from . import lexical
from .answers import error_text
from .results import leaves, normalise, value_of

SPLITS = ("train", "test", "all")
TOP_K = 5

# -- tool and server names ------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[_\-/\d]|[a-z][A-Z]")


def is_identifier(name: str) -> bool:
    """Whether a name reads as code rather than as a word (only such names are counted as leaks).

    >>> [is_identifier(n) for n in ("convert_volume", "time-node", "readFile", "calculate", "git")]
    [True, True, True, False, False]
    """
    return bool(_IDENTIFIER.search(name))


@functools.lru_cache(maxsize=256)   # tasks of one run share their offered tools
def _name_forms(tools: tuple[str, ...]) -> frozenset[str]:
    """The leak-counted spellings of tools (``server/name`` ids) and of their servers."""
    forms: set[str] = set()
    for tool in tools:
        server, name = tool.split("/", 1)
        for n in (name, server, tool, f"{server}__{name}"):
            if is_identifier(n):
                forms |= {n, n.replace("_", "-"), n.replace("-", "_")}
    return frozenset(forms)


def names_leaked(question: str, tools: Iterable[str]) -> list[str]:
    """The counted names of ``tools`` (and their servers) that the question holds, sorted.

    >>> tools = ["unit-converter/convert_volume", "git/git_log", "calculator/calculate"]
    >>> names_leaked("Step 1: call convert_volume with value=250.", tools)
    ['convert_volume']
    >>> names_leaked("Use the unit_converter server, then git-log.", tools)
    ['git-log', 'unit_converter']
    >>> names_leaked("Convert 250 cups to liters, then calculate the git log length.", tools)
    []
    """
    low = question.casefold()
    return sorted(f for f in _name_forms(tuple(tools)) if f.casefold() in low    # the substring test first: cheap
                  and re.search(rf"(?<![\w-]){re.escape(f.casefold())}(?![\w-])", low))


def offered_tools(task: dict) -> list[str]:
    """The tools a task offers: its ``tools`` and its gold tools."""
    return sorted(set(task["tools"]) | {tool_of(c) for c in task["gold_calls"]})


# -- step structure -------------------------------------------------------------------------------------

_NUMBER_WORDS = r"(?:one|two|three|four|five|six|seven|eight|nine|ten)"
_ORDINALS = r"(?:first|second|third|fourth|fifth|sixth|next|last|final|previous)"
STEP_PATTERNS = (
    re.compile(rf"\bsteps?\s*(?:\d+|{_NUMBER_WORDS})\b", re.I),                       # Step 1, step two
    re.compile(rf"\b{_ORDINALS}\s+step\b", re.I),                                     # the first step
    re.compile(r"(?:^|[.!?:;]\s+|\n\s*)\(?\d{1,2}[.)]\s+[A-Za-z]"),                   # 1. Run ... / 2) Read
    # "then call X": an instruction to call; "Next, execute a SELECT query" is not one (execute and run are
    # what a user asks of a database or a script, in the tools' own descriptions)
    re.compile(r"\b(?:first|then|next|finally|afterwards|after that)\s*,?\s+(?:call|invoke)\b", re.I),
)


def step_structure(question: str) -> bool:
    """Whether the question lays the work out as numbered or sequenced tool-call steps.

    >>> step_structure("Step 1: call convert_volume with value=250. Step 2: use read_query.")
    True
    >>> step_structure("Using the tools, do this. 1. Run list_tables (list the tables).")
    True
    >>> step_structure("First call the converter, then call the calculator.")
    True
    >>> step_structure("Convert 250 cups to liters, then report how many rows the first table holds.")
    False
    >>> step_structure("Create a table of reviews. Next, execute a SELECT query on the database.")
    False
    >>> step_structure("It costs 2.50 dollars. What is 3 + 1.5 in total?")
    False
    """
    return any(p.search(question) for p in STEP_PATTERNS)


# -- paths, key=value and schema text -------------------------------------------------------------------

_INDEX = re.compile(r"\[\d+\]")
_SCHEMA = re.compile(r'"(?:type|properties|required|items|enum|additionalProperties|\$schema)"\s*:'
                     r"|\b(?:inputSchema|outputSchema)\b|\$schema\b")
_KEY = re.compile(r"^[A-Za-z_][\w-]*$")


def key_paths(value: Any, prefix: tuple = ()) -> set[str]:
    """The dotted key paths (two parts or more, made of identifier keys and list indexes) inside a value.

    >>> sorted(key_paths({"rows": [{"name": "a"}], "/tmp/a.py": {"size": 1}, "n": 2}))
    ['rows.0', 'rows.0.name']
    """
    out: set[str] = set()
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(k, str) and not _KEY.match(k):
            continue
        path = (*prefix, str(k))
        if len(path) >= 2 and not path[0].isdigit():
            out.add(".".join(path))
        out |= key_paths(v, path)
    return out


def tool_of(call: dict) -> str:
    return f"{call['server']}/{call['tool']}"


def schema_params(row: dict) -> list[str]:
    """The parameter names of a catalog row's input schema (a JSON string, or already parsed)."""
    schema = row["input_schema"]
    schema = json.loads(schema) if isinstance(schema, str) else schema
    return list((schema or {}).get("properties") or {})


def path_leaks(task: dict, catalog: dict[str, dict]) -> list[str]:
    """What in the question is a JSON path, a ``key=value`` of a gold parameter or schema text.

    >>> task = {"question": 'Step 2: call x with name set to the value at [0].name, limit=5.',
    ...         "gold_calls": [{"server": "s", "tool": "x", "arguments": {"name": "a", "limit": 5}}],
    ...         "gold_results": [{"structured": {"source": {"timezone": "UTC"}}}]}
    >>> catalog = {"s/x": {"input_schema": '{"properties": {"name": {}, "limit": {}, "offset": {}}}'}}
    >>> path_leaks(task, catalog)
    ['[0]', 'limit=']
    >>> path_leaks({**task, "question": "Is source.timezone set? offset=2. Use inputSchema."}, catalog)
    ['inputSchema', 'offset=', 'source.timezone']
    >>> path_leaks({**task, "question": "Read /sandbox/files/a.py and give 2.5 rows of limit 5."}, catalog)
    []
    """
    q = task["question"]
    found = [m.group(0) for m in _INDEX.finditer(q)] + [m.group(0) for m in _SCHEMA.finditer(q)]
    params = {k for c in task["gold_calls"] for k in [*c["arguments"], *schema_params(catalog[tool_of(c)])]}
    found += [f"{p}=" for p in sorted(params)
              if p in q and re.search(rf"(?<![\w.-]){re.escape(p)}\s*=(?!=)\s*\S", q)]
    paths = {p for r in task["gold_results"] for p in key_paths(value_of(r))}
    found += [p for p in sorted(paths) if p in q and re.search(rf"(?<![\w.]){re.escape(p)}(?!\w)", q)]
    return sorted(set(found))


# -- answers --------------------------------------------------------------------------------------------

_WRITE_WORDS = (r"(?:created|updated|deleted|removed|saved|wrote|written|added|inserted|moved|renamed|committed|"
                r"staged|reset|switched|applied|edited|appended|cleared|stored|changed)")
CONFIRMATION = re.compile(rf"^(?:successfully|success|ok|okay|done)\b|\bsuccessfully\b|^{_WRITE_WORDS}\b"
                          rf"|^(?:\S+\s+){{0,3}}{_WRITE_WORDS}\.?$", re.I)
STATUS_KEYS = frozenset({"message", "msg", "success", "ok", "status", "result", "affected_rows", "rows_affected",
                         "rowcount", "changes", "updated", "deleted", "created", "inserted"})


def is_confirmation(value: Any, path: str, mutating: bool) -> bool:
    """Whether an answer value read from a call only confirms that call's write.

    >>> is_confirmation("Successfully wrote to /sandbox/files/docs/summary.txt", "content", True)
    True
    >>> [is_confirmation(v, "", True) for v in ("Created branch 'id' from 'main'", "Table created", "true")]
    [True, True, True]
    >>> is_confirmation("Records updated successfully", "message", True), is_confirmation(7, "insertedId", True)
    (True, False)
    >>> is_confirmation("Added README", "0.message", False), is_confirmation("feature/login", "", True)
    (False, False)
    """
    if not mutating:
        return False
    v = normalise(value)
    if isinstance(v, bool):
        return True
    key = path.split(".")[-1].casefold()
    return key in STATUS_KEYS or (isinstance(v, str) and bool(CONFIRMATION.search(v)))


def confirmation_fields(task: dict, catalog: dict[str, dict]) -> list[str]:
    """The task's answer fields that confirm a write (:func:`is_confirmation`), by their provenance step."""
    out = []
    for name, value in task["answer"].items():
        prov = task["provenance"][name]
        call = task["gold_calls"][prov["step"]]
        if is_confirmation(value, prov["path"], not catalog[tool_of(call)]["read_only"]):
            out.append(name)
    return out


#: the explorer's non-numeric type defaults (explorer/proposal.py ``_type_default``): what a text, list or
#: object parameter gets when nothing told the proposer a value (a number's default, 1, is too often meant)
PLACEHOLDERS = frozenset(normalise(v) for v in ("example", "", [], {}, ["example"]))


def placeholder_task(task: dict) -> bool:
    """Whether every argument of every gold call is a placeholder (a type default such as ``"example"``),
    at least one argument given: a task built on what no description or result suggested.

    >>> placeholder_task({"gold_calls": [{"arguments": {"country": "example", "tags": []}}]})
    True
    >>> placeholder_task({"gold_calls": [{"arguments": {"country": "FR", "n": 1}}, {"arguments": {}}]})
    False
    >>> placeholder_task({"gold_calls": [{"arguments": {}}]})   # a tool that needs nothing
    False
    >>> placeholder_task({"gold_calls": [{"arguments": {"files": [{"contents": "example"}]}}]})   # built of defaults
    True
    """
    args = [v for c in task["gold_calls"] for v in (c.get("arguments") or {}).values()]
    return bool(args) and all(_placeholder(v) for v in args)


def _placeholder(value) -> bool:
    """A type default, or an object or array made of type defaults only."""
    if isinstance(value, (dict, list)) and value:
        return all(_placeholder(v) for v in (value.values() if isinstance(value, dict) else value))
    return normalise(value) in PLACEHOLDERS


def error_fields(task: dict) -> list[str]:
    """The answer fields whose value reads as an error message (:func:`firefly_exp.answers.error_text`)."""
    return [k for k, v in task["answer"].items() if error_text(v)]


def echo_fields(task: dict) -> list[str]:
    """The task's answer fields whose value (normalised) is a scalar inside a gold call's arguments.

    >>> task = {"answer": {"path": "/A.txt ", "size": 3, "ok": True, "n": 2},
    ...         "gold_calls": [{"arguments": {"files": [{"path": "/a.txt"}], "ok": True, "n": "3"}}]}
    >>> echo_fields(task)
    ['path', 'size']
    """
    given = {normalise(s) for c in task["gold_calls"] for _, s in leaves(c["arguments"])}
    return [k for k, v in task["answer"].items()
            if not isinstance(normalise(v), bool) and normalise(v) is not None and normalise(v) in given]


# -- BM25 tool retrieval --------------------------------------------------------------------------------

STOPWORDS = frozenset("a an and are as at be by do does for from has have how i in is it its me my of on or "
                      "the that this to what when where which who with you your".split())


class BM25:
    """The run's tools ranked by :class:`firefly_exp.lexical.BM25` (the one lexical retriever of the
    project, also the ``lookup`` policy's) of a question against each tool's text, stopwords dropped.

    >>> docs = {"u/convert_volume": "Convert volume between units", "s/list_tables": "List all tables",
    ...         "s/read_query": "Run a SELECT query on the database"}
    >>> BM25(docs).rank("How many liters are 250 cups? Convert the volume.")[0]
    'u/convert_volume'
    >>> BM25(docs).rank("nothing matches")   # all scores 0: the ids in order
    ['s/list_tables', 's/read_query', 'u/convert_volume']
    """

    def __init__(self, docs: dict[str, str]):
        self.ids = sorted(docs)
        self.index = lexical.BM25([_terms(docs[i]) for i in self.ids])

    def rank(self, query: str) -> list[str]:
        """The ids, best first; equal scores in id order (deterministic)."""
        return [self.ids[i] for i in self.index.rank(_terms(query))]


def _terms(text: str) -> list[str]:
    return [w for w in lexical.words(text) if w not in STOPWORDS]


def tool_documents(catalog: dict[str, dict]) -> dict[str, str]:
    """Each tool's retrieval text: its name and its description."""
    return {tool: f"{tool.split('/', 1)[1]} {row['description']}" for tool, row in catalog.items()}


def recall_at_k(task: dict, index: BM25, k: int = TOP_K) -> float:
    """The share of the task's distinct gold tools among the ``k`` tools its question ranks first."""
    gold = {tool_of(c) for c in task["gold_calls"]}
    top = set(index.rank(task["question"])[:k])
    return len(gold & top) / max(len(gold), 1)


# -- per task and per split -----------------------------------------------------------------------------


def task_checks(task: dict, catalog: dict[str, dict], index: BM25) -> dict:
    """One task's checks: the three question flags, the answer-field counts, its calls and recall@5."""
    return {"tool_name_leak": bool(names_leaked(task["question"], offered_tools(task))),
            "step_structure": step_structure(task["question"]),
            "path_leak": bool(path_leaks(task, catalog)),
            "answer_fields": len(task["answer"]),
            "confirmation_fields": len(confirmation_fields(task, catalog)),
            "echo_fields": len(echo_fields(task)),
            "error_fields": len(error_fields(task)),
            "placeholder": placeholder_task(task),
            "calls": len(task["gold_calls"]),
            "recall_at_5": recall_at_k(task, index)}


def rates(checks: list[dict]) -> dict:
    """The rates of a list of :func:`task_checks` (``None`` for an empty list).

    >>> c = {"tool_name_leak": True, "step_structure": False, "path_leak": False, "answer_fields": 2,
    ...      "confirmation_fields": 1, "echo_fields": 0, "error_fields": 0, "placeholder": False, "calls": 1,
    ...      "recall_at_5": 1.0}
    >>> r = rates([c, {**c, "tool_name_leak": False, "answer_fields": 2, "confirmation_fields": 0, "calls": 3}])
    >>> r["tool_name_leak_rate"], r["confirmation_answer_rate"], r["confirmation_task_rate"], r["single_call_share"]
    (0.5, 0.25, 0.5, 0.5)
    >>> rates([])["tasks"], rates([])["echo_answer_rate"]
    (0, None)
    """
    n, fields = len(checks), sum(c["answer_fields"] for c in checks)

    def share(values, total):
        return round(sum(values) / total, 4) if total else None

    return {"tasks": n,
            "tool_name_leak_rate": share((c["tool_name_leak"] for c in checks), n),
            "step_structure_rate": share((c["step_structure"] for c in checks), n),
            "path_leak_rate": share((c["path_leak"] for c in checks), n),
            "confirmation_answer_rate": share((c["confirmation_fields"] for c in checks), fields),
            "confirmation_task_rate": share((c["confirmation_fields"] > 0 for c in checks), n),
            "echo_answer_rate": share((c["echo_fields"] for c in checks), fields),
            "echo_task_rate": share((c["echo_fields"] > 0 for c in checks), n),
            "error_answer_rate": share((c["error_fields"] for c in checks), fields),
            "placeholder_task_rate": share((c["placeholder"] for c in checks), n),
            "answer_fields_mean": share((c["answer_fields"] for c in checks), n),
            "single_call_share": share((c["calls"] == 1 for c in checks), n),
            "calls_per_task_mean": share((c["calls"] for c in checks), n),
            "tool_recall_at_5": share((c["recall_at_5"] for c in checks), n)}


def quality_by_split(tasks: list[dict], catalog: dict[str, dict]) -> dict[str, dict]:
    """The :func:`rates` of the tasks per split and over all (``{"train": ..., "test": ..., "all": ...}``);
    ``catalog``: every tool of the run by id (description, read_only, input_schema), the BM25 corpus."""
    index = BM25(tool_documents(catalog))
    checks = [(t["split"], task_checks(t, catalog, index)) for t in tasks]
    return {s: rates([c for split, c in checks if s in ("all", split)]) for s in SPLITS}
