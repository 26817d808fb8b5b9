"""Reading values out of MCP tool results, and comparing answers.

A result's *value* is its structured content when the server sent one, else its text parsed as
JSON when it is JSON, else the text itself. Leaves of that value are addressed by paths such as
``source.datetime`` or ``rows.0.name``.

    >>> value_of({"content": [{"type": "text", "text": '{"a": {"b": [1, 2]}}'}]})
    {'a': {'b': [1, 2]}}
    >>> leaves({'a': {'b': [1, 2]}})
    [('a.b.0', 1), ('a.b.1', 2)]
    >>> answers_match("  Paris ", "paris"), answers_match("3.0", 3)
    (True, True)
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

_MISSING = object()


def result_text(result: dict) -> str:
    return "\n".join(c.get("text", "") for c in result.get("content") or [] if c.get("type") == "text")


def _parse(text: str) -> Any:
    text = text.strip()
    if not text:
        return text
    if text[0] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            try:  # some servers print Python reprs
                value = ast.literal_eval(text)
                if isinstance(value, (list, dict)):
                    return value
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                pass
    return text


def value_of(result: dict) -> Any:
    """The JSON value of a recorded result (see module docstring)."""
    structured = result.get("structured")
    if structured is None:
        structured = result.get("structuredContent")
    if structured is not None:
        # FastMCP wraps non-object returns as {"result": ...}
        if isinstance(structured, dict) and set(structured) == {"result"}:
            inner = structured["result"]
            return _parse(inner) if isinstance(inner, str) else inner
        return structured
    texts = [c.get("text", "") for c in result.get("content") or [] if c.get("type") == "text"]
    if len(texts) > 1:
        return [_parse(t) for t in texts]
    return _parse(texts[0]) if texts else None


def leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """All scalar leaves of a JSON value with their dotted paths (a bare scalar has path '')."""
    out: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(leaves(v, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out.append((prefix, value))
    return out


def get_path(value: Any, path: str, default: Any = _MISSING) -> Any:
    """Follow a dotted path into a JSON value; '' is the value itself. A key holding dots (a file name
    keyed results: ``{"/docs/notes.md": {...}}``) is found too, as :func:`leaves` wrote it.

    >>> get_path({"/a/notes.md": {"ranges": [{"end": 8}]}}, "/a/notes.md.ranges.0.end")
    8
    """
    if path == "":
        return value
    cur, parts, i = value, path.split("."), 0
    while i < len(parts):
        part = parts[i]
        if isinstance(cur, dict) and part in cur:
            cur, i = cur[part], i + 1
            continue
        if isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur, i = cur[int(part)], i + 1
            continue
        joined = next((j for j in range(i + 2, len(parts) + 1) if ".".join(parts[i:j]) in cur), None) \
            if isinstance(cur, dict) else None
        if joined is None:
            if default is _MISSING:
                raise KeyError(path)
            return default
        cur, i = cur[".".join(parts[i:joined])], joined
    return cur


def normalise(value: Any) -> Any:
    """The form answers are compared in: numbers as floats, text trimmed, spaced and casefolded."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = re.sub(r"\s+", " ", value.strip()).casefold()
        try:
            f = float(s)
            if math.isfinite(f):
                return f
        except ValueError:
            pass
        if s in ("true", "false"):
            return s == "true"
        return s
    if value is None:
        return None
    return json.dumps(value, sort_keys=True)


def answers_match(expected: Any, got: Any) -> bool:
    a, b = normalise(expected), normalise(got)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def json_type(value: Any) -> str:
    """The JSON-schema type of a value.

    >>> [json_type(v) for v in (True, 3, 2.5, "a", None, [1], {})]
    ['boolean', 'integer', 'number', 'string', 'null', 'array', 'object']
    """
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string" if value is not None else "null"


def field_name(path: str, taken: set[str] | None = None) -> str:
    """A readable answer-field name for a leaf path: ``rows.0.city`` -> ``city``."""
    parts = [p for p in path.split(".") if p and not p.isdigit()]
    base = re.sub(r"[^0-9a-zA-Z]+", "_", parts[-1] if parts else "result").strip("_").lower() or "result"
    if base[0].isdigit():
        base = "f_" + base
    name, i = base, 2
    while taken is not None and name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


_ERROR_OPENING = re.compile(r"^\W*(?:[\w-]+\s+){0,2}(?:error|exception|traceback)\b|^\W*(?:failed to|invalid)\b",
                            re.IGNORECASE)


_FAILED_STATUS = {"error", "failed", "failure", "fail", "err"}


def error_shaped(value: Any) -> bool:
    """Whether a result that came back as a success is shaped as a failure at its top level: a
    ``status``/``state``/``outcome`` of error or failed, a non-empty ``error`` entry (a number is an
    error *estimate*, not a failure), ``success``/``ok`` false, or a text that opens like an error; or
    results per item (keyed by path or id) that all failed so.

    >>> [error_shaped(v) for v in ({"status": "error", "message": "Request not found"}, {"error": "no such id"},
    ...                            {"success": False, "reason": "x"}, {"error": None, "rows": 3},
    ...                            {"value": 1.41, "error": 0.002}, {"status": "ok"}, "Failed to open x", [1])]
    [True, True, True, False, False, False, True, False]
    >>> error_shaped({"/a.txt": {"result": "error", "reason": "Empty patches list"}}), error_shaped(
    ...     {"/a.txt": {"result": "error"}, "/b.txt": {"result": "ok"}})
    (True, False)
    """
    if isinstance(value, str):
        return looks_like_error(value)
    if not isinstance(value, dict):
        return False
    if value and all(isinstance(v, dict) and v for v in value.values()) and not (
            {str(k).lower() for k in value} & {"status", "state", "outcome", "result", "error", "success", "ok"}):
        return all(error_shaped(v) for v in value.values())   # results per item, every one failed
    low = {str(k).lower(): v for k, v in value.items()}
    for key in ("status", "state", "outcome", "result"):
        if isinstance(low.get(key), str) and low[key].strip().lower() in _FAILED_STATUS:
            return True
    for key in ("error", "errors", "exception"):
        v = low.get(key)
        if v in (None, "", False, [], {}) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            continue
        return True
    return any(low.get(key) is False for key in ("success", "ok", "succeeded"))


def looks_like_error(text: str) -> bool:
    """A result whose text opens like an error message.

    >>> [looks_like_error(t) for t in ("Error: Only SELECT", "Database error: near", "3 rows", "No errors found")]
    [True, True, False, False]
    """
    return bool(_ERROR_OPENING.match(text.strip()))
