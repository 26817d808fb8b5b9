import json

import networkx as nx
import polars as pl
import pytest

from firefly_exp.graph import build_graph, flow_score, load_graph, output_fields
from firefly_exp.sampler import sample_subdags
from firefly_exp.store import read_jsonl


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
    m = build_graph(tools, tmp_path, {"flow": 1.0, "similarity": 0.0}, {"low": 0.3, "medium": 0.5, "high": 0.8})
    g = load_graph(tmp_path)
    assert g.has_edge("files/list_files", "files/read_file")
    assert g["files/list_files"]["files/read_file"]["mapping"] == {"path": "path"}
    assert g.has_edge("files/list_files", "math/double")           # size -> size, number accepts integer
    assert not g.has_edge("files/read_file", "math/double")
    assert not any(v == "clock/now" for _, v in g.edges)             # no inputs, nothing feeds it
    assert m["edges"] == g.number_of_edges() and m["tools"] == 6
    assert (tmp_path / "graph.png").stat().st_size > 0 and (tmp_path / "edges.parquet").exists()


def test_graph_with_offline_embeddings(tools, tmp_path):
    m = build_graph(tools, tmp_path, {"flow": 0.6, "similarity": 0.4}, {"low": 0.3, "medium": 0.45, "high": 0.6})
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
    m = sample_subdags(_graph(), a, seed=7, n_dags=20, min_size=2, max_size=4, max_depth=3)
    sample_subdags(_graph(), b, seed=7, n_dags=20, min_size=2, max_size=4, max_depth=3)
    sample_subdags(_graph(), c, seed=8, n_dags=20, min_size=2, max_size=4, max_depth=3)
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
    m = sample_subdags(_graph(), tmp_path, seed=1, strategy="uniform", n_dags=10, min_size=2, max_size=3)
    dags = read_jsonl(tmp_path / "dags.jsonl")
    assert m["dags"] == 10 and all(d["edges"] == [] and d["sampler"] == "uniform" for d in dags)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_subdags(_graph(), tmp_path, seed=1, strategy="bogus")


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
        m = sample_subdags(g, out, seed=3, strategy=strategy, n_dags=15, min_size=2, max_size=3, start_rule="any")
        dags = read_jsonl(out / "dags.jsonl")
        assert dags and m["rejected_no_answer_sink"] > 0
        for d in dags:
            sinks = [n for n in d["nodes"] if n not in {e["source"] for e in d["edges"]}]
            assert any(n not in mute for n in sinks), d
        assert any(n in mute for d in dags for n in d["nodes"])   # mute tools still take part
    loose = tmp_path / "loose"
    loose.mkdir()
    assert sample_subdags(g, loose, seed=3, n_dags=15, min_size=2, max_size=3, start_rule="any",
                          answer_sink=False)["rejected_no_answer_sink"] == 0


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
        sample_subdags(g, out, seed=5, strategy=strategy, n_dags=15, min_size=2, max_size=4, start_rule="any")
        for d in read_jsonl(out / "dags.jsonl"):
            for n in set(d["nodes"]) & failed:
                feeders = [e for e in d["edges"] if e["target"] == n]
                assert any(e["mapping"] and e["source"].split("/")[0] == n.split("/")[0] for e in feeders), (n, d)
                seen.add(n)
    assert seen   # fed ones do take part
    skip, allow = tmp_path / "skip", tmp_path / "allow"
    skip.mkdir(), allow.mkdir()
    sample_subdags(g, skip, seed=5, n_dags=15, min_size=2, max_size=4, start_rule="any", probe_failed="skip")
    assert not any(set(d["nodes"]) & failed for d in read_jsonl(skip / "dags.jsonl"))
    sample_subdags(g, allow, seed=5, n_dags=30, min_size=2, max_size=4, start_rule="any", probe_failed="allow")
    allowed = read_jsonl(allow / "dags.jsonl")
    assert any(d["nodes"][0] in failed for d in allowed)   # unfed, even as the first tool
    with pytest.raises(ValueError, match="sampler.probe_failed"):
        sample_subdags(g, tmp_path, seed=5, probe_failed="sometimes")


def test_edges_that_only_pass_an_echoed_argument_are_dropped(tools, tmp_path):
    """A probe where list_files returned its own `folder` argument as `path`: the list_files -> read_file
    edge (path <- path) would pass on only what the caller gave list_files, so it goes; with
    drop_echoes off, or a probe that returned a real path, it stays."""
    def probe(path_value):
        return [{"server": "files", "tool": "list_files", "is_error": False, "arguments": {"folder": "/data/in"},
                 "content": [{"type": "text", "text": json.dumps({"path": path_value, "size": 3})}]}]

    weights, thresholds = {"flow": 1.0, "similarity": 0.0}, {"low": 0.3, "medium": 0.5, "high": 0.8}
    echoed, kept, off = tmp_path / "echo", tmp_path / "real", tmp_path / "off"
    for p in (echoed, kept, off):
        p.mkdir()
    m = build_graph(tools, echoed, weights, thresholds, probe_calls=probe("/data/in"))
    assert not load_graph(echoed).has_edge("files/list_files", "files/read_file") and m["echo_edges_dropped"] >= 1
    build_graph(tools, kept, weights, thresholds, probe_calls=probe("/data/in/a.txt"))
    assert load_graph(kept)["files/list_files"]["files/read_file"]["mapping"] == {"path": "path"}
    build_graph(tools, off, weights, thresholds, probe_calls=probe("/data/in"), drop_echoes=False)
    assert load_graph(off).has_edge("files/list_files", "files/read_file")
    nodes = pl.read_parquet(kept / "nodes.parquet")
    assert nodes.filter(pl.col("tool") == "files/list_files")["probe_ok"].item() is True
    assert nodes.filter(pl.col("tool") == "files/read_file")["probe_ok"].item() is False   # never probed


def test_server_weights_lower_a_costly_servers_odds(tmp_path):
    """server_weights: a server at a small factor turns up in far fewer DAGs; unset, sampling is as before."""
    def share(out, **kw):
        out.mkdir()
        sample_subdags(_graph(), out, seed=2, n_dags=40, min_size=2, max_size=3, start_rule="any", **kw)
        dags = read_jsonl(out / "dags.jsonl")
        return sum(any(n.startswith("s1/") for n in d["nodes"]) for d in dags) / len(dags), dags

    base, plain = share(tmp_path / "plain")
    low, _ = share(tmp_path / "low", server_weights={"s1": 0.02})
    assert base > 0.5 and low < base / 2
    _, same = share(tmp_path / "empty", server_weights={})
    assert [d["id"] for d in same] == [d["id"] for d in plain]
