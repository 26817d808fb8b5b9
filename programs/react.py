"""The LM baseline: an LM configured with ``lm=...`` answers held-out tasks through ``dspy.ReAct`` over the
same simulated tools the trained policies use (one ``dspy.Tool`` per offered tool, each a call into the
replay simulator's episode)."""

from __future__ import annotations

import json
import random
from typing import Any

import dspy

from firefly_exp.simulator.env import ToolEnvironment
from firefly_exp.train.chat import final_answer, tool_name


class AnswerWithTools(dspy.Signature):
    """Complete the task by calling the tools it asks for, then answer with a JSON object that holds exactly
    the requested fields, their values quoted from the tool results."""

    question: str = dspy.InputField()
    answer_json: str = dspy.OutputField(desc="a JSON object with the requested fields")


def simulated_tool(env: ToolEnvironment, tool_id: str, schema: dict, description: str) -> dspy.Tool:
    name = tool_name(tool_id)

    def call(**arguments: Any) -> str:
        return env.call_tool(name, arguments)

    return dspy.Tool(call, name=name, desc=description or name, args=(schema or {}).get("properties") or {})


class ReActPolicy:
    """``evaluate.evaluate``'s ``policy(task, episode, rng)`` backed by ``dspy.ReAct`` and an LM."""

    def __init__(self, lm: Any, simulator, schemas: dict[str, dict], descriptions: dict[str, str],
                 max_iters: int = 8, temperature: float = 0.0):
        self.lm, self.sim, self.schemas, self.descriptions = lm, simulator, schemas, descriptions
        self.max_iters, self.temperature = max_iters, temperature

    def __call__(self, task: dict, episode, rng: random.Random) -> dict:
        env = ToolEnvironment(self.sim, max_calls=self.max_iters)
        env.reset(tools=task["tools"])
        env.episode = episode
        tools = [simulated_tool(env, t, self.schemas.get(t, {}), self.descriptions.get(t, "")) for t in task["tools"]]
        react = dspy.ReAct(AnswerWithTools, tools=tools, max_iters=self.max_iters)
        config = {"rollout_id": rng.randrange(2 ** 31)}   # each sample its own call (DSPy caches identical ones)
        if self.temperature:
            config["temperature"] = self.temperature
        with dspy.context(lm=self.lm):
            pred = react(question=task["question"], config=config)
        try:
            answer = json.loads(pred.answer_json)
        except (json.JSONDecodeError, TypeError):
            answer = final_answer(str(pred.answer_json))
        return answer if isinstance(answer, dict) else {}
