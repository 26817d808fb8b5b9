"""The graph stage (flow, similarity, value-pattern, observed and LM-judge evidence; the vectorised
scoring equals the pairwise reference), the observed-flow stage, and the graph -> sampler -> flow chain."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from stage_settings import graph_settings

from firefly_exp import PROJECT_ROOT
from firefly_exp.graph import GraphInputs, _Keys, _t1, build_graph, flow_matrix_rows, flow_score, input_params, \
    load_graph, output_fields
from firefly_exp.observed import edge_validity, observed_flow
from firefly_exp.schemas import infer_output_schemas
from firefly_exp.settings import load_settings

BENCH = PROJECT_ROOT / "bench/data/tools.json"


def _real_rows(n=160, step=4):
    real = json.loads(BENCH.read_text())[::step][:n]
    return [{"tool": f"{t['server']}/{t['name']}", "server": t["server"], "name": t["name"],
             "description": t["description"], "domain": t["server"],
             "input_schema": json.dumps(t["inputSchema"] or {}),
             "output_schema": json.dumps(t["outputSchema"]) if t["outputSchema"] else None} for t in real]


def test_vectorised_flow_equals_the_pairwise_reference_on_real_schemas():
    rows = _real_rows()
    outs = [output_fields(json.loads(r["output_schema"]) if r["output_schema"] else None, patterns=True) for r in rows]
    ins = [input_params(json.loads(r["input_schema"]), patterns=True) for r in rows]
    keys = _Keys(outs, ins)
    S = keys.score_matrix()
    fast = flow_matrix_rows(keys, S, np.arange(len(rows)), _t1(keys, S))
    slow = np.array([[flow_score(outs[i], ins[j])[0] if ins[j] else 0.0 for j in range(len(rows))]
                     for i in range(len(rows))])
    has = np.array([bool(p) for p in ins])
    assert np.allclose(fast[:, has], slow[:, has], atol=1e-5)
    assert (slow[:, has] > 0.3).sum() > 100  # a real test: many compatible pairs


def test_value_patterns_link_fields_named_differently():
    outs = output_fields({"properties": {"location": {"type": "string", "x-pattern": "path"}}}, patterns=True)
    score, mapping = flow_score(outs, input_params({"properties": {"file": {"type": "string"}}, "required": ["file"]},
                                                   patterns=True))
    assert score == 0.6 and mapping == {"file": "location"}


def _calls():
    return [
        {"episode": "e1", "dag_id": "d1", "step": 0, "server": "fs", "tool": "list_files", "is_error": False,
         "arg_sources": {"folder": "hint"}, "structured": None,
         "content": [{"type": "text", "text": json.dumps({"entries": [{"location": "/sandbox/a.txt", "bytes": 3}]})}]},
        {"episode": "e1", "dag_id": "d1", "step": 1, "server": "text", "tool": "count_words", "is_error": False,
         "arg_sources": {"text": "edge:0:entries.0.location"}, "structured": None,
         "content": [{"type": "text", "text": "12"}]},
    ]


def _tools():
    s = {"type": "string"}

    def tool(server, name, desc, inputs):
        return {"tool": f"{server}/{name}", "server": server, "name": name, "description": desc,
                "input_schema": json.dumps({"type": "object", "properties": inputs, "required": list(inputs)}),
                "output_schema": None, "domain": server}

    return pl.DataFrame([tool("fs", "list_files", "List files", {"folder": s}),
                         tool("fs", "read_file", "Read a file", {"file": s}),
                         tool("text", "count_words", "Count words", {"text": s})])


def test_inferred_schemas_and_observed_flow_shape_the_graph(tmp_path):
    inferred = infer_output_schemas(_calls())
    loc = inferred["fs/list_files"]["properties"]["entries"]["items"]["properties"]["location"]
    assert loc == {"type": "string", "x-pattern": "path"}
    assert observed_flow(_calls()) == {("fs/list_files", "text/count_words"): {"n": 1, "mapping": {"text": "entries.0.location"}}}
    m = build_graph(_tools(), graph_settings({"flow": 1.0, "observed": 1.0}, {"low": 0.3, "medium": 0.5, "high": 0.8}),
                    tmp_path, GraphInputs(observed_calls=_calls()))
    g = load_graph(tmp_path)
    # the inferred path-valued field feeds read_file's `file` by its value pattern
    assert g["fs/list_files"]["fs/read_file"]["mapping"] == {"file": "entries.0.location"}
    # exploration passed a value list_files -> count_words: confirmed, high, with the mapping it used
    e = g["fs/list_files"]["text/count_words"]
    assert e["confidence"] == "high" and e["mapping"] == {"text": "entries.0.location"}
    assert m["observed_pairs"] == 1 and m["inferred_schemas"] == 2 and "agreement.observed_kept_by_cheap" in m
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"edges", "edges_high", "pair_fraction", "cross_server_edges", "intra_server_edges"} <= set(report)
    assert pl.read_parquet(tmp_path / "inferred_schemas.parquet").height == 2


def test_lm_judge_runs_on_top_candidates_only_and_is_cached(tmp_path):
    from dspy.utils import DummyLM

    tools = _tools()
    lm = DummyLM([{"confidence": "medium", "mapping": json.dumps({"file": "*"})}] * 10)
    settings = graph_settings({"flow": 1.0}, {"low": 0.1, "medium": 0.5, "high": 0.8},
                              lm_judge={"enabled": True, "max_pairs": 1, "num_threads": 1})
    m = build_graph(tools, settings, tmp_path, GraphInputs(lm=lm, cache_dir=tmp_path / "cache"))
    assert m["lm_judged"] == 1 and "agreement.combined_vs_lm" in m
    assert len(list((tmp_path / "cache/edge_judge").glob("*.json"))) == 1
    out2 = tmp_path / "again"
    out2.mkdir()
    empty = DummyLM([])  # a second build answers from the cache: no LM call
    assert build_graph(tools, settings, out2, GraphInputs(lm=empty, cache_dir=tmp_path / "cache"))["lm_judged"] == 1


def test_edge_validity_counts_consecutive_pairs_for_edgeless_dags():
    calls = _calls()
    dags = [{"id": "d1", "nodes": ["fs/list_files", "text/count_words"], "edges": []}]
    assert edge_validity(dags, calls)["edge_validity"] == 1.0
    calls[1]["is_error"] = True
    assert edge_validity(dags, calls)["edge_validity"] == 0.0


@pytest.mark.servers
def test_adding_a_server_changes_the_graph_without_code(config, tmp_path):
    """A catalog entry added in a composed config (no code): its tools are discovered and in the graph."""
    from conftest import installed
    from firefly_exp.servers import discover_tools, load_tools

    if not (installed("time-node") and installed("time")):
        pytest.skip("servers not installed (make servers)")
    cfg = config("+servers.catalog.clock-two=${servers.catalog.time-node}", "servers.enabled=[time,clock-two]")
    specs = load_settings(cfg).servers.specs()
    discover_tools(list(specs.values()), Path(cfg.servers.install_dir), tmp_path / "sb", tmp_path)
    build_graph(load_tools(tmp_path), graph_settings({"flow": 1.0}, {"low": 0.1, "medium": 0.5, "high": 0.8}), tmp_path)
    g = load_graph(tmp_path)
    assert {d["server"] for _, d in g.nodes(data=True)} == {"time", "clock-two"}
    assert any(n.startswith("clock-two/") for n in g.nodes)


def _tool(server, name, desc, inputs, outputs=None, required=None):
    return {"tool": f"{server}/{name}", "server": server, "name": name, "description": desc,
            "input_schema": json.dumps({"type": "object", "properties": inputs,
                                        "required": required if required is not None else list(inputs)}),
            "output_schema": json.dumps({"type": "object", "properties": outputs}) if outputs else None,
            "annotations": "{}", "read_only": True, "volatile": False, "domain": server, "stateful": False,
            "server_name": server, "server_version": "1", "schema_hash": name}


@pytest.fixture
def tools():
    s = {"type": "string"}
    return pl.DataFrame([
        _tool("files", "list_files", "List files in a folder", {"folder": s}, {"path": s, "size": {"type": "integer"}}),
        _tool("files", "read_file", "Read a file", {"path": s}, {"content": s}),
        _tool("files", "stat_file", "File size and times", {"path": s}, {"size": {"type": "integer"}}),
        _tool("text", "count_words", "Count words in a text", {"text": s}, {"words": {"type": "integer"}}),
        _tool("math", "double", "Double a number", {"size": {"type": "number"}}, {"value": {"type": "number"}}),
        _tool("clock", "now", "Current time", {}, {"time": s}),
    ])


def test_flow_score_maps_matching_fields():
    score, mapping = flow_score(output_fields({"properties": {"path": {"type": "string"}}}),
                                [("path", "string", True), ("mode", "string", False)])
    assert score == 1.0 and mapping == {"path": "path"}
    assert output_fields(None) == [("*", "string")]


def test_graph_edges_follow_data_flow(tools, tmp_path):
    m = build_graph(tools, graph_settings({"flow": 1.0}, {"low": 0.3, "medium": 0.5, "high": 0.8}), tmp_path)
    g = load_graph(tmp_path)
    assert g.has_edge("files/list_files", "files/read_file")
    assert g["files/list_files"]["files/read_file"]["mapping"] == {"path": "path"}
    assert g.has_edge("files/list_files", "math/double")           # size -> size, number accepts integer
    assert not g.has_edge("files/read_file", "math/double")
    assert not any(v == "clock/now" for _, v in g.edges)             # no inputs, nothing feeds it
    assert m["edges"] == g.number_of_edges() and m["tools"] == 6
    assert (tmp_path / "graph.png").stat().st_size > 0 and (tmp_path / "edges.parquet").exists()


def test_graph_with_offline_embeddings(tools, tmp_path):
    m = build_graph(tools, graph_settings({"flow": 0.6, "similarity": 0.4}, {"low": 0.3, "medium": 0.45, "high": 0.6}),
                    tmp_path)
    edges = pl.read_parquet(tmp_path / "edges.parquet")
    assert m["edges"] == edges.height > 0
    assert edges["similarity"].max() > 0  # the embedding model ran
    assert set(edges["confidence"].unique()) <= {"low", "medium", "high"}


def test_edges_that_only_pass_an_echoed_argument_are_dropped(tools, tmp_path):
    """A probe where list_files returned its own `folder` argument as `path`: the list_files -> read_file
    edge (path <- path) would pass on only what the caller gave list_files, so it goes; with
    drop_echoes off, or a probe that returned a real path, it stays."""
    def probe(path_value):
        return [{"server": "files", "tool": "list_files", "is_error": False, "arguments": {"folder": "/data/in"},
                 "content": [{"type": "text", "text": json.dumps({"path": path_value, "size": 3})}]}]

    settings = graph_settings({"flow": 1.0}, {"low": 0.3, "medium": 0.5, "high": 0.8})
    echoed, kept, off = tmp_path / "echo", tmp_path / "real", tmp_path / "off"
    for p in (echoed, kept, off):
        p.mkdir()
    m = build_graph(tools, settings, echoed, GraphInputs(probe_calls=probe("/data/in")))
    assert not load_graph(echoed).has_edge("files/list_files", "files/read_file") and m["echo_edges_dropped"] >= 1
    build_graph(tools, settings, kept, GraphInputs(probe_calls=probe("/data/in/a.txt")))
    assert load_graph(kept)["files/list_files"]["files/read_file"]["mapping"] == {"path": "path"}
    build_graph(tools, settings.model_copy(update={"drop_echoes": False}), off, GraphInputs(probe_calls=probe("/data/in")))
    assert load_graph(off).has_edge("files/list_files", "files/read_file")
    nodes = pl.read_parquet(kept / "nodes.parquet")
    assert nodes.filter(pl.col("tool") == "files/list_files")["probe_ok"].item() is True
    assert nodes.filter(pl.col("tool") == "files/read_file")["probe_ok"].item() is False   # never probed


def test_stage_declarations_chain_servers_graph_sampler_flow(tools, config, tmp_path):
    """The graph, sampler and flow builders on a catalog the servers stage would give (no probe, no LM):
    each writes its artifacts into ctx.out, its load gives what the next one reads."""
    from firefly_exp import graph, observed, probe, sampler
    from firefly_exp.stage import RunContext, StageResult
    from firefly_exp.store import write_jsonl

    s = load_settings(config("graph.weights.similarity=0", "sampler.n_dags=3", "sampler.start_rule=any",
                             "sampler.answer_sink=false"))
    ctx = RunContext(s, tmp_path / "run", {})

    def result(name, value=None, folder=tmp_path):
        return StageResult(name, f"key-{name}", folder, {}, False, 0.0, value)

    def run(stage, inputs):
        out = tmp_path / stage.name
        out.mkdir()
        metrics = stage.run(stage.settings_of(s), inputs, ctx.for_stage(out))
        return metrics, result(stage.name, stage.load(out, ctx), out)

    assert probe.STAGE.skip(s) is None and probe.STAGE.settings_of(s) is s.explorer
    assert probe.STAGE.skip(load_settings(config("graph.probe=false"))) == "graph.probe=false"
    assert graph.STAGE.params(s.graph, ctx) == {"lm": None, "lm_judged": False, "observed_key": None}
    m, g = run(graph.STAGE, {"servers": result("servers", tools)})
    assert m["edges"] == g.value.number_of_edges() > 0 and m["answering_tools"] is None   # no probe input
    m, dags = run(sampler.STAGE, {"graph": g})
    assert sampler.STAGE.params(s.sampler, ctx) == {"seed": s.seed}
    assert m["dags"] == len(dags.value) == 3 and all(d["sampler"] == "random_walk" for d in dags.value)
    explored = tmp_path / "explorer"
    dag = next(d for d in dags.value if d["edges"])
    e = dag["edges"][0]
    write_jsonl(explored / "trajectories.jsonl", [{"index": 0, "episode": "ep", "dag_id": dag["id"]}])
    write_jsonl(explored / "calls.jsonl", [
        {"episode": "ep", "dag_id": dag["id"], "dag_index": 0, "seq": i, "step": i, "server": t.split("/")[0],
         "tool": t.split("/")[1], "is_error": False, "arg_sources": {"x": "edge:0:path"} if i else {}}
        for i, t in enumerate([e["source"], e["target"]])])
    m, flow = run(observed.STAGE, {"sampler": dags, "explorer": result("explorer", None, explored)})
    assert m == json.loads((flow.value / "flow.json").read_text())
    assert m["dags_explored"] == 1 and m["edges_valid"] == 1
