"""The synthesizer: its stage declaration with the simulator, fidelity and dataset ones on recorded calls
in memory (no servers), split strategies (as targets), near-duplicates, determinism, the LM judge,
template wording and multi-step chains, on hand-made tasks."""

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import yaml
from hand_tasks import TOOLS, four_tasks, make_task

from firefly_exp import PROJECT_ROOT, dataset, simulator, synthesizer
from firefly_exp.executor import Executor
from firefly_exp.settings import LMSettings, SimulatorSettings, SynthesizerSettings, choices_in
from firefly_exp.simulator import SEED_STATE, fidelity
from firefly_exp.stage import RunContext, StageResult


def _yaml(path: str) -> dict:
    return yaml.safe_load((PROJECT_ROOT / "conf" / path).read_text())


def synth_settings(**overrides) -> SynthesizerSettings:
    # no near-duplicate pass: it loads an embedding model
    return SynthesizerSettings(**{**_yaml("synthesizer/template.yaml"), "near_duplicate_threshold": None, **overrides})


def every_dag_is_test(tasks, test_fraction, seed):
    """A split strategy of the user's own (``synthesizer.split=test_synthesizer.every_dag_is_test``)."""
    for t in tasks:
        t["split"] = "test"


@pytest.fixture
def tasks():
    return four_tasks()


def test_split_strategies_are_targets():
    assert choices_in("firefly_exp.synthesizer.splits") == ["held_out_servers", "held_out_tools", "random"]
    assert synth_settings(split="held_out_tools").split == "held_out_tools"
    with pytest.raises(ValueError, match="no split strategy named 'by_colour'; choose from held_out_servers, "
                                         "held_out_tools, random"):
        synth_settings(split="by_colour")
    with pytest.raises(ValueError, match="no split strategy named"):
        synth_settings(split="test_synthesizer.no_such_function")
    ts = [{"dag_id": f"d{i}", "gold_calls": []} for i in range(4)]
    synthesizer.assign_splits(ts, synth_settings(split="test_synthesizer.every_dag_is_test").split, 0.3, 0)
    assert {t["split"] for t in ts} == {"test"}
    synthesizer.assign_splits(ts, "random", 0.0, 0)
    assert {t["split"] for t in ts} == {"train"}


def _recorded():
    schema = json.dumps({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]})
    rows = [{"tool": f"{s}/get", "server": s, "read_only": True, "input_schema": schema, "volatile": False,
             "description": "Get the record stored under a key."} for s in ("kv", "db")]
    calls, trajectories = [], []
    for i in range(8):
        server = "kv" if i % 2 else "db"
        value = {"colour": f"colour-number-{i}", "count": 100 + i}
        calls.append({"episode": f"ep{i}", "seq": 0, "dag_id": f"dag-{i}", "server": server, "tool": "get",
                      "arguments": {"key": f"k{i}"}, "fingerprint": SEED_STATE, "arg_sources": {},
                      "content": [{"type": "text", "text": json.dumps(value)}], "structured": None,
                      "is_error": False, "error_kind": None})
        trajectories.append({"episode": f"ep{i}", "dag_id": f"dag-{i}", "status": "complete", "steps": [{"seq": 0}]})
    return trajectories, calls, pl.DataFrame(rows)


def _context(tmp_path, lm=None, **synth):
    settings = SimpleNamespace(
        synthesizer=synth_settings(**synth), simulator=SimulatorSettings(**_yaml("simulator/replay.yaml")),
        servers=SimpleNamespace(call_timeout_s=5.0, startup_timeout_s=5.0, install_dir=str(tmp_path / "servers")),
        explorer=SimpleNamespace(concurrency=2), lm=LMSettings(**_yaml("lm/none.yaml")),
        paths=SimpleNamespace(store=str(tmp_path / "store")), name="t", seed=0)
    specs = {"kv": {"id": "kv"}, "db": {"id": "db", "state_scope": "shared"}}
    return RunContext(settings, tmp_path / "run", specs, lm, Executor())


def _result(name, folder, value, metrics=None):
    return StageResult(name, folder.name, folder, metrics or {}, False, 0.0, value)


def test_stages_build_what_the_pipeline_built(tmp_path):
    trajectories, calls, tools = _recorded()
    ctx = _context(tmp_path)
    store = tmp_path / "store"
    (store / "servers" / "k-servers").mkdir(parents=True)
    tools.write_parquet(store / "servers" / "k-servers" / "tools.parquet")
    inputs = {"servers": _result("servers", store / "servers" / "k-servers", tools),
              "explorer": _result("explorer", store / "explorer" / "k-explorer", (trajectories, calls)),
              "sampler": _result("sampler", store / "sampler" / "k-sampler", [])}

    sim_dir = store / "simulator" / "k-sim"
    metrics = simulator.STAGE.run(ctx.settings.simulator, inputs, ctx.for_stage(sim_dir))
    assert metrics["cache_entries"] == 8
    assert json.loads((sim_dir / "meta.json").read_text())["scopes"] == {"kv": "kv", "db": "shared"}
    assert simulator.STAGE.params(ctx.settings.simulator, ctx) == {"scopes": {"kv": "kv", "db": "shared"}}
    (sim_dir / "manifest.json").write_text(json.dumps({"inputs": {"explorer": "k-explorer", "servers": "k-servers"}}))
    factory = simulator.STAGE.load(sim_dir, ctx)   # the tools come from the servers folder the manifest names
    assert factory.tools.equals(tools) and factory.options == {}
    assert factory.make() is not factory.make()     # a fresh simulator each time (training makes one per run)
    inputs["simulator"] = _result("simulator", sim_dir, factory)

    synth_dir = store / "synthesizer" / "k-synth"
    settings = ctx.settings.synthesizer
    metrics = synthesizer.STAGE.run(settings, inputs, ctx.for_stage(synth_dir))
    tasks = synthesizer.STAGE.load(synth_dir, ctx)
    assert len(tasks) == metrics["tasks"] > 0 and metrics["split_strategy"] == "random"
    direct = synthesizer.synthesize_tasks(synthesizer.Recorded(trajectories, calls, {r["tool"]: r for r in
                                                                                     tools.to_dicts()}),
                                          factory.make(), settings, 0, tmp_path / "direct")
    assert direct == metrics
    assert (tmp_path / "direct" / "tasks.jsonl").read_bytes() == (synth_dir / "tasks.jsonl").read_bytes()
    assert synthesizer.STAGE.params(settings, ctx) == {"seed": 0, "lm": None}
    inputs["synthesizer"] = _result("synthesizer", synth_dir, tasks, metrics)

    fid = fidelity.STAGE.run(ctx.settings.simulator, inputs, ctx.for_stage(tmp_path / "fidelity"))
    assert json.loads((tmp_path / "fidelity" / "fidelity.json").read_text()) == fid
    assert fid["calls"]["held_out_calls"] + fid["trajectories"]["held_out_calls"] > 0
    assert fidelity.STAGE.settings_of(ctx.settings) is ctx.settings.simulator

    stats = dataset.STAGE.run(dataset.STAGE.settings_of(ctx.settings), inputs, ctx.for_stage(tmp_path / "ds"))
    assert stats["verified"] == len(tasks) and stats["explored_dags"] == len(trajectories)
    assert dataset.STAGE.params(None, ctx) == {"name": "t", "seed": 0}
    assert json.loads((tmp_path / "ds" / "stats.json").read_text()) == stats


def test_programs_and_simulator_options_follow_the_settings(tmp_path):
    from dspy.utils import DummyLM

    from programs.judge import TaskJudge
    from programs.synthesizer import TaskWriter

    ctx = _context(tmp_path)
    assert synthesizer.make_programs(ctx.settings.synthesizer, {}, ctx) == synthesizer.Programs()
    lm = DummyLM([{"question": "q"}])
    ctx = _context(tmp_path, lm=lm, kind="dspy", determinism="exclude")
    programs = synthesizer.make_programs(ctx.settings.synthesizer, {}, ctx)
    assert isinstance(programs.writer, TaskWriter) and isinstance(programs.judge, TaskJudge)
    assert callable(programs.live_check)
    no_judge = _context(tmp_path, lm=lm, judge=False)
    assert synthesizer.make_programs(no_judge.settings.synthesizer, {}, no_judge).judge is None

    sim = ctx.settings.simulator
    assert set(simulator.simulator_options(sim, _context(tmp_path))) == set()
    assert set(simulator.simulator_options(sim, ctx)) == {"adapter"}
    live = simulator.simulator_options(sim.model_copy(update={"live": True}), ctx)
    assert live["cascade"] == (*sim.cascade, "live") and live["live"].workdir == tmp_path / "run" / "sandbox" / "live"


def test_candidates_from_chunks_finish_like_one_pass(tmp_path):
    """Trajectories split in chunks (executor=ray) give the same tasks as one pass once finished together."""
    trajectories, calls, tools = _recorded()
    rows = {r["tool"]: r for r in tools.to_dicts()}
    sim = simulator.Simulator.from_calls(calls, tools)
    settings = synth_settings(split="held_out_servers")
    whole = synthesizer.candidate_tasks(synthesizer.Recorded(trajectories, calls, rows), sim, settings, 0)
    parts = [synthesizer.candidate_tasks(synthesizer.Recorded(trajectories[i:i + 3], calls, rows), sim, settings, 0)
             for i in range(0, 8, 3)]
    merged = synthesizer.Candidates([t for p in parts for t in p.tasks], sum((p.rejected for p in parts), Counter()),
                                    sum(p.explored for p in parts))
    assert merged.tasks == whole.tasks and merged.explored == whole.explored == 8
    a = synthesizer.finish_tasks(whole, settings, 0, tmp_path / "a")
    b = synthesizer.finish_tasks(merged, settings, 0, tmp_path / "b")
    assert a == b and (tmp_path / "a" / "tasks.jsonl").read_bytes() == (tmp_path / "b" / "tasks.jsonl").read_bytes()


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
    from firefly_exp.simulator import Simulator

    trajectories, calls, tools = _recorded()   # the same eight one-call trajectories
    rows = tools.to_dicts()
    sim = Simulator.from_calls(calls, tools)
    verdicts = iter([{"clarity": 5}, {"clarity": 5}, {"clarity": 1}, {"clarity": 1}] * 4)

    def live_check(ts):   # "count" changes on re-execution in every other task
        return {t["id"]: ["count"] for t in ts[::2] if "count" in t["answer"]}

    metrics = synthesizer.synthesize_tasks(
        synthesizer.Recorded(trajectories, calls, {r["tool"]: r for r in rows}), sim,
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
        synthesizer.synthesize_tasks(synthesizer.Recorded(trajectories, calls, {r["tool"]: r for r in rows}), sim,
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
    synthesizer.synthesize_tasks(synthesizer.Recorded(trajectories, calls, tools), sim, synth_settings(tasks_per_trajectory=3), 0,
                                 tmp_path)
    tasks = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    chained = [t for t in tasks if t["dag_id"] == "d1"]
    assert chained and all([c["tool"] for c in t["gold_calls"]] == ["list_tables", "describe"] for t in chained)
    for t in chained:
        assert t["chain"] == [{"from_step": 0, "to_step": 1, "param": "table"}]
        assert "orders" not in t["question"] and "tables[0] in the result of step 1" in t["question"]
        assert t["difficulty"]["depth"] == 2 and synthesizer.verify_task(t, sim) is None
    assert {len(t["gold_calls"]) for t in tasks if t["dag_id"] == "d2"} == {1}
