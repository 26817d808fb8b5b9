"""The train stage: chat format, rewards, policy configs, GRPO inside the simulator, the DSPy ReAct baseline."""

import json

import polars as pl
import pytest
import torch
from dspy.utils import DummyLM
from omegaconf import OmegaConf

from firefly_exp.evaluate import evaluate
from firefly_exp.simulator import Simulator
from firefly_exp.train import chat, rewards, train_policy
from firefly_exp.train.policy import LMPolicy, load_policy, settings_from

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


def test_chat_format_round_trips_calls_and_answers():
    text = chat.call_text("kv__get", {"key": "k1"})
    assert chat.parse_tool_call(text) == ("kv__get", {"key": "k1"})
    assert chat.parse_tool_call("<tool_call>{oops</tool_call>")[0] == ""
    assert chat.final_answer(text + chat.tool_turn_text('{"value": "v7"}') + '{"value": "v7"}') == {"value": "v7"}
    assert chat.final_answer(text) is None


def test_rewards_are_selectable_and_combinable():
    funcs, weights = rewards.reward_functions({"binary": 1.0, "format": 0.1, "partial": 0})
    assert [f.__name__ for f in funcs] == ["binary", "format_reward"] and weights == [1.0, 0.1]
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.reward_functions({"bogus": 1.0})


def test_grpo_trains_the_tiny_policy_inside_the_simulator(tmp_path):
    tools, calls, tasks = _kv()
    sims = []

    def make_sim():
        sims.append(Simulator.from_calls(calls, tools))
        return sims[-1]

    torch.set_grad_enabled(False)   # as the embeddings stage leaves it in a pipeline run: training must not care
    try:
        m = train_policy(tasks, make_sim, {"kv/get": KV_SCHEMA}, {"kv/get": "read a key"}, tmp_path, 0, TINY,
                         {"epochs": 40, "lr": 1e-2, "batch_size": 9},
                         {"steps": 2, "group_size": 4, "prompts_per_step": 2, "lr": 1e-3, "kl_coef": 0.0},
                         {"binary": 1.0, "format": 0.1}, curve_every=1)
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
    assert json.loads((tmp_path / "grpo" / "meta.json").read_text())["stage"] == "grpo"
    # the trained policy is an evaluation policy like the others
    model, tok = load_policy(tmp_path / "grpo")
    test = [t for t in tasks if t["split"] == "test"]
    sim = Simulator.from_calls(calls, tools)
    table = evaluate(test, sim, {"grpo": LMPolicy(model, tok, sim, {"kv/get": KV_SCHEMA}, settings_from(TINY))},
                     tmp_path / "eval", 0, 1)["policies"]["grpo"]
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
    table = evaluate([task], sim, {"dspy_react": ReActPolicy(lm, sim, {"kv/get": KV_SCHEMA}, {})}, tmp_path, 0, 1)
    assert table["policies"]["dspy_react"]["pass@1"] == 1.0 and sim.counts["exact"] == 1
