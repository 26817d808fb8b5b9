"""Whole runs with no hand-written hints (``+experiment=no_hints``): no verified task answers with an
error text or rests on placeholder arguments alone, checked over every task of the run; and (slow) the
default experiment's yield without hints against with them, per server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import installed, make_config
from firefly_exp import quality
from firefly_exp.pipeline import run
from firefly_exp.store import read_jsonl


def _tasks(summary: dict) -> list[dict]:
    return read_jsonl(Path(summary["stages"]["synthesizer"]["folder"]) / "tasks.jsonl")


def _check_every_task(summary: dict) -> list[dict]:
    tasks = _tasks(summary)
    errors = [t["id"] for t in tasks if quality.error_fields(t)]
    placeholders = [t["id"] for t in tasks if quality.placeholder_task(t)]
    assert not errors, f"tasks answering with an error text: {errors[:5]}"
    assert not placeholders, f"tasks whose every argument is a placeholder: {placeholders[:5]}"
    return tasks


def test_a_hint_free_run_has_no_error_answer_and_no_placeholder_task(tmp_path):
    """The smoke servers with no hints, 60 DAGs: tasks are made, and not one of them answers with an error
    text or is built on placeholders only (``rejected.placeholder_arguments`` counts those refused)."""
    overrides = ["+experiment=no_hints", "servers=smoke", "name=nohints-smoke", "sampler.n_dags=60",
                 "graph.weights.similarity=0"]
    cfg = make_config(tmp_path, overrides)
    missing = [s for s in cfg.servers.enabled if not installed(s)]
    if missing:
        pytest.skip(f"servers not installed: {missing} (run `make servers`)")
    summary = run(cfg, tmp_path / "run")
    GlobalHydra.instance().clear()
    tasks = _check_every_task(summary)
    assert len(tasks) >= 5
    assert summary["servers"]["hint_free"] == sorted(cfg.servers.enabled)
    # what the explorer used with no hints: descriptions, vocabulary, sandbox paths, repairs, earlier results
    calls = [c for stage in ("probe", "explorer")
             for c in read_jsonl(Path(summary["stages"][stage]["folder"]) / "calls.jsonl")]
    sources = {src.split(":")[0] for c in calls for src in (c.get("arg_sources") or {}).values()}
    assert "hint" not in sources and {"description", "vocabulary"} <= sources


@pytest.mark.slow
def test_the_default_servers_give_most_of_their_tasks_without_hints(tmp_path):
    """The default experiment, seed 0, with and without hints (pytest -m slow, minutes): the hint-free run
    verifies at least 60% as many tasks, every server that gives a verified task with hints gives one
    without, and no hint-free task answers with an error or rests on placeholders."""
    cfg = make_config(tmp_path, ["+experiment=no_hints"])
    if [s for s in cfg.servers.enabled if not installed(s)]:
        pytest.skip("servers not installed (run `make servers`)")
    bare = run(cfg, tmp_path / "bare")
    hinted = run(make_config(tmp_path, []), tmp_path / "hinted")
    GlobalHydra.instance().clear()
    tasks = _check_every_task(bare)
    assert len(tasks) >= 0.6 * hinted["tasks"]["verified"], json.dumps(bare["servers"])
    with_tasks = {s for s, v in hinted["servers"].items() if isinstance(v, dict) and v.get("verified_tasks")}
    without = {s for s, v in bare["servers"].items() if isinstance(v, dict) and v.get("verified_tasks")}
    assert with_tasks <= without, f"no task without hints: {sorted(with_tasks - without)}"
