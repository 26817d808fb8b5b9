import json
from pathlib import Path

import networkx as nx
import polars as pl
import pytest
from pydantic import ValidationError
from stage_settings import graph_settings, sampler_settings

from firefly_exp.graph import GraphInputs, build_graph, flow_score, load_graph, output_fields
from firefly_exp.sampler import sample_subdags
from firefly_exp.settings import ConfigError, SamplerSettings, load_settings
from firefly_exp.store import read_jsonl

FIXTURES = Path(__file__).parent / "fixtures"


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


def _graph():
    g = nx.DiGraph()
    for i in range(8):
        g.add_node(f"s{i % 3}/t{i}", server=f"s{i % 3}")
    for i in range(8):
        for j in (1, 2, 3):
            g.add_edge(f"s{i % 3}/t{i}", f"s{(i + j) % 8 % 3}/t{(i + j) % 8}", score=0.5 + 0.1 * j,
                       confidence="high", mapping={"x": "y"})
    return g


def test_random_walk_is_seeded_distinct_and_bounded(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for p in (a, b, c):
        p.mkdir()
    s = sampler_settings(n_dags=20, min_size=2, max_size=4, max_depth=3)
    m = sample_subdags(_graph(), s, 7, a)
    sample_subdags(_graph(), s, 7, b)
    sample_subdags(_graph(), s, 8, c)
    da, db, dc = (read_jsonl(p / "dags.jsonl") for p in (a, b, c))
    assert [d["id"] for d in da] == [d["id"] for d in db]
    assert [d["id"] for d in da] != [d["id"] for d in dc]
    assert m["dags"] == 20 and len({d["id"] for d in da}) == 20
    for d in da:
        assert 2 <= len(d["nodes"]) <= 4 and d["depth"] <= 3
        pos = {n: i for i, n in enumerate(d["nodes"])}
        assert all(pos[e["source"]] < pos[e["target"]] for e in d["edges"])  # topological order
        assert d["shape"] in {"chain", "fan_out", "fan_in", "mixed"}


def test_uniform_ignores_the_graph(tmp_path):
    m = sample_subdags(_graph(), sampler_settings("uniform", n_dags=10, min_size=2, max_size=3), 1, tmp_path)
    dags = read_jsonl(tmp_path / "dags.jsonl")
    assert m["dags"] == 10 and all(d["edges"] == [] and d["sampler"] == "uniform" for d in dags)
    with pytest.raises(ValidationError, match="no sampler strategy named 'bogus'; choose from coverage, fan_in"):
        SamplerSettings(**{"_target_": "bogus"})


def test_dags_end_in_a_tool_that_answers(tmp_path):
    """answer_sink: a tool whose probe result held nothing to ask about never ends a DAG, while it may
    still feed one; without probe evidence (answers unknown) nothing is filtered."""
    g = _graph()
    mute = sorted(g.nodes)[::2]
    for n in g.nodes:
        g.nodes[n]["answers"] = n not in mute
    for strategy in ("random_walk", "coverage", "fan_out", "fan_in"):
        out = tmp_path / strategy
        out.mkdir()
        m = sample_subdags(g, sampler_settings(strategy, n_dags=15, min_size=2, max_size=3, start_rule="any"), 3, out)
        dags = read_jsonl(out / "dags.jsonl")
        assert dags and m["rejected_no_answer_sink"] > 0
        for d in dags:
            sinks = [n for n in d["nodes"] if n not in {e["source"] for e in d["edges"]}]
            assert any(n not in mute for n in sinks), d
        assert any(n in mute for d in dags for n in d["nodes"])   # mute tools still take part
    loose = tmp_path / "loose"
    loose.mkdir()
    assert sample_subdags(g, sampler_settings(n_dags=15, min_size=2, max_size=3, start_rule="any", answer_sink=False),
                          3, loose)["rejected_no_answer_sink"] == 0


def test_tools_whose_probe_failed_join_only_when_fed(tmp_path):
    """probe_failed: a tool whose probe call failed (it needs a precondition: a name or id another call
    makes) never starts a DAG and joins one only through a mapped edge from its own server
    (``same_server``), never (``skip``), or like any tool (``allow``)."""
    g = _graph()
    failed = {"s1/t1", "s2/t5", "s0/t6"}
    for n in g.nodes:
        g.nodes[n]["probe_ok"] = n not in failed
    seen = set()
    for strategy in ("random_walk", "forest_fire", "fan_out", "fan_in"):
        out = tmp_path / strategy
        out.mkdir()
        sample_subdags(g, sampler_settings(strategy, n_dags=15, min_size=2, max_size=4, start_rule="any"), 5, out)
        for d in read_jsonl(out / "dags.jsonl"):
            for n in set(d["nodes"]) & failed:
                feeders = [e for e in d["edges"] if e["target"] == n]
                assert any(e["mapping"] and e["source"].split("/")[0] == n.split("/")[0] for e in feeders), (n, d)
                seen.add(n)
    assert seen   # fed ones do take part
    skip, allow = tmp_path / "skip", tmp_path / "allow"
    skip.mkdir(), allow.mkdir()
    sample_subdags(g, sampler_settings(n_dags=15, min_size=2, max_size=4, start_rule="any", probe_failed="skip"), 5, skip)
    assert not any(set(d["nodes"]) & failed for d in read_jsonl(skip / "dags.jsonl"))
    sample_subdags(g, sampler_settings(n_dags=30, min_size=2, max_size=4, start_rule="any", probe_failed="allow"), 5, allow)
    allowed = read_jsonl(allow / "dags.jsonl")
    assert any(d["nodes"][0] in failed for d in allowed)   # unfed, even as the first tool
    with pytest.raises(ValidationError, match="probe_failed"):
        sampler_settings(probe_failed="sometimes")


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


def test_server_weights_lower_a_costly_servers_odds(tmp_path):
    """server_weights: a server at a small factor turns up in far fewer DAGs; unset, sampling is as before."""
    def share(out, **kw):
        out.mkdir()
        sample_subdags(_graph(), sampler_settings(n_dags=40, min_size=2, max_size=3, start_rule="any", **kw), 2, out)
        dags = read_jsonl(out / "dags.jsonl")
        return sum(any(n.startswith("s1/") for n in d["nodes"]) for d in dags) / len(dags), dags

    base, plain = share(tmp_path / "plain")
    low, _ = share(tmp_path / "low", server_weights={"s1": 0.02})
    assert base > 0.5 and low < base / 2
    _, same = share(tmp_path / "empty", server_weights={})
    assert [d["id"] for d in same] == [d["id"] for d in plain]


def test_a_new_sampler_is_one_function_and_one_yaml(config, tmp_path, monkeypatch):
    """A sampler this project has never seen: a function (tests/fixtures/chain_sampler.py) and a YAML in
    another conf folder, picked as ``sampler=chains``; validated, drawn by sample_subdags, its rule kept."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    conf = tmp_path / "conf" / "sampler"
    conf.mkdir(parents=True)
    (conf / "chains.yaml").write_text("defaults: [_base, _self_]\n_target_: chain_sampler.chains_only\n"
                                      "min_size: 3\n")
    cfg = config(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "sampler=chains", "sampler.n_dags=15",
                 "sampler.start_rule=any")
    settings = load_settings(cfg).sampler
    assert settings.strategy == "chains_only" and settings.min_size == 3 and settings.max_size == 4   # _base kept
    m = sample_subdags(_graph(), settings, 4, tmp_path)
    dags = read_jsonl(tmp_path / "dags.jsonl")
    assert m["dags"] == len(dags) == 15 and all(d["sampler"] == "chains_only" for d in dags)
    for d in dags:   # a path: one edge into every node but the first, in execution order
        assert d["shape"] == "chain" and len(d["edges"]) == len(d["nodes"]) - 1 >= 2
        assert {(e["source"], e["target"]) for e in d["edges"]} == set(zip(d["nodes"], d["nodes"][1:]))
    with pytest.raises(ConfigError, match="no sampler strategy named 'chain_sampler.nope'"):
        load_settings(config(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "sampler=chains",
                             "sampler._target_=chain_sampler.nope"))


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
