"""The whole pipeline on real MCP servers (the smoke experiment: a few servers, one stateful)."""

import json
from pathlib import Path

import mlflow
import polars as pl
import pytest

from conftest import installed
from firefly_exp.pipeline import run
from firefly_exp.store import read_jsonl

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    from conftest import make_config

    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = make_config(tmp, ["+experiment=smoke"])
    missing = [s for s in cfg.servers.enabled if not installed(s)]
    if missing:
        pytest.skip(f"servers not installed: {missing} (run `make servers`)")
    first = run(cfg, tmp / "run1")
    second = run(cfg, tmp / "run2")   # same config: every stage reused
    fresh = make_config(tmp, ["+experiment=smoke", f"paths.store={tmp}/store2"])
    third = run(fresh, tmp / "run3")  # same seed, empty store: recomputed from scratch
    return first, second, third, tmp


def test_runs_end_to_end_with_verified_tasks(smoke_runs):
    first, *_ = smoke_runs
    c = first["counts"]
    assert c["servers"] >= 3 and c["tools"] > 10 and c["edges"] > 0 and c["dags"] > 0 and c["calls"] > 0
    assert c["verified_tasks"] >= 5 and c["test_tasks"] >= 1
    assert first["eval"]["gold"]["pass@1"] == 1.0                    # labels replay exactly
    assert first["eval"]["random"]["pass@1"] < first["eval"]["gold"]["pass@1"]
    tasks = read_jsonl(first["stages"]["synthesizer"]["folder"] + "/tasks.jsonl")
    calls = {(c["server"], c["tool"]) for t in tasks for c in t["gold_calls"]}
    read_only = {r["tool"]: r["read_only"] for r in
                 pl.read_parquet(first["stages"]["servers"]["folder"] + "/tools.parquet").to_dicts()}
    stateful = (set(first["servers"]) - {"hint_free"}) & {"sqlite", "memory", "git", "filesystem", "mcp-sqlite", "text-editor"}
    assert any(server in stateful for server, _ in calls)             # a stateful server is exercised
    for task in tasks:
        assert task["answer"] and set(task["answer"]) == set(task["provenance"]) == set(task["answer_schema"])
        for name, prov in task["provenance"].items():
            assert 0 <= prov["step"] < len(task["gold_calls"])
        for value in task["answer"].values():  # no answer is given away in the question
            if isinstance(value, str) and len(value) >= 3:
                assert value.strip().casefold() not in task["question"].casefold()
        if len(task["gold_calls"]) > 1:   # a multi-step task needs its chain: a value passed along it, unstated,
            # or the state an earlier write left, read by an answer call (add a row, then read the table)
            last_answer = max(p["step"] for p in task["provenance"].values())
            writes = [c for c in task["gold_calls"][:last_answer] if not read_only[f"{c['server']}/{c['tool']}"]]
            assert task["chain"] or writes, task["question"]
            for link in task["chain"]:
                assert link["from_step"] < link["to_step"] < len(task["gold_calls"])
                passed = task["gold_calls"][link["to_step"]]["arguments"][link["param"]]
                if isinstance(passed, str) and len(passed) >= 3:
                    assert passed.strip().casefold() not in task["question"].casefold()
    assert first["stages"]["probe"]["metrics"]["tools_answered"] > 0   # every tool probed before the graph
    # the graph marks the tools whose probe result held answer material; DAGs end in one of them
    g = first["stages"]["graph"]["metrics"]
    assert 0 < g["answering_tools"] < c["tools"]
    answering = set(pl.read_parquet(first["stages"]["graph"]["folder"] + "/nodes.parquet")
                    .filter(pl.col("answers"))["tool"].to_list())
    for dag in read_jsonl(first["stages"]["sampler"]["folder"] + "/dags.jsonl"):
        sources = {e["source"] for e in dag["edges"]}
        assert any(n in answering for n in dag["nodes"] if n not in sources), dag["nodes"]
    # stateful servers ran warm: a process kept across DAGs whose sandbox slot was restored between them
    assert first["stages"]["explorer"]["metrics"]["warm_reuses"] > 0


def test_every_answer_field_names_one_value(smoke_runs):
    """A field whose key repeats in its result with other values (rows of a table) is asked for by its place
    as well, so the question has one right answer."""
    from firefly_exp.results import leaves, value_of
    from firefly_exp.synthesizer import path_key, path_text
    from firefly_exp.synthesizer.goal import key_words, ordinal

    tasks = read_jsonl(smoke_runs[0]["stages"]["synthesizer"]["folder"] + "/tasks.jsonl")
    repeated = 0
    for t in tasks:
        for name, prov in t["provenance"].items():
            # the field name is quoted as the answer's JSON key: a policy copies the same characters
            assert json.dumps(name) + " (" in t["question"], (name, t["question"])
            value = value_of(t["gold_results"][prov["step"]])
            others = [v for p, v in leaves(value) if path_key(p) == path_key(prov["path"]) and v != t["answer"][name]]
            where = path_text(prov["path"])
            if others:
                repeated += 1
                description = t["answer_schema"][name]["description"]
                if t["synthesizer"] == "goal":   # the place in words: every list position as an ordinal,
                    parts = prov["path"].split(".")     # or the object it sits in ("the datetime of the source")
                    positions = [int(part) for part in parts if part.isdigit()]
                    parent = next((p for p in reversed(parts[:-1]) if not p.isdigit()), None)
                    assert positions or parent, (prov, description)
                    assert all(ordinal(i) in description for i in positions), (prov, description)
                    if not positions:
                        assert all(w in description.lower() for w in key_words(parent)), (prov, description)
                    assert description in t["question"]
                else:                            # the recipe's: the path itself
                    assert f" at {where} " in description, t["answer_schema"][name]
                    assert where in t["question"]
    assert repeated > 0      # the smoke servers return tables: the case is exercised


def test_summary_latest_and_mlflow(smoke_runs):
    first, second, _, tmp = smoke_runs
    summary = json.loads((tmp / "run1" / "summary.json").read_text())
    assert set(summary) >= {"counts", "stages", "eval", "mlflow", "servers", "wall_s", "seed", "simulator"}
    assert 0 <= summary["simulator"]["reward_flip_rate"] <= 1 and summary["simulator"]["hits"]["exact"] > 0
    assert summary["stages"]["fidelity"]["metrics"]["calls"]["held_out_calls"] > 0
    for stage in ("servers", "graph", "sampler", "explorer", "simulator", "synthesizer", "eval"):
        assert summary["stages"][stage]["wall_s"] >= 0 and "metrics" in summary["stages"][stage]
    assert (tmp / "outputs" / "latest").resolve() == (tmp / "run3").resolve()   # the newest run
    servers = {sv: rep for sv, rep in summary["servers"].items() if sv != "hint_free"}
    assert all(s["server_version"] and s["tools_hash"] for s in servers.values() if s["status"] == "ok")
    # per-server yield: the counts add up to the run's, and every server that made a task is credited
    tasks = [json.loads(line) for line in open(Path(summary["stages"]["synthesizer"]["folder"]) / "tasks.jsonl")]
    assert sum(s["explored_calls"] for s in servers.values()) == summary["stages"]["explorer"]["metrics"]["calls"]
    assert sum(s["n_tools"] or 0 for s in servers.values()) == summary["counts"]["tools"]
    for sv, rep in servers.items():
        assert rep["verified_tasks"] == sum(any(c["server"] == sv for c in t["gold_calls"]) for t in tasks)
        assert 0 <= rep["explored_errors"] <= rep["explored_calls"]
        assert rep["probe_answered_tools"] is None or 0 <= rep["probe_answered_tools"] <= rep["n_tools"]
    assert any(rep["verified_tasks"] for rep in servers.values())
    from firefly_exp.settings import ServersSettings
    from firefly_exp.simulator.__main__ import load_run
    specs = ServersSettings(**load_run(summary["run_dir"])[1]["servers"]).specs()
    assert summary["servers"]["hint_free"] == sorted(sv for sv, spec in specs.items() if not spec.get("hints"))
    mlflow.set_tracking_uri(summary["mlflow"]["tracking_uri"])
    parent = mlflow.get_run(summary["mlflow"]["run_id"])
    children = mlflow.search_runs(experiment_ids=[summary["mlflow"]["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    assert {r.data.tags["stage"] for r in children} >= {"servers", "graph", "explorer", "synthesizer", "eval"}
    assert parent.data.metrics["count.verified_tasks"] == summary["counts"]["verified_tasks"]


def test_second_run_reuses_every_stage(smoke_runs):
    first, second, _, _ = smoke_runs
    assert all(st["reused"] for name, st in second["stages"].items() if "reused" in st)
    assert second["counts"] == first["counts"]


def test_same_seed_same_dags_and_tasks(smoke_runs):
    first, _, third, _ = smoke_runs
    assert not any(st["reused"] for st in third["stages"].values() if "reused" in st)
    dags = [read_jsonl(r["stages"]["sampler"]["folder"] + "/dags.jsonl") for r in (first, third)]
    assert [d["id"] for d in dags[0]] == [d["id"] for d in dags[1]]
    tasks = [read_jsonl(r["stages"]["synthesizer"]["folder"] + "/tasks.jsonl") for r in (first, third)]
    assert [(t["question"], t["answer"]) for t in tasks[0]] == [(t["question"], t["answer"]) for t in tasks[1]]


def test_recheck_reexecutes_gold_chains_live(smoke_runs):
    from firefly_exp.simulator.__main__ import load_run, recheck

    first, *_ = smoke_runs
    summary, conf = load_run(first["run_dir"])
    report = recheck(summary, conf, limit=4)
    assert report["checked"] == 4 and report["kept"] + report["retired"] == 4
    assert report["kept"] >= 3          # seeded, deterministic servers replay their gold chains exactly
    assert json.loads((Path(first["run_dir"]) / "recheck.json").read_text())["checked"] == 4


def test_summary_task_statistics_and_dataset(smoke_runs):
    import pyarrow.parquet as pq

    first, *_ = smoke_runs
    t = first["tasks"]
    assert t["verified"] == first["counts"]["verified_tasks"] >= 5
    assert t["calls_per_task_mean"] >= 1 and 0 <= t["multi_server_fraction"] <= 1 and t["answer_fields_mean"] >= 1
    assert sum(t["calls_per_task_hist"].values()) == t["verified"] == sum(t["splits"].values())
    assert t["leakage"]["test_same_chain_and_answer"] == 0        # split by DAG, chains deduplicated
    folder = Path(first["dataset"])
    rows = pq.read_table(folder / "train.parquet").num_rows + pq.read_table(folder / "test.parquet").num_rows
    assert rows == t["verified"] and "| verified |" in (folder / "README.md").read_text()
    mlflow.set_tracking_uri(first["mlflow"]["tracking_uri"])
    child = mlflow.search_runs(experiment_ids=[first["mlflow"]["experiment_id"]], output_format="list",
                               filter_string=f"tags.mlflow.parentRunId = '{first['mlflow']['run_id']}' "
                                             "and tags.stage = 'dataset'")[0]
    assert {i.dataset.name for i in child.inputs.dataset_inputs} >= {"firefly-tasks-train"}


def test_every_exported_answer_is_reproduced_by_replaying_its_gold_chain(smoke_runs):
    """The whole exported set (both splits): replaying the gold chain in the simulator yields the answer."""
    from firefly_exp.results import answers_match, get_path, value_of
    from firefly_exp.servers import load_tools
    from firefly_exp.simulator import Simulator

    first, *_ = smoke_runs
    sim = Simulator.load(Path(first["stages"]["simulator"]["folder"]),
                         load_tools(Path(first["stages"]["servers"]["folder"])))
    rows = [r for split in ("train", "test") for r in read_jsonl(Path(first["dataset"]) / f"{split}.jsonl")]
    assert len(rows) == first["tasks"]["verified"]
    for row in rows:
        episode = sim.episode()
        results = [episode.step(c["server"], c["tool"], c["arguments"]) for c in row["gold_calls"]]
        assert all(r["hit"] == "exact" for r in results), row["id"]
        for name, prov in row["provenance"].items():
            assert answers_match(row["answer"][name], get_path(value_of(results[prov["step"]]), prov["path"], None))
        assert json.loads(row["messages"][-1]["content"]) == row["answer"]


def test_determinism_reexecutes_gold_chains_live(smoke_runs, tmp_path):
    """Live re-execution on the smoke servers: seeded, deterministic chains keep their answers."""
    from firefly_exp.settings import ServersSettings
    from firefly_exp.simulator.__main__ import load_run
    from firefly_exp.simulator.live import changed_fields

    first, *_ = smoke_runs
    _, conf = load_run(first["run_dir"])
    tasks = read_jsonl(Path(first["stages"]["synthesizer"]["folder"]) / "tasks.jsonl")[:6]
    changed = changed_fields(tasks, ServersSettings(**conf["servers"]).specs(), Path(conf["servers"]["install_dir"]), tmp_path)
    assert set(changed) <= {t["id"] for t in tasks}
    assert sum(len(v) for v in changed.values()) <= sum(len(t["answer"]) for t in tasks) // 2
