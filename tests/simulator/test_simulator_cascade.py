"""The simulator's cascade (state-aware, retrieval, adapted, live), its fidelity measure and its
Python environment API."""

import json

import polars as pl
import pytest
from dspy.utils import DummyLM

from conftest import catalog_spec, installed
from firefly_exp.simulator import SEED_STATE, Simulator, canonical_args, next_fingerprint
from firefly_exp.simulator.env import ToolEnvironment
from firefly_exp.simulator.fidelity import measure_fidelity


def _tools():
    obj = lambda props, req: json.dumps({"type": "object", "properties": props, "required": req})  # noqa: E731
    return pl.DataFrame([
        {"tool": "kv/get", "read_only": True, "input_schema": obj({"key": {"type": "string"}}, ["key"])},
        {"tool": "kv/put", "read_only": False, "input_schema": obj({"key": {}, "value": {}}, ["key", "value"])},
        {"tool": "notes/find", "read_only": True,
         "input_schema": obj({"text": {"type": "string"}, "limit": {"type": "integer"}}, ["text"])},
        {"tool": "notes/add", "read_only": False, "input_schema": obj({"text": {"type": "string"}}, ["text"])},
    ])


def _call(episode, seq, server, tool, args, text, mutating=False, fp=SEED_STATE):
    return {"episode": episode, "seq": seq, "dag_id": episode, "server": server, "tool": tool, "arguments": args,
            "content": [{"type": "text", "text": text}], "structured": None, "is_error": False,
            "error_kind": None, "fingerprint": fp, "mutating": mutating}


def _recorded():
    put_fp = next_fingerprint(SEED_STATE, "kv", "put", canonical_args({"key": "a", "value": 2}), False)
    return [
        _call("e1", 0, "kv", "get", {"key": "a"}, "1"),
        _call("e1", 1, "kv", "put", {"key": "a", "value": 2}, "ok", mutating=True),
        _call("e1", 2, "kv", "get", {"key": "a"}, "2", fp=put_fp),
        _call("e2", 0, "notes", "find", {"text": "meeting notes", "limit": 5}, '["monday meeting"]'),
        _call("e2", 1, "notes", "find", {"text": "invoice", "limit": 5}, '["invoice 42"]'),
    ]


def test_state_aware_step_ignores_writes_to_other_scopes():
    sim = Simulator.from_calls(_recorded(), _tools(), cascade=("exact", "state_aware"))
    ep = sim.episode()
    assert ep.step("notes", "add", {"text": "x"})["hit"] == "miss"      # not recorded: state unchanged
    ep.fingerprint = "somewhere-else"                                 # as after a write we never saw
    r = ep.step("kv", "get", {"key": "a"})
    assert r["hit"] == "state_aware" and r["content"][0]["text"] == "1"   # kv's own scope is still the seed
    assert ep.step("kv", "put", {"key": "a", "value": 2})["hit"] == "state_aware"
    assert ep.step("kv", "get", {"key": "a"})["content"][0]["text"] == "2"  # the write is seen, not stale


def test_retrieval_returns_the_nearest_call_above_the_threshold():
    sim = Simulator.from_calls(_recorded(), _tools(), cascade=("exact", "retrieval"), retrieval_threshold=0.6)
    r = sim.episode().step("notes", "find", {"text": "invoice", "limit": 10})
    assert r["hit"] == "retrieval" and "invoice 42" in r["content"][0]["text"]
    assert sim.episode().step("notes", "find", {"text": "holiday plans", "limit": 1})["hit"] == "miss"
    assert sim.counts["retrieval"] == 1 and sim.counts["miss"] == 1


def test_retrieved_results_are_adapted_when_an_lm_is_set():
    from programs.adapter import ResultAdapter

    lm = DummyLM([{"result": '["invoice 42", "invoice 43"]'}])
    sim = Simulator.from_calls(_recorded(), _tools(), cascade=("exact", "retrieval"), retrieval_threshold=0.6,
                               adapter=ResultAdapter(lm))
    r = sim.episode().step("notes", "find", {"text": "invoice", "limit": 10})
    assert r["hit"] == "adapted" and r["content"][0]["text"] == '["invoice 42", "invoice 43"]'


def test_fidelity_reports_flips_and_hits():
    tasks = [{"id": "t1", "dag_id": "e1", "gold_calls": [{"server": "kv", "tool": "get", "arguments": {"key": "a"}}],
              "answer": {"v": 1}, "provenance": {"v": {"step": 0, "path": ""}}}]
    out = measure_fidelity(_recorded(), tasks, _tools(), seed=0, holdout_fraction=1.0, cascade=("exact",))
    assert out["trajectories"]["held_out_calls"] == 5 and out["trajectories"]["hits.miss"] == 5
    assert out["trajectories"]["reward_flip_rate"] == 1.0       # nothing left to replay: every reward flips
    none = measure_fidelity(_recorded(), tasks, _tools(), seed=0, holdout_fraction=0.0, cascade=("exact",))
    assert none["calls"]["held_out_calls"] == 0 and none["calls"]["tasks_touched"] == 0


def test_environment_api_for_training():
    sim = Simulator.from_calls(_recorded(), _tools())
    env = ToolEnvironment(sim, max_calls=3)
    env.reset(tools=["kv/get", "kv/put"])
    assert env.call_tool("kv__get", '{"key": "a"}') == "1"
    assert env.call_tool("notes__find", '{"text": "invoice"}').startswith("ERROR: Tool notes/find is not available")
    assert env.call_tool("kv__get", "{not json").startswith("ERROR: Arguments are not valid JSON")
    assert env.step("kv/get", {"key": "a"})["is_error"]              # budget of 3 calls used up
    env.reset()
    assert env.step("kv/put", {"key": "a", "value": 2})["hit"] == "exact"


@pytest.mark.servers
def test_live_fallback_runs_the_real_server_and_joins_the_cache(tmp_path):
    if not installed("calculator"):
        pytest.skip("calculator not installed (make servers)")
    from firefly_exp import PROJECT_ROOT
    from firefly_exp.simulator.live import LiveFallback

    tools = pl.DataFrame([{"tool": "calculator/calculate", "read_only": True,
                           "input_schema": json.dumps({"type": "object", "properties": {"expression": {"type": "string"}},
                                                       "required": ["expression"]})}])
    live = LiveFallback({"calculator": catalog_spec("calculator")}, PROJECT_ROOT / ".servers", tmp_path)
    sim = Simulator([], {"calculator/calculate": {"read_only": True, "input_schema": {"required": ["expression"]}}},
                    cascade=("exact", "live"), live=live)
    first = sim.episode().step("calculator", "calculate", {"expression": "6*7"})
    assert first["hit"] == "live" and first["content"][0]["text"].strip() in ("42", "42.0")
    again = sim.episode().step("calculator", "calculate", {"expression": "6*7"})
    assert again["hit"] == "exact" and again["content"] == first["content"]
    assert live.executed == 1
