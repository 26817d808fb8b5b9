"""Goal wording (``synthesizer=goal``): the question is a request in plain words, not a recipe.

The recipe wording (:mod:`.wording`) names every tool, numbers the steps and points at passed
values by JSON path, so a policy trained on it learns to copy. A goal question instead:

- says what to do with sentences built from each tool's own description and its parameters'
  descriptions or titles, the given inputs appearing as values ("Convert volume between units,
  with 1.5 as the volume value to convert, gallon (US) as the source unit ..."), for any server:
  nothing here knows a server;
- names a value passed along the chain by what it is, from the source field's keys and the source
  tool ("the name of the first table from listing all tables in the database"), never its value;
- asks for answer fields with meaningful snake_case names (``first_table_name``,
  ``second_relation_type``), each with a description, as a JSON object.

Read-only calls that only feed later calls and take no given input get no sentence of their own:
the reference to their output says what they do. :func:`structure_leak` is the last check a goal
question passes: no tool or server named, no parameter key, no step, no JSON path, no ``=``.
"""

from __future__ import annotations

import functools

import json
import re
from typing import Any

from ..observed import SOURCE
from ..quality import names_leaked
from ..results import json_type

ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
            "eighteenth", "nineteenth", "twentieth"]
# keys that say nothing on their own: an answer name adds the tool's noun ("record_message")
GENERIC_KEYS = {"result", "results", "value", "text", "content", "data", "message", "output", "response",
                "status", "success"}
# where an object noun phrase ends in a description ("a new branch | from an optional base branch")
STOPWORDS = {"of", "in", "into", "from", "for", "with", "to", "on", "by", "as", "that", "which", "between",
             "and", "or", "including", "based", "using", "at", "about", "within", "if", "when", "without",
             "against", "via", "through", "across"}
ARTICLES = {"a", "an", "the", "all", "any", "given", "specified", "specific", "new", "existing", "multiple"}
# a parameter description that is not a noun phrase ("Whether to list ...", "If provided, ..."): use the title
BAD_LABEL_STARTS = {"whether", "if", "when", "use", "do", "set", "specify", "provide", "pass", "optional",
                    "required", "defaults", "default", "only", "must", "should", "returns", "return", "e.g",
                    "sort", "filter", "include", "exclude", "preview", "limit", "show", "enable", "disable", "get",
                    "list", "read", "skip", "allow", "force", "ignore", "create", "delete", "make", "run"}
INTROS = ["", "", "I need your help with something. ", "Please help me with this. "]
CONNECTORS = ["Then ", "After that, ", "Next, ", ""]
ARG_FORMS = [(", with ", "{v} as the {label}"), (", using ", "{v} for the {label}"), (": ", "the {label} {be} {v}")]
ASK_FORMS = ["Answer with a JSON object with {fields}.", "Reply with a JSON object holding {fields}.",
             "Give me {fields}, as a JSON object."]

STEP = re.compile(r"\bsteps?\b|(?:^|\n)\s*\d+[.)]\s", re.I)
JSON_PATH = re.compile(r"\[\d+\]|\b[A-Za-z_]\w*\.\d+\b|\b\d+\.[A-Za-z_]\w*")
TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def ordinal(index: int) -> str:
    """A list position in words (0-based).

    >>> ordinal(0), ordinal(2), ordinal(21), ordinal(110)
    ('first', 'third', '22nd', '111th')
    """
    if index < len(ORDINALS):
        return ORDINALS[index]
    n = index + 1
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def key_words(key: str) -> list[str]:
    """The words of an identifier-like key (snake, kebab or camel case); none for other keys (a file path).

    >>> key_words("tableCount"), key_words("from_unit"), key_words("/sandbox/a.txt")
    (['table', 'count'], ['from', 'unit'], [])
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\- ]*", key or ""):
        return []
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key)
    return [w.lower() for w in re.split(r"[_\- ]+", spaced) if w]


def singular(word: str) -> str:
    """A plural noun's singular (a name's last word, a list key).

    >>> [singular(w) for w in ("tables", "entities", "branches", "status", "class", "sizes", "boxes")]
    ['table', 'entity', 'branch', 'status', 'class', 'size', 'box']
    """
    w = word.lower()
    if len(w) <= 3 or w.endswith(("ss", "us", "is")):
        return word
    if w.endswith("ies"):
        return word[:-3] + "y"
    if w.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    return word[:-1] if w.endswith("s") else word


def is_plural(word: str) -> bool:
    """Whether a word reads as a plural (a tool that lists things: its name ends in one)."""
    return singular(word) != word


def _clause(text: str) -> str:
    """The first clause of a description, placeholders (``<revision>``) removed; a comma ends it unless
    it is one of a list's ("an INSERT, UPDATE, or DELETE query").

    >>> _clause("Read records from a table with optional conditions, limit, and offset. More.")
    'Read records from a table with optional conditions, limit, and offset'
    >>> _clause("Shows the contents of a commit, or of a file given as <revision>:<path>")
    'Shows the contents of a commit'
    """
    sentence = re.split(r"\.\s|\.$|\n|\s\(|; |: | - | e\.g\.", re.sub(r"<[^>]*>", "", (text or "").strip()),
                        maxsplit=1)[0]
    out, in_list = sentence, False
    for m in re.finditer(r", ", sentence):
        rest = sentence[m.start():]
        in_list = in_list or (rest.count(", ") >= 2 and bool(re.search(r",? (and|or) ", rest)))
        if not in_list:
            out = sentence[:m.start()]
            break
    return " ".join(out.split()).strip(" .,:;")


def _drop_names(words: list[str], names: set[str]) -> list[str]:
    """A description's words without the product names that are also tool or server names of the run
    ("List Git branches" -> "List branches"): capitalised, not first, and a name."""
    return [w for i, w in enumerate(words)
            if i == 0 or not w[:1].isupper() or w.lower().strip(",.") not in names]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) == 1 else text


def _imperative_verb(word: str) -> str:
    """"Creates" -> "Create", "Switches" -> "Switch", "Calculates/evaluates" -> "Evaluate"."""
    word = word.split("/")[-1]
    w = word.lower()
    if w.endswith(("ches", "shes", "sses", "xes", "zes")):
        word = word[:-2]
    elif w.endswith("ies"):
        word = word[:-3] + "y"
    elif w.endswith("s") and not w.endswith(("ss", "us")):
        word = word[:-1]
    return word[:1].upper() + word[1:]


def action(row: dict, names: set[str]) -> str:
    """What a tool does, as an imperative phrase from its description's first clause.

    >>> action({"tool": "s/calc", "description": "Calculates/evaluates the given expression."}, set())
    'Evaluate the given expression'
    >>> action({"tool": "git/git_branch", "description": "List Git branches"}, {"git"})
    'List branches'
    >>> action({"tool": "t/edit", "description": "A line editor that edits files"}, set())
    'Use a line editor that edits files'
    """
    words = _drop_names(_clause(row.get("description", "")).split(), names)[:16]
    if not words:
        words = ["Use", "the", "tool", "that", "can"] + key_words(row["tool"].split("/")[-1])
    first = words[0]
    if first.lower() in ("a", "an", "the", "this"):
        words = ["Use", first.lower()] + words[1:]
    elif re.fullmatch(r"[A-Za-z]+(/[A-Za-z]+)?", first) and (first.lower().endswith("s") or "/" in first):
        words[0] = _imperative_verb(first)
    else:
        words[0] = first[:1].upper() + first[1:]
    return " ".join(words)


def gerund(phrase: str) -> str:
    """An imperative phrase as a gerund: "List all tables" -> "listing all tables".

    >>> [gerund(p) for p in ("Get the time", "Create a file", "Run it", "Drop it", "Open a node", "Recursively search")]
    ['getting the time', 'creating a file', 'running it', 'dropping it', 'opening a node', 'recursively searching']
    >>> gerund("Move or rename files")
    'moving or renaming files'
    """
    adverb = ""
    if re.fullmatch(r"[A-Za-z]+ly", phrase.split(" ")[0]) and " " in phrase:   # "Recursively search"
        adverb, _, phrase = phrase.partition(" ")
        adverb = adverb.lower() + " "
    verb, _, rest = phrase.partition(" ")
    conj, _, other = rest.partition(" ")
    if conj in ("or", "and") and other:   # "Move or rename files" -> "moving or renaming files"
        return (adverb + gerund(verb) + f" {conj} " + gerund(other)).strip()
    v = verb.lower()
    if v.endswith("ie"):
        v = v[:-2] + "y"
    elif v.endswith("e") and not v.endswith(("ee", "ye", "oe")) and len(v) > 2:
        v = v[:-1]
    elif re.fullmatch(r"[^aeiou]{1,2}[aeiou][bdgmnprt]", v):
        v += v[-1]
    return (adverb + v + "ing " + rest).strip()


def short_action(phrase: str) -> str:
    """An action cut after its object, at the first preposition that follows it ("Get the schema
    information for a specific table" -> "Get the schema information"): how a field names its source.

    >>> short_action("Search for nodes in the knowledge graph"), short_action("List all tables in the database")
    ('Search for nodes', 'List all tables')
    """
    words = phrase.split()
    for i, w in enumerate(words[1:], 1):
        in_list = w in ("and", "or") and words[i - 1].endswith(",")   # "an INSERT, UPDATE, or DELETE query"
        if w.lower() in STOPWORDS and not in_list and any(x.lower() not in STOPWORDS | ARTICLES for x in words[1:i]):
            return " ".join(words[:i]).rstrip(",")
    return phrase


def object_noun(phrase: str) -> str:
    """The noun an action acts on: the last word before a preposition, after the verb.

    >>> object_noun("Create a new branch from an optional base branch"), object_noun("Switch branches")
    ('branch', 'branch')
    """
    noun = ""
    for w in phrase.split()[1:]:
        lw = w.lower().strip(",.")
        if lw in STOPWORDS:
            break
        if lw not in ARTICLES and re.fullmatch(r"[a-z][a-z\-]*", lw):
            noun = lw
    return singular(noun) if noun else "outcome"


def tool_noun(row: dict) -> str | None:
    """The noun of a list tool, from the plural its name ends in ("list_tables" -> "table"; not
    "list_directory_with_sizes": after a preposition)."""
    server, _, name = row["tool"].partition("/")
    words = [w for w in key_words(name) if w not in key_words(server)]
    words = words[:next((i for i, w in enumerate(words) if w in STOPWORDS), len(words))]
    return singular(words[-1]) if words and is_plural(words[-1]) else None


def _segments(path: str) -> tuple[list[tuple[str | None, int | None]], str | None]:
    """A leaf path as (list or object key, list index) segments, outer first, and its final key.

    >>> _segments("entities.0.observations.1"), _segments("0.name"), _segments("source.datetime")
    (([('entities', 0), ('observations', 1)], None), ([(None, 0)], 'name'), ([('source', None)], 'datetime'))
    """
    segs: list[tuple[str | None, int | None]] = []
    pending: str | None = None
    parts: list[str] = []
    for part in [p for p in path.split(".") if p != ""]:   # a key holding a file name: /a/b.txt is one key
        if parts and "/" in parts[-1] and re.fullmatch(r"[A-Za-z0-9]{1,4}", part):
            parts[-1] += "." + part
        else:
            parts.append(part)
    for part in parts:
        if part.lstrip("-").isdigit():
            segs.append((pending, int(part)))
            pending = None
        else:
            if pending is not None:
                segs.append((pending, None))
            pending = part
    return segs, pending


def path_words(path: str, noun: str | None) -> tuple[str, list[str]]:
    """How a leaf of a result is named: a phrase ("the name of the third table") and the words of its
    answer name (["third", "table", "name"]); ``noun``: what a top-level list holds (the tool's noun).

    >>> path_words("2.name", "table")
    ('the name of the third table', ['third', 'table', 'name'])
    >>> path_words("relations.1.relationType", None)
    ('the type of the second relation', ['second', 'relation', 'type'])
    >>> path_words("entities.0.observations.1", None)
    ('the second observation of the first entity', ['first', 'entity', 'second', 'observation'])
    >>> path_words("converted_value", None), path_words("mass.15", "unit")[0]
    (('the converted value', ['converted', 'value']), 'the sixteenth mass unit')
    """
    segs, key = _segments(path)
    phrases, names = [], []
    for depth, (seg_key, index) in list(enumerate(segs))[-3:]:
        kw = key_words(seg_key or "")
        if index is None:
            seg_words = kw
        else:
            item = [*kw[:-1], singular(kw[-1])] if kw else [noun or "entry"] if depth == 0 else ["entry"]
            if kw and depth == 0 and key is None and len(segs) == 1 and noun and noun != item[-1]:
                item.append(noun)   # a list of scalars under a key of the result: mass -> mass unit
            seg_words = [ordinal(index), *item]
        if seg_words:
            phrases.append(" ".join(seg_words))
            # a name starts with a letter: the 22nd volume unit is volume_unit_22
            names.extend(seg_words if index is None or index < len(ORDINALS) else [*seg_words[1:], str(index + 1)])
    last = key_words(key or "")
    if segs and last and names and last[0] == names[-1] and len(last) > 1:   # relation + relationType
        last = last[1:]
    phrase = " ".join(last)
    if phrase:
        phrases.append(phrase)
    names.extend(last)
    text = " of the ".join(reversed(phrases))
    return ("the " + text if text else ""), names


def leaf_words(path: str, value: Any, row: dict, names: set[str]) -> tuple[str, list[str]]:
    """(phrase, name words) of a result leaf of a call of the tool ``row``, with a noun where the path
    alone says little (the whole result, a generic key such as ``message``)."""
    phrase, words = path_words(path, tool_noun(row))
    noun = tool_noun(row) or object_noun(action(row, names))
    if not words:
        return "the output", [noun, "value" if json_type(value) in ("integer", "number", "boolean") else "text"]
    if words[-1] in GENERIC_KEYS and len(words) == 1:
        words = [noun, *words]
    return phrase, words


def run_names(tools: dict) -> frozenset[str]:
    """Every tool name and server id of the run, and the parts of a hyphenated server id."""
    return _run_names(frozenset(tools))


@functools.lru_cache(maxsize=8)
def _run_names(keys: frozenset[str]) -> frozenset[str]:
    out: set[str] = set()
    for key in keys:
        server, _, tool = key.partition("/")
        out |= {server.lower(), tool.lower(), *server.lower().split("-")}
    return frozenset(out)


def _row(tools: dict, call: dict) -> dict:
    return tools[f"{call['server']}/{call['tool']}"]


def goal_spec(picks: list[tuple[int, str, Any]], gold: list[dict], tools: dict) -> tuple[dict, dict, dict]:
    """The answer schema (name -> type, description), answer and provenance of the picked fields, with
    goal names: snake_case from the result path's keys, list positions as ordinals and the tool's noun
    (``third_table_name``), unique in pick order, never ``<tool>_result``. A tool the chain calls more
    than once is told apart by which call it was ("from searching for nodes the second time"): two
    searches of a graph a write changed in between answer differently."""
    fields, answer, provenance, taken = {}, {}, {}, set()
    names = run_names(tools)
    calls_of = [[j for j, c in enumerate(gold) if (c["server"], c["tool"]) == (g["server"], g["tool"])] for g in gold]
    for k, path, value in picks:
        row = _row(tools, gold[k])
        when = f" the {ordinal(calls_of[k].index(k))} time" if len(calls_of[k]) > 1 else ""
        phrase, words = leaf_words(path, value, row, names)
        base = "_".join(words)
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        fields[name] = {"type": json_type(value),
                        "description": f"{phrase} from {gerund(short_action(action(row, names)))}{when}"}
        answer[name] = value
        provenance[name] = {"step": k, "seq": gold[k]["seq"], "path": path,
                            "tool": f"{gold[k]['server']}/{gold[k]['tool']}"}
    return fields, answer, provenance


def properties(row: dict) -> dict:
    """The top-level parameters of a tool (its input schema's ``properties``)."""
    schema = row.get("input_schema") or {}
    if isinstance(schema, str):
        schema = json.loads(schema or "{}")
    return schema.get("properties") or {}


def _label_from(text: str | None, names: set[str], title: bool = False) -> str:
    words = _drop_names(_clause(text or "").split(), names)
    while words and words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    if len(words) > 2 and words[0].lower() in ("array", "list") and words[1].lower() == "of":
        words = words[2:]
    if not words or len(words) > 10 or (words[0].lower().strip(",") in BAD_LABEL_STARTS and not words[0].isupper()):
        return ""
    return " ".join(_lower_first(w) for w in words) if title else _lower_first(" ".join(words))


def param_label(name: str, prop: dict, names: set[str]) -> str:
    """How a question names a parameter: its description's first clause, else its title, else the words
    of its key ("repo_path" -> "repo path"), never the key itself.

    >>> param_label("value", {"description": "Volume value to convert"}, set())
    'volume value to convert'
    >>> param_label("branch_type", {"title": "Branch Type", "description": "Whether to list local branches"}, set())
    'branch type'
    >>> param_label("tableName", {}, set()), param_label("sortBy", {"description": "Sort entries by size"}, set())
    ('table name', 'sort by option')
    """
    label = _label_from(prop.get("description"), names) or _label_from(prop.get("title"), names, title=True)
    if label:
        return label
    words = key_words(name) or ["input"]
    return " ".join(words) + (" option" if words[-1] in STOPWORDS else "")   # sortBy: the sort by option


def render(value: Any) -> str:
    """A given value as written in a question: numbers and short text as they are, longer text quoted,
    lists and objects in words (an object's keys as words, never ``key=value``).

    >>> render(1.5), render("gallon (US)"), render("Document how to run it"), render(["a.txt", "b.txt"])
    ('1.5', 'gallon (US)', '"Document how to run it"', 'a.txt and b.txt')
    >>> render({"name": "Ivo", "entityType": "person"}), render(True)
    ('name Ivo and entity type person', 'yes')
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        plain = re.fullmatch(r"[^\s,;\"]+( [^\s,;\"]+){0,3}", value) and "\n" not in value
        return value if plain else json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        items = [f"({render(v)})" if isinstance(v, dict) else render(v) for v in value]
        return _and(items) or "nothing"
    if isinstance(value, dict):
        return _and([f"{' '.join(key_words(k)) or json.dumps(k)} {render(v)}" for k, v in value.items()
                     if v is not None])
    return json.dumps(value, default=str)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def passed_reference(src: str, gold: list[dict], tools: dict, names: set[str], told: bool) -> str | None:
    """What a value passed along the chain is, in words, from the source field's keys and the source
    call's action, never the value: "the name of the first table from listing all tables in the
    database" (``told``: the source has a sentence of its own, so its action is cut short: "from
    listing all tables"). None if ``src`` is no earlier call of ``gold``."""
    m = SOURCE.match(str(src))
    if not m or int(m.group(2)) >= len(gold):
        return None
    source = gold[int(m.group(2))]
    row = _row(tools, source)
    phrase, _ = leaf_words(m.group(3), None, row, names)
    what = action(row, names)
    return f"{phrase} from {gerund(short_action(what) if told else what)}"


def call_sentence(i: int, gold: list[dict], tools: dict, names: set[str], silent: set[int], rng) -> str:
    """One call as a sentence: its action, then its inputs, given values written out and passed values
    described (``silent``: the calls without a sentence, described in full where referred to)."""
    call, row = gold[i], _row(tools, gold[i])
    props = properties(row)
    parts = []
    for name, value in call["arguments"].items():
        src = (call.get("arg_sources") or {}).get(name, "")
        m = SOURCE.match(str(src))
        ref = passed_reference(src, gold[:i], tools, names, bool(m) and int(m.group(2)) not in silent)
        if ref is None and value is None:
            continue
        parts.append((ref or render(value), param_label(name, props.get(name) or {}, names)))
    lead, form = rng.choice(ARG_FORMS)
    args = [form.format(v=v, label=label, be="are" if is_plural(_head(label)) else "is") for v, label in parts]
    return action(row, names) + (lead + _and(args) if args else "") + "."


def _head(label: str) -> str:
    """The head noun of a label: its last word before a preposition ("search query to match ..." -> "query")."""
    words = label.split()
    cut = next((i for i, w in enumerate(words) if i and w in STOPWORDS), len(words))
    return words[cut - 1]


def feeds_only(i: int, gold: list[dict], tools: dict) -> bool:
    """A read-only call with no given input whose output feeds a later call: the later call's reference
    to it says what it does, so it needs no sentence of its own."""
    call = gold[i]
    if not _row(tools, call).get("read_only") or any(v is not None for v in call["arguments"].values()):
        return False
    return any(SOURCE.match(str(s)) and int(SOURCE.match(str(s)).group(2)) == i
               for c in gold[i + 1:] for s in (c.get("arg_sources") or {}).values())


def goal_question(gold: list[dict], tools: dict, fields: dict, rng) -> str:
    """The request a user would make for this chain and these answer fields (see the module docstring):
    a sentence per call that changes state, takes a given input or feeds nothing later, in chain
    order, then the ask for the answer fields as a JSON object, each key quoted with its description.
    The random choices (intro, connectors, argument and ask forms) come from ``rng``."""
    names = run_names(tools)
    silent = {i for i in range(len(gold)) if feeds_only(i, gold, tools)}
    sentences = [call_sentence(i, gold, tools, names, silent, rng) for i in range(len(gold)) if i not in silent]
    text = rng.choice(INTROS)
    for n, sentence in enumerate(sentences):
        connector = rng.choice(CONNECTORS) if n else ""
        text += (connector + (_lower_first(sentence) if connector else sentence)) + " "
    field_text = _and([f"{json.dumps(name)} ({spec['description']})" for name, spec in fields.items()])
    return text + rng.choice(ASK_FORMS).format(fields=field_text)


def structure_leak(question: str, gold: list[dict], tools: dict, fields: dict) -> bool:
    """Whether a goal question still gives the recipe away: it names an offered tool or server (any
    spelling the dataset's measure counts, :func:`firefly_exp.quality.names_leaked`, on the whole
    question: ``list_tables``, "z-test" for a tool ``z_test``, an answer key holding a tool's name; a
    plain word such as ``calculate`` only where it reads as a name: quoted, called, or followed by
    tool/server), a parameter key of the chain's tools (an identifier as a token in any case, a plain
    word the same way), a step, a JSON path or ``key=value``. Apart from the names of tools, the answer
    keys, which the question must name, are left out of the check."""
    servers = {c["server"] for c in gold}
    offered_tools = [t for t in tools if t.partition("/")[0] in servers]
    if names_leaked(question, offered_tools):   # what is measured as a leak is never kept
        return True
    text = question
    for name in fields:
        text = text.replace(json.dumps(name), " ")
    if "=" in text or STEP.search(text) or JSON_PATH.search(text):
        return True
    params = {p for c in gold for p in properties(_row(tools, c))}
    tokens = {t.lower() for t in TOKEN.findall(text)}
    for name in params | servers | {t.partition("/")[2] for t in offered_tools}:
        if re.search(r"[_\-\d]|[a-z][A-Z]", name):
            if name in params and name.lower() in tokens:   # tools' and servers': names_leaked above
                return True
        elif re.search(rf"[`'\"]{re.escape(name)}[`'\"]|\b{re.escape(name)}\s*\(|\b{re.escape(name)}\s+"
                       rf"(tool|server|function|parameter|argument)\b", text, re.I):
            return True
    return False
