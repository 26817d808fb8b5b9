"""More SFT examples from the train split's own recorded calls: ask for other fields of the same outputs.

A train task's gold chain recorded more than the few fields its question asks for. For every prefix of
the chain that ends in a successful call, :func:`field_variants` writes up to ``per_call`` new questions
in the synthesizer's template wording (``synthesizer.template_question``, arguments written out), each
asking for other fields of that last call's output; the answer is read from the recorded output by its
path, as the synthesizer does. Nothing here sees the held-out split: the inputs are train tasks only.

    >>> task = {"id": "t", "tools": ["kv/get"], "split": "train", "answer": {"value": "v1"},
    ...         "gold_calls": [{"server": "kv", "tool": "get", "arguments": {"key": "k1"}}],
    ...         "gold_results": [{"content": [], "structured": {"value": "v1", "size": 2}, "is_error": False}]}
    >>> [v["answer"] for v in field_variants([task], {"kv/get": "Read a key."}, per_call=2, max_fields=1, seed=0)]
    [{'size': 2}]
"""

from __future__ import annotations

import json

from ..answers import candidate_fields, leaks as _leaks
from ..results import field_name, json_type, value_of
from ..seeding import rng_for
from ..synthesizer import field_description, template_question
from .chat import tool_response_text


# the longest value a variant asks for: synthesizer.max_value_len's value in conf/synthesizer/template.yaml
MAX_VALUE_LEN = 80


def field_variants(tasks: list[dict], descriptions: dict[str, str], per_call: int = 4, max_fields: int = 2,
                   max_response_chars: int = 300, seed: int = 0) -> list[dict]:
    """New train tasks from ``tasks``' gold chains (see the module docstring); none repeats an answer asked
    already for the same calls, and every asked value is visible in the tool response the policy reads
    (cut to ``max_response_chars``)."""
    if per_call <= 0:
        return []
    tools = {tid: {"description": d} for tid, d in descriptions.items()}
    seen = {_key(t["gold_calls"], t["answer"]) for t in tasks}
    out: list[dict] = []
    for t in tasks:
        for j, result in enumerate(t["gold_results"]):
            if result.get("is_error"):
                continue
            calls = [{"server": c["server"], "tool": c["tool"], "arguments": c["arguments"]}
                     for c in t["gold_calls"][:j + 1]]
            if any(f"{c['server']}/{c['tool']}" not in tools for c in calls):
                continue
            shown = tool_response_text(result, max_response_chars)
            given = json.dumps([c["arguments"] for c in calls], ensure_ascii=False, default=str)
            # a field that repeats in the result (rows of a table) is asked for by its place as well
            # (synthesizer.field_description)
            cands = [(p, v) for p, v in candidate_fields(value_of(result), MAX_VALUE_LEN)
                     if json.dumps(v, ensure_ascii=False) in shown and not _leaks(v, given)]
            rng = rng_for(seed, "sft-variants", t["id"], j)
            for i in range(per_call):
                if not cands:
                    break
                fields, answer = _pick_fields(cands, result, calls, j + 1, max_fields, rng)
                key = _key(calls, answer)
                if key in seen:
                    continue
                seen.add(key)
                question = template_question(calls, tools, fields, rng)
                if any(_leaks(v, question) for v in answer.values()):
                    continue
                out.append({"id": f"{t['id']}-v{j}.{i}", "question": question, "answer": answer,
                            "answer_schema": fields, "gold_calls": calls, "gold_results": t["gold_results"][:j + 1],
                            "tools": t["tools"], "split": t["split"]})
    return out


def _pick_fields(cands: list[tuple], result: dict, calls: list[dict], step: int, max_fields: int,
                 rng) -> tuple[dict, dict]:
    """1..``max_fields`` of the candidate (path, value) pairs of ``result`` (the output of call ``step``, 1-based):
    the answer schema (each field named and described as the synthesizer does) and the answer."""
    picks = rng.sample(cands, min(len(cands), rng.randint(1, max_fields)))
    fields, answer, taken = {}, {}, set()
    for path, value in picks:
        name = field_name(path or calls[-1]["tool"] + "_result", taken)
        taken.add(name)
        fields[name] = {"type": json_type(value),
                        "description": field_description(value_of(result), path, calls[-1]["tool"], step)}
        answer[name] = value
    return fields, answer


def _key(calls: list[dict], answer: dict) -> str:
    return json.dumps([[[c["server"], c["tool"], c["arguments"]] for c in calls], answer], sort_keys=True,
                      default=str)
