"""The train stage: chat format, rewards, policy configs, GRPO inside the simulator, the DSPy ReAct baseline."""

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from dspy.utils import DummyLM
from omegaconf import OmegaConf

from firefly_exp.evaluate import evaluate
from firefly_exp.settings import EvalSettings, TrainSettings
from firefly_exp.simulator import Simulator
from firefly_exp.train import chat, rewards, train_policy
from firefly_exp.train.policy import LMPolicy, ToolCatalog, load_policy, settings_from

KV_SCHEMA = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}


def _kv():
    """A replay cache of a tiny key-value server: get(key) -> {"value": ...}, and tasks over it."""
    tools = pl.DataFrame([{"tool": "kv/get", "server": "kv", "read_only": True, "input_schema": json.dumps(KV_SCHEMA),
                           "description": "read a key"}])
    values = {f"k{i}": f"v{i * 7 % 10}" for i in range(12)}
    calls, tasks = [], []
    for i, (key, value) in enumerate(values.items()):
        result = {"content": [{"type": "text", "text": json.dumps({"value": value})}], "structured": None,
                  "is_error": False}
        calls.append({"server": "kv", "tool": "get", "arguments": {"key": key}, "fingerprint": "seed", **result})
        tasks.append({"id": f"t{i}", "question": f'Step 1: call get with key="{key}". Answer with value.',
                      "answer": {"value": value}, "answer_schema": {"value": {"type": "string"}},
                      "gold_calls": [{"server": "kv", "tool": "get", "arguments": {"key": key}}],
                      "gold_results": [result], "provenance": {"value": {"step": 0, "path": "value"}},
                      "tools": ["kv/get"], "difficulty": {"calls": 1}, "split": "train" if i < 9 else "test"})
    return tools, calls, tasks


TINY = {"kind": "tiny", "vocab_size": 400, "hidden_size": 48, "intermediate_size": 96, "layers": 1, "heads": 2,
        "max_seq_len": 256, "device": "cpu", "threads": 1, "tools_in_prompt": "names", "max_turns": 3, "max_new_tokens": 40,
        "max_response_chars": 100}
KV_CATALOG = ToolCatalog({"kv/get": KV_SCHEMA}, {"kv/get": "read a key"})
GRPO = {"steps": 2, "group_size": 4, "prompts_per_step": 2, "num_iterations": 1, "lr": 1e-3, "kl_coef": 0.0,
        "temperature": 1.0, "loss_type": "dapo", "scale_rewards": "group", "bf16": False,
        "gradient_checkpointing": False}


def train_settings(**over) -> TrainSettings:
    """Small train settings over the kv tasks (``over`` replaces whole groups)."""
    return TrainSettings(**{"enabled": True, "seed": 0, "policy": TINY,
                            "sft": {"epochs": 40, "lr": 1e-2, "batch_size": 9, "variants_per_call": 0,
                                    "variant_max_fields": 2},
                            "grpo": GRPO, "rewards": {"binary": 1.0, "format": 0.1},
                            "curve": {"every": 1, "split": "test", "max_tasks": 64}, **over})


def test_chat_format_round_trips_calls_and_answers():
    text = chat.call_text("kv__get", {"key": "k1"})
    assert chat.parse_tool_call(text) == ("kv__get", {"key": "k1"})
    assert chat.parse_tool_call("<tool_call>{oops</tool_call>")[0] == ""
    assert chat.final_answer(text + chat.tool_turn_text('{"value": "v7"}') + '{"value": "v7"}') == {"value": "v7"}
    assert chat.final_answer(text) is None


def test_rewards_are_selectable_and_combinable():
    funcs, weights = rewards.reward_functions({"binary": 1.0, "format": 0.1, "partial": 0})
    assert [f.__name__ for f in funcs] == ["binary", "format_reward"] and weights == [1.0, 0.1]
    with pytest.raises(ValueError, match="no reward named 'bogus'; choose from binary, partial, format"):
        rewards.reward_functions({"bogus": 1.0})
    # a reward of this module, by dotted path, in TRL's form: the labelled answer comes from the dataset column
    funcs, _ = rewards.reward_functions({f"{__name__}.half_or_nothing": 1.0})
    assert funcs[0].__name__ == "half_or_nothing"
    assert funcs[0](['{"value": "v1"}', "no answer"], answer=['{"value": "v1"}'] * 2) == [0.5, 0.0]


def half_or_nothing(task: dict, answer: dict | None, text: str = "") -> float:
    """A reward outside firefly_exp/rewards.py: 0.5 for any answer."""
    return 0.5 if answer is not None else 0.0


def test_reward_settings_name_functions(config):
    from pydantic import ValidationError

    def group(name, *overrides):   # one config group as its settings model
        return OmegaConf.to_container(config("train=grpo", *overrides)[name], resolve=True)

    train = TrainSettings(**group("train"))
    assert train.rewards == {"binary": 1.0, "partial": 0.5, "format": 0.0}
    assert EvalSettings(**group("eval")).reward == "binary"
    assert EvalSettings(policies=["gold"], reward=f"{__name__}.half_or_nothing").reward.endswith("half_or_nothing")
    with pytest.raises(ValidationError, match="no reward named 'strict'; choose from binary, partial, format"):
        EvalSettings(**group("eval", "eval.reward=strict"))
    with pytest.raises(ValidationError, match="no reward named 'exact'"):
        TrainSettings(**group("train", "+train.rewards.exact=1.0"))
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        TrainSettings(**group("train", "train.rewards.binary=-1"))
    # the whole policy config is in the train stage's address, its kind-specific keys too; `enabled` is not
    params = train.store_params()
    assert "enabled" not in params and params["policy"]["hidden_size"] == 128 and params["rewards"]["partial"] == 0.5


def test_a_reward_named_by_dotted_path_scores_the_evaluation(tmp_path):
    from firefly_exp.evaluate import gold_policy

    tools, calls, tasks = _kv()
    sim = Simulator.from_calls(calls, tools)
    settings = EvalSettings(policies=["gold"], reward=f"{__name__}.half_or_nothing", k=2)
    out = evaluate(tasks[:3], sim, {"gold": gold_policy}, tmp_path, 0, settings)
    gold = out["policies"]["gold"]
    assert out["reward"] == f"{__name__}.half_or_nothing" and gold["pass@1"] == 0.5 and gold["pass@2"] == 1.0
    assert gold["field_accuracy"] == 1.0     # the field accuracy stays the partial reward
    episodes = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert [e["reward"] for e in episodes] == [0.5] * 6


def test_grpo_trains_the_tiny_policy_inside_the_simulator(tmp_path):
    tools, calls, tasks = _kv()
    sims = []

    def make_sim():
        sims.append(Simulator.from_calls(calls, tools))
        return sims[-1]

    torch.set_grad_enabled(False)   # as the embeddings stage leaves it in a pipeline run: training must not care
    try:
        m = train_policy(tasks, make_sim, KV_CATALOG, train_settings(), tmp_path)
    finally:
        torch.set_grad_enabled(True)
    assert m["grpo"]["steps"] == 2 and m["grpo"]["weights_delta_l2"] > 0
    sft_w = load_policy(tmp_path / "sft")[0].state_dict()
    grpo_w = load_policy(tmp_path / "grpo")[0].state_dict()
    assert any(not torch.equal(sft_w[k], grpo_w[k]) for k in sft_w)          # GRPO moved the weights
    # the rewards came from episodes in the simulator: its recorded results answered the calls
    episodes = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(episodes) == m["grpo"]["episodes"] == 2 * 4 * 2
    assert sims[0].counts["exact"] > 0 and m["grpo"]["simulator_hits"]["exact"] == sims[0].counts["exact"]
    replayed = [(e, r) for e in episodes for c, r in zip(e["calls"], e["tool_responses"]) if c["hit"] == "exact"]
    recorded = {json.dumps({"value": v}) for v in {t["answer"]["value"] for t in tasks}}
    assert replayed and all(r in recorded for _, r in replayed)
    for e in episodes:   # each logged reward is the binary reward of that episode's answer
        gold = next(t for t in tasks if t["id"] == e["task_id"])["answer"]
        assert e["reward_binary"] == float(e["answer"] == gold or (e["answer"] or {}).get("value") == gold["value"])
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert len(curves["reward"]) == 2 and curves["pass1_step"] == [0, 1, 2]
    # TRL received non-zero rewards, and each step's logged binary mean is that of the step's simulated episodes
    assert max(curves["reward_binary"]) > 0
    for step, logged in zip(curves["step"], curves["reward_binary"]):
        mine = [e["reward_binary"] for e in episodes if e["step"] == step - 1]
        assert len(mine) == 8 and logged == pytest.approx(sum(mine) / len(mine), abs=1e-4)
    assert (tmp_path / "curves.png").stat().st_size > 0
    meta = json.loads((tmp_path / "grpo" / "meta.json").read_text())
    assert meta["stage"] == "grpo" and meta["policy"]["hidden_size"] == 48 and meta["rewards"]["format"] == 0.1
    assert curves["reward_format_reward"]   # each reward's curve, by its function name
    # the trained policy is an evaluation policy like the others
    model, tok = load_policy(tmp_path / "grpo")
    test = [t for t in tasks if t["split"] == "test"]
    sim = Simulator.from_calls(calls, tools)
    table = evaluate(test, sim, {"grpo": LMPolicy(model, tok, sim, KV_CATALOG, settings_from(TINY))},
                     tmp_path / "eval", 0, EvalSettings(policies=["grpo"]))["policies"]["grpo"]
    assert 0.0 <= table["pass@1"] <= 1.0 and table["calls_per_task"] > 0


def test_policy_configs_compose_and_validate(config):
    """Every conf/train/policy entry composes under train=grpo and names what build_policy needs (no weights)."""
    from firefly_exp import PROJECT_ROOT
    from firefly_exp.train.policy import PolicySettings

    for path in sorted((PROJECT_ROOT / "conf/train/policy").glob("*.yaml")):
        cfg = OmegaConf.to_container(config("train=grpo", f"train/policy={path.stem}"), resolve=True)
        p = cfg["train"]["policy"]
        assert cfg["train"]["enabled"] and p["kind"] in ("tiny", "hf")
        settings_from(p)
        assert set(p) - {"kind", "name_or_path", "dtype", "device", "threads", "attn_implementation", "vocab_size",
                         "hidden_size", "intermediate_size", "layers", "heads"} <= set(PolicySettings.__dataclass_fields__)
        if p["kind"] == "hf":
            assert isinstance(getattr(torch, p["dtype"]), torch.dtype) and p["name_or_path"]
    qwen = OmegaConf.to_container(config("train=grpo", "train/policy=qwen3_4b"), resolve=True)["train"]["policy"]
    assert qwen["name_or_path"] == "Qwen/Qwen3-4B" and qwen["dtype"] == "bfloat16" and qwen["device"] == "cuda"
    assert qwen["tools_in_prompt"] == "schemas" and qwen["chat_template_kwargs"] == {"enable_thinking": False}


def test_dspy_react_baseline_calls_the_simulated_tools(tmp_path):
    from programs.react import ReActPolicy

    tools, calls, tasks = _kv()
    sim = Simulator.from_calls(calls, tools)
    task = tasks[9]
    lm = DummyLM([{"next_thought": "read it", "next_tool_name": "kv__get", "next_tool_args": {"key": "k9"}},
                  {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
                  {"reasoning": "the tool said so", "answer_json": json.dumps(task["answer"])}])
    table = evaluate([task], sim, {"dspy_react": ReActPolicy(lm, sim, {"kv/get": KV_SCHEMA}, {})}, tmp_path, 0,
                     EvalSettings(policies=["dspy_react"]))
    assert table["policies"]["dspy_react"]["pass@1"] == 1.0 and sim.counts["exact"] == 1


class _SimulatorFactory:
    """What the simulator stage's ``load`` gives later stages: ``make()`` builds a fresh simulator."""

    def __init__(self, calls, tools):
        self.calls, self.tools = calls, tools

    def make(self) -> Simulator:
        return Simulator.from_calls(self.calls, self.tools)


def _inputs(**more):
    from firefly_exp.stage import StageResult

    tools, calls, tasks = _kv()
    values = {"synthesizer": tasks, "simulator": _SimulatorFactory(calls, tools), "servers": tools}
    return {**{name: StageResult(name, "k", Path("."), {}, False, 0.0, v) for name, v in values.items()}, **more}


def test_train_and_eval_stage_builders(tmp_path):
    """The train builder trains from its inputs (SFT only here), the eval builder scores the checkpoints."""
    from types import SimpleNamespace

    from firefly_exp import evaluate as evaluate_mod, train
    from firefly_exp.stage import StageResult

    assert train.STAGE.skip(SimpleNamespace(train=SimpleNamespace(enabled=False))) == "train=none"
    assert train.STAGE.skip(SimpleNamespace(train=SimpleNamespace(enabled=True))) is None
    settings = train_settings(sft={"epochs": 2, "lr": 1e-2, "batch_size": 9, "variants_per_call": 0,
                                   "variant_max_fields": 2}, grpo={**GRPO, "steps": 0})
    m = train.STAGE.run(settings, _inputs(), SimpleNamespace(out=tmp_path / "train"))
    assert m["train_tasks"] == 9 and m["sft"]["epochs"] == 2 and m["grpo"]["steps"] == 0
    assert {"sft", "grpo"} <= {p.name for p in (tmp_path / "train").iterdir()}

    trained = StageResult("train", "k", tmp_path / "train", m, False, 0.0, tmp_path / "train")
    ctx = SimpleNamespace(out=tmp_path / "eval", seed=0, lm=None, settings=SimpleNamespace(train=settings))
    ev = EvalSettings(policies=["grpo", "gold", "dspy_react", "sft"])
    out = evaluate_mod.STAGE.run(ev, _inputs(train=trained), ctx)
    assert list(out["policies"]) == ["grpo", "gold", "sft"] and out["skipped"] == {"dspy_react": "lm=none"}
    assert out["policies"]["gold"]["pass@1"] == 1.0 and out["tasks"] == 3
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["policies"] == out["policies"]
    # without a train stage the trained policies are skipped, and every unavailable one is named
    out = evaluate_mod.STAGE.run(EvalSettings(policies=["random", "gold"]), _inputs(),
                                 SimpleNamespace(**{**vars(ctx), "out": tmp_path / "eval2"}))
    assert list(out["policies"]) == ["random", "gold"]
    assert out["skipped"] == {"sft": "train=none", "grpo": "train=none", "dspy_react": "lm=none"}


def test_every_eval_policy_name_has_a_factory():
    from firefly_exp import evaluate as evaluate_mod
    from firefly_exp.settings import EVAL_POLICIES

    assert tuple(evaluate_mod.POLICIES) == EVAL_POLICIES
    assert EvalSettings.model_fields["policies"].annotation.__args__[0].__args__ == EVAL_POLICIES
