"""Informative answers (synthesizer.informative) and the read that observes a write (explorer.verify_writes).

answers.py's rules on hand-made calls; the synthesizer on a two-call trajectory (a write, then a read of
the same state) replayed in the simulator; the explorer on the in-memory counter fixture server
(tests/fixtures/counter_server.py)."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import yaml

from firefly_exp import PROJECT_ROOT, synthesizer
from firefly_exp.answers import Informative, answer_fields, confirmation, constant_paths, echoes
from firefly_exp.explorer import (Exploration, HeuristicProposer, NodeContext, explore, load_trajectories,
                                  settings_from_yaml)
from firefly_exp.explorer.runtime import _known_inputs
from firefly_exp.servers import discover_tools, load_tools
from firefly_exp.settings import SynthesizerSettings
from firefly_exp.simulator import SEED_STATE, Simulator, canonical_args, next_fingerprint

READ, WRITE = Informative(read_only=True), Informative(read_only=False)


def _call(tool: str, arguments: dict, value, fingerprint: str = SEED_STATE, **extra) -> dict:
    server, name = tool.split("/")
    text = value if isinstance(value, str) else json.dumps(value)
    return {"server": server, "tool": name, "arguments": arguments, "arg_sources": {}, "is_error": False,
            "error_kind": None, "content": [{"type": "text", "text": text}], "structured": None,
            "fingerprint": fingerprint, **extra}


# -- answers.py ------------------------------------------------------------------------------------------


def test_a_write_confirmation_is_an_answer_only_without_the_rules():
    """Today's rule keeps "Successfully wrote to ..." (27% of the default run's answers are such);
    the informative rules drop it, and count why."""
    call = _call("filesystem/write_file", {"path": "docs/summary.txt", "content": "hi"},
                 "Successfully wrote to /sandbox/files/docs/summary.txt")
    assert answer_fields(call, False) == [("", "Successfully wrote to /sandbox/files/docs/summary.txt")]
    dropped = Counter()
    assert answer_fields(call, False, rules=WRITE, dropped=dropped) == []
    assert dropped == {"write_confirmation": 1}
    branch = _call("git/git_create_branch", {"branch_name": "feature"}, "Created branch 'feature' from 'main'")
    updated = _call("sqlite/write_query", {"query": "UPDATE t SET a = 1"},
                    {"message": "Updated 1 row", "rowsAffected": 1})
    assert [answer_fields(c, False, rules=WRITE) for c in (branch, updated)] == [[], []]


def test_bare_true_or_ok_confirms_a_write_but_informs_from_a_read():
    write = _call("memory/delete_relations", {"relations": []}, {"success": True, "status": "OK"})
    read = _call("db/db_info", {}, {"exists": True, "tables": 3})
    assert answer_fields(write, False, rules=WRITE) == []
    assert answer_fields(read, False, rules=READ) == [("exists", True), ("tables", 3)]
    assert not confirmation("0.message", "Updated README", read_only=True)   # a commit message a log returned


def test_errors_in_successful_looking_results_are_never_answers():
    """A result that says it failed gives nothing; an error line among data is left out on its own."""
    status = _call("text-editor/edit", {"path": "a.txt"}, {"a.txt": {"result": "error", "reason": "bad range"}})
    failed = _call("db/query", {"sql": "SELECT 1"}, {"status": "error", "message": "no such table: x"})
    mixed = _call("time-node/convert", {"time": "noon"}, {"zone": "Asia/Tokyo", "note": "Error: Invalid Date",
                                                           "text": "the time difference is NaN hours"})
    dropped = Counter()
    assert answer_fields(status, False, rules=READ, dropped=dropped) == []
    assert answer_fields(failed, False, rules=READ, dropped=dropped) == []
    assert answer_fields(mixed, False, rules=READ, dropped=dropped) == [("zone", "Asia/Tokyo")]
    assert dropped == {"error_result": 4, "error_text": 2}
    assert len(answer_fields(failed, False)) == 2   # without the rules both leaves were answer material


def test_an_echo_of_any_argument_of_the_chain_is_not_an_answer():
    """``given`` holds every argument of the chain: a later call's argument and a path returned
    absolute for a relative argument are echoes."""
    given = json.dumps([{"pattern": "*.md"}, {"path": "docs/notes.md"}])
    call = _call("fs/stat", {"path": "docs/notes.md"}, {"file": "/sandbox/files/docs/notes.md", "size": 812,
                                                        "name": "notes.md"})
    assert answer_fields(call, False, given=given, rules=READ) == [("size", 812)]
    assert echoes("/sandbox/files/docs/notes.md", ["docs/notes.md"]) and not echoes("notes about cats", ["cats"])


def test_a_value_the_same_for_every_call_of_its_tool_is_constant():
    """``conversion_type`` never varies over three different conversions: not informative; the same
    arguments three times, or two different ones, are not enough to tell."""
    convs = [_call("units/convert_length", {"value": v, "to_unit": "yard"},
                   {"conversion_type": "length", "converted_value": v * 1760}) for v in (1, 2, 5)]
    same = [_call("units/list_units", {}, {"first": "meter"}) for _ in range(3)]
    two = [_call("units/convert_mass", {"value": v}, {"conversion_type": "mass"}) for v in (1, 2)]
    states = [_call("db/db_info", {}, {"path": "/sandbox/shop.db", "size": 100 + i}, fingerprint=f"s{i}")
              for i in range(3)]   # no arguments: never judged, whatever states it ran in
    constant = constant_paths(convs + same + two + states)
    assert constant == {"units/convert_length": frozenset({"conversion_type"})}
    dropped = Counter()
    rules = Informative(True, constant["units/convert_length"])
    assert answer_fields(convs[2], False, rules=rules, dropped=dropped) == [("converted_value", 8800)]
    assert dropped == {"constant": 1}


# -- the synthesizer: a write, then the read that observes it ----------------------------------------


def _synth_settings(**overrides) -> SynthesizerSettings:
    conf = yaml.safe_load((PROJECT_ROOT / "conf" / "synthesizer" / "template.yaml").read_text())
    return SynthesizerSettings(**{**conf, "near_duplicate_threshold": None, **overrides})


def _write_then_read(seeded_rows: int = 40) -> tuple[synthesizer.Recorded, Simulator]:
    """add_row (a write, its result a confirmation), then count_rows and list_files (reads): the count
    reads the state the write changed, the listing another server's. Another DAG counted
    ``seeded_rows`` on the seeded state (what shows whether the write made a difference)."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    empty = {"type": "object", "properties": {}}
    rows = [{"tool": "db/add_row", "server": "db", "read_only": False, "input_schema": json.dumps(schema),
             "volatile": False, "description": "Add a row to the customers table."},
            {"tool": "db/count_rows", "server": "db", "read_only": True, "input_schema": json.dumps(empty),
             "volatile": False, "description": "Count the rows of the customers table."},
            {"tool": "fs/list_files", "server": "fs", "read_only": True, "input_schema": json.dumps(empty),
             "volatile": False, "description": "List the files of the sandbox."}]
    after = next_fingerprint(SEED_STATE, "db", "add_row", canonical_args({"name": "Dana"}, schema), False)
    calls = [_call("db/add_row", {"name": "Dana"}, "Successfully added 1 row", episode="e", seq=0, step=0,
                   mutating=True),
             _call("db/count_rows", {}, {"rows": 41}, after, episode="e", seq=1, step=1, mutating=False),
             _call("fs/list_files", {}, {"files": 17}, after, episode="e", seq=2, step=2, mutating=False)]
    trajectories = [{"episode": "e", "dag_id": "dag-0", "status": "complete",
                     "steps": [{"node": f"{c['server']}/{c['tool']}", "seq": c["seq"]} for c in calls]}]
    seeded = _call("db/count_rows", {}, {"rows": seeded_rows}, episode="other", seq=0, step=0, mutating=False)
    tools = {r["tool"]: r for r in rows}
    return synthesizer.Recorded(trajectories, calls, tools), Simulator.from_calls(calls + [seeded], pl.DataFrame(rows))


def test_after_a_write_the_answer_comes_from_the_read_that_observes_it():
    """Off: the one task asks for the write's confirmation (the count depends on no value passed along,
    so it gives no chained task). On: the task asks how many rows the table holds, its gold chain the
    write and the count, and it replays; the write's own result is counted as left out."""
    recorded, sim = _write_then_read()
    off = synthesizer.candidate_tasks(recorded, sim, _synth_settings(), 0).tasks
    assert [list(t["answer"].values()) for t in off] == [["Successfully added 1 row"]]
    found = synthesizer.candidate_tasks(recorded, sim, _synth_settings(informative=True), 0)
    assert len(found.tasks) == 1   # the unrelated listing neither observes the write nor was fed by it
    first = found.tasks[0]
    assert first["answer"] == {"rows": 41}
    assert [c["tool"] for c in first["gold_calls"]] == ["add_row", "count_rows"]
    assert first["provenance"]["rows"]["tool"] == "db/count_rows"
    assert all("Successfully" not in str(v) for t in found.tasks for v in t["answer"].values())
    assert found.rejected["field_write_confirmation"] == 1


def test_a_read_the_write_left_alike_does_not_make_the_write_part_of_a_task():
    """Counted 41 rows on the seeded state too: the add changed nothing the count shows, so a task
    "add a row, then count" would need no add; without a data dependency there is no task."""
    recorded, sim = _write_then_read(seeded_rows=41)
    found = synthesizer.candidate_tasks(recorded, sim, _synth_settings(informative=True), 0)
    assert found.tasks == [] and found.rejected["no_chain_dependency"] == 1


def test_the_constants_a_worker_is_given_are_the_ones_used():
    """Under executor=ray a worker sees a share of the calls: the constants computed over all of them
    travel with it (``Recorded.constants``) and win over its own share's."""
    recorded, sim = _write_then_read()
    given = synthesizer.Recorded(recorded.trajectories, recorded.calls, recorded.tools,
                                 {"db/count_rows": frozenset({"rows"})})
    found = synthesizer.candidate_tasks(given, sim, _synth_settings(informative=True), 0)
    assert all("rows" not in t["answer"] for t in found.tasks) and found.rejected["field_constant"] == 1


# -- the explorer: a read appended after an unverified write -------------------------------------------


def _counter(tmp_path: Path):
    spec = {"id": "counter", "command": sys.executable,
            "args": [str(Path(__file__).parent / "fixtures" / "counter_server.py")],
            "registry": "pypi", "stateful": True, "reset": "restart"}
    discover_tools([spec], tmp_path, tmp_path / "disc", tmp_path)
    return load_tools(tmp_path), {"counter": spec}


def _explore(tmp_path: Path, name: str, plan: list[list[str]], tools, specs, verify: bool):
    dags = [{"id": f"d{i}", "index": i, "nodes": nodes, "edges": []} for i, nodes in enumerate(plan)]
    out = tmp_path / name
    out.mkdir()
    settings = settings_from_yaml(concurrency=1, verify_writes=verify)
    explore(dags, Exploration(tools, specs, tmp_path, tmp_path / f"sb-{name}", settings, 0, HeuristicProposer()), out)
    return load_trajectories(out)


def test_an_unverified_write_gets_one_read_of_its_server(tmp_path):
    """bump alone: with verify_writes a get_count follows (step 1, marked ``verify``) and sees the
    count the bump left; bump then get_count, and a read alone, get nothing appended; off, nothing is."""
    tools, specs = _counter(tmp_path)
    plan = [["counter/bump"], ["counter/bump", "counter/get_count"], ["counter/get_count"]]
    trajs, calls = _explore(tmp_path, "on", plan, tools, specs, verify=True)
    assert [[s["node"] for s in t["steps"]] for t in trajs] == [
        ["counter/bump", "counter/get_count"], ["counter/bump", "counter/get_count"], ["counter/get_count"]]
    assert trajs[0]["steps"][1]["verify"] is True and all("verify" not in s for t in trajs[1:] for s in t["steps"])
    appended = [c for c in calls if c["dag_id"] == "d0" and c["tool"] == "get_count"]
    assert len(appended) == 1 and appended[0]["step"] == 1 and appended[0]["arg_sources"] == {}
    assert json.loads(appended[0]["content"][0]["text"])["count"] == 1 and trajs[0]["status"] == "complete"
    off_trajs, off_calls = _explore(tmp_path, "off", plan[:1], tools, specs, verify=False)
    assert [c["tool"] for c in off_calls] == ["bump"] and off_trajs[0]["steps"] == [{"node": "counter/bump", "seq": 0}]


def test_a_read_needs_its_required_inputs_known():
    """A required parameter with a hint, or one an earlier result holds under its name, is known; one
    only a type default could fill is not."""
    tool = {"tool": "db/describe", "name": "describe", "server": "db", "read_only": True, "volatile": False,
            "input_schema": {"type": "object", "properties": {"table": {"type": "string"}}, "required": ["table"]}}

    def ctx(hints: dict, observations: list) -> NodeContext:
        return NodeContext({"id": "d"}, 1, tool, hints, observations, [], random.Random(0))

    assert _known_inputs(ctx({"table": ["orders"]}, []))
    assert _known_inputs(ctx({}, [{"step": 0, "tool": "db/add", "arguments": {}, "value": {"table": "orders"}}]))
    assert not _known_inputs(ctx({}, []))
