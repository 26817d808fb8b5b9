"""Coherent chains (graph.coherence_threshold): a flow mapping from output field F of tool A to parameter
P of tool B survives only when "F's key + A's description" and "P's name and description + B's
description" mean the same kind of thing to the offline MiniLM model.

The hand-made rows below are modelled on the default catalog's tools (descriptions and parameter
titles as the servers declare them); the three refused pairs are ones the name/type/pattern flow
score maps, which is what the check is for."""

from __future__ import annotations

import json

import polars as pl
import pytest

from firefly_exp.graph import build_graph, coherence, flow_score, input_params, output_fields
from stage_settings import graph_settings

S = {"type": "string"}
THRESHOLD = 0.35   # conf/graph/default.yaml's comment: why this value


def _tool(server, name, desc, inputs, outputs, required=None):
    return {"tool": f"{server}/{name}", "server": server, "name": name, "description": desc,
            "input_schema": json.dumps({"type": "object", "properties": inputs,
                                        "required": list(inputs) if required is None else required}),
            "output_schema": json.dumps({"type": "object", "properties": outputs}) if outputs else None,
            "annotations": "{}", "read_only": True, "volatile": False, "domain": server, "stateful": False,
            "server_name": server, "server_version": "1", "schema_hash": name}


ROWS = [
    _tool("sqlite", "describe_table", "Get the schema information for a specific table",
          {"table_name": {**S, "description": "Name of the table to describe"}},
          {"name": S, "type": S}),
    _tool("sqlite", "list_tables", "List all tables in the SQLite database", {}, {"name": S}),
    _tool("git", "git_create_branch", "Creates a new branch from an optional base branch",
          {"branch_name": {**S, "title": "Branch Name"}}, {"result": S}),
    _tool("chess", "find_piece", "Find the square where a chess piece stands on the board",
          {"piece": {**S, "description": "The piece, e.g. white knight"}}, {"location": S}),
    _tool("files", "open_file", "Open a text file and return its contents",
          {"location": {**S, "description": "Path of the file to open"}}, {"text": S}),
    _tool("todo", "add_task", "Add a task to the todo list",
          {"title": {**S, "description": "What the task is"}}, {"task_id": S}),
    _tool("batch", "get_request_status", "Get the status of a batch conversion request",
          {"request_id": {**S, "description": "Id of the conversion request"}}, {"status": S}),
    _tool("files", "search_files", "Recursively search for files and directories matching a pattern",
          {"pattern": {**S, "description": "A glob pattern"}}, {"path": S}),
    _tool("files", "read_file", "Read the complete contents of a file as text", {"path": S}, {"content": S}),
]
BY_TOOL = {r["tool"]: r for r in ROWS}
REFUSED = {"column name -> branch name": ("sqlite/describe_table", "git/git_create_branch", "branch_name", "name"),
           "board square -> file path": ("chess/find_piece", "files/open_file", "location", "location"),
           "task id -> request id": ("todo/add_task", "batch/get_request_status", "request_id", "task_id")}
PASSED = {"table name -> table parameter": ("sqlite/list_tables", "sqlite/describe_table", "table_name", "name"),
          "file path -> path parameter": ("files/search_files", "files/read_file", "path", "path")}


def _flow_mapping(src: str, tgt: str) -> dict:
    outs = output_fields(json.loads(BY_TOOL[src]["output_schema"]), patterns=True)
    return flow_score(outs, input_params(json.loads(BY_TOOL[tgt]["input_schema"]), patterns=True))[1]


def _cosines() -> dict[str, float]:
    cases = {**REFUSED, **PASSED}
    candidates = [{"source": s, "target": t, "mapping": {p: f}} for s, t, p, f in cases.values()]
    cos = coherence(candidates, ROWS, graph_settings())
    return {name: cos[(s, t, p)] for name, (s, t, p, _) in cases.items()}


@pytest.mark.parametrize("case", sorted({**REFUSED, **PASSED}))
def test_the_flow_score_maps_every_case(case):
    """Name, type and value pattern alone map all five: the semantic check is what tells them apart."""
    src, tgt, param, field = {**REFUSED, **PASSED}[case]
    assert _flow_mapping(src, tgt).get(param) == field


def test_cosines_separate_refused_from_passed_pairs():
    """Measured (int8 MiniLM, 48 tokens, as conf/graph/default.yaml embeds): column name -> branch name
    0.15, board square -> file path 0.15, task id -> request id 0.31; table name -> table 0.62,
    file path -> path 0.43 (int8 activations are scaled per batch: a different batch moves them by
    up to ~0.03)."""
    cos = _cosines()
    print({k: round(v, 3) for k, v in cos.items()})
    assert max(cos[c] for c in REFUSED) < THRESHOLD <= min(cos[c] for c in PASSED), cos


def _edges(tmp_path, threshold) -> tuple[dict, dict]:
    settings = graph_settings({"flow": 1.0}, {"low": 0.3, "medium": 0.5, "high": 0.8},
                              coherence_threshold=threshold, max_out_degree=20)
    out = tmp_path / str(threshold)
    out.mkdir()
    metrics = build_graph(pl.DataFrame(ROWS), settings, out)
    edges = pl.read_parquet(out / "edges.parquet")
    return {(r["source"], r["target"]): json.loads(r["mapping"]) for r in edges.iter_rows(named=True)}, metrics


def test_the_graph_drops_incoherent_mappings_only_when_asked(tmp_path):
    """With the threshold, the refused mappings (and their edges, left without one) are gone and the
    passed ones kept; with null the graph keeps them all and reports nothing new."""
    off, off_metrics = _edges(tmp_path, None)
    on, on_metrics = _edges(tmp_path, THRESHOLD)
    for src, tgt, param, field in {**REFUSED, **PASSED}.values():
        assert off[(src, tgt)].get(param) == field
    for src, tgt, param, _ in REFUSED.values():
        assert param not in on.get((src, tgt), {})
    for src, tgt, param, field in PASSED.values():
        assert on[(src, tgt)][param] == field
    assert on_metrics["incoherent_mappings_dropped"] >= len(REFUSED) and on_metrics["incoherent_edges_dropped"] >= 1
    assert "incoherent_mappings_dropped" not in off_metrics
