import json

import polars as pl

from firefly_exp.simulator import SEED_STATE, Simulator, canonical_args, next_fingerprint


def _tools():
    schema = {"type": "object", "properties": {"key": {"type": "string"}, "limit": {"type": "integer", "default": 10}},
              "required": ["key"]}
    return pl.DataFrame([
        {"tool": "kv/get", "server": "kv", "read_only": True, "input_schema": json.dumps(schema)},
        {"tool": "kv/put", "server": "kv", "read_only": False,
         "input_schema": json.dumps({"type": "object", "properties": {"key": {}, "value": {}}, "required": ["key"]})},
    ])


def _result(text):
    return {"content": [{"type": "text", "text": text}], "structured": None, "is_error": False, "error_kind": None}


def test_canonical_args_ignore_form():
    schema = json.loads(_tools()["input_schema"][0])
    assert canonical_args({"limit": 10.0, "key": " a "}, schema) == canonical_args({"key": "a"}, schema)
    assert canonical_args({"key": "a", "limit": 3}, schema) != canonical_args({"key": "a"}, schema)


def test_reads_after_writes_replay_the_state_they_saw():
    put = {"server": "kv", "tool": "put", "arguments": {"key": "a", "value": 2}}
    fp_after = next_fingerprint(SEED_STATE, "kv", "put", canonical_args(put["arguments"]), False)
    calls = [
        {"server": "kv", "tool": "get", "arguments": {"key": "a"}, "fingerprint": SEED_STATE, **_result("1")},
        {**put, "fingerprint": SEED_STATE, **_result("ok")},
        {"server": "kv", "tool": "get", "arguments": {"key": "a"}, "fingerprint": fp_after, **_result("2")},
    ]
    sim = Simulator.from_calls(calls, _tools())
    ep = sim.episode()
    assert ep.step("kv", "get", {"key": "a", "limit": 10})["content"][0]["text"] == "1"
    assert ep.step("kv", "put", {"value": 2, "key": "a"})["hit"] == "exact"
    assert ep.step("kv", "get", {"key": "a"})["content"][0]["text"] == "2"   # not the stale "1"


def test_misses_and_bad_calls_are_mcp_errors_not_crashes(tmp_path):
    sim = Simulator.from_calls([], _tools())
    ep = sim.episode()
    cases = [("kv", "get", {"key": "zzz"}, "miss"), ("kv", "nope", {}, "invalid"), ("kv", "get", "notadict", "invalid"),
             ("kv", "get", {}, "invalid"), ("kv", "get", {"key": "x" * 200_000}, "invalid")]
    for server, tool, args, hit in cases:
        r = ep.step(server, tool, args)
        assert r["is_error"] and r["hit"] == hit and r["content"][0]["text"]
    sim.save(tmp_path)
    assert Simulator.load(tmp_path, _tools()).entries == []
