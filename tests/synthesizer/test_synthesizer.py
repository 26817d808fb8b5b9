"""The simulator, synthesizer, fidelity and dataset stage declarations on recorded calls in memory
(no servers), and the split strategies as targets."""

import json
from collections import Counter
from types import SimpleNamespace

import polars as pl
import pytest
import yaml

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
    """A split strategy of the user's own (``synthesizer.split=test_synth_stages.every_dag_is_test``)."""
    for t in tasks:
        t["split"] = "test"


def test_split_strategies_are_targets():
    assert choices_in("firefly_exp.synthesizer.splits") == ["held_out_servers", "held_out_tools", "random"]
    assert synth_settings(split="held_out_tools").split == "held_out_tools"
    with pytest.raises(ValueError, match="no split strategy named 'by_colour'; choose from held_out_servers, "
                                         "held_out_tools, random"):
        synth_settings(split="by_colour")
    with pytest.raises(ValueError, match="no split strategy named"):
        synth_settings(split="test_synth_stages.no_such_function")
    ts = [{"dag_id": f"d{i}", "gold_calls": []} for i in range(4)]
    synthesizer.assign_splits(ts, synth_settings(split="test_synth_stages.every_dag_is_test").split, 0.3, 0)
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
