"""Argument values a server's own words suggest, for servers with no catalog hints.

A user who adds a server writes no hints; the explorer then reads what the server itself says:

- :func:`stated_values`: examples and formats in a parameter's description ("e.g. 2026-04-21",
  "IANA timezone name, e.g. Asia/Shanghai", quoted values, "one of a, b, c", "Format: YYYY-MM-DD");
- :func:`vocabulary_values`: a small vocabulary of common kinds shipped with the project (dates and
  times, time zones, countries, currencies, languages, URLs, e-mails, expressions, counts and
  amounts, messages and texts), picked by the parameter's name, title and description, generically:
  never per server;
- :func:`repair_values`: the valid values an error text lists ("unknown unit 'example'; valid units:
  g, kg, lb", "expected format YYYY-MM-DD", "must be one of [a, b]", "did you mean 'x'?"), tried
  on the next attempt and kept for the rest of the DAG (and, learnt in the probe, for the run);
- :func:`sandbox_paths`: paths the server's launch arguments, environment and seed steps name
  (the repository a git server is started on, the folder a filesystem server may read, the files the
  seed wrote), as the virtual ``/sandbox/...`` paths calls use;
- :class:`Knowledge`: what the probe observed and repaired, by server and tool, for exploration.

    >>> stated_values("IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use 'UTC' if none.")
    ['America/New_York', 'Europe/London', 'UTC']
    >>> stated_values("Date and time in 24-hour format. e.g. 2025-03-23 12:30:00")
    ['2025-03-23 12:30:00']
    >>> stated_values("The time to get the timestamp. Format: YYYY-MM-DD HH:mm:ss.SSS")
    ['2024-01-15 14:30:00.000']
    >>> repair_values("Unknown unit 'example'. Valid units: g, kg, lb")
    ['g', 'kg', 'lb']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..results import leaves
from ..schemas import name_pattern, value_pattern

VIRTUAL_ROOT = "/sandbox"

# -- what a description states ------------------------------------------------------------------------------

_QUOTED = re.compile(r"""(?<![\w])(?:'([^'\n]{1,60})'|"([^"\n]{1,60})"|`([^`\n]{1,60})`)""")
_EXAMPLE = re.compile(r"\b(?:e\.\s?g\.?|for example|for instance|such as|example|like|i\.e\.)[,:]?\s+", re.I)
_ONE_OF = re.compile(r"\b(?:one of|either|options(?: are)?|choices(?: are)?|possible values(?: are)?|"
                     r"valid values(?: are)?|allowed values(?: are)?)\s*[:(\[]?\s*", re.I)
_FORMAT = re.compile(r"(?<![A-Za-z])((?:YYYY|YY|MM|DD|HH|hh|mm|ss|SSS)(?:[-/: .T]?(?:YYYY|YY|MM|DD|HH|hh|mm|ss|SSS|A|Z))*)"
                     r"(?![A-Za-z])")
# a date and time every generated value uses: fixed, so that runs repeat
SAMPLE = {"YYYY": "2024", "YY": "24", "DD": "15", "HH": "14", "hh": "02", "mm": "30", "ss": "00", "SSS": "000",
          "A": "PM", "Z": "Z"}
_STOP = re.compile(r"\)|;|,\s|\s(?:or|and)\s|\.\s|\.$|$")


def format_sample(fmt: str) -> str | None:
    """A value in a stated date/time format (``YYYY-MM-DD``, ``HH:MM``, ``MM/DD/YYYY``...), from one fixed date.

    >>> format_sample("YYYY-MM-DD"), format_sample("HH:MM"), format_sample("MM/DD/YY"), format_sample("HH")
    ('2024-01-15', '14:30', '01/15/24', None)
    """
    tokens = re.findall(r"YYYY|YY|MM|DD|HH|hh|mm|ss|SSS|A|Z|.", fmt)
    if sum(t in SAMPLE or t == "MM" for t in tokens) < 2:
        return None
    out, after_hour = [], False
    for t in tokens:
        if t == "MM":   # minutes after an hour (HH:MM), else the month
            out.append("30" if after_hour else "01")
        else:
            out.append(SAMPLE.get(t, t))
        after_hour = t in ("HH", "hh") or (after_hour and t == ":")
    return "".join(out)


def _split_list(text: str) -> list[str]:
    """Items of an inline list: "a, b or c", "a | b", "[a, b]", each trimmed of quotes."""
    text = text.strip().strip("[](){}")
    parts = re.split(r"\s*(?:,|\||/(?=\s)|\bor\b|\band\b)\s*", text)
    out = []
    for p in parts:
        p = p.strip().strip("'\"`").strip()
        if p and len(p) <= 40 and not re.search(r"\s{2,}", p) and len(p.split()) <= 3:
            out.append(p)
    return out


def stated_values(text: str | None) -> list[str]:
    """Values a description states for its parameter, in the order stated (see the module docstring)."""
    if not text:
        return []
    out: list[str] = []
    for m in _EXAMPLE.finditer(text):
        rest = text[m.end():]
        quoted = _quoted_run(rest)
        if quoted:
            out.extend(quoted)
            continue
        stop = _STOP.search(rest)
        value = rest[:stop.start()].strip() if stop else rest.strip()
        if value and len(value) <= 60:
            out.append(value)
    for m in _ONE_OF.finditer(text):
        rest = text[m.end():]
        end = re.search(r"[)\].;]\s|[)\]]$|\.$|$", rest)
        out.extend(_split_list(rest[:end.start()] if end else rest))
    out.extend(next(g for g in q.groups() if g) for q in _QUOTED.finditer(text))
    for m in _FORMAT.finditer(text):
        sample = format_sample(m.group(1))
        if sample:
            out.append(sample)
    return _unique(v for v in out if _plausible(v))


def sentences_naming(text: str, name: str) -> str:
    """The sentences of a tool's description that name a parameter (for a parameter with no description).

    >>> sentences_naming("Weekday of a date. The date as YYYY-MM-DD, e.g. 2026-04-21. Cached.", "date")
    'Weekday of a date. The date as YYYY-MM-DD, e.g. 2026-04-21.'
    """
    words = sorted(_words(name) - {"id", "name", "value", "type"}) or sorted(_words(name))
    if not words:
        return ""
    found = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
             if all(re.search(r"\b" + re.escape(w) + r"s?\b", s, re.I) for w in words)]
    return " ".join(found)


def _quoted_run(text: str) -> list[str]:
    """The quoted values ``text`` opens with, one after another ("'a', 'b' or 'c'")."""
    out, pos = [], re.match(r"[\s(]*", text).end()
    for q in _QUOTED.finditer(text, pos):
        if out and not re.fullmatch(r"\s*(?:,|\bor\b|\band\b|/|\|)?\s*", text[pos:q.start()]):
            break
        if not out and q.start() != pos:
            break
        out.append(next(g for g in q.groups() if g))
        pos = q.end()
    return out


def _plausible(value: str) -> bool:
    v = value.strip()
    return bool(v) and len(v) <= 60 and not v.lower().startswith(("the ", "a ", "an ", "if ", "when ", "this "))


def _unique(values) -> list:
    seen, out = set(), []
    for v in values:
        key = repr(v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


# -- a small vocabulary of common kinds ------------------------------------------------------------------------

# (kind, words in the parameter's name or title, words in its description, values). First match wins;
# the values are ordinary ones a user would give, nothing about any one server.
_VOCABULARY: list[tuple[str, set, tuple, list]] = [
    ("timezone", {"timezone", "tz", "zone"}, ("timezone", "time zone", "iana"),
     ["America/New_York", "Europe/London", "Asia/Tokyo", "Europe/Paris", "UTC"]),
    ("country", {"country", "nation"}, ("country", "iso 3166"), ["FR", "JP", "US", "DE", "BR"]),
    ("currency", {"currency", "currencies"}, ("currency", "iso 4217"), ["USD", "EUR", "JPY", "GBP"]),
    ("language", {"language", "lang", "locale"}, ("language", "locale"), ["en", "fr", "de", "es"]),
    ("url", {"url", "uri", "href", "link", "endpoint"}, ("url", "uri"), ["https://example.org/index.html"]),
    ("email", {"email", "mail"}, ("e-mail", "email address"), ["ada@example.org"]),
    ("datetime", {"datetime", "timestamp"}, ("iso 8601", "datetime", "timestamp"), ["2024-01-15T14:30:00"]),
    ("date", {"date", "day", "since", "until"}, ("date",), ["2024-01-15", "2023-11-02"]),
    ("time", {"time", "clock"}, ("time",), ["14:30", "09:15"]),
    ("expression", {"expression", "expr", "formula", "equation"}, ("expression", "formula"),
     ["(12 + 30) * 2", "sqrt(144) + 3**2", "7 * 6 - 5"]),
    ("message", {"message", "msg", "comment", "subject"}, ("message", "comment"),
     ["Add release notes", "Fix typo in the guide"]),
    ("text", {"content", "contents", "text", "body", "note", "insight", "observation", "observations"},
     ("content", "text"), ["Quarterly review scheduled for Friday", "Ada Lovelace wrote the first program"]),
    ("name", {"name", "title", "entity", "names", "label"}, (), ["Ada Lovelace", "Project Apollo"]),
    ("kind", {"type", "kind", "category", "relation", "relationtype", "entitytype"}, (), ["person", "project"]),
    ("query", {"query", "search", "keyword", "keywords", "q", "term"}, ("search",), ["notes", "report"]),
    ("pattern", {"pattern", "glob"}, ("glob", "pattern"), ["*.md", "*.txt"]),
    ("branch", {"branch"}, ("branch",), ["main", "feature-notes"]),
    ("revision", {"revision", "commit", "sha", "ref", "target"}, ("commit", "revision"), ["HEAD", "HEAD~1"]),
    ("count", {"count", "limit", "max", "top", "size", "n", "lines", "head", "tail", "number", "page"}, (), [5, 3]),
    ("year", {"year"}, (), [2024]),
    ("month", {"month"}, (), [3]),
    ("hour", {"hour", "hours"}, (), [14]),
    ("minute", {"minute", "minutes"}, (), [30]),
    ("latitude", {"lat", "latitude"}, (), [48.8566]),
    ("longitude", {"lon", "lng", "longitude"}, (), [2.3522]),
    ("amount", {"value", "amount", "quantity", "price", "x", "y", "a", "b"}, (), [12.5, 100, 3.75, 42]),
]
_GENERIC_KINDS = {"name", "kind"}
_SQL_WORDS = ("sql", "select", "query to execute", "insert", "create table")


def _words(name: str) -> set[str]:
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    return {t for t in re.split(r"[^a-zA-Z0-9]+", name.lower()) if t}


def _stems(name: str) -> set[str]:
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in _words(name)}


def vocabulary_kind(name: str, schema: dict) -> str | None:
    """The common kind a parameter asks for, by its name and title, else its description; None when unknown.

    >>> [vocabulary_kind(n, s) for n, s in (("targetTimezone", {}), ("value", {"type": "number"}),
    ...                                    ("code", {"description": "ISO 4217 code"}), ("path", {}))]
    ['timezone', 'amount', 'currency', None]
    """
    words = _words(name) | _words(str(schema.get("title") or ""))
    joined = {"".join(sorted(words))} | {name.lower()}
    for kind, names, _, _ in _VOCABULARY:
        if kind in _GENERIC_KINDS and not words <= names | {"entity", "full", "display"}:
            continue   # "table_name", "branch_name": a name of something more specific
        if words & names or joined & names:
            return kind
    text = str(schema.get("description") or "").lower()
    for kind, _, phrases, _ in _VOCABULARY:
        if any(p in text for p in phrases):
            return kind
    return None


def vocabulary_values(name: str, schema: dict, rng=None, tables: list[str] | None = None) -> list:
    """Values of the parameter's common kind (:func:`vocabulary_kind`) that fit its JSON type, a number
    kept within the schema's bounds; an SQL parameter gets queries over the ``tables`` seen so far."""
    typ = schema.get("type")
    types = set(typ) if isinstance(typ, list) else {typ}
    desc = str(schema.get("description") or "").lower()
    if types & {"string", None} and (name.lower() in ("sql", "query", "statement") and any(w in desc for w in _SQL_WORDS)
                                     or name.lower() == "sql"):
        return sql_values(desc, tables or [])
    if types & {"string", None} and _words(name) & {"table", "tablename"} and tables:
        return list(tables[:6])   # a table parameter: the tables seen so far
    kind = vocabulary_kind(name, schema)
    if kind is None:
        values: list = []
    else:
        values = list(next(v for k, _, _, v in _VOCABULARY if k == kind))
    if types & {"number", "integer"}:
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            values = [v for v in values if lo <= v <= hi] or ([lo + (hi - lo) / 2] if values else [])
        if "integer" in types:
            values = [int(v) for v in values]
    elif types & {"string", None}:
        values = [v if isinstance(v, str) else str(v) for v in values]
    else:
        return []
    if rng is not None and len(values) > 1:
        values = values[:]
        rng.shuffle(values)
    return values


def sql_values(description: str, tables: list[str]) -> list[str]:
    """Statements for an SQL parameter: a read of each known table (or of the catalog of tables), a
    ``CREATE TABLE`` where the description asks for one."""
    if "create table" in description:
        return ["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"]
    reads = [f"SELECT * FROM {t} LIMIT 5" for t in tables[:4]] + [f"SELECT COUNT(*) AS n FROM {t}" for t in tables[:2]]
    return reads + ["SELECT name FROM sqlite_master WHERE type = 'table'"]


# -- what an error text lists -----------------------------------------------------------------------------------

_LISTED = re.compile(r"\b(?:valid|supported|available|allowed|accepted|expected|known|possible|permitted)"
                     r"(?:\s+[\w-]+){0,2}\s*(?:are|is|include|:|=|one of)\s*:?\s*(.+)", re.I)
_MUST = re.compile(r"\b(?:must be|should be|one of|expected one of|choose from|try)\s*:?\s*(.+)", re.I)
_MEANT = re.compile(r"\bdid you mean\s*:?\s*(.+?)\??$", re.I | re.M)
_SANDBOX_PATH = re.compile(r"(?<![\w/])" + VIRTUAL_ROOT + r"(?:/[\w.@+-]+)*")


def repair_values(error: str | None) -> list:
    """The values an error text lists as valid, in order; a stated format gives a sample; a sandbox path
    it names is kept (the allowed folder). Empty when it lists none.

    >>> repair_values("Input should be 'celsius', 'fahrenheit' or 'kelvin' [type=enum]")
    ['celsius', 'fahrenheit', 'kelvin']
    >>> repair_values("Invalid date, expected format YYYY-MM-DD")
    ['2024-01-15']
    >>> repair_values("Access denied - path outside allowed directories: /sandbox/x not in /sandbox/files")
    ['/sandbox/x', '/sandbox/files']
    >>> repair_values("Error: no such table: example")
    []
    >>> repair_values("Invalid time format. Expected HH:MM [24-hour format]")   # a format's ':' lists nothing
    ['14:30']
    """
    if not error:
        return []
    out: list = []
    for line in error.splitlines()[:20]:
        formats = [m.span(1) for m in _FORMAT.finditer(line)]
        for rx in (_LISTED, _MUST, _MEANT):
            for m in rx.finditer(line):
                if any(a < m.start(1) <= b for a, b in formats):
                    continue   # "Expected HH:MM": the list would start inside the format
                listed = m.group(1)
                quoted = [next(g for g in q.groups() if g) for q in _QUOTED.finditer(listed)]
                out.extend(quoted or _split_list(re.split(r"[.;]\s|\s\[", listed)[0]))
        if re.search(r"\bshould be\b", line) and not out:
            out.extend(next(g for g in q.groups() if g) for q in _QUOTED.finditer(line))
        for m in _FORMAT.finditer(line):
            sample = format_sample(m.group(1))
            if sample:
                out.append(sample)
    out.extend(_SANDBOX_PATH.findall(error))
    bad = {"example", "received", "got", "none", "null", "undefined"}
    return _unique(v for v in out if isinstance(v, str) and v.strip() and v.strip().lower() not in bad
                   and len(v) <= 80 and not v.lower().startswith(("a ", "an ", "the ")))


def repair_targets(error: str, args: dict, sources: dict) -> list[str]:
    """The parameters a repair is for: those the error names, else those whose value it quotes, else the
    ones no earlier result or hint supplied.

    >>> repair_targets("unknown unit 'example'", {"from_unit": "example", "value": 1}, {})
    ['from_unit']
    """
    text = error.lower()
    named = [n for n in args if re.search(r"(?<![a-z0-9_])" + re.escape(n.lower()) + r"(?![a-z0-9_])", text)]
    if named:
        return named
    quoted = [n for n, v in args.items() if isinstance(v, str) and len(v) >= 2 and v.lower() in text]
    if quoted:
        return quoted
    return [n for n, v in args.items() if isinstance(v, str) and not str(sources.get(n, "")).startswith(("edge", "hint"))]


# -- the sandbox a server is launched on -------------------------------------------------------------------------


def sandbox_paths(spec: dict) -> list[str]:
    """Virtual paths a catalog entry's launch names (``{sandbox}/...`` in its args and env) first, then the
    files and folders its seed steps make, those under a launch path first.

    >>> sandbox_paths({"args": ["--repository", "{sandbox}/repo"], "seed": [{"write": "repo/a.md", "text": ""},
    ...                {"write": "notes/b.txt", "text": ""}, {"sqlite": "shop.db", "sql": ""}]})
    ['/sandbox/repo', '/sandbox/repo/a.md', '/sandbox/notes/b.txt', '/sandbox/shop.db', '/sandbox/notes']
    """
    launch = []
    for text in list(spec.get("args") or []) + list((spec.get("env") or {}).values()):
        for m in re.finditer(r"\{sandbox\}((?:/[\w.@+-]+)*)", str(text)):
            launch.append(VIRTUAL_ROOT + m.group(1))
    seeded, folders = [], []
    for step in spec.get("seed") or []:
        for key in ("write", "sqlite", "mkdir"):
            rel = step.get(key) if isinstance(step, dict) else None
            if isinstance(rel, str) and rel and not rel.startswith(("home/", ".")):
                path = f"{VIRTUAL_ROOT}/{rel.strip('/')}"
                (folders if key == "mkdir" else seeded).append(path)
                if key != "mkdir" and "/" in rel.strip("/"):
                    folders.append(path.rsplit("/", 1)[0])

    def under_launch(p: str) -> bool:
        return any(p == root or p.startswith(root + "/") for root in launch)

    ordered = [p for p in seeded if under_launch(p)] + [p for p in seeded if not under_launch(p)]
    return _unique(launch + ordered + folders)


def kind_repair(error: str, paths: list[str]) -> list[str]:
    """After "not a directory" the sandbox's folders, after "is a directory" its files; else nothing.

    >>> kind_repair("ENOTDIR: not a directory, scandir '/sandbox/files/a.txt'", ["/sandbox/files", "/sandbox/files/a.txt"])
    ['/sandbox/files']
    """
    files, dirs = _files_and_folders(paths)
    if re.search(r"not a directory|ENOTDIR", error, re.I):
        return dirs
    if re.search(r"is a directory|EISDIR|operation on a directory", error, re.I):
        return files
    return []


def _files_and_folders(paths: list[str]) -> tuple[list[str], list[str]]:
    """The paths that end in a file extension, and the others (folders), each in order."""
    files = [p for p in paths if re.search(r"\.[A-Za-z0-9]{1,6}$", p)]
    return files, [p for p in paths if p not in files]


_DIR_WORDS = {"dir", "directory", "folder", "repo", "repository", "root", "cwd", "workspace"}


def path_values(name: str, schema: dict, paths: list[str], tool_desc: str = "", tool_name: str = "") -> list[str]:
    """The sandbox paths that suit a path parameter: folders first for a directory or repository
    parameter or tool (``repo_path``, ``list_directory``), files first for a file one (``read_file``),
    else by what the tool's description is about; then a new file in each folder (a tool that writes).

    >>> path_values("repo_path", {}, ["/sandbox/repo", "/sandbox/repo/a.md"])
    ['/sandbox/repo', '/sandbox/repo/a.md', '/sandbox/repo/new-notes.txt']
    >>> path_values("path", {}, ["/sandbox/files", "/sandbox/files/a.md"], "Only within allowed directories.", "read_file")
    ['/sandbox/files/a.md', '/sandbox/files', '/sandbox/files/new-notes.txt']
    """
    files_words, dir_words = {"file", "files", "filename", "filepath", "document", "text"}, _DIR_WORDS | {"tree"}
    words = _words(name)
    tool_words = _words(tool_name)
    if words & dir_words or (not words & files_words and tool_words & dir_words and not tool_words & files_words):
        wants_dir = True
    elif words & files_words or tool_words & files_words:
        wants_dir = False
    else:
        wants_dir = re.search(r"\bdirector(?:y|ies)\b|\bfolder", tool_desc.lower()) is not None
    files, dirs = _files_and_folders(paths)
    fresh = [f"{d}/new-notes.txt" for d in dirs[:2]]
    return _unique((dirs + files if wants_dir else files + dirs) + fresh)


def is_pathlike(name: str, schema: dict) -> bool:
    """A parameter that takes a file or folder path, by its name, pattern or description."""
    if name_pattern(name, schema) == "path" or _words(name) & {"path", "paths", "file", "files", "filepath",
                                                                "directory", "dir", "folder", "source", "destination"}:
        return True
    return bool(re.search(r"\b(?:file|directory|folder) path\b|\bpath to\b", str(schema.get("description") or ""), re.I))


# -- what the probe learnt ---------------------------------------------------------------------------------------


@dataclass
class Knowledge:
    """What earlier calls of the run taught: per server, the scalar leaves of its successful probe results
    ``(tool, path, value)``; per tool, per parameter, the values a repair made work. Built once from the
    probe's calls (:meth:`from_calls`), the same for every DAG: exploration stays reproducible."""

    observed: dict[str, list[tuple[str, str, Any]]] = field(default_factory=dict)
    repaired: dict[str, dict[str, list]] = field(default_factory=dict)

    @classmethod
    def from_calls(cls, calls: list[dict], value_of) -> "Knowledge":
        k = cls()
        for c in calls:
            if c.get("is_error"):
                continue
            tool = f"{c['server']}/{c['tool']}"
            rows = k.observed.setdefault(c["server"], [])
            for path, v in leaves(value_of(c))[:200]:
                if v is not None and not isinstance(v, bool) and (not isinstance(v, str) or 0 < len(v) <= 200
                                                                  and "\n" not in v):
                    rows.append((c["tool"], path, v))
            for param, src in (c.get("arg_sources") or {}).items():
                if src == "repair":
                    vals = k.repaired.setdefault(tool, {}).setdefault(param, [])
                    if c["arguments"].get(param) not in vals:
                        vals.append(c["arguments"].get(param))
        return k

    def tables(self) -> list[str]:
        """Table names the probe saw (leaves under a tool or key about tables)."""
        out = []
        for rows in self.observed.values():
            for tool, path, v in rows:
                key = path.split(".")[-1] if path else ""
                if isinstance(v, str) and re.fullmatch(r"[A-Za-z_][\w]{0,40}", v) and (
                        "table" in tool.lower() and key in ("", "name", "table", "table_name", "tablename")
                        or key in ("table", "table_name", "tableName")):
                    out.append(v)
        return _unique(out)

    def values_for(self, server: str, tool: str, name: str, schema: dict) -> tuple[list, list]:
        """Observed values that may suit ``name``: (leaves of the same server's results under the same key, or
        under a key the parameter's name ends in: ``table_name`` <- ``name`` of a ``list_tables`` result;
        leaves whose value pattern is the one the parameter's name announces, a weaker sign)."""
        words = _words(name)
        want = name_pattern(name, schema)
        same, related, shaped = [], [], []
        for src_tool, path, v in self.observed.get(server, []):
            key = path.split(".")[-1] if path and not path.split(".")[-1].isdigit() else ""
            if src_tool == tool:
                continue
            if key and key.lower() == name.lower():
                same.append((v, f"probe:{src_tool}:{path}"))
            elif key and _words(key) <= words and (_stems(src_tool) & _stems(name)) and key.lower() not in ("id",):
                related.append((v, f"probe:{src_tool}:{path}"))
            elif want and want != "number" and value_pattern(v) == want and want != "id":
                shaped.append((v, f"probe:{src_tool}:{path}"))
        return (same + related)[:8], shaped[:4]
