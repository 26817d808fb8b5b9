"""Stage 5b, dataset: the verified tasks as a dataset people can train on, with its statistics.

Per split, ``<split>.parquet`` (Hugging Face-loadable:
``datasets.load_dataset("parquet", data_files={"train": ".../train.parquet", "test": ".../test.parquet"})``)
and ``<split>.jsonl``, plus ``README.md`` (the dataset card) and ``stats.json``. One row per task:

- ``messages``: an OpenAI-style chat: the system prompt (the tools, as JSON schemas), the user's
  question, then per gold call an assistant turn with one ``tool_calls`` entry and the ``tool`` turn
  with its recorded result, and last the assistant's answer as a JSON object;
- ``tools``: the offered tools in OpenAI function format (``{"type": "function", "function":
  {"name": "<server>__<tool>", "description", "parameters"}}``), as a JSON string (their schemas
  differ in shape, so one parquet struct cannot hold them all);
- ``answer_schema``, ``answer``, ``gold_calls``, ``provenance``, ``difficulty`` (JSON strings in
  parquet, objects in JSONL) and flat columns ``id``, ``question``, ``split``, ``n_calls``,
  ``n_servers``, ``depth``, ``servers``, ``dag_id``, ``synthesizer``.

    >>> openai_name("sqlite/read_query")
    'sqlite__read_query'
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .quality import SPLITS, quality_by_split
from .results import normalise, result_text
from .stage import RunContext, Stage, StageResult
from .store import stable_hash, write_json_atomic, write_jsonl

SYSTEM_PROMPT = ("You are an assistant that can call tools. Call the tools you need, one at a time, then answer "
                 "with one JSON object holding exactly the requested fields.\n\nTools:\n{tools}")


def openai_name(tool: str) -> str:
    server, name = tool.split("/", 1)
    return f"{server}__{name}"


def openai_tool(row: dict) -> dict:
    schema = row["input_schema"]
    params = json.loads(schema) if isinstance(schema, str) else (schema or {})
    params = {k: v for k, v in params.items() if k not in ("$schema", "title")} or {"type": "object", "properties": {}}
    return {"type": "function", "function": {"name": openai_name(row["tool"]),
                                             "description": row.get("description") or "", "parameters": params}}


def _tool_content(result: dict) -> str:
    if result.get("structured") is not None:
        return json.dumps(result["structured"], ensure_ascii=False)
    return result_text(result)


def task_messages(task: dict, tool_specs: list[dict]) -> list[dict]:
    """The task as an OpenAI-style chat (every message has the same keys, so parquet stores one struct)."""
    def msg(role, content, tool_calls=None, tool_call_id=None, name=None):
        return {"role": role, "content": content, "tool_calls": tool_calls, "tool_call_id": tool_call_id,
                "name": name}

    out = [msg("system", SYSTEM_PROMPT.format(tools=json.dumps(tool_specs, ensure_ascii=False))),
           msg("user", task["question"])]
    for i, (call, result) in enumerate(zip(task["gold_calls"], task["gold_results"])):
        cid, name = f"call_{i}", openai_name(f"{call['server']}/{call['tool']}")
        out.append(msg("assistant", "", [{"id": cid, "type": "function", "function": {
            "name": name, "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]))
        out.append(msg("tool", _tool_content(result), tool_call_id=cid, name=name))
    out.append(msg("assistant", json.dumps(task["answer"], ensure_ascii=False)))
    return out


def task_row(task: dict, tools: dict[str, dict]) -> dict:
    """One dataset row, its nested values as Python objects (JSONL); see :func:`to_parquet_row`."""
    specs = [openai_tool(tools[t]) for t in task["tools"] if t in tools]
    return {"id": task["id"], "split": task["split"], "question": task["question"],
            "messages": task_messages(task, specs), "tools": specs,
            "answer_schema": task["answer_schema"], "answer": task["answer"], "gold_calls": task["gold_calls"],
            "provenance": task["provenance"], "difficulty": task["difficulty"], "chain": task.get("chain", []),
            "n_calls": task["difficulty"]["calls"], "n_servers": task["difficulty"]["servers"],
            "depth": task["difficulty"]["depth"], "servers": sorted({c["server"] for c in task["gold_calls"]}),
            "volatile_fields": task.get("volatile_fields", []),
            "dag_id": task["dag_id"], "synthesizer": task["synthesizer"], "seed": task["seed"]}


JSON_COLUMNS = ("tools", "answer_schema", "answer", "gold_calls", "provenance", "difficulty", "chain")


def to_parquet_row(row: dict) -> dict:
    return {k: (json.dumps(v, ensure_ascii=False) if k in JSON_COLUMNS else v) for k, v in row.items()}


def _arrow_schema():
    import pyarrow as pa

    call = pa.struct([("id", pa.string()), ("type", pa.string()),
                      ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.list_(call)),
                         ("tool_call_id", pa.string()), ("name", pa.string())])
    return pa.schema([("id", pa.string()), ("split", pa.string()), ("question", pa.string()),
                      ("messages", pa.list_(message)), *[(c, pa.string()) for c in JSON_COLUMNS],
                      ("n_calls", pa.int64()), ("n_servers", pa.int64()), ("depth", pa.int64()),
                      ("servers", pa.list_(pa.string())), ("volatile_fields", pa.list_(pa.string())),
                      ("dag_id", pa.string()), ("synthesizer", pa.string()), ("seed", pa.int64())])


def chain_key(task: dict) -> str:
    return stable_hash(task["gold_calls"])


def answer_key(task: dict) -> str:
    return stable_hash({k: normalise(v) for k, v in task["answer"].items()})


def leakage(tasks: list[dict]) -> dict:
    """Overlap between train and test: test tasks whose gold chain, answer, or both, a train task shares.

    >>> t = lambda s, calls, ans: {"split": s, "gold_calls": calls, "answer": ans}
    >>> leakage([t("train", [1], {"a": 1}), t("test", [1], {"a": 2}), t("test", [2], {"a": "1.0"})])
    {'test_same_chain': 1, 'test_same_answer': 1, 'test_same_chain_and_answer': 0, 'test_same_chain_fraction': 0.5, 'test_same_answer_fraction': 0.5, 'test_same_chain_and_answer_fraction': 0.0}
    """
    train = [t for t in tasks if t["split"] == "train"]
    test = [t for t in tasks if t["split"] == "test"]
    chains, answers = {chain_key(t) for t in train}, {answer_key(t) for t in train}
    both = {(chain_key(t), answer_key(t)) for t in train}
    out = {"test_same_chain": sum(chain_key(t) in chains for t in test),
           "test_same_answer": sum(answer_key(t) in answers for t in test),
           "test_same_chain_and_answer": sum((chain_key(t), answer_key(t)) in both for t in test)}
    out.update({f"{k}_fraction": round(v / max(len(test), 1), 4) for k, v in list(out.items())})
    return out


def task_statistics(tasks: list[dict], explored_dags: int, synth_metrics: dict | None = None) -> dict:
    """The run's task statistics (``tasks.*`` in summary.json, the dataset card, MLflow metrics)."""
    n = max(len(tasks), 1)
    synth = synth_metrics or {}
    calls = Counter(len(t["gold_calls"]) for t in tasks)
    fields = sum(len(t["answer"]) for t in tasks)
    stats = {
        "verified": len(tasks), "explored_dags": explored_dags,
        "yield_per_dag": round(len(tasks) / max(explored_dags, 1), 4),
        "calls_per_task_mean": round(sum(len(t["gold_calls"]) for t in tasks) / n, 3),
        "calls_per_task_min": min(calls, default=0), "calls_per_task_max": max(calls, default=0),
        "calls_per_task_hist": {str(k): calls[k] for k in sorted(calls)},
        "answer_fields_mean": round(fields / n, 3),
        "multi_server_fraction": round(sum(t["difficulty"]["servers"] > 1 for t in tasks) / n, 4),
        "multi_step_fraction": round(sum(len(t["gold_calls"]) > 1 for t in tasks) / n, 4),
        "chained_fraction": synth.get("chained_fraction"),   # multi-step tasks with a value passed along the chain
        "depth_mean": round(sum(t["difficulty"]["depth"] for t in tasks) / n, 3),
        "servers_used": len({c["server"] for t in tasks for c in t["gold_calls"]}),
        "tools_used": len({f"{c['server']}/{c['tool']}" for t in tasks for c in t["gold_calls"]}),
        "splits": {s: sum(t["split"] == s for t in tasks) for s in ("train", "test")},
        "split_strategy": synth.get("split_strategy", "random"),
        # fields found volatile by live re-execution, over the fields checked (kept + excluded)
        "volatile_field_rate": synth.get("volatile_field_rate"),   # None: determinism check off
        "near_duplicates_removed": synth.get("rejected.near_duplicate", 0),
        "judge_keep_rate": synth.get("judge_keep_rate"),   # None without an LM judge
        "leakage": leakage(tasks),
    }
    return stats


CARD = """---
pretty_name: firefly_exp verified tool-call tasks
task_categories: [text-generation]
tags: [tool-use, function-calling, mcp, synthetic]
configs:
- config_name: default
  data_files:
  - split: train
    path: train.parquet
  - split: test
    path: test.parquet
---

# firefly_exp verified tool-call tasks ({name}, seed {seed})

Tasks synthesised backwards from live tool calls on real MCP servers ({servers}); every answer
value was read from a recorded output (see `provenance`) and the gold chain replays in the offline
simulator to identical outputs.

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files={{"train": "train.parquet", "test": "test.parquet"}})
```

Columns: `messages` (OpenAI chat: system with the tools, user question, assistant `tool_calls` +
`tool` results of the gold chain, final assistant JSON answer), `tools` (JSON: OpenAI function
schemas named `<server>__<tool>`), `answer_schema`, `answer`, `gold_calls`, `provenance`,
`difficulty` (JSON strings), `question`, `split`, `n_calls`, `n_servers`, `depth`, `servers`,
`volatile_fields`, `dag_id`, `synthesizer`, `seed`. The same rows, with objects for the JSON
columns, are in `train.jsonl` and `test.jsonl`.

## Statistics

| statistic | value |
|---|---|
{rows}

Calls per task (histogram):

| calls | tasks |
|---|---|
{hist}
{quality}"""

QUALITY_CARD = """
## Task quality, per split

How far questions state a goal and answers carry information (`firefly_exp/quality.py` defines each
check; docs/dataset.md). Leak, step and single-call figures are shares of tasks, confirmation and
echo rates shares of answer fields, `tool_recall_at_5` the share of gold tools that BM25 of the
question ranks among the run's top 5 tools.

| check | {splits} |
|---|{dashes}
{rows}
"""


def quality_card(quality: dict[str, dict]) -> str:
    """The card's quality section: one row per check, one column per split (``n/a``: an empty split)."""
    splits = [s for s in SPLITS if s in quality]
    rows = "\n".join(f"| {k} | " + " | ".join("n/a" if quality[s][k] is None else str(quality[s][k]) for s in splits)
                     + " |" for k in quality[splits[0]])
    return QUALITY_CARD.format(splits=" | ".join(splits), dashes="---|" * len(splits), rows=rows)


def dataset_card(stats: dict, name: str, seed: int, servers: list[str]) -> str:
    flat = {k: v for k, v in stats.items() if not isinstance(v, dict)}
    flat.update({f"split.{k}": v for k, v in stats["splits"].items()})
    flat.update({f"leakage.{k}": v for k, v in stats["leakage"].items()})
    rows = "\n".join(f"| {k} | {'n/a (not measured in this run)' if v is None else v} |" for k, v in flat.items())
    hist = "\n".join(f"| {k} | {v} |" for k, v in stats["calls_per_task_hist"].items())
    quality = quality_card(stats["quality"]) if "quality" in stats else ""   # the stage always adds it
    return CARD.format(name=name, seed=seed, servers=", ".join(servers) or "none", rows=rows, hist=hist,
                       quality=quality)


def export_dataset(tasks: list[dict], tools: dict[str, dict], out_dir: Path, stats: dict, name: str = "firefly",
                   seed: int = 0) -> dict:
    """Write the dataset (parquet + JSONL per split, README.md card, stats.json); ``stats``: the tasks'
    :func:`task_statistics`, returned."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    rows = [task_row(t, tools) for t in tasks]
    for split in ("train", "test"):
        part = [r for r in rows if r["split"] == split]
        write_jsonl(out_dir / f"{split}.jsonl", part)
        table = pa.Table.from_pylist([to_parquet_row(r) for r in part], schema=_arrow_schema())
        pq.write_table(table, out_dir / f"{split}.parquet")
    servers = sorted({s for r in rows for s in r["servers"]})
    (out_dir / "README.md").write_text(dataset_card(stats, name, seed, servers))
    write_json_atomic(out_dir / "stats.json", stats)
    return stats


def log_to_mlflow(folder: Path) -> None:
    """Log each split as an MLflow dataset input of the active run (``mlflow.data``)."""
    import mlflow
    import pandas as pd

    folder = Path(folder)
    for split in ("train", "test"):
        path = folder / f"{split}.parquet"
        if not path.exists():
            continue
        df = pd.read_parquet(path, columns=["id", "question", "answer", "answer_schema", "tools", "n_calls",
                                            "n_servers", "depth", "split"])
        if df.empty:   # mlflow's digest of an empty frame of pandas "str" columns raises
            continue
        ds = mlflow.data.from_pandas(df, source=str(path), name=f"firefly-tasks-{split}", targets="answer")
        mlflow.log_input(ds, context=split)


# -- the stage ------------------------------------------------------------------------------------------


def run(settings: None, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """The dataset stage: the synthesizer's tasks exported with their card; returns the statistics, with
    the quality checks per split under ``quality`` (``tasks.quality.<split>.*`` in summary.json)."""
    tasks = inputs["synthesizer"].value
    trajectories, _ = inputs["explorer"].value   # the yield is per explored DAG
    stats = task_statistics(tasks, len(trajectories), inputs["synthesizer"].metrics)
    tools = {r["tool"]: r for r in inputs["servers"].value.to_dicts()}
    stats["quality"] = quality_by_split(tasks, tools)
    return export_dataset(tasks, tools, ctx.out, stats, ctx.settings.name, ctx.seed)


# no settings group of its own: the card names the experiment and its seed
STAGE = Stage("dataset", run, inputs=("synthesizer", "servers", "explorer"),
              artifacts=("README.md", "stats.json", "train.parquet", "test.parquet", "train.jsonl", "test.jsonl"),
              params=lambda settings, ctx: {"name": ctx.settings.name, "seed": ctx.seed}, log=log_to_mlflow)
