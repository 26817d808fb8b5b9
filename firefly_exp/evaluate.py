"""Stage 7, evaluation: run policies on the held-out tasks inside the simulator, binary (or partial) reward.

A policy gets a task (question, answer schema, offered tools) and an :class:`~.simulator.Episode`
to call tools in; it returns an answer dict. The binary reward is 1 when every answer field
matches the label (see :func:`~.results.answers_match`).

Policies here:
- ``gold``: replays the task's gold chain and reads each field at its provenance path. It must
  score 100%: anything less means the pipeline broke its own labels.
- ``random``: as many calls as the gold chain, each a random offered tool with arguments drawn at
  random from its schema, then answers each field with a random value seen in its results.

Writes ``episodes.jsonl`` and ``eval.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

from .results import answers_match, get_path, leaves, value_of
from .seeding import rng_for
from .simulator import Episode, Simulator
from .store import JsonlWriter, write_json_atomic


def binary_reward(task: dict, answer: dict) -> float:
    """1.0 when every answer field is correct.

    >>> binary_reward({"answer": {"a": 1, "b": "x"}}, {"a": "1", "b": " X"})
    1.0
    >>> binary_reward({"answer": {"a": 1, "b": "x"}}, {"a": 1})
    0.0
    """
    return float(all(name in answer and answers_match(v, answer[name]) for name, v in task["answer"].items()))


def partial_reward(task: dict, answer: dict) -> float:
    """The fraction of answer fields that are correct."""
    fields = task["answer"]
    return sum(name in answer and answers_match(v, answer[name]) for name, v in fields.items()) / max(len(fields), 1)


def gold_policy(task: dict, episode: Episode, rng: random.Random) -> dict:
    results = [episode.step(c["server"], c["tool"], c["arguments"]) for c in task["gold_calls"]]
    return {name: get_path(value_of(results[p["step"]]), p["path"], None) for name, p in task["provenance"].items()}


def _random_value(schema: dict, rng: random.Random) -> Any:
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = rng.choice([t for t in typ if t != "null"] or ["string"])
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    if typ == "integer":
        return rng.randint(0, 10)
    if typ == "number":
        return round(rng.uniform(0, 10), 2)
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "array":
        return []
    if typ == "object":
        return {}
    return rng.choice(["", "test", "a", "1", "/sandbox"])


def make_random_policy(tool_schemas: dict[str, dict]) -> Callable:
    def random_policy(task: dict, episode: Episode, rng: random.Random) -> dict:
        seen: list[Any] = []
        for _ in task["gold_calls"]:
            tool = rng.choice(task["tools"])
            server, name = tool.split("/", 1)
            schema = tool_schemas[tool]
            args = {p: _random_value(s if isinstance(s, dict) else {}, rng)
                    for p, s in (schema.get("properties") or {}).items()
                    if p in (schema.get("required") or []) or rng.random() < 0.3}
            result = episode.step(server, name, args)
            if not result["is_error"]:
                seen.extend(v for _, v in leaves(value_of(result)))
        return {name: (rng.choice(seen) if seen else None) for name in task["answer"]}

    return random_policy


REWARDS = {"binary": binary_reward, "partial": partial_reward}


def evaluate(tasks: list[dict], simulator: Simulator, policies: dict[str, Callable], out_dir: Path, seed: int,
             k: int = 1, reward: str = "binary") -> dict:
    """Score each policy on ``tasks`` (pass@1: the mean ``reward`` over ``k`` samples; pass@k: a sample
    with reward > 0); returns the metrics table. ``reward``: ``binary`` (every field right) or
    ``partial`` (the fraction of fields right)."""
    if reward not in REWARDS:
        raise ValueError(f"eval.reward={reward!r}: choose from {', '.join(REWARDS)}")
    reward_fn = REWARDS[reward]
    table: dict[str, dict] = {}
    with JsonlWriter(Path(out_dir) / "episodes.jsonl", fsync=False) as out:  # complete once eval.json is written
        for pname, policy in policies.items():
            rewards, any_pass, n_calls, valid, field_acc = [], [], [], [], []
            by_calls: dict[int, list[float]] = {}
            # a policy with a ``batch`` method plays all tasks of a sample at once (LM policies: batched generation)
            batched = {}
            if hasattr(policy, "batch"):
                for sample in range(k):
                    episodes = [simulator.episode() for _ in tasks]
                    answers = policy.batch(tasks, episodes, [rng_for(seed, "eval", pname, t["id"], sample) for t in tasks])
                    batched.update({(t["id"], sample): (e, a) for t, e, a in zip(tasks, episodes, answers)})
            for task in tasks:
                sample_rewards = []
                for sample in range(k):
                    if batched:
                        episode, answer = batched[(task["id"], sample)]
                    else:
                        episode = simulator.episode()
                        answer = policy(task, episode, rng_for(seed, "eval", pname, task["id"], sample))
                    r = reward_fn(task, answer)
                    sample_rewards.append(r)
                    n_calls.append(len(episode.calls))
                    valid.extend(c["hit"] == "exact" and not c["is_error"] for c in episode.calls)
                    field_acc.append(partial_reward(task, answer))
                    out.write({"policy": pname, "task_id": task["id"], "sample": sample, "reward": r,
                               "answer": answer, "calls": episode.calls})
                rewards.append(sum(sample_rewards) / k)
                any_pass.append(float(max(sample_rewards) > 0))
                by_calls.setdefault(task["difficulty"]["calls"], []).append(sum(sample_rewards) / k)
            n = max(len(tasks), 1)
            table[pname] = {"pass@1": round(sum(rewards) / n, 4), f"pass@{k}": round(sum(any_pass) / n, 4),
                            "tool_call_validity": round(sum(valid) / max(len(valid), 1), 4),
                            "calls_per_task": round(sum(n_calls) / max(len(n_calls), 1), 3),
                            "field_accuracy": round(sum(field_acc) / max(len(field_acc), 1), 4),
                            **{f"pass@1.calls_{c}": round(sum(v) / len(v), 4) for c, v in sorted(by_calls.items())}}
    result = {"tasks": len(tasks), "k": k, "reward": reward, "policies": table, "simulator_hits": dict(simulator.counts)}
    write_json_atomic(Path(out_dir) / "eval.json", result)
    return result


def tool_schemas(tools_rows: list[dict]) -> dict[str, dict]:
    return {r["tool"]: json.loads(r["input_schema"]) for r in tools_rows}
