"""How a template question is worded: phrase templates per step, per DAG shape and per answer type,
the given arguments written out, and each answer field named so that only the label answers it.

The random choices come from the ``rng`` the caller derives from the seed and the task's
coordinates, so the same trajectory is always worded the same way.
"""

from __future__ import annotations

import json
from typing import Any

from ..results import leaves

INTROS = ["Using the available tools, do the following.", "Work through these steps with the tools provided.",
          "You have access to several tools. Complete this task.", "Please carry out this workflow."]
STEP_FORMS = ["Step {n}: call {tool} ({desc}){args}.", "Step {n}: use {tool} to {desc_lc}{args}.",
              "{n}. Run {tool}{args} ({desc_lc})."]
ASK_FORMS = ["Answer with a JSON object with the fields: {fields}.",
             "Report the result as JSON with these fields: {fields}.",
             "Return a JSON object containing {fields}."]
# more wording per DAG shape (one call / a chain of calls) and per answer type (all fields of one type)
SHAPE_INTROS = {"single": ["Look this up with the tools available.", "One tool call answers this."],
                "chain": ["Each step below uses what the earlier ones returned; do them in order.",
                          "This takes several tool calls in sequence."]}
TYPE_ASKS = {"number": ["Give the numbers as a JSON object with {fields}.",
                        "Reply with JSON holding these numeric values: {fields}."],
             "boolean": ["Say, as a JSON object of true/false values, {fields}."],
             "string": ["Quote the values exactly, as a JSON object with {fields}.",
                        "Reply with a JSON object whose text fields are {fields}."]}


def _describe(desc: str) -> str:
    first = (desc or "").split(". ")[0].strip().rstrip(".")
    return (first[:110] + "...") if len(first) > 110 else first or "no description"


def _arg_text(call: dict, steps_by_seq: dict[int, int]) -> str:
    parts = []
    for name, value in call["arguments"].items():
        src = (call.get("arg_sources") or {}).get(name, "")
        if src.startswith(("edge:", "pool:")):
            _, step, path = src.split(":", 2)
            where = f"{describe_path(path)} in the result" if path else "the result"
            parts.append(f"{name} set to {where} of step {int(step) + 1}")
        else:
            parts.append(f"{name}={json.dumps(value, ensure_ascii=False)}")
    return (" with " + ", ".join(parts)) if parts else ""


def describe_path(path: str) -> str:
    """Where in a result a value sits, unambiguously.

    >>> describe_path("rows.2.name"), describe_path("0")
    ('the value at rows[2].name', 'the value at [0]')
    """
    return f"the value at {path_text(path)}"


def path_text(path: str) -> str:
    """A leaf path as written in questions: ``rows.2.name`` -> ``rows[2].name``."""
    out = ""
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def field_description(result_value: Any, path: str, tool: str, step: int) -> str:
    """How a question names an answer field: by its key, and by its place too when the result holds that
    key more than once with different values (rows of a table, nested objects), so the label is the only
    right answer.

    >>> rows = [{"name": "orders"}, {"name": "customers"}]
    >>> field_description(rows, "1.name", "list_tables", 1)
    'the name at [1].name returned by list_tables in step 1'
    >>> field_description({"n": 3}, "n", "count", 2)
    'the n returned by count in step 2'
    """
    values = {json.dumps(v, sort_keys=True, default=str) for p, v in leaves(result_value) if path_key(p) == path_key(path)}
    where = f" at {path_text(path)}" if path and len(values) > 1 else ""
    return f"the {path_key(path) or 'result'}{where} returned by {tool} in step {step}"


def path_key(path: str) -> str:
    """The key a leaf path ends in; "" for the whole result or an element of a list.

    >>> path_key("rows.2.name"), path_key("rows.2"), path_key("")
    ('name', '', '')
    """
    last = path.split(".")[-1]
    return "" if last.isdigit() else last


def template_question(gold: list[dict], tools: dict, fields: dict, rng) -> str:
    lines = [rng.choice(INTROS + SHAPE_INTROS["single" if len(gold) == 1 else "chain"])]
    for i, call in enumerate(gold):
        row = tools[f"{call['server']}/{call['tool']}"]
        desc = _describe(row["description"])
        lines.append(rng.choice(STEP_FORMS).format(
            n=i + 1, tool=call["tool"], desc=desc, desc_lc=desc[:1].lower() + desc[1:],
            args=_arg_text(call, {})))
    # each field name quoted as it must appear in the answer's JSON (a policy copies the same characters)
    field_text = "; ".join(f"{json.dumps(name)} ({spec['type']}): {spec['description']}" for name, spec in fields.items())
    types = {"number" if spec["type"] in ("integer", "number") else spec["type"] for spec in fields.values()}
    asks = ASK_FORMS + (TYPE_ASKS.get(types.pop(), []) if len(types) == 1 else [])
    lines.append(rng.choice(asks).format(fields=field_text))
    return " ".join(lines)
