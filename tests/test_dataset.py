"""The dataset stage (export, card, statistics, leakage, MLflow) on hand-made tasks: fast, no servers."""

import json

import pyarrow.parquet as pq
import pytest
from hand_tasks import TOOLS, four_tasks

from firefly_exp import dataset


@pytest.fixture
def tasks():
    return four_tasks()


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
