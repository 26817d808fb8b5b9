"""The sampler stage: every strategy draws distinct, valid, seeded DAGs; constraints, coverage, answer
sinks, probe failures, server weights, and a user's own strategy as one function and one YAML."""

import inspect

import networkx as nx
import numpy as np
import pytest
from pydantic import ValidationError
from stage_settings import sampler_settings

from conftest import FIXTURES
from firefly_exp import PROJECT_ROOT
from firefly_exp.sampler import sample_subdags
from firefly_exp.settings import ConfigError, SamplerSettings, load_settings
from firefly_exp.store import read_jsonl


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
    with pytest.raises(ValidationError, match=r"no sampler strategy named 'bogus'; pick sampler=<coverage\|fan_in\|"):
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


def _random_graph(n=30, servers=5):
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
    m = sample_subdags(_random_graph(), sampler_settings(strategy, n_dags=40, min_size=3 if "fan" in strategy else 2,
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
    m = sample_subdags(_random_graph(), sampler_settings(n_dags=30, require_cross_server=True, max_servers=2), 1,
                       tmp_path)
    assert all(len(d["servers"]) == 2 for d in read_jsonl(tmp_path / "dags.jsonl")) and m["cross_server_fraction"] == 1
    walk = sample_subdags(_random_graph(200, 20), sampler_settings(n_dags=40, start_rule="any"), 1, tmp_path)
    cover = sample_subdags(_random_graph(200, 20), sampler_settings("coverage", n_dags=40, start_rule="any"), 1, tmp_path)
    assert cover["tools_covered"] > walk["tools_covered"]


def test_every_sampler_config_names_its_strategy_function(config):
    """Each choice file composes into valid SamplerSettings whose ``_target_`` is a strategy function of
    one Draw named like the file."""
    from firefly_exp import sampler

    assert STRATEGIES == sampler.CHOICES
    for name in STRATEGIES:
        s = load_settings(config(f"sampler={name}")).sampler
        assert isinstance(s, SamplerSettings) and s.target == f"firefly_exp.sampler.{name}" and s.strategy == name
        assert list(inspect.signature(getattr(sampler, name)).parameters) == ["draw"]


def test_start_balance_spreads_first_tools_over_servers(tmp_path):
    """start_balance: server draws a server first, so a server with many tools starts no more DAGs than one
    with a single tool; `tool` draws among all start tools alike (the big server starts most)."""
    g = nx.DiGraph()
    big = [f"big/t{i}" for i in range(12)]
    for u in big + ["small/a", "small/b"]:
        g.add_node(u, server=u.split("/")[0])
    for i, u in enumerate(big):
        for v in (big[(i + 1) % 12], big[(i + 2) % 12], "small/a"):
            g.add_edge(u, v, score=0.8, confidence="high", mapping={"x": "y"})
    for u, v in (("small/a", "small/b"), ("small/b", "big/t0"), ("small/a", "big/t1")):
        g.add_edge(u, v, score=0.8, confidence="high", mapping={"x": "y"})

    def starts(balance: str) -> float:
        out = tmp_path / balance
        out.mkdir()
        sample_subdags(g, sampler_settings(n_dags=20, min_size=2, max_size=3, start_rule="any", answer_sink=False,
                                           start_balance=balance), 0, out)
        dags = read_jsonl(out / "dags.jsonl")
        return sum(d["nodes"][0].startswith("small/") for d in dags) / len(dags)

    by_server, by_tool = starts("server"), starts("tool")
    assert by_server >= 0.3 and by_server >= 1.5 * by_tool, (by_server, by_tool)


def test_a_server_no_dag_ends_at_gets_one_tool_dags(tmp_path):
    """cover_servers: a server whose answering tools end no drawn DAG (no edge leads to them) gets that many
    one-tool DAGs at those tools; a tool that answers nothing gets none; 0 turns it off."""
    g = _graph()
    for u in g.nodes:
        g.nodes[u]["answers"] = True
    g.add_node("lone/ask", server="lone", answers=True, probe_ok=True)
    g.add_node("lone/other", server="lone", answers=True, probe_ok=True)
    g.add_node("mute/write", server="mute", answers=False, probe_ok=True)

    def draw(name: str, cover: int) -> tuple[list[dict], dict]:
        out = tmp_path / name
        out.mkdir()
        metrics = sample_subdags(g, sampler_settings(n_dags=12, min_size=2, max_size=3, start_rule="any",
                                                     cover_servers=cover), 0, out)
        return read_jsonl(out / "dags.jsonl"), metrics

    dags, metrics = draw("on", 1)
    lone = [d for d in dags if d["servers"] == ["lone"]]
    assert metrics["covering_dags"] == 1 and len(lone) == 1 and len(lone[0]["nodes"]) == 1 and not lone[0]["edges"]
    assert not any("mute" in d["servers"] for d in dags) and len(dags) == 13
    assert len({d["index"] for d in dags}) == 13
    dags, metrics = draw("two", 2)
    assert {d["nodes"][0] for d in dags if d["servers"] == ["lone"]} == {"lone/ask", "lone/other"}
    dags, metrics = draw("off", 0)
    assert metrics["covering_dags"] == 0 and not any("lone" in d["servers"] for d in dags)
