"""Issue 8: the vectorised graph equals the pairwise reference, evidence kinds, samplers, observed flow."""

import inspect
import json
from pathlib import Path

import networkx as nx
import numpy as np
import polars as pl
import pytest
from stage_settings import graph_settings, sampler_settings

from firefly_exp import PROJECT_ROOT
from firefly_exp.graph import GraphInputs, _Keys, _t1, build_graph, flow_matrix_rows, flow_score, input_params, \
    load_graph, output_fields
from firefly_exp.observed import edge_validity, observed_flow
from firefly_exp.sampler import sample_subdags
from firefly_exp.settings import SamplerSettings
from firefly_exp.schemas import infer_output_schemas
from firefly_exp.store import read_jsonl

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


def _graph(n=30, servers=5):
    rng = np.random.default_rng(0)
    g = nx.DiGraph()
    names = [f"s{i % servers}/t{i}" for i in range(n)]
    for u in names:
        g.add_node(u, server=u.split("/")[0])
    for u in names:
        for v in rng.choice(names, 4, replace=False):
            if u != v:
                conf = ["low", "medium", "high"][int(rng.integers(3))]
                g.add_edge(u, str(v), score=float(rng.uniform(0.3, 1)), confidence=conf, mapping={"x": "y"})
    return g


STRATEGIES = sorted(f.stem for f in (PROJECT_ROOT / "conf/sampler").glob("[!_]*.yaml"))   # every choice file


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_sampler_draws_distinct_valid_dags(strategy, tmp_path):
    m = sample_subdags(_graph(), sampler_settings(strategy, n_dags=40, min_size=3 if "fan" in strategy else 2,
                                                  max_size=4, max_depth=3), 3, tmp_path)
    dags = read_jsonl(tmp_path / "dags.jsonl")
    assert m["dags"] == len(dags) == len({d["id"] for d in dags}) > 20
    assert (tmp_path / "shapes.png").stat().st_size > 0
    for d in dags:
        pos = {n: i for i, n in enumerate(d["nodes"])}
        assert all(pos[e["source"]] < pos[e["target"]] and "mapping" in e for e in d["edges"])
        assert d["depth"] <= 3 and d["sampler"] == strategy
    if strategy == "fan_out":
        assert all(d["shape"] == "fan_out" for d in dags)
    if strategy == "fan_in":
        assert all(d["shape"] == "fan_in" for d in dags)
    if strategy == "uniform":
        assert all(d["shape"] == "set" for d in dags)
    for key in ("tool_coverage", "server_coverage", "cross_server_fraction", "distinct_tool_sets"):
        assert key in m


def test_sampler_constraints_and_coverage(tmp_path):
    m = sample_subdags(_graph(), sampler_settings(n_dags=30, require_cross_server=True, max_servers=2), 1, tmp_path)
    assert all(len(d["servers"]) == 2 for d in read_jsonl(tmp_path / "dags.jsonl")) and m["cross_server_fraction"] == 1
    walk = sample_subdags(_graph(200, 20), sampler_settings(n_dags=40, start_rule="any"), 1, tmp_path)
    cover = sample_subdags(_graph(200, 20), sampler_settings("coverage", n_dags=40, start_rule="any"), 1, tmp_path)
    assert cover["tools_covered"] > walk["tools_covered"]


def test_every_sampler_config_names_its_strategy_function(config):
    """Each choice file composes into valid SamplerSettings whose ``_target_`` is a strategy function of
    one Draw named like the file."""
    from firefly_exp import sampler
    from firefly_exp.settings import load_settings

    assert STRATEGIES == sampler.CHOICES
    for name in STRATEGIES:
        s = load_settings(config(f"sampler={name}")).sampler
        assert isinstance(s, SamplerSettings) and s.target == f"firefly_exp.sampler.{name}" and s.strategy == name
        assert list(inspect.signature(getattr(sampler, name)).parameters) == ["draw"]


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
    from firefly_exp.settings import load_settings

    if not (installed("time-node") and installed("time")):
        pytest.skip("servers not installed (make servers)")
    cfg = config("+servers.catalog.clock-two=${servers.catalog.time-node}", "servers.enabled=[time,clock-two]")
    specs = load_settings(cfg).servers.specs()
    discover_tools(list(specs.values()), Path(cfg.servers.install_dir), tmp_path / "sb", tmp_path)
    build_graph(load_tools(tmp_path), graph_settings({"flow": 1.0}, {"low": 0.1, "medium": 0.5, "high": 0.8}), tmp_path)
    g = load_graph(tmp_path)
    assert {d["server"] for _, d in g.nodes(data=True)} == {"time", "clock-two"}
    assert any(n.startswith("clock-two/") for n in g.nodes)
