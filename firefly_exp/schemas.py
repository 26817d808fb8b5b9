"""Output schemas inferred from observed results, and the value patterns the graph matches on.

Many MCP tools declare no ``outputSchema``. ``infer_output_schemas(calls)`` reads the successful
calls of an earlier exploration (``calls.jsonl`` in an explorer store folder) and writes, per tool,
the JSON schema of what it actually returned: object properties with their types, arrays with their
item schema, and for every scalar field an ``x-pattern`` (path, url, email, date, id, number) read
from the values. The graph stage keeps them in ``inferred_schemas.parquet`` next to its edges.

>>> value_pattern("/sandbox/files/a.txt"), value_pattern("2024-05-01T10:00:00Z"), value_pattern(3)
('path', 'date', 'number')
>>> infer_schema([{"rows": [{"id": "a1b2c3d4", "name": "x"}]}])["properties"]["rows"]["items"]["properties"]["id"]
{'type': 'string', 'x-pattern': 'id'}
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from .results import json_type, value_of

_PATTERNS = [
    ("url", re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.I)),
    ("email", re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.I)),
    ("date", re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")),
    ("path", re.compile(r"^(/|\./|~/)?[\w.-]+(/[\w .-]+)+/?$|^/[\w.-]+$|^[\w-]+\.[a-z0-9]{1,5}$", re.I)),
    ("id", re.compile(r"^(?=.*\d)[0-9a-f-]{7,40}$|^[A-Za-z]+[-_]\d+$|^\d{1,12}$", re.I)),
]
# parameter / field names that announce a pattern
_NAME_PATTERNS = [
    ("url", re.compile(r"(^|_)(url|uri|href|link)s?$")),
    ("email", re.compile(r"(^|_)e?mail(_address)?$")),
    ("date", re.compile(r"(^|_)(date|time|datetime|timestamp|created|modified|updated|since|until|day)(_at)?$")),
    ("path", re.compile(r"(^|_)(path|paths|file|filename|file_path|filepath|dir|directory|folder|repo_path)$")),
    ("id", re.compile(r"(^|_)(id|ids|uuid|key|sha|hash|commit|revision|rev)$")),
]
_FORMAT_PATTERNS = {"date-time": "date", "date": "date", "time": "date", "uri": "url", "url": "url",
                    "email": "email", "uuid": "id"}


def value_pattern(value: Any) -> str | None:
    """The pattern of a scalar value: path, url, email, date, id, number or None (free text)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return "number"
    if not isinstance(value, str) or not value or len(value) > 300 or "\n" in value:
        return None
    text = value.strip()
    for name, rx in _PATTERNS:
        if rx.match(text):
            return name
    return None


def name_pattern(name: str, schema: dict | None = None) -> str | None:
    """The pattern a field or parameter name (or its JSON-schema ``format``) announces."""
    schema = schema if isinstance(schema, dict) else {}
    if schema.get("x-pattern"):
        return schema["x-pattern"]
    if schema.get("format") in _FORMAT_PATTERNS:
        return _FORMAT_PATTERNS[schema["format"]]
    snake = re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower().replace("-", "_")
    for pat, rx in _NAME_PATTERNS:
        if rx.search(snake):
            return pat
    return None


def infer_schema(values: list[Any], depth: int = 0) -> dict:
    """A JSON schema covering the observed values (first types win; patterns by majority)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"type": "string"}
    types = Counter(json_type(v) for v in values)
    typ = types.most_common(1)[0][0]
    if typ == "integer" and "number" in types:
        typ = "number"
    same = [v for v in values if json_type(v) == typ or (typ == "number" and json_type(v) == "integer")]
    if typ == "object" and depth < 4:
        keys: dict[str, list] = {}
        for v in same:
            for k, sub in v.items():
                keys.setdefault(str(k), []).append(sub)
        return {"type": "object", "properties": {k: infer_schema(vs, depth + 1) for k, vs in list(keys.items())[:64]}}
    if typ == "array" and depth < 4:
        items = [x for v in same for x in v[:20]]
        return {"type": "array", "items": infer_schema(items, depth + 1)} if items else {"type": "array"}
    out = {"type": typ if typ in ("string", "integer", "number", "boolean") else "string"}
    pats = Counter(value_pattern(v) for v in same)
    pat, n = pats.most_common(1)[0]
    if pat and pat != "number" and n * 2 > len(same):
        out["x-pattern"] = pat
    return out


def infer_output_schemas(calls: list[dict], tools_without_schema: set[str] | None = None) -> dict[str, dict]:
    """Per tool id (``server/name``), the schema inferred from its successful calls, with ``x-observed``
    (how many results it saw). Free-text results become ``{"type": "string", "x-pattern": ...}``."""
    seen: dict[str, list] = {}
    for c in calls:
        if c.get("is_error"):
            continue
        tool = f"{c['server']}/{c['tool']}"
        if tools_without_schema is not None and tool not in tools_without_schema:
            continue
        seen.setdefault(tool, []).append(value_of(c))
    out = {}
    for tool, values in sorted(seen.items()):
        schema = infer_schema(values)
        schema["x-observed"] = len(values)
        out[tool] = schema
    return out


def open_schema(schema: Any) -> bool:
    """Whether a declared output schema says nothing about the fields: none, ``{}``, an object with no
    ``properties`` (``{"type": "object", "additionalProperties": true}``, what FastMCP 2.x declares for a
    ``dict`` return), or FastMCP's ``{"result": ...}`` wrapper around such a schema or a bare string. The
    graph treats it as absent and infers the schema from observed results.

    >>> [open_schema(s) for s in (None, {}, {"type": "object", "additionalProperties": True},
    ...                           {"type": "object", "properties": {"result": {"type": "string"}}},
    ...                           {"type": "object", "properties": {"rows": {"type": "array"}}})]
    [True, True, True, True, False]
    """
    if not isinstance(schema, dict) or not schema:
        return True
    if schema.get("type") == "array" or "items" in schema:
        return open_schema(schema.get("items")) and (schema.get("items") or {}).get("type") in (None, "object")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return True
    if set(props) == {"result"}:   # FastMCP's wrapper: open when what it wraps is
        inner = props["result"] if isinstance(props["result"], dict) else {}
        return inner.get("type") == "string" or open_schema(inner)
    return False


def declared_schema(text: str | None) -> dict | None:
    """A tool's declared output schema (``tools.parquet`` JSON), None when absent or :func:`open_schema`."""
    schema = json.loads(text) if text else None
    return None if open_schema(schema) else schema


def schema_json(schema: dict | None) -> str | None:
    return json.dumps(schema, sort_keys=True) if schema else None
