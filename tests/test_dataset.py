"""The dataset stage (export, card, statistics, leakage, MLflow) and the synthesizer's post-verification
steps (splits, near-duplicates, determinism, LM judge), on hand-made tasks: fast, no servers."""

import json
from collections import Counter

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from firefly_exp import PROJECT_ROOT, dataset, synthesizer
from firefly_exp.settings import SynthesizerSettings

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


def synth_settings(**overrides) -> SynthesizerSettings:
    """conf/synthesizer/template.yaml, with ``overrides`` (no near-duplicate pass: it loads an embedding model)."""
    import yaml

    conf = yaml.safe_load((PROJECT_ROOT / "conf/synthesizer/template.yaml").read_text())
    return SynthesizerSettings(**{**conf, "near_duplicate_threshold": None, **overrides})


def recorded(trajectories, calls, tools) -> synthesizer.Recorded:
    return synthesizer.Recorded(trajectories, calls, tools)


@pytest.fixture
def tasks():
    return [make_task(0, [("kv", "put", {"key": "k", "value": 1}), ("kv", "get", {"key": "k"})], {"value": "1"}),
            make_task(1, [("calc", "add", {"a": 1, "b": 2}), ("kv", "get", {"key": "3"})], {"value": "three", "n": 3}),
            make_task(2, [("kv", "get", {"key": "k"})], {"value": "1"}, split="test"),
            make_task(3, [("calc", "add", {"a": 5, "b": 5})], {"sum": 10}, split="test")]


def test_export_is_loadable_parquet_and_jsonl_with_openai_messages(tasks, tmp_path):
    stats = dataset.export_dataset(tasks, TOOLS, tmp_path, dataset.task_statistics(tasks, explored_dags=4),
                                   name="t", seed=0)
    train = pq.read_table(tmp_path / "train.parquet").to_pylist()
    test = pq.read_table(tmp_path / "test.parquet").to_pylist()
    assert len(train) == 2 and len(test) == 2
    row = train[1]
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert row["messages"][1]["content"] == "question 1: fetch things"
    call = row["messages"][2]["tool_calls"][0]
    assert call["function"]["name"] == "calc__add" and json.loads(call["function"]["arguments"]) == {"a": 1, "b": 2}
    assert row["messages"][3]["tool_call_id"] == call["id"]
    assert json.loads(row["messages"][-1]["content"]) == {"value": "three", "n": 3}
    tools = json.loads(row["tools"])
    assert {t["function"]["name"] for t in tools} == {"calc__add", "kv__get"}
    assert all(t["type"] == "function" and "$schema" not in t["function"]["parameters"] for t in tools)
    assert tools[0]["function"]["name"] in row["messages"][0]["content"]   # the system prompt lists the tools
    assert json.loads(row["provenance"])["n"]["step"] == 1 and json.loads(row["answer_schema"])
    assert row["n_calls"] == 2 and row["n_servers"] == 2 and row["servers"] == ["calc", "kv"]
    jsonl = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert jsonl[1]["answer"] == {"value": "three", "n": 3} and jsonl[1]["messages"] == row["messages"]
    card = (tmp_path / "README.md").read_text()
    assert "train.parquet" in card and "| verified | 4 |" in card and "calls_per_task_mean" in card
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    try:   # the Hugging Face loader, where `datasets` is installed
        from datasets import load_dataset
    except ImportError:
        return
    ds = load_dataset("parquet", data_files={"train": str(tmp_path / "train.parquet"),
                                             "test": str(tmp_path / "test.parquet")})
    assert ds["train"].num_rows == 2 and ds["test"][0]["messages"][1]["role"] == "user"


def test_statistics_and_leakage(tasks):
    stats = dataset.task_statistics(tasks, explored_dags=2, synth_metrics={"judge_keep_rate": 0.5})
    assert stats["verified"] == 4 and stats["yield_per_dag"] == 2.0
    assert stats["calls_per_task_mean"] == 1.5 and stats["calls_per_task_hist"] == {"1": 2, "2": 2}
    assert stats["answer_fields_mean"] == 1.25 and stats["multi_server_fraction"] == 0.25
    assert stats["splits"] == {"train": 2, "test": 2} and stats["judge_keep_rate"] == 0.5
    # task 2 (test) answers like task 0 (train) with another chain
    assert stats["leakage"]["test_same_answer"] == 1 and stats["leakage"]["test_same_chain"] == 0
    tasks[3]["gold_calls"] = tasks[1]["gold_calls"]
    assert dataset.leakage(tasks)["test_same_chain"] == 1


def test_dataset_logged_to_mlflow(tasks, tmp_path):
    import mlflow

    dataset.export_dataset(tasks, TOOLS, tmp_path / "ds", dataset.task_statistics(tasks, explored_dags=4))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        dataset.log_to_mlflow(tmp_path / "ds")
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"firefly-tasks-train", "firefly-tasks-test"}


def _calls(*pairs):
    return [(s, t, {}) for s, t in pairs]


@pytest.mark.parametrize("strategy", ["random", "held_out_tools", "held_out_servers"])
def test_split_strategies_never_straddle(strategy):
    ts = [make_task(i, _calls(*combo), {"v": i}, dag=f"dag-{i % 7}")
          for i, combo in enumerate([[("a", "x")], [("b", "y")], [("a", "x"), ("b", "y")], [("c", "z")],
                                     [("c", "z"), ("a", "w")], [("d", "q")]] * 5)]
    synthesizer.assign_splits(ts, strategy, 0.3, seed=1)
    splits = Counter(t["split"] for t in ts)
    assert splits["train"] > 0 and splits["test"] > 0
    group = {"random": lambda t: t["dag_id"],
             "held_out_tools": lambda t: tuple(sorted(f"{c['server']}/{c['tool']}" for c in t["gold_calls"]))}
    if strategy in group:
        by = {}
        for t in ts:
            by.setdefault(group[strategy](t), set()).add(t["split"])
        assert all(len(s) == 1 for s in by.values())
    else:   # no test server appears in train
        train_servers = {c["server"] for t in ts if t["split"] == "train" for c in t["gold_calls"]}
        assert all({c["server"] for c in t["gold_calls"]} - train_servers for t in ts if t["split"] == "test")
    with pytest.raises(ValueError, match="split strategy"):
        synthesizer.assign_splits(ts, "by_colour", 0.3, 0)


def test_near_duplicates_removed_by_threshold(monkeypatch):
    import firefly_exp.embeddings as emb

    vecs = {"a": [1, 0, 0], "a'": [0.999, 0.0447, 0], "b": [0, 1, 0], "c": [0, 0, 1]}
    monkeypatch.setattr(emb, "embed", lambda texts: np.asarray([vecs[t] for t in texts], dtype=np.float32))
    ts = [{"question": q} for q in ("a", "b", "a'", "c")]
    rejected = Counter()
    kept = synthesizer.remove_near_duplicates(ts, 0.98, rejected)
    assert [t["question"] for t in kept] == ["a", "b", "c"] and rejected["near_duplicate"] == 1
    assert len(synthesizer.remove_near_duplicates(ts, 0.9999, Counter())) == 4


@pytest.mark.parametrize("mode", ["exclude", "drop"])
def test_determinism_excludes_volatile_fields_or_drops(tasks, mode):
    changed = {"task-1": ["value"], "task-2": ["value"]}   # task-2 has only that field
    rejected = Counter()
    kept, rate = synthesizer.apply_determinism(tasks, lambda ts: changed, mode, rejected)
    assert rate == round(2 / 5, 4)
    if mode == "drop":
        assert [t["id"] for t in kept] == ["task-0", "task-3"] and rejected["volatile"] == 2
    else:
        assert [t["id"] for t in kept] == ["task-0", "task-1", "task-3"]
        t1 = kept[1]
        assert set(t1["answer"]) == set(t1["provenance"]) == set(t1["answer_schema"]) == {"n"}
        assert t1["volatile_fields"] == ["value"] and rejected["all_fields_volatile"] == 1


def test_judge_program_scores_and_filters(tasks):
    from dspy.utils import DummyLM

    from programs.judge import CRITERIA, TaskJudge

    good = {c: "5" for c in CRITERIA}
    lm = DummyLM([good, {**good, "no_leakage": "1"}, good, {**good, "clarity": "2"}])
    judge = TaskJudge(lm, TOOLS)
    rejected = Counter()
    kept, rate = synthesizer.judge_filter(tasks, judge, 3, rejected)
    assert [t["id"] for t in kept] == ["task-0", "task-2"] and rate == 0.5 and rejected["judge"] == 2
    assert tasks[1]["judge"]["no_leakage"] == 1 and set(tasks[0]["judge"]) == set(CRITERIA)


def test_template_wording_varies_by_shape_and_answer_type():
    import random

    tools = {"kv/get": {"description": "Get a value by key."}, "calc/add": {"description": "Add numbers."}}
    one = [{"server": "calc", "tool": "add", "arguments": {"a": 1}}]
    two = [{"server": "kv", "tool": "get", "arguments": {"key": "k"}},
           {"server": "calc", "tool": "add", "arguments": {"a": 1}, "arg_sources": {"a": "edge:0:value"}}]
    num = {"sum": {"type": "integer", "description": "the sum"}}
    text = {"value": {"type": "string", "description": "the value"}}
    qs = {(len(g), f): {synthesizer.template_question(g, tools, fs, random.Random(i)) for i in range(60)}
          for g in (one, two) for f, fs in (("num", num), ("text", text))}
    assert all(len(v) >= 8 for v in qs.values())
    assert any("One tool call answers this." in q for q in qs[(1, "num")])
    assert not any("One tool call answers this." in q for q in qs[(2, "num")])
    assert any("numeric values" in q for q in qs[(1, "num")]) and not any("numeric" in q for q in qs[(1, "text")])
    assert any("a set to the value at value in the result of step 1" in q for q in qs[(2, "text")])


def test_synthesize_tasks_applies_judge_determinism_and_split(tmp_path):
    """The synthesizer end to end on recorded calls in memory: metrics carry the judge keep rate,
    the volatile-field rate and the split strategy; the exported set replays."""
    import polars as pl

    from firefly_exp.simulator import SEED_STATE, Simulator

    schema = json.dumps({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]})
    rows = [{"tool": f"{s}/get", "server": s, "read_only": True, "input_schema": schema, "volatile": False,
             "description": "Get the record stored under a key."} for s in ("kv", "db")]
    calls, trajectories = [], []
    for i in range(8):
        server = "kv" if i % 2 else "db"
        value = {"colour": f"colour-number-{i}", "count": 100 + i}
        calls.append({"episode": f"ep{i}", "seq": 0, "server": server, "tool": "get", "arguments": {"key": f"k{i}"},
                      "fingerprint": SEED_STATE, "content": [{"type": "text", "text": json.dumps(value)}],
                      "structured": None, "is_error": False, "error_kind": None, "arg_sources": {}})
        trajectories.append({"episode": f"ep{i}", "dag_id": f"dag-{i}", "status": "complete", "steps": [{"seq": 0}]})
    sim = Simulator.from_calls(calls, pl.DataFrame(rows))
    verdicts = iter([{"clarity": 5}, {"clarity": 5}, {"clarity": 1}, {"clarity": 1}] * 4)

    def live_check(ts):   # "count" changes on re-execution in every other task
        return {t["id"]: ["count"] for t in ts[::2] if "count" in t["answer"]}

    metrics = synthesizer.synthesize_tasks(
        recorded(trajectories, calls, {r["tool"]: r for r in rows}), sim,
        synth_settings(tasks_per_trajectory=1, max_fields=2, split="held_out_servers", determinism="exclude"),
        0, tmp_path, synthesizer.Programs(judge=lambda t: next(verdicts), live_check=live_check))
    assert metrics["judge_keep_rate"] == 0.5 and metrics["rejected.judge"] == 4
    assert 0 < metrics["volatile_field_rate"] <= 0.5 and metrics["split_strategy"] == "held_out_servers"
    tasks = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert len(tasks) == metrics["tasks"] == 4
    assert any(t.get("volatile_fields") == ["count"] and "count" not in t["answer"] for t in tasks)
    assert {t["split"] for t in tasks} == {"train", "test"}
    assert all(synthesizer.verify_task(t, sim) is None for t in tasks)
    with pytest.raises(ValueError, match="determinism needs"):
        synthesizer.synthesize_tasks(recorded(trajectories, calls, {r["tool"]: r for r in rows}), sim,
                                     synth_settings(determinism="drop"), 0, tmp_path)


def test_multi_step_tasks_need_their_chain(tmp_path):
    """A chain whose last call got a value from the first: the task's gold chain drops the unrelated
    middle call, never states the passed value, and records the link; without any passed value a
    multi-step trajectory gives only a one-call task."""
    from firefly_exp.simulator import Simulator

    def schema(*names):
        return json.dumps({"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": list(names)})

    rows = [{"tool": f"db/{n}", "server": "db", "name": n, "description": d, "input_schema": schema(*ps),
             "output_schema": None, "read_only": True, "volatile": False, "domain": "db"}
            for n, d, ps in (("list_tables", "List the tables.", ()), ("stats", "Database statistics.", ()),
                             ("describe", "Describe a table.", ("table",)))]
    tools = {r["tool"]: r for r in rows}

    def call(seq, step, tool, args, text, sources=None, episode="e1", dag="d1"):
        return {"episode": episode, "dag_id": dag, "dag_index": 0, "seq": seq, "step": step, "server": "db",
                "tool": tool, "arguments": args, "arg_sources": sources or {}, "is_error": False, "structured": None,
                "content": [{"type": "text", "text": text}], "fingerprint": "seed", "mutating": False}

    calls = [call(0, 0, "list_tables", {}, '{"tables": ["orders", "customers"]}'),
             call(1, 1, "stats", {}, '{"size_kb": 512, "engine": "sqlite3"}'),
             call(2, 2, "describe", {"table": "orders"}, '{"columns": 4, "primary_key": "order_id"}',
                  {"table": "edge:0:tables.0"}),
             call(0, 0, "stats", {}, '{"size_kb": 512, "engine": "sqlite3"}', episode="e2", dag="d2"),
             call(1, 1, "describe", {"table": "customers"}, '{"columns": 3, "primary_key": "customer_id"}',
                  {"table": "hint"}, episode="e2", dag="d2")]
    trajectories = [{"dag_id": d, "episode": e, "status": "complete", "index": i,
                     "steps": [{"seq": c["seq"]} for c in calls if c["episode"] == e]}
                    for i, (d, e) in enumerate((("d1", "e1"), ("d2", "e2")))]
    sim = Simulator.from_calls(calls, pl.DataFrame(rows))
    synthesizer.synthesize_tasks(recorded(trajectories, calls, tools), sim, synth_settings(tasks_per_trajectory=3), 0,
                                 tmp_path)
    tasks = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    chained = [t for t in tasks if t["dag_id"] == "d1"]
    assert chained and all([c["tool"] for c in t["gold_calls"]] == ["list_tables", "describe"] for t in chained)
    for t in chained:
        assert t["chain"] == [{"from_step": 0, "to_step": 1, "param": "table"}]
        assert "orders" not in t["question"] and "tables[0] in the result of step 1" in t["question"]
        assert t["difficulty"]["depth"] == 2 and synthesizer.verify_task(t, sim) is None
    assert {len(t["gold_calls"]) for t in tasks if t["dag_id"] == "d2"} == {1}
