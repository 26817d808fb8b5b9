"""A server added with no hints (tests/fixtures/new_user_server.py, a real stdio MCP server whose every
output schema is open and whose failures come back shaped ``{"status": "error"}``): its open schemas
are inferred from the probe and give edges, shaped failures are errors, a description's example is
proposed, an error's listed values repair the call, and what the probe repaired feeds exploration."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from stage_settings import graph_settings

from conftest import FIXTURES
from firefly_exp.explorer import Exploration, HeuristicProposer, NodeContext, explore, load_trajectories, \
    settings_from_yaml
from firefly_exp.explorer.values import Knowledge
from firefly_exp.graph import GraphInputs, build_graph, load_graph
from firefly_exp.probe import REPEAT, SECOND, probe_dags, probe_tools
from firefly_exp.results import value_of
from firefly_exp.schemas import declared_schema
from firefly_exp.servers import discover_tools, load_tools

SPEC = {"id": "newuser", "registry": "pypi", "command": sys.executable,
        "args": [str(FIXTURES / "new_user_server.py")], "seed": [], "stateful": False}


@pytest.fixture(scope="module")
def new_user(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("newuser")
    discover_tools([SPEC], folder, folder / "sb", folder)
    return folder, load_tools(folder)


def _explore(tools, folder: Path, out: Path, dags: list[dict], spec: dict | None = None,
             knowledge: Knowledge | None = None) -> list[dict]:
    settings = settings_from_yaml(concurrency=1, call_timeout_s=10, dag_timeout_s=60, max_retries=3)
    explore(dags, Exploration(tools, {"newuser": spec or SPEC}, folder, out / "sb", settings, 0, HeuristicProposer(),
                              knowledge), out)
    return load_trajectories(out)[1]


def _dag(*nodes: str, edges: list | None = None) -> dict:
    return {"id": "dag-" + "-".join(nodes), "index": 0, "nodes": [f"newuser/{n}" for n in nodes], "edges": edges or []}


def test_open_output_schemas_are_inferred_from_the_probe_and_give_edges(new_user, tmp_path):
    folder, tools = new_user
    rows = tools.to_dicts()
    assert all(json.loads(r["output_schema"]) == {"additionalProperties": True, "title": json.loads(
        r["output_schema"])["title"], "type": "object"} for r in rows)
    assert all(declared_schema(r["output_schema"]) is None for r in rows)   # open: counts as absent
    calls = _explore(tools, folder, tmp_path / "probe", probe_dags(tools))
    (tmp_path / "graph").mkdir()
    build_graph(tools, graph_settings({"flow": 1.0, "value": 1.0}), tmp_path / "graph",
                GraphInputs(probe_calls=calls))
    g = load_graph(tmp_path / "graph")
    edge = g["newuser/list_requests"]["newuser/get_request"]
    assert edge["mapping"] == {"request_id": "requests.0.request_id"}
    import polars as pl
    inferred = pl.read_parquet(tmp_path / "graph" / "inferred_schemas.parquet")
    assert "newuser/list_requests" in inferred["tool"].to_list()
    # and the DAG along that edge runs: the id passed on finds the request
    trail = _explore(tools, folder, tmp_path / "chain", [_dag("list_requests", "get_request", edges=[
        {"source": "newuser/list_requests", "target": "newuser/get_request", "mapping": edge["mapping"]}])])
    last = [c for c in trail if c["tool"] == "get_request"][-1]
    assert not last["is_error"] and value_of(last)["owner"] == "ada@example.org"
    assert last["arg_sources"]["request_id"] == "edge:0:requests.0.request_id"


def test_a_result_shaped_as_an_error_is_an_error(new_user, tmp_path):
    folder, tools = new_user
    calls = _explore(tools, folder, tmp_path / "on", [_dag("get_request")])
    assert calls and all(c["is_error"] and c["error_kind"] == "tool_error" for c in calls)
    assert value_of(calls[0]) == {"status": "error", "message": "Request not found"}
    # a catalog entry may keep such results as data (`error_shapes: false`)
    kept = _explore(tools, folder, tmp_path / "off", [_dag("get_request")], {**SPEC, "error_shapes": False})
    assert len(kept) == 1 and not kept[0]["is_error"]


def test_a_description_example_is_proposed_and_answers(new_user, tmp_path):
    folder, tools = new_user
    row = next(r for r in tools.to_dicts() if r["name"] == "day_of_week")
    row = {**row, "input_schema": json.loads(row["input_schema"])}
    ctx = NodeContext({"id": "d"}, 0, row, {}, [], [], random.Random(0))
    args, sources = HeuristicProposer().propose(ctx, 0, None)
    assert args == {"date": "2026-04-21"} and sources == {"date": "description"}
    calls = _explore(tools, folder, tmp_path, [_dag("day_of_week")])
    assert len(calls) == 1 and value_of(calls[0])["weekday"] == "Tuesday"


def test_an_error_listing_valid_values_repairs_the_call_and_is_kept_for_the_run(new_user, tmp_path):
    folder, tools = new_user
    calls = _explore(tools, folder, tmp_path / "probe", [_dag("weigh")])
    first, second = calls[0], calls[1]
    assert first["is_error"] and "valid units: g, kg, lb" in first["content"][0]["text"]
    assert first["arguments"]["unit"] == "example"          # nothing said what a unit is: a placeholder
    assert not second["is_error"] and second["arguments"]["unit"] == "g" and second["arg_sources"]["unit"] == "repair"
    assert isinstance(second["arguments"]["amount"], float) and second["arguments"]["amount"] != 1.0   # the vocabulary
    # learnt in the probe, the repair is the first proposal of every later DAG: no failed call first
    knowledge = Knowledge.from_calls(calls, value_of)
    assert knowledge.repaired == {"newuser/weigh": {"unit": ["g"]}}
    later = _explore(tools, folder, tmp_path / "explore", [{**_dag("weigh"), "id": "later"}], knowledge=knowledge)
    assert len(later) == 1 and not later[0]["is_error"] and later[0]["arguments"]["unit"] == "g"


def test_the_probe_second_pass_answers_with_what_the_first_saw_and_repeats_only_answers(new_user, tmp_path):
    """get_request fails on a made-up id in the first pass; the second pass passes the id list_requests
    returned. Only answered calls are repeated (a failure is never compared for volatility)."""
    folder, tools = new_user
    ctx = SimpleNamespace(specs={"newuser": SPEC}, install_dir=folder, sandbox_root=tmp_path / "sb", seed=0,
                          out=tmp_path / "probe")
    metrics = probe_tools(tools, ctx, settings_from_yaml(concurrency=1, call_timeout_s=10, dag_timeout_s=60,
                                                         max_retries=3))
    first = load_trajectories(ctx.out)[1]
    second = load_trajectories(ctx.out / SECOND)[1]
    assert "get_request" in {c["tool"] for c in first if c["is_error"]} - {c["tool"] for c in first if not c["is_error"]}
    assert any(c["tool"] == "get_request" and not c["is_error"] and c["arguments"] == {"request_id": "r-1001"}
               for c in second)
    answered_first = {c["tool"] for c in first if not c["is_error"]}
    assert {c["tool"] for c in load_trajectories(ctx.out / REPEAT)[1]} == answered_first
    assert {c["tool"] for c in load_trajectories(ctx.out / REPEAT / SECOND)[1]} == {"get_request"}
    assert metrics["tools_answered"] == len(answered_first) + 1
