"""Hand-made tasks (no servers, no exploration) for the dataset and synthesizer tests."""

import json

TOOLS = {
    "kv/get": {"tool": "kv/get", "description": "Get a value by key",
               "input_schema": json.dumps({"$schema": "x", "type": "object", "properties": {"key": {"type": "string"}},
                                           "required": ["key"]})},
    "kv/put": {"tool": "kv/put", "description": "Store a value",
               "input_schema": json.dumps({"type": "object", "properties": {"key": {}, "value": {}}})},
    "calc/add": {"tool": "calc/add", "description": "Add two numbers",
                 "input_schema": json.dumps({"type": "object", "properties": {"a": {}, "b": {}}})},
}


def make_task(i, calls, answer, split="train", dag=None):
    gold = [{"server": s, "tool": t, "arguments": a} for s, t, a in calls]
    return {"id": f"task-{i}", "question": f"question {i}: fetch things", "split": split,
            "answer_schema": {k: {"type": "string", "description": "x"} for k in answer},
            "answer": dict(answer),
            "provenance": {k: {"step": len(gold) - 1, "seq": 0, "path": k, "tool": f"{gold[-1]['server']}/{gold[-1]['tool']}"}
                           for k in answer},
            "gold_calls": gold,
            "gold_results": [{"content": [{"type": "text", "text": json.dumps(answer)}], "structured": None,
                              "is_error": False} for _ in gold],
            "tools": sorted({f"{s}/{t}" for s, t, _ in calls} | {"kv/get"}),
            "difficulty": {"calls": len(gold), "servers": len({s for s, _, _ in calls}), "depth": len(gold)},
            "dag_id": dag or f"dag-{i}", "synthesizer": "template", "seed": 0}


def four_tasks() -> list[dict]:
    """Two train and two test tasks, one or two calls each, over the kv and calc tools."""
    return [make_task(0, [("kv", "put", {"key": "k", "value": 1}), ("kv", "get", {"key": "k"})], {"value": "1"}),
            make_task(1, [("calc", "add", {"a": 1, "b": 2}), ("kv", "get", {"key": "3"})], {"value": "three", "n": 3}),
            make_task(2, [("kv", "get", {"key": "k"})], {"value": "1"}, split="test"),
            make_task(3, [("calc", "add", {"a": 5, "b": 5})], {"sum": 10}, split="test")]
