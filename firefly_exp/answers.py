"""Answer-field rules: which leaves of a recorded result a task may ask for.

Shared by the graph (a tool whose probe result holds such a leaf can end a sub-DAG: node
``answers``) and the synthesizer (a task's answer fields), so both apply one rule: a short scalar
from a successful call of a non-volatile tool that the question (or the call's own arguments)
does not give away.

With :class:`Informative` rules (``synthesizer.informative``) a field must also carry information
(:func:`uninformative`): no error text, no confirmation of a write, no echo of an argument, and no
value its tool returns whatever it is asked (:func:`constant_paths`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .results import leaves, looks_like_error, normalise, value_of

#: distinct arguments over which a result path must keep one value to be constant
MIN_INPUTS = 3
_FAILURE = re.compile(r"\b(?:not found|does not exist|no such|permission denied|access denied|unable to|"
                      r"could not|cannot|not allowed|invalid date)\b", re.IGNORECASE)
_NAN = re.compile(r"\bNaN\b")
_SUCCESS = re.compile(r"^\W*success(?:fully)?\b|\b(?:successfully|succeeded)\b", re.IGNORECASE)
_WRITE_VERB = re.compile(
    r"^\W*(?:created|updated|deleted|removed|wrote|written|added|saved|inserted|moved|renamed|committed|"
    r"switched|checked out|staged|copied|appended|edited|replaced|modified|applied|cleared|reset|merged|"
    r"uploaded|stored|registered|done|completed|ok)\b", re.IGNORECASE)
_COUNTED_WRITE = re.compile(r"^\W*\d+\s+\w+(?:\s+\w+)?\s+(?:updated|deleted|inserted|affected|changed|added|"
                            r"removed|created|written)\b", re.IGNORECASE)
_BARE_OK = {"ok", "okay", "success", "done", "completed", "true"}
_ERROR_KEYS = {"error", "errors", "exception", "traceback"}
_STATUS_KEYS = {"status", "result", "state", "outcome"}
_FAILED = {"error", "failed", "failure", "fail"}


def candidate_fields(value: Any, max_len: int) -> list[tuple[str, Any]]:
    """The (path, value) scalar leaves of a result short enough to be an answer (one line, ``max_len``)."""
    out = []
    for path, v in leaves(value):
        if v is None or isinstance(v, (dict, list)):
            continue
        if isinstance(v, str):
            s = v.strip()
            if not s or len(s) > max_len or "\n" in s:
                continue
        out.append((path, v))
    return out


def leaks(value: Any, question: str, strict: bool = False) -> bool:
    """Whether ``value`` can be read off the question. ``strict`` (for values passed along the chain)
    ignores small integers, which the question's step numbers would match."""
    text = normalise(question)
    v = normalise(value)
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, float):
        if strict and v.is_integer() and abs(v) < 10:
            return False
        numbers = {float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", question)}
        return v in numbers
    return len(v) >= 3 and v in text


@dataclass(frozen=True)
class Informative:
    """What the informative rules know about the tool of one call: whether it is read-only (a
    write's bare ``true``/``"OK"`` confirms, it does not inform) and the result paths it always
    answers alike (:func:`constant_paths`)."""

    read_only: bool
    constant: frozenset = frozenset()


def reports_error(value: Any) -> bool:
    """Whether a result that came back as a success says it failed: a status leaf ``error``/``failed``,
    a non-empty ``error`` entry, or ``success``/``ok`` false.

    >>> [reports_error(v) for v in ({"status": "error", "message": "no"}, {"a.txt": {"result": "error"}},
    ...                              {"error": None, "rows": 3}, {"success": False}, {"status": "ok"})]
    [True, True, False, True, False]
    """
    for path, v in leaves(value):
        parts = [p.lower() for p in path.split(".") if p]
        key = parts[-1] if parts else ""
        if key in _STATUS_KEYS and isinstance(v, str) and v.strip().lower() in _FAILED:
            return True
        if set(parts) & _ERROR_KEYS and v not in (None, "", False):
            return True
        if key in ("success", "ok") and v is False:
            return True
    return False


def error_text(value: Any) -> bool:
    """Whether a leaf reads as an error message rather than data.

    >>> [error_text(v) for v in ("Error: no such table", "Failed to open", "Branch 'x' not found",
    ...                          "The timestamp is NaN ms.", "Ada Lovelace", 3)]
    [True, True, True, True, False, False]
    """
    if not isinstance(value, str):
        return False
    return looks_like_error(value) or bool(_FAILURE.search(value) or _NAN.search(value))


def confirmation(path: str, value: Any, read_only: bool) -> bool:
    """Whether a leaf only confirms that a write happened: "... successfully ..." from any tool; from
    a state-changing tool also a leaf opening with a write verb ("Created branch 'x' from 'main'"),
    a count of changed rows ("Updated 1 row", ``rows_affected``) or a bare true/"OK"/"success".

    >>> w = lambda p, v: confirmation(p, v, read_only=False)
    >>> [w("", "Successfully wrote to /sandbox/a.txt"), w("", "Created branch 'x' from 'main'"),
    ...  w("", "3 rows updated"), w("rowsAffected", 1), w("ok", True), w("", "OK"), w("insertedId", 7)]
    [True, True, True, True, True, True, False]
    >>> confirmation("0.message", "Updated README", read_only=True)   # a commit message that a read returned
    False
    """
    if isinstance(value, str) and _SUCCESS.search(value):
        return True
    if read_only:
        return False
    if isinstance(value, bool):
        return True
    key = path.split(".")[-1].lower() if path else ""
    if isinstance(value, (int, float)):
        return "affected" in key or key in ("changes", "updated", "deleted", "inserted", "modified")
    s = str(value).strip()
    return s.lower() in _BARE_OK or bool(_WRITE_VERB.match(s) or _COUNTED_WRITE.match(s))


def echoes(value: Any, arguments: list[str]) -> bool:
    """Whether a string leaf is mostly one of the ``arguments`` (normalised strings of 3+ characters):
    the argument makes up at least half of it, or the value is the argument under a folder (a path
    given relative and returned absolute). A value found within an argument is :func:`leaks`' business.

    >>> echoes("/sandbox/files/docs/a.txt", ["docs/a.txt"]), echoes("Python 3.12 released", ["python"])
    (True, False)
    """
    if not isinstance(value, str):
        return False
    v = normalise(value)
    return isinstance(v, str) and any(a in v and (2 * len(a) >= len(v) or v.endswith("/" + a.lstrip("/")))
                                      for a in arguments)


def _argument_strings(given: str) -> list[str]:
    try:
        parsed = json.loads(given)
    except json.JSONDecodeError:
        return []
    out = [normalise(v) for _, v in leaves(parsed) if isinstance(v, str)]
    return [a for a in out if isinstance(a, str) and len(a) >= 3]


def uninformative(path: str, value: Any, rules: Informative, arguments: list[str]) -> str | None:
    """Why a candidate leaf carries no information (``error_text``, ``write_confirmation``, ``echo``,
    ``constant``), or None when it does."""
    if error_text(value):
        return "error_text"
    if confirmation(path, value, rules.read_only):
        return "write_confirmation"
    if echoes(value, arguments):
        return "echo"
    if path in rules.constant:
        return "constant"
    return None


def answer_fields(call: dict, volatile: bool, max_value_len: int = 80, given: str | None = None,
                  rules: Informative | None = None, dropped: Counter | None = None) -> list[tuple[str, Any]]:
    """The (path, value) leaves of a call's result that can be answer fields: not from a failed call or a
    volatile tool, short scalars, and not an echo of an argument (``given``: the arguments' JSON, by
    default this call's own), which the question would give away. With ``rules``, only informative
    ones (:func:`uninformative`; a result that :func:`reports_error` gives none), each one left out
    counted by reason in ``dropped``."""
    if volatile or call["is_error"]:
        return []
    if given is None:
        given = json.dumps(call["arguments"], ensure_ascii=False, default=str)
    value = value_of(call)
    fields = [(p, v) for p, v in candidate_fields(value, max_value_len) if not leaks(v, given)]
    if rules is None:
        return fields
    dropped = dropped if dropped is not None else Counter()
    if fields and reports_error(value):
        dropped["error_result"] += len(fields)
        return []
    arguments, kept = _argument_strings(given), []
    for p, v in fields:
        reason = uninformative(p, v, rules, arguments)
        if reason:
            dropped[reason] += 1
        else:
            kept.append((p, v))
    return kept


def constant_paths(calls: list[dict], min_inputs: int = MIN_INPUTS) -> dict[str, frozenset]:
    """Per tool (``server/tool``), the result paths whose value was the same in every successful call
    that returned them, over at least ``min_inputs`` distinct arguments: a value the tool gives
    whatever it is asked, which a solver could answer without calling it. Only arguments count: the
    state fingerprint of a call covers every stateful server of its DAG, so a stateless tool would
    look "asked anew" after an unrelated write, and one without parameters is never judged.

    >>> call = lambda a, v: {"server": "u", "tool": "conv", "is_error": False, "arguments": {"x": a},
    ...                      "structured": v}
    >>> constant_paths([call(a, {"kind": "length", "value": 2 * a}) for a in (1, 2, 3)])
    {'u/conv': frozenset({'kind'})}
    >>> constant_paths([call(a, {"kind": "length"}) for a in (1, 2)])   # two inputs: not enough to tell
    {}
    """
    inputs: dict[tuple[str, str], set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for c in calls:
        if c["is_error"]:
            continue
        tool = f"{c['server']}/{c['tool']}"
        seen = json.dumps(c["arguments"], sort_keys=True, default=str)
        for p, v in leaves(value_of(c)):
            inputs.setdefault((tool, p), set()).add(seen)
            values.setdefault((tool, p), set()).add(json.dumps(v, sort_keys=True, default=str))
    out: dict[str, set[str]] = {}
    for key in sorted(inputs):
        if len(inputs[key]) >= min_inputs and len(values[key]) == 1:
            out.setdefault(key[0], set()).add(key[1])
    return {t: frozenset(ps) for t, ps in out.items()}
