"""The ``lookup`` baseline policy on a hand-made task set, in a real simulator built from recorded calls.

The simulator answers only exact recorded calls (cascade ``exact``), so a result the policy reads proves
it picked that tool and filled those very arguments from the question."""

import json
from pathlib import Path

import polars as pl
import yaml

from firefly_exp import evaluate as ev, lookup
from firefly_exp.settings import EvalSettings
from firefly_exp.simulator import SEED_STATE, Simulator

ROOT = Path(__file__).resolve().parents[1]


def _schema(props: dict, required: list) -> str:
    return json.dumps({"type": "object", "properties": props, "required": required})


UNIT = {"type": "string", "enum": ["cup", "liter", "meter", "foot"]}
TOOLS = pl.DataFrame([
    {"tool": "units/convert_volume", "description": "Convert a volume (cups, liters) from one unit to another",
     "read_only": True, "input_schema": _schema({"value": {"type": "number"}, "from_unit": UNIT, "to_unit": UNIT},
                                                ["value", "from_unit", "to_unit"])},
    {"tool": "units/convert_length", "description": "Convert a length (meters, feet) from one unit to another",
     "read_only": True, "input_schema": _schema({"value": {"type": "number"}, "from_unit": UNIT, "to_unit": UNIT},
                                                ["value", "from_unit", "to_unit"])},
    {"tool": "notes/search_notes", "description": "Search the notes for a text; returns the matching notes' titles",
     "read_only": True, "input_schema": _schema({"text": {"type": "string"}, "limit": {"type": "integer"}},
                                                ["text", "limit"])},
    {"tool": "notes/get_note", "description": "Get the body of one note by its id", "read_only": True,
     "input_schema": _schema({"note_id": {"type": "string"}}, ["note_id"])},
    {"tool": "notes/add_note", "description": "Add a new note with a text", "read_only": False,
     "input_schema": _schema({"text": {"type": "string"}}, ["text"])},
])
SCHEMAS = ev.tool_schemas(TOOLS.to_dicts())
DESCRIPTIONS = ev.tool_descriptions(TOOLS.to_dicts())

CONVERT = {"value": 250, "from_unit": "cup", "to_unit": "liter"}
SEARCH = {"text": "invoice", "limit": 5}


def _call(episode, seq, tool, args, value):
    server, name = tool.split("/")
    return {"episode": episode, "seq": seq, "server": server, "tool": name, "arguments": args,
            "content": [{"type": "text", "text": json.dumps(value)}], "structured": None, "is_error": False,
            "error_kind": None, "fingerprint": SEED_STATE, "mutating": False}


def _simulator() -> Simulator:
    calls = [
        _call("e1", 0, "units/convert_volume", CONVERT, {"value": 250, "converted_value": 0.25, "unit": "liter"}),
        _call("e2", 0, "units/convert_length", {"value": 250, "from_unit": "foot", "to_unit": "meter"},
              {"value": 250, "converted_value": 76.2, "unit": "meter"}),
        _call("e3", 0, "notes/search_notes", SEARCH, {"matches": [{"title": "invoice 42", "id": "n7"}], "count": 1}),
        _call("e3", 1, "notes/get_note", {"note_id": "n7"}, {"id": "n7", "body": "pay 42 EUR by friday"}),
    ]
    return Simulator.from_calls(calls, TOOLS, cascade=("exact",))


def _task(tid, question, server, gold, fields, answer, provenance):
    return {"id": tid, "question": question, "tools": sorted(t for t in SCHEMAS if t.startswith(server + "/")),
            "gold_calls": [{"server": t.split("/")[0], "tool": t.split("/")[1], "arguments": a} for t, a in gold],
            "answer_schema": fields, "answer": answer, "provenance": provenance,
            "difficulty": {"calls": len(gold)}}


CONVERT_TASK = _task(
    "t-convert", "How much is 250 cups in liters?", "units", [("units/convert_volume", CONVERT)],
    {"converted_value": {"type": "number", "description": "the volume in the target unit"}},
    {"converted_value": 0.25}, {"converted_value": {"step": 0, "path": "converted_value"}})
SEARCH_TASK = _task(
    "t-search", 'Search my notes for "invoice", 5 at most: what is the title of the first one found?', "notes",
    [("notes/search_notes", SEARCH)], {"title": {"type": "string", "description": "the first match's title"}},
    {"title": "invoice 42"}, {"title": {"step": 0, "path": "matches.0.title"}})
# the note's id comes from the search's result: nothing in the question can stand for it
CHAIN_TASK = _task(
    "t-chain", 'Search my notes for "invoice", 5 at most, and tell me what the body of the first note found says.',
    "notes", [("notes/search_notes", SEARCH), ("notes/get_note", {"note_id": "n7"})],
    {"body": {"type": "string", "description": "the body of the note"}},
    {"body": "pay 42 EUR by friday"}, {"body": {"step": 1, "path": "body"}})


def _play(task):
    episode = _simulator().episode()
    answer = lookup.make_lookup_policy(SCHEMAS, DESCRIPTIONS)(task, episode, None)
    return answer, episode.calls


def test_lookup_picks_the_named_tool_and_reads_a_number_and_units_off_the_question():
    answer, calls = _play(CONVERT_TASK)
    assert [(c["tool"], c["arguments"], c["hit"]) for c in calls] == [("convert_volume", CONVERT, "exact")]
    assert answer == {"converted_value": 0.25}        # the converted value, not the echoed 250


def test_lookup_fills_a_string_and_an_integer_and_answers_by_the_field_name():
    answer, calls = _play(SEARCH_TASK)
    assert [(c["tool"], c["arguments"], c["hit"]) for c in calls] == [("search_notes", SEARCH, "exact")]
    assert answer == {"title": "invoice 42"}


def test_lookup_fails_when_a_value_must_come_from_a_chain():
    answer, calls = _play(CHAIN_TASK)
    by_tool = {c["tool"]: c for c in calls}
    assert by_tool["search_notes"]["hit"] == "exact"
    # the id it lacks is filled from the question ("invoice"), which the simulator has never seen
    assert by_tool["get_note"]["arguments"] == {"note_id": "invoice"} and by_tool["get_note"]["hit"] == "miss"
    assert answer["body"] != CHAIN_TASK["answer"]["body"]


def test_eval_table_scores_lookup_beside_gold_and_is_deterministic(tmp_path):
    tasks = [CONVERT_TASK, SEARCH_TASK, CHAIN_TASK]
    policies = {"gold": ev.gold_policy, "lookup": lookup.make_lookup_policy(SCHEMAS, DESCRIPTIONS)}
    settings = EvalSettings(policies=["gold", "lookup"])
    first = ev.evaluate(tasks, _simulator(), policies, tmp_path / "a", 0, settings)
    assert first["policies"]["gold"]["pass@1"] == 1.0
    row = first["policies"]["lookup"]
    assert row["pass@1"] == round(2 / 3, 4) and row["pass@1.calls_1"] == 1.0 and row["pass@1.calls_2"] == 0.0
    ev.evaluate(tasks, _simulator(), policies, tmp_path / "b", 0, settings)
    assert (tmp_path / "a" / "episodes.jsonl").read_bytes() == (tmp_path / "b" / "episodes.jsonl").read_bytes()


def test_lookup_is_a_default_eval_policy_after_random():
    policies = yaml.safe_load((ROOT / "conf" / "eval" / "default.yaml").read_text())["policies"]
    assert policies.index("lookup") == policies.index("random") + 1
    assert "lookup" in ev.POLICIES and EvalSettings(policies=["lookup"]).policies == ["lookup"]


def test_question_values_and_enum_words():
    values = [v.value for v in lookup.question_values('Copy "my notes.md" to /sandbox/out/b.txt, 3 times, at 2.5x')]
    assert values == ["my notes.md", "/sandbox/out/b.txt", 3]     # 2.5x is not a number on its own
    args, complete = lookup.lookup_arguments(SCHEMAS["units/convert_volume"], "Turn 12 liters into cups")
    assert complete and args == {"value": 12, "from_unit": "liter", "to_unit": "cup"}   # in the question's order
    assert lookup.lookup_arguments(SCHEMAS["notes/get_note"], "Which note is the newest?") == ({}, False)


def test_values_go_to_the_parameters_they_are_written_beside():
    branch = {"properties": {"repo_path": {"type": "string"}, "branch_name": {"type": "string"},
                             "base_branch": {"type": "string"}}, "required": ["repo_path", "branch_name"]}
    args, complete = lookup.lookup_arguments(branch, 'Create the branch "dev" from the base "main" in /sandbox/repo')
    assert complete and args == {"repo_path": "/sandbox/repo", "branch_name": "dev", "base_branch": "main"}
    # `key="value"`, as recipe questions write it, beats a parameter that only shares a word of the key
    args, _ = lookup.lookup_arguments(branch, 'Run it with base_branch="main", branch_name="dev", repo_path="/r"')
    assert args == {"repo_path": "/r", "branch_name": "dev", "base_branch": "main"}
    # an optional parameter is left out unless a value is anchored to it; the answer's own keys are no input
    args, complete = lookup.lookup_arguments(branch, 'In /sandbox/repo, give "branch_count".', frozenset({"branch_count"}))
    assert args == {"repo_path": "/sandbox/repo"} and not complete
