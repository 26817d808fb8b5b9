"""The DSPy programs, driven by scripted LMs (dspy.utils.DummyLM); one runs against a real server."""

import json
from types import SimpleNamespace

import polars as pl
import pytest
from dspy.utils import DummyLM

from conftest import discovered, installed


def _row(tool, desc, inputs, outputs=None):
    return {"tool": tool, "server": tool.split("/")[0], "name": tool.split("/")[1], "description": desc,
            "input_schema": json.dumps({"type": "object", "properties": inputs, "required": list(inputs)}),
            "output_schema": json.dumps(outputs) if outputs else None}


def test_edge_judge_reads_confidence_and_mapping():
    from programs.edge_judge import judge_edges

    tools = {"a/list": _row("a/list", "List files", {"dir": {"type": "string"}}, {"properties": {"path": {}}}),
             "a/read": _row("a/read", "Read a file", {"path": {"type": "string"}})}
    lm = DummyLM([{"confidence": "high", "mapping": json.dumps({"path": "path"})},
                  {"confidence": "none", "mapping": "{}"}])
    verdicts = judge_edges([{"source": "a/list", "target": "a/read"}, {"source": "a/read", "target": "a/list"}],
                           tools, lm)
    assert verdicts[0] == {"confidence": "high", "mapping": {"path": "path"}}
    assert verdicts[1]["confidence"] == "none"


def test_task_writer_words_the_question():
    from programs.synthesizer import TaskWriter

    tools = {"kv/get": _row("kv/get", "Get a value", {"key": {"type": "string"}})}
    lm = DummyLM([{"question": "What is stored under the key 'colour'? Report value."}])
    question = TaskWriter(lm)([{"server": "kv", "tool": "get", "arguments": {"key": "colour"}}], tools,
                              {"value": {"type": "string", "description": "the stored value"}})
    assert question == "What is stored under the key 'colour'? Report value."


@pytest.mark.servers
def test_dspy_explorer_runs_against_a_real_server(tmp_path):
    """The real CallProposer program, a scripted LM, the real calculator server: the LM's arguments
    are what the server receives, and its answer is recorded."""
    if not installed("calculator"):
        pytest.skip("calculator server not installed (make servers)")
    from firefly_exp import PROJECT_ROOT
    from firefly_exp.explorer import Exploration, explore, load_trajectories, settings_from_yaml
    from firefly_exp.results import value_of
    from programs.explorer import dspy_proposer

    specs, tools = discovered("calculator", tmp_path)
    tool = tools["tool"][0]
    lm = DummyLM([{"reasoning": "multiply", "arguments": json.dumps({"expression": "6*7"})},
                  {"reasoning": "add", "arguments": json.dumps({"expression": "40+2"})}])
    dag = {"id": "dag-test", "index": 0, "nodes": [tool], "edges": []}
    (tmp_path / "explore").mkdir()
    settings = settings_from_yaml("dspy", concurrency=1)
    run = Exploration(tools, specs, PROJECT_ROOT / ".servers", tmp_path / "sb", settings, 0,
                      dspy_proposer(settings, SimpleNamespace(lm=lm)))
    metrics = explore([dag, {**dag, "id": "dag-test2", "index": 1}], run, tmp_path / "explore")
    trajs, calls = load_trajectories(tmp_path / "explore")
    assert metrics["dags_complete"] == 2 and len(calls) == 2
    assert [c["arguments"] for c in calls] == [{"expression": "6*7"}, {"expression": "40+2"}]
    assert all(c["arg_sources"] == {"expression": "lm"} for c in calls)
    assert [float(value_of(c)) for c in calls] == [42.0, 42.0]


def test_dspy_explorer_needs_an_lm():
    from firefly_exp.explorer import settings_from_yaml
    from programs.explorer import dspy_proposer

    with pytest.raises(ValueError, match="needs an LM"):
        dspy_proposer(settings_from_yaml("dspy"), SimpleNamespace(lm=None))


@pytest.mark.servers
def test_dspy_explorer_follows_edges_and_repairs_on_a_stateful_server(tmp_path):
    """The real program over a two-node DAG on the sqlite server (a fresh sandbox): the tool reaches
    the LM as a dspy.Tool signature, the first call's result is in the second prompt, and after the
    server rejects the scripted LM's bad SQL the error is shown to it and its repair is what runs."""
    if not installed("sqlite"):
        pytest.skip("sqlite server not installed (make servers)")
    from firefly_exp import PROJECT_ROOT
    from firefly_exp.explorer import Exploration, explore, load_trajectories, settings_from_yaml
    from firefly_exp.results import value_of
    from programs.explorer import dspy_proposer
    from programs.lm import lm_usage

    specs, tools = discovered("sqlite", tmp_path)
    bad, good = "SELEC name FROM customers", "SELECT name FROM customers WHERE id = 1"
    lm = DummyLM([{"reasoning": "see the tables", "arguments": "{}"},
                  {"reasoning": "a query", "arguments": json.dumps({"query": bad})},
                  {"reasoning": "fix the typo", "arguments": json.dumps({"query": good})}])
    dag = {"id": "dag-sql", "index": 0, "nodes": ["sqlite/list_tables", "sqlite/read_query"],
           "edges": [{"source": "sqlite/list_tables", "target": "sqlite/read_query", "mapping": {}}]}
    settings = settings_from_yaml("dspy", concurrency=1)
    metrics = explore([dag], Exploration(tools, specs, PROJECT_ROOT / ".servers", tmp_path / "sb", settings, 0,
                                         dspy_proposer(settings, SimpleNamespace(lm=lm))), tmp_path / "explore")
    (traj,), calls = load_trajectories(tmp_path / "explore")
    assert traj["status"] == "complete" and metrics["errors_tool_error"] == 1
    assert [c["arguments"] for c in calls] == [{}, {"query": bad}, {"query": good}]
    assert [c["is_error"] for c in calls] == [False, True, False]
    assert "Ada" in json.dumps(value_of(calls[2]))
    prompts = [h["messages"][-1]["content"] for h in lm.history]
    assert "read_query, whose description is" in prompts[1]              # the dspy.Tool signature
    assert "customers" in prompts[1].split("[[ ## observations ## ]]")[1]  # step 0's result flowed in
    error = calls[1]["content"][0]["text"][:40]
    assert "none" in prompts[1].split("[[ ## previous_error ## ]]")[1][:20] and error in prompts[2]
    assert lm_usage(lm)["lm_calls"] == 3


def test_dspy_explorer_with_an_openai_compatible_lm_composes(config):
    """explorer=dspy lm=openai_compatible: the config composes and builds the LM and the proposer
    (no request is made)."""
    from omegaconf import OmegaConf

    from firefly_exp.settings import ExplorerSettings, resolve
    from programs.lm import configure_lm

    cfg = config("explorer=dspy", "lm=openai_compatible", "lm.api_base=http://127.0.0.1:9/v1")
    assert cfg.explorer.kind == "dspy" and cfg.explorer.dag_retries >= 0
    lm = configure_lm(OmegaConf.to_container(cfg.lm, resolve=True))
    assert lm.model == "openai/local-model" and lm.kwargs["api_base"] == "http://127.0.0.1:9/v1"
    settings = ExplorerSettings(**OmegaConf.to_container(cfg.explorer, resolve=True))
    assert resolve(settings.proposer)(settings, SimpleNamespace(lm=lm)).lm is lm
