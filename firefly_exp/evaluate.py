"""Stage 7, evaluation: run policies on the held-out tasks inside the simulator, scored by ``eval.reward``.

A policy gets a task (question, answer schema, offered tools) and an :class:`~.simulator.Episode`
to call tools in; it returns an answer dict. The reward is a function of ``firefly_exp/rewards.py`` (or
a dotted path): ``binary`` (the default) is 1 when every answer field matches the label (see
:func:`~.results.answers_match`), ``partial`` the fraction of fields that do.

Policies here:
- ``gold``: replays the task's gold chain and reads each field at its provenance path. It must
  score 100%: anything less means the pipeline broke its own labels.
- ``random``: as many calls as the gold chain, each a random offered tool with arguments drawn at
  random from its schema, then answers each field with a random value seen in its results.
- ``lookup`` (:mod:`.lookup`): no planning: the offered tools most like the question (BM25), called with
  the values the question states, nothing passed between calls, each field answered by the result key
  most like its name. The gap between it and a trained policy is what a task needs beyond lookup.
- ``sft``, ``grpo``: the train stage's checkpoints (:class:`~.train.policy.LMPolicy`), when it ran.
- ``dspy_react``: ``dspy.ReAct`` over the simulated tools with the configured LM (``programs/react.py``).

:data:`POLICIES` maps each name in ``eval.policies`` to its factory (:func:`make_policies`).

Writes ``episodes.jsonl`` and ``eval.json``.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from . import lexical, lookup, rewards
from .lookup import make_lookup_policy
from .results import get_path, leaves, value_of
from .seeding import rng_for
from .settings import REWARDS_MODULE, EvalSettings, resolve
from .simulator import Episode, Simulator
from .stage import RunContext, Stage, StageResult
from .store import JsonlWriter, write_json_atomic


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


def evaluate(tasks: list[dict], simulator: Simulator, policies: dict[str, Callable], out_dir: Path, seed: int,
             settings: EvalSettings) -> dict:
    """Score each policy on ``tasks`` (pass@1: the mean ``settings.reward`` over ``settings.k`` samples;
    pass@k: a sample with reward > 0); returns the metrics table."""
    reward_fn = resolve(settings.reward, REWARDS_MODULE)
    k = settings.k
    table: dict[str, dict] = {}
    with JsonlWriter(Path(out_dir) / "episodes.jsonl", fsync=False) as out:  # complete once eval.json is written
        for pname, policy in policies.items():
            rows = []   # (task, sample, episode, answer, reward), task by task
            for task, sample, episode, answer in _play(pname, policy, tasks, simulator, seed, k):
                r = reward_fn(task, answer)
                rows.append((task, episode, answer, r))
                out.write({"policy": pname, "task_id": task["id"], "sample": sample, "reward": r,
                           "answer": answer, "calls": episode.calls})
            table[pname] = _row(rows, len(tasks), k)
    result = {"tasks": len(tasks), "k": k, "reward": settings.reward, "policies": table,
              "simulator_hits": dict(simulator.counts)}
    write_json_atomic(Path(out_dir) / "eval.json", result)
    return result


def _play(pname: str, policy: Callable, tasks: list[dict], simulator: Simulator, seed: int, k: int):
    """(task, sample, episode, answer) for every task and sample, task by task. A policy with a ``batch``
    method plays all tasks of a sample at once (LM policies: batched generation)."""
    batched = {}
    if hasattr(policy, "batch"):
        for sample in range(k):
            episodes = [simulator.episode() for _ in tasks]
            answers = policy.batch(tasks, episodes, [rng_for(seed, "eval", pname, t["id"], sample) for t in tasks])
            batched.update({(t["id"], sample): (e, a) for t, e, a in zip(tasks, episodes, answers)})
    for task in tasks:
        for sample in range(k):
            if batched:
                episode, answer = batched[(task["id"], sample)]
            else:
                episode = simulator.episode()
                answer = policy(task, episode, rng_for(seed, "eval", pname, task["id"], sample))
            yield task, sample, episode, answer


def _row(rows: list[tuple], n_tasks: int, k: int) -> dict:
    """One policy's line of the table from its (task, episode, answer, reward) rows, ``k`` per task in order."""
    rewards_, any_pass, by_calls = [], [], {}
    for i in range(0, len(rows), k):
        task, sample_rewards = rows[i][0], [r for *_, r in rows[i:i + k]]
        rewards_.append(sum(sample_rewards) / k)
        any_pass.append(float(max(sample_rewards) > 0))
        by_calls.setdefault(task["difficulty"]["calls"], []).append(sum(sample_rewards) / k)
    n_calls = [len(e.calls) for _, e, _, _ in rows]
    valid = [c["hit"] == "exact" and not c["is_error"] for _, e, _, _ in rows for c in e.calls]
    field_acc = [rewards.partial(t, a) for t, _, a, _ in rows]
    n = max(n_tasks, 1)
    return {"pass@1": round(sum(rewards_) / n, 4), f"pass@{k}": round(sum(any_pass) / n, 4),
            "tool_call_validity": round(sum(valid) / max(len(valid), 1), 4),
            "calls_per_task": round(sum(n_calls) / max(len(n_calls), 1), 3),
            "field_accuracy": round(sum(field_acc) / max(len(field_acc), 1), 4),
            **{f"pass@1.calls_{c}": round(sum(v) / len(v), 4) for c, v in sorted(by_calls.items())}}


def tool_schemas(tools_rows: list[dict]) -> dict[str, dict]:
    return {r["tool"]: json.loads(r["input_schema"]) for r in tools_rows}


def tool_descriptions(tools_rows: list[dict]) -> dict[str, str]:
    return {r["tool"]: r.get("description") or "" for r in tools_rows}


# -- the policies of eval.policies ----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInputs:
    """What a policy factory builds from: this run's context, the train stage's result (None when it was
    skipped), the evaluation simulator and the tools."""

    settings: EvalSettings
    ctx: RunContext
    train: Optional[StageResult]
    simulator: Simulator
    tool_schemas: dict[str, dict]
    descriptions: dict[str, str]

    @property
    def temperature(self) -> float:
        """LM policies sample only for pass@k (k > 1); one sample per task is greedy."""
        return float(self.settings.temperature) if self.settings.k > 1 else 0.0


def _available(inp: PolicyInputs) -> Optional[str]:
    return None


class PolicyFactory(NamedTuple):
    build: Callable[[PolicyInputs], Callable]                        # the policy
    missing: Callable[[PolicyInputs], Optional[str]] = _available    # why it cannot run in this run, or None


def _gold(inp: PolicyInputs) -> Callable:
    return gold_policy


def _random(inp: PolicyInputs) -> Callable:
    return make_random_policy(inp.tool_schemas)


def _lookup(inp: PolicyInputs) -> Callable:
    return make_lookup_policy(inp.tool_schemas, inp.descriptions)


def _sft(inp: PolicyInputs) -> Callable:
    return _trained(inp, "sft")


def _grpo(inp: PolicyInputs) -> Callable:
    return _trained(inp, "grpo")


def _trained(inp: PolicyInputs, checkpoint: str) -> Callable:
    """An LM policy from the train stage's ``sft/`` or ``grpo/`` checkpoint, prompted as it was trained."""
    from .train.policy import LMPolicy, ToolCatalog, load_policy, settings_from

    spec = inp.ctx.settings.train.policy
    model, tok = load_policy(Path(inp.train.folder) / checkpoint, spec.device)
    return LMPolicy(model, tok, inp.simulator, ToolCatalog(inp.tool_schemas, inp.descriptions),
                    settings_from(spec.plain()), inp.temperature)


def _dspy_react(inp: PolicyInputs) -> Callable:
    from programs.react import ReActPolicy

    return ReActPolicy(inp.ctx.lm, inp.simulator, inp.tool_schemas, inp.descriptions, temperature=inp.temperature)


def _needs_train(inp: PolicyInputs) -> Optional[str]:
    return None if inp.train is not None else "train=none"


def _needs_lm(inp: PolicyInputs) -> Optional[str]:
    return None if inp.ctx.lm is not None else "lm=none"


# eval.policies name -> factory; a new policy is a factory here plus its name in settings.EVAL_POLICIES
POLICIES: dict[str, PolicyFactory] = {
    "gold": PolicyFactory(_gold),
    "random": PolicyFactory(_random),
    "lookup": PolicyFactory(_lookup),
    "sft": PolicyFactory(_sft, _needs_train),
    "grpo": PolicyFactory(_grpo, _needs_train),
    "dspy_react": PolicyFactory(_dspy_react, _needs_lm),
}


def make_policies(settings: EvalSettings, ctx: RunContext, train_result: Optional[StageResult],
                  simulator: Simulator, tool_schemas: dict[str, dict],
                  descriptions: dict[str, str]) -> tuple[dict[str, Callable], dict[str, str]]:
    """The policies of ``settings.policies`` that can run here, in that order, and why each known policy that
    cannot is skipped (``train=none``, ``lm=none``)."""
    unknown = [p for p in settings.policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown eval policy {unknown}: choose from {', '.join(POLICIES)} (eval.policies)")
    inp = PolicyInputs(settings, ctx, train_result, simulator, tool_schemas, descriptions)
    if train_result is not None:   # the trained policies run on the threads their config asks for
        from .train.policy import set_threads

        set_threads(ctx.settings.train.policy.plain())
    skipped = {name: why for name, f in POLICIES.items() if (why := f.missing(inp)) is not None}
    built = {name: f.build(inp) for name, f in POLICIES.items() if name in settings.policies and name not in skipped}
    return {name: built[name] for name in settings.policies if name in built}, skipped


# -- the stage -------------------------------------------------------------------------------------------


def run(settings: EvalSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """Score ``eval.policies`` on the ``eval.split`` tasks in a fresh simulator; writes episodes.jsonl, eval.json."""
    held_out = [t for t in inputs["synthesizer"].value if t["split"] == settings.split]
    simulator = inputs["simulator"].value.make()
    rows = inputs["servers"].value.to_dicts()
    policies, skipped = make_policies(settings, ctx, inputs.get("train"), simulator, tool_schemas(rows),
                                      tool_descriptions(rows))
    return {**evaluate(held_out, simulator, policies, ctx.out, ctx.seed, settings), "skipped": skipped}


from .train import policy as _train_policy   # noqa: E402 - its source is in the address (LM policies); imports torch

STAGE = Stage("eval", run, inputs=("synthesizer", "simulator", "servers", "train"), artifacts=("eval.json",),
              params=lambda settings, ctx: {"seed": ctx.seed},
              code=(sys.modules[__name__], rewards, lookup, lexical, _train_policy))
