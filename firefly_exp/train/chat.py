"""The chat format a policy sees: Qwen/Hermes-style tool calls, rendered and parsed.

A task becomes a prompt (system + user) plus, for SFT, the gold turns::

    <|im_start|>system ... <tools>{"name": "sqlite__read_query", ...}</tools><|im_end|>
    <|im_start|>user <question><|im_end|>
    <|im_start|>assistant <tool_call>\\n{"name": "sqlite__read_query", "arguments": {...}}\\n</tool_call><|im_end|>
    <|im_start|>user <tool_response>\\n{...}\\n</tool_response><|im_end|>
    <|im_start|>assistant {"name": "Gadget"}<|im_end|>

The prompt goes through the tokenizer's own chat template (``apply_chat_template(messages, tools=...)``),
so a real model (Qwen3, Hermes, ...) sees its native format; the turns after it are appended as token
ids, exactly as the rollout builds them, so SFT and GRPO see the same tokens.

    >>> parse_tool_call('<tool_call>\\n{"name": "a__b", "arguments": {"x": 1}}\\n</tool_call>')
    ('a__b', {'x': 1})
    >>> final_answer('<tool_response>\\n1\\n</tool_response>assistant\\n{"n": 2}')
    {'n': 2}
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..results import value_of

SYSTEM = "You are a tool-calling assistant. Call the tools you need, then answer with a JSON object."
TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
THINK_RE = re.compile(r"<think>.*?</think>", re.S)


def tool_name(tool_id: str) -> str:
    """``server/tool`` -> ``server__tool`` (function names may not contain '/')."""
    return tool_id.replace("/", "__", 1)


def tool_functions(task: dict, schemas: dict[str, dict], mode: str = "schemas",
                   descriptions: dict[str, str] | None = None) -> list[dict]:
    """The task's offered tools in OpenAI function format; ``mode='names'`` keeps names only (short prompts
    for small CPU policies)."""
    out = []
    for tid in task["tools"]:
        fn: dict[str, Any] = {"name": tool_name(tid)}
        if mode == "schemas":
            fn["description"] = (descriptions or {}).get(tid, "")
            fn["parameters"] = schemas.get(tid, {"type": "object", "properties": {}})
        out.append({"type": "function", "function": fn})
    return out


def prompt_messages(task: dict) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task["question"]}]


def tool_response_text(result: dict, max_chars: int) -> str:
    """A tool result as the policy reads it: compact JSON of its value (or its text), at most ``max_chars``."""
    # JSON throughout, a bare string quoted too: a value reads the same here and in the answer
    text = json.dumps(value_of(result), ensure_ascii=False)
    if result.get("is_error"):
        text = "ERROR: " + text
    return text[:max_chars]


def call_text(name: str, arguments: Any) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def answer_text(answer: dict) -> str:
    return json.dumps(answer, ensure_ascii=False)


def tool_turn_text(response: str) -> str:
    """What follows an assistant turn that called a tool: the tool's turn, then the next assistant header
    (Qwen's layout: tool responses ride in a user turn)."""
    return f"\n<|im_start|>user\n<tool_response>\n{response}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def parse_tool_call(text: str) -> tuple[str, Any] | None:
    """The (name, arguments) of the first ``<tool_call>`` in ``text``; None when there is none.
    A malformed call gives ``("", <error message>)``."""
    text = THINK_RE.sub("", text)
    m = TOOL_CALL_RE.search(text)
    if m is None:
        return None
    try:
        call = json.loads(m.group(1))
        name, args = call["name"], call.get("arguments", {})
        if isinstance(args, str):
            args = json.loads(args)
        return str(name), args
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return "", f"malformed tool call: {exc}"


def final_answer(text: str) -> dict | None:
    """The JSON object a completion ends with (after its last tool response); None when it has none."""
    tail = THINK_RE.sub("", text.rsplit("</tool_response>", 1)[-1])
    if "<tool_call>" in tail:
        return None
    start = tail.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(tail[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def question_order(task: dict) -> dict:
    """The task's answer with its fields in the order the question asks for them (the stored answer is
    sorted by name): a policy then writes the fields as it reads them, copying each name in turn.

    >>> question_order({"question": 'Give "name" (string): ...; "city" (string): ...', "answer": {"city": "Oslo", "name": "Chen"}})
    {'name': 'Chen', 'city': 'Oslo'}
    """
    question = task["question"]

    def place(name: str) -> int:
        for needle in (json.dumps(name) + " (", json.dumps(name), name):   # the template's form first
            at = question.find(needle)
            if at >= 0:
                return at
        return len(question)

    return {name: task["answer"][name] for name in sorted(task["answer"], key=place)}


def gold_turns(task: dict, max_response_chars: int) -> list[tuple[str, bool]]:
    """The gold trajectory after the prompt as (text, is_model_output) pieces."""
    pieces: list[tuple[str, bool]] = []
    for call, result in zip(task["gold_calls"], task["gold_results"]):
        pieces.append((call_text(tool_name(f"{call['server']}/{call['tool']}"), call["arguments"]) + "<|im_end|>",
                       True))
        pieces.append((tool_turn_text(tool_response_text(result, max_response_chars)), False))
    pieces.append((answer_text(question_order(task)) + "<|im_end|>", True))
    return pieces
