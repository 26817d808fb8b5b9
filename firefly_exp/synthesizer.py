"""Stage 5, synthesizer: backward task synthesis from recorded trajectories, then verification.

From what a trajectory observed, write a task (the question), an answer schema (named, typed
fields) and the answer values, taken from recorded outputs, so the label is correct by
construction. Field selection is always done here from recorded outputs; only the wording of the
question may come from an LM:

- ``template`` (offline default): the question is assembled from phrase templates, naming the
  given arguments and saying which earlier result feeds which later argument;
- ``dspy``: the DSPy program ``programs.synthesizer.TaskWriter`` words the question with the
  configured LM (checked for leaked answers like the template's).

Verification keeps a task only if (1) every answer value is found at its provenance (call, path)
in a recorded output, (2) its gold chain replays in the simulator to identical outputs and the
answer read from the replay equals the label, (3) it is not a duplicate (same wording and answer,
or same gold chain and answer). Then, by config: the LM judge (with an LM), live re-execution for
volatile fields (``determinism``), near-duplicate removal (embedding cosine of the questions), and
the split (``random`` by DAG, ``held_out_tools``, ``held_out_servers``). Writes ``tasks.jsonl``;
``dataset.py`` exports them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .observed import SOURCE
from .results import answers_match, field_name, get_path, json_type, leaves, normalise, value_of
from .sampler import rng_for
from .simulator import Simulator
from .store import stable_hash, write_jsonl

INTROS = ["Using the available tools, do the following.", "Work through these steps with the tools provided.",
          "You have access to several tools. Complete this task.", "Please carry out this workflow."]
STEP_FORMS = ["Step {n}: call {tool} ({desc}){args}.", "Step {n}: use {tool} to {desc_lc}{args}.",
              "{n}. Run {tool}{args} ({desc_lc})."]
ASK_FORMS = ["Answer with a JSON object with the fields: {fields}.",
             "Report the result as JSON with these fields: {fields}.",
             "Return a JSON object containing {fields}."]
# more wording per DAG shape (one call / a chain of calls) and per answer type (all fields of one type)
SHAPE_INTROS = {"single": ["Look this up with the tools available.", "One tool call answers this."],
                "chain": ["Each step below uses what the earlier ones returned; do them in order.",
                          "This takes several tool calls in sequence."]}
TYPE_ASKS = {"number": ["Give the numbers as a JSON object with {fields}.",
                        "Reply with JSON holding these numeric values: {fields}."],
             "boolean": ["Say, as a JSON object of true/false values, {fields}."],
             "string": ["Quote the values exactly, as a JSON object with {fields}.",
                        "Reply with a JSON object whose text fields are {fields}."]}


def _describe(desc: str) -> str:
    first = (desc or "").split(". ")[0].strip().rstrip(".")
    return (first[:110] + "...") if len(first) > 110 else first or "no description"


def _arg_text(call: dict, steps_by_seq: dict[int, int]) -> str:
    parts = []
    for name, value in call["arguments"].items():
        src = (call.get("arg_sources") or {}).get(name, "")
        if src.startswith(("edge:", "pool:")):
            _, step, path = src.split(":", 2)
            where = f"{describe_path(path)} in the result" if path else "the result"
            parts.append(f"{name} set to {where} of step {int(step) + 1}")
        else:
            parts.append(f"{name}={json.dumps(value, ensure_ascii=False)}")
    return (" with " + ", ".join(parts)) if parts else ""


def describe_path(path: str) -> str:
    """Where in a result a value sits, unambiguously.

    >>> describe_path("rows.2.name"), describe_path("0")
    ('the value at rows[2].name', 'the value at [0]')
    """
    return f"the value at {path_text(path)}"


def path_text(path: str) -> str:
    """A leaf path as written in questions: ``rows.2.name`` -> ``rows[2].name``."""
    out = ""
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def field_description(result_value: Any, path: str, tool: str, step: int) -> str:
    """How a question names an answer field: by its key, and by its place too when the result holds that
    key more than once with different values (rows of a table, nested objects), so the label is the only
    right answer.

    >>> rows = [{"name": "orders"}, {"name": "customers"}]
    >>> field_description(rows, "1.name", "list_tables", 1)
    'the name at [1].name returned by list_tables in step 1'
    >>> field_description({"n": 3}, "n", "count", 2)
    'the n returned by count in step 2'
    """
    values = {json.dumps(v, sort_keys=True, default=str) for p, v in leaves(result_value) if path_key(p) == path_key(path)}
    where = f" at {path_text(path)}" if path and len(values) > 1 else ""
    return f"the {path_key(path) or 'result'}{where} returned by {tool} in step {step}"


def path_key(path: str) -> str:
    """The key a leaf path ends in; "" for the whole result or an element of a list.

    >>> path_key("rows.2.name"), path_key("rows.2"), path_key("")
    ('name', '', '')
    """
    last = path.split(".")[-1]
    return "" if last.isdigit() else last


def candidate_fields(value: Any, max_len: int) -> list[tuple[str, Any]]:
    out = []
    for path, v in leaves(value):
        if v is None or isinstance(v, (dict, list)):
            continue
        if isinstance(v, str):
            s = v.strip()
            if not s or len(s) > max_len or "\n" in s:
                continue
        out.append((path, v))
    return out


def _leaks(value: Any, question: str, strict: bool = False) -> bool:
    """Whether ``value`` can be read off the question. ``strict`` (for values passed along the chain)
    ignores small integers, which the question's step numbers would match."""
    text = normalise(question)
    v = normalise(value)
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, float):
        if strict and v.is_integer() and abs(v) < 10:
            return False
        numbers = {float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", question)}
        return v in numbers
    return len(v) >= 3 and v in text


def answer_fields(call: dict, volatile: bool, max_value_len: int = 80, given: str | None = None) -> list[tuple[str, Any]]:
    """The (path, value) leaves of a call's result that can be answer fields: not from a failed call or a
    volatile tool, short scalars, and not an echo of an argument (``given``: the arguments' JSON, by
    default this call's own), which the question would give away."""
    if volatile or call["is_error"]:
        return []
    if given is None:
        given = json.dumps(call["arguments"], ensure_ascii=False, default=str)
    return [(p, v) for p, v in candidate_fields(value_of(call), max_value_len) if not _leaks(v, given)]


SINGLE_CALL = ("fallback", "always", "never")


def data_dependencies(gold: list[dict]) -> list[set[int]]:
    """Per call (by position), the earlier calls whose outputs fed its arguments (``arg_sources``).

    >>> data_dependencies([{"step": 0, "arg_sources": {}}, {"step": 1, "arg_sources": {"q": "hint"}},
    ...                    {"step": 2, "arg_sources": {"path": "edge:0:files.0.path", "n": "pool:1:count"}}])
    [set(), set(), {0, 1}]
    """
    position = {c.get("step", i): i for i, c in enumerate(gold)}
    out = []
    for i, c in enumerate(gold):
        deps = set()
        for src in (c.get("arg_sources") or {}).values():
            m = SOURCE.match(str(src))
            j = position.get(int(m.group(2))) if m else None
            if j is not None and j < i:
                deps.add(j)
        out.append(deps)
    return out


def volatile_steps(gold: list[dict], tools: dict) -> list[bool]:
    """Per call (by position), whether what it returned may change from run to run: its tool is
    volatile (a clock, fresh ids), an argument came from such a call, or an earlier such call changed
    state. A gold chain holding one would differ between two runs of one seed (its arguments, results).

    >>> tools = {"s/now": {"volatile": True, "read_only": True}, "s/add": {"volatile": False, "read_only": True},
    ...          "s/put": {"volatile": False, "read_only": False}}
    >>> call = lambda t, src=None: {"server": "s", "tool": t, "arg_sources": {"x": src} if src else {}}
    >>> volatile_steps([call("now"), call("add"), call("add", "edge:0:time")], tools)
    [True, False, True]
    >>> volatile_steps([call("now"), call("put", "pool:0:time"), call("add")], tools)   # a clock-derived write
    [True, True, True]
    """
    direct = data_dependencies(gold)
    out: list[bool] = []
    for i, c in enumerate(gold):
        row = tools[f"{c['server']}/{c['tool']}"]
        out.append(bool(row.get("volatile")) or any(out[j] for j in direct[i]) or
                   any(out[j] and not tools[f"{gold[j]['server']}/{gold[j]['tool']}"]["read_only"] for j in range(i)))
    return out


def _ancestors(direct: list[set[int]]) -> list[set[int]]:
    anc: list[set[int]] = []
    for deps in direct:
        a = set(deps)
        for j in deps:
            a |= anc[j]
        anc.append(a)
    return anc


def task_variants(gold_full: list[dict], informative: list[int], tools: dict, require_chain: bool = True,
                  single_call: str = "fallback") -> list[tuple[list[int], list[int]]]:
    """The questions a trajectory supports, best first: (steps the answer fields come from, the
    positions of the calls making up the gold chain).

    With ``require_chain``, the chain is the answer calls, their data ancestors and the successful
    state-changing calls before them (the state the answers were read in), and a multi-step
    variant exists only where an answer call received a value from an earlier call. Without it, the
    chain is the whole prefix up to the last answer call (the older behaviour).

    >>> calls = [{"step": 0, "server": "s", "tool": "list", "is_error": False, "arg_sources": {}},
    ...          {"step": 1, "server": "s", "tool": "stat", "is_error": False, "arg_sources": {}},
    ...          {"step": 2, "server": "s", "tool": "read", "is_error": False, "arg_sources": {"p": "edge:0:x"}}]
    >>> tools = {"s/list": {"read_only": True}, "s/stat": {"read_only": True}, "s/read": {"read_only": True}}
    >>> task_variants(calls, [0, 1, 2], tools)   # the unrelated stat call is not part of the chain
    [([2], [0, 2]), ([0, 2], [0, 2])]
    >>> task_variants(calls, [1], tools)          # no chain to ask about: one-call fallback
    [([1], [1])]
    """
    if not require_chain:
        last = informative[-1]
        prefix = list(range(last + 1))
        return [([last], prefix)] + [([k, last], prefix) for k in reversed(informative[:-1])]
    anc = _ancestors(data_dependencies(gold_full))
    mutating = [j for j, c in enumerate(gold_full)
                if not c["is_error"] and not tools[f"{c['server']}/{c['tool']}"]["read_only"]]

    def chain_for(steps: list[int]) -> list[int]:
        keep: set[int] = set()
        for k in steps:
            keep |= {k} | anc[k]
        for j in mutating:
            if j < max(steps):
                keep |= {j} | anc[j]
        return sorted(keep)

    usable = set(informative)
    variants = []
    for k in reversed([k for k in informative if anc[k]]):
        variants.append(([k], chain_for([k])))
        variants.extend(([j, k], chain_for([j, k])) for j in sorted(anc[k] & usable, reverse=True))
    if single_call == "always" or (single_call == "fallback" and not variants):
        variants.extend(([k], [k]) for k in reversed(informative) if chain_for([k]) == [k])
    return variants


def renumber(gold_full: list[dict], keep: list[int]) -> list[dict]:
    """The kept calls, their ``arg_sources`` pointing at positions in the kept chain."""
    position = {gold_full[k].get("step", k): i for i, k in enumerate(keep)}
    out = []
    for k in keep:
        c = dict(gold_full[k])
        sources = {}
        for name, src in (c.get("arg_sources") or {}).items():
            m = SOURCE.match(str(src))
            if m and int(m.group(2)) in position:
                src = f"{m.group(1)}:{position[int(m.group(2))]}:{m.group(3)}"
            elif m:   # fed by a call outside the chain: say where the value came from, not how
                src = "given"
            sources[name] = src
        c["arg_sources"] = sources
        out.append(c)
    return out


def chain_passes(gold: list[dict]) -> list[tuple[int, int, str, Any]]:
    """(from position, to position, parameter, value) for each value passed along a (renumbered) chain."""
    out = []
    for i, c in enumerate(gold):
        for name, src in (c.get("arg_sources") or {}).items():
            m = SOURCE.match(str(src))
            if m and int(m.group(2)) < i:
                out.append((int(m.group(2)), i, name, c["arguments"].get(name)))
    return out


def chain_depth(gold: list[dict]) -> int:
    """Calls on the longest data-dependency path of a (renumbered) chain."""
    depth: list[int] = []
    for deps in data_dependencies([{**c, "step": i} for i, c in enumerate(gold)]):
        depth.append(1 + max((depth[j] for j in deps), default=0))
    return max(depth, default=0)


def template_question(gold: list[dict], tools: dict, fields: dict, rng) -> str:
    lines = [rng.choice(INTROS + SHAPE_INTROS["single" if len(gold) == 1 else "chain"])]
    for i, call in enumerate(gold):
        row = tools[f"{call['server']}/{call['tool']}"]
        desc = _describe(row["description"])
        lines.append(rng.choice(STEP_FORMS).format(
            n=i + 1, tool=call["tool"], desc=desc, desc_lc=desc[:1].lower() + desc[1:],
            args=_arg_text(call, {})))
    # each field name quoted as it must appear in the answer's JSON (a policy copies the same characters)
    field_text = "; ".join(f"{json.dumps(name)} ({spec['type']}): {spec['description']}" for name, spec in fields.items())
    types = {"number" if spec["type"] in ("integer", "number") else spec["type"] for spec in fields.values()}
    asks = ASK_FORMS + (TYPE_ASKS.get(types.pop(), []) if len(types) == 1 else [])
    lines.append(rng.choice(asks).format(fields=field_text))
    return " ".join(lines)


def synthesize_tasks(trajectories: list[dict], calls: list[dict], dags: dict[str, dict], tools: dict,
                     simulator: Simulator, out_dir: Path, seed: int, kind: str = "template",
                     tasks_per_trajectory: int = 2, max_fields: int = 3, max_value_len: int = 80,
                     include_partial: bool = True, test_fraction: float = 0.3, split: str = "random",
                     near_duplicate_threshold: float | None = None, determinism: str = "off",
                     judge_min_score: int = 3, require_chain: bool = True, single_call: str = "fallback",
                     field_groups: int = 1, writer=None, judge=None, live_check=None) -> dict:
    """Write verified tasks to tasks.jsonl; returns the stage metrics.

    After verification: the LM ``judge`` (when given) keeps the tasks scoring at least
    ``judge_min_score`` on every criterion; ``determinism`` (``off|exclude|drop``) re-executes the
    gold chains live through ``live_check`` and excludes the volatile fields or drops their tasks;
    near-duplicate questions (cosine >= ``near_duplicate_threshold``) are removed; then ``split``
    (``random`` by DAG, ``held_out_tools``, ``held_out_servers``) assigns train/test.

    ``require_chain``: a multi-step task's gold chain is the answer calls, the calls whose outputs
    fed them (``arg_sources``, transitively) and the state-changing calls before them, and at least
    one answer call must have received a value from an earlier call, which the question never states.
    ``single_call`` (``fallback|always|never``): one-call tasks from a trajectory only when it gives no
    chained task, always, or never. ``field_groups``: up to this many tasks per variant whose one answer
    call returned more fields than ``max_fields``, each asking for a different group of them."""
    check_options(kind, split, determinism, single_call, writer, live_check)
    candidates, rejected = candidate_tasks(trajectories, calls, dags, tools, simulator, seed, kind,
                                           tasks_per_trajectory, max_fields, max_value_len, include_partial,
                                           require_chain, single_call, writer, field_groups)
    return finish_tasks(candidates, rejected, len(trajectories), out_dir, seed, test_fraction, split,
                        near_duplicate_threshold, determinism, judge_min_score, judge, live_check)


def check_options(kind: str, split: str, determinism: str, single_call: str = "fallback", writer=None,
                  live_check=None) -> None:
    if split not in SPLITS:
        raise ValueError(f"synthesizer.split={split!r}: choose from {', '.join(SPLITS)}")
    if determinism not in ("off", "exclude", "drop"):
        raise ValueError(f"synthesizer.determinism={determinism!r}: choose from off, exclude, drop")
    if determinism != "off" and live_check is None:
        raise ValueError("synthesizer.determinism needs the live servers (live_check)")
    if kind == "dspy" and writer is None:
        raise ValueError("synthesizer=dspy needs an LM: set lm=<choice> (see conf/lm/) or use synthesizer=template")
    if single_call not in SINGLE_CALL:
        raise ValueError(f"synthesizer.single_call={single_call!r}: choose from {', '.join(SINGLE_CALL)}")


def candidate_tasks(trajectories: list[dict], calls: list[dict], dags: dict[str, dict], tools: dict,
                    simulator: Simulator, seed: int, kind: str = "template", tasks_per_trajectory: int = 2,
                    max_fields: int = 3, max_value_len: int = 80, include_partial: bool = True,
                    require_chain: bool = True, single_call: str = "fallback",
                    writer=None, field_groups: int = 1) -> tuple[list[dict], Counter]:
    """The verified tasks of each trajectory, in trajectory order, before deduplication.

    Each trajectory is handled on its own (its random choices derive from the seed and its DAG id),
    so trajectories can be split across workers and the results concatenated in order
    (``executor=ray``); :func:`finish_tasks` then does what needs them all."""
    by_seq = {(c["episode"], c["seq"]): c for c in calls}
    rejected: Counter = Counter()
    tasks: list[dict] = []
    for traj in trajectories:
        if not traj["steps"] or (traj["status"] != "complete" and not include_partial):
            continue
        gold_full = [by_seq[(traj["episode"], s["seq"])] for s in traj["steps"]]
        tainted = volatile_steps(gold_full, tools)
        # echoes of an argument would be read off the question: not answer material (a volatile call's
        # arguments are never in a question, and would make the choice differ from run to run)
        given = json.dumps([c["arguments"] for k, c in enumerate(gold_full) if not tainted[k]],
                           ensure_ascii=False, default=str)
        per_step = [answer_fields(call, tainted[k], max_value_len, given) for k, call in enumerate(gold_full)]
        informative = [k for k, c in enumerate(per_step) if c]
        if not informative:
            rejected["no_answerable_output"] += 1
            continue
        variants = task_variants(gold_full, informative, tools, require_chain, single_call)
        if any(tainted) and variants:
            # no volatile call in a gold chain: its arguments and results would differ in the next run
            kept = [v for v in variants if not any(tainted[j] for j in v[1])]
            if not kept and single_call == "fallback":
                kept = [v for v in task_variants(gold_full, informative, tools, require_chain, "always")
                        if not any(tainted[j] for j in v[1])]
            if not kept:
                rejected["volatile_chain"] += 1
                continue
            variants = kept
        if not variants:
            rejected["no_chain_dependency"] += 1
            continue
        # further questions about other fields of the same answer call (one answer step only)
        groups = [(steps, keep, 0) for steps, keep in variants]
        for g in range(1, max(1, field_groups)):
            groups += [(steps, keep, g) for steps, keep in variants
                       if len(steps) == 1 and len({p.split(".")[-1] for p, _ in per_step[steps[0]]}) > g * max_fields]
        for v_index, (steps, keep, group) in enumerate(groups[:tasks_per_trajectory]):
            rng = rng_for(seed, "synth", traj["dag_id"], v_index)
            gold = renumber(gold_full, keep)
            position = {k: i for i, k in enumerate(keep)}
            picks: list[tuple[int, str, Any]] = []
            for k in steps:
                cands = list(per_step[k])
                if field_groups > 1 and len(steps) == 1:  # the group-th max_fields distinct names, fixed shuffle
                    rng_for(seed, "fields", traj["dag_id"], k).shuffle(cands)
                    names = list(dict.fromkeys(p.split(".")[-1] for p, _ in cands))
                    mine = set(names[group * max_fields:(group + 1) * max_fields])
                    cands = [(p, v) for p, v in cands if p.split(".")[-1] in mine]
                else:
                    rng.shuffle(cands)
                quota = max(1, (max_fields - len(picks)) // (len(steps) - steps.index(k)))
                names_here = set()
                for path, value in cands:
                    key = path.split(".")[-1]
                    if key in names_here:
                        continue
                    names_here.add(key)
                    picks.append((position[k], path, value))
                    if len(names_here) >= quota:
                        break
            fields, answer, provenance, taken = {}, {}, {}, set()
            for k, path, value in picks:
                name = field_name(path or gold[k]["tool"] + "_result", taken)
                taken.add(name)
                fields[name] = {"type": json_type(value),
                                "description": field_description(value_of(gold[k]), path, gold[k]["tool"], k + 1)}
                answer[name] = value
                provenance[name] = {"step": k, "seq": gold[k]["seq"], "path": path,
                                    "tool": f"{gold[k]['server']}/{gold[k]['tool']}"}
            if kind == "dspy":
                question = writer(gold, tools, fields)
            else:
                question = template_question(gold, tools, fields, rng)
            for name in [n for n, v in answer.items() if _leaks(v, question)]:
                fields.pop(name), answer.pop(name), provenance.pop(name)
                rejected["field_leaked_in_question"] += 1
            if not answer:
                rejected["all_fields_leaked"] += 1
                continue
            if kind != "dspy":
                question = template_question(gold, tools, fields, rng_for(seed, "synth", traj["dag_id"], v_index))
            passes = chain_passes(gold)
            if require_chain and len(gold) > 1 and any(_leaks(v, question, strict=True) for *_, v in passes):
                rejected["intermediate_leaked_in_question"] += 1   # the chain could be skipped
                continue
            task = {
                "question": question, "answer_schema": fields, "answer": answer, "provenance": provenance,
                "gold_calls": [{"server": c["server"], "tool": c["tool"], "arguments": c["arguments"]} for c in gold],
                "gold_results": [{"content": c["content"], "structured": c.get("structured"),
                                  "is_error": c["is_error"]} for c in gold],
                "tools": sorted(t for t in tools if t.split("/")[0] in {c["server"] for c in gold}),
                "difficulty": {"calls": len(gold), "servers": len({c["server"] for c in gold}),
                               "depth": chain_depth(gold)},
                "chain": [{"from_step": a, "to_step": b, "param": p} for a, b, p, _ in passes],
                "dag_id": traj["dag_id"], "synthesizer": kind, "seed": seed,
            }
            task["id"] = "task-" + stable_hash([task["question"], task["answer"], task["gold_calls"]], 12)
            reason = verify_task(task, simulator)
            if reason:
                rejected[reason] += 1
                continue
            tasks.append(task)
    return tasks, rejected


def finish_tasks(candidates: list[dict], rejected: Counter, explored: int, out_dir: Path, seed: int,
                 test_fraction: float = 0.3, split: str = "random", near_duplicate_threshold: float | None = None,
                 determinism: str = "off", judge_min_score: int = 3, judge=None, live_check=None) -> dict:
    """Deduplicate the verified candidates (in order), then judge, determinism, near-duplicates and the
    split; writes ``tasks.jsonl`` and returns the stage metrics."""
    rejected = Counter(rejected)
    tasks: list[dict] = []
    seen: set[str] = set()
    for task in candidates:
        answer = task["answer"]
        dedup = stable_hash([normalise(task["question"]), {k: normalise(v) for k, v in answer.items()}])
        # the same gold chain with the same answer is the same task, however it is worded (and
        # would leak across a split by DAG when two DAGs recorded it)
        same_task = stable_hash([task["gold_calls"], {k: normalise(v) for k, v in answer.items()}])
        if dedup in seen or same_task in seen:
            rejected["duplicate"] += 1
            continue
        seen.update((dedup, same_task))
        tasks.append(task)
    extra: dict = {}
    if judge is not None:
        tasks, extra["judge_keep_rate"] = judge_filter(tasks, judge, judge_min_score, rejected)
    if determinism != "off":
        tasks, extra["volatile_field_rate"] = apply_determinism(tasks, live_check, determinism, rejected)
    if near_duplicate_threshold:
        tasks = remove_near_duplicates(tasks, near_duplicate_threshold, rejected)
    assign_splits(tasks, split, test_fraction, seed)
    write_jsonl(Path(out_dir) / "tasks.jsonl", tasks)
    return {"tasks": len(tasks), "train": sum(t["split"] == "train" for t in tasks), "split_strategy": split,
            **extra,
            "test": sum(t["split"] == "test" for t in tasks),
            "yield_per_dag": round(len(tasks) / max(explored, 1), 4),
            "calls_per_task": round(sum(len(t["gold_calls"]) for t in tasks) / max(len(tasks), 1), 3),
            "fields_per_task": round(sum(len(t["answer"]) for t in tasks) / max(len(tasks), 1), 3),
            "multi_server_fraction": round(sum(t["difficulty"]["servers"] > 1 for t in tasks) / max(len(tasks), 1), 4),
            "multi_step_fraction": round(sum(len(t["gold_calls"]) > 1 for t in tasks) / max(len(tasks), 1), 4),
            # multi-step tasks whose answer needs a value passed along the chain (1.0 with require_chain)
            "chained_fraction": round(sum(bool(t["chain"]) for t in tasks if len(t["gold_calls"]) > 1) /
                                      max(sum(len(t["gold_calls"]) > 1 for t in tasks), 1), 4),
            **{f"rejected.{k}": v for k, v in sorted(rejected.items())}}


def verify_task(task: dict, simulator: Simulator) -> str | None:
    """None when the task holds, else the reason it does not."""
    for name, prov in task["provenance"].items():
        recorded = value_of(task["gold_results"][prov["step"]])
        if not answers_match(task["answer"][name], get_path(recorded, prov["path"], None)):
            return "provenance_mismatch"
    episode = simulator.episode()
    replayed = []
    for call, recorded in zip(task["gold_calls"], task["gold_results"]):
        got = episode.step(call["server"], call["tool"], call["arguments"])
        if got["hit"] != "exact" or got["content"] != recorded["content"] or \
                got.get("structured") != recorded.get("structured") or got["is_error"] != recorded["is_error"]:
            return "replay_mismatch"
        replayed.append(got)
    for name, prov in task["provenance"].items():
        if not answers_match(task["answer"][name], get_path(value_of(replayed[prov["step"]]), prov["path"], None)):
            return "replay_answer_mismatch"
    return None


SPLITS = ("random", "held_out_tools", "held_out_servers")


def assign_splits(tasks: list[dict], strategy: str, test_fraction: float, seed: int) -> None:
    """Set each task's ``split`` in place.

    - ``random``: by DAG, so the tasks of one trajectory never straddle train and test;
    - ``held_out_tools``: by tool combination (the set of tools of the gold chain): a combination is
      either all train or all test;
    - ``held_out_servers``: ``round(test_fraction * servers)`` servers (at least one) are held out;
      a task using any of them is test, so the test set needs servers never seen in training (one
      server is always left to train on: with a single server, every task is train).

    >>> ts = [{"dag_id": "d1", "gold_calls": [{"server": "a", "tool": "x"}]},
    ...       {"dag_id": "d2", "gold_calls": [{"server": "b", "tool": "y"}]}]
    >>> assign_splits(ts, "held_out_servers", 0.5, 0); sorted(t["split"] for t in ts)
    ['test', 'train']
    """
    if strategy == "random":
        for t in tasks:
            t["split"] = "test" if rng_for(seed, "split", t["dag_id"]).random() < test_fraction else "train"
    elif strategy == "held_out_tools":
        for t in tasks:
            combo = sorted({f"{c['server']}/{c['tool']}" for c in t["gold_calls"]})
            t["split"] = "test" if rng_for(seed, "split-tools", *combo).random() < test_fraction else "train"
    elif strategy == "held_out_servers":
        servers = sorted({c["server"] for t in tasks for c in t["gold_calls"]})
        rng = rng_for(seed, "split-servers")
        held = set(rng.sample(servers, min(len(servers), max(1, round(test_fraction * len(servers)))))) \
            if servers else set()
        if held and len(held) == len(servers):   # keep a server to train on
            held.discard(sorted(held)[0])
        for t in tasks:
            t["split"] = "test" if {c["server"] for c in t["gold_calls"]} & held else "train"
    else:
        raise ValueError(f"unknown split strategy {strategy!r}: choose from {', '.join(SPLITS)}")


def remove_near_duplicates(tasks: list[dict], threshold: float, rejected: Counter) -> list[dict]:
    """Drop a task whose question embedding has cosine >= threshold with an earlier kept task's
    (greedy, in order). One embedding batch and one matrix product: cheap for thousands of tasks."""
    if len(tasks) < 2:
        return tasks
    from .embeddings import embed

    vectors = embed([t["question"] for t in tasks])
    sims = vectors @ vectors.T
    kept: list[int] = []
    for i in range(len(tasks)):
        if kept and float(sims[i, kept].max()) >= threshold:
            rejected["near_duplicate"] += 1
            continue
        kept.append(i)
    return [tasks[i] for i in kept]


def apply_determinism(tasks: list[dict], live_check, mode: str, rejected: Counter) -> tuple[list[dict], float]:
    """Re-execute the gold chains live (``live_check(tasks) -> {task id: [field names whose value changed]}``),
    then exclude the volatile fields (``exclude``; a task left without fields is dropped) or drop the
    task (``drop``). Returns the kept tasks and the volatile-field rate over the fields checked."""
    changed = live_check(tasks)
    checked = sum(len(t["answer"]) for t in tasks)
    volatile = sum(len(changed.get(t["id"], [])) for t in tasks)
    kept = []
    for t in tasks:
        names = changed.get(t["id"], [])
        if not names:
            kept.append(t)
        elif mode == "drop":
            rejected["volatile"] += 1
        else:
            for name in names:
                t["answer_schema"].pop(name, None), t["answer"].pop(name, None), t["provenance"].pop(name, None)
            t["volatile_fields"] = sorted(names)
            rejected["volatile_field_excluded"] += len(names)
            if t["answer"]:
                kept.append(t)
            else:
                rejected["all_fields_volatile"] += 1
    return kept, round(volatile / max(checked, 1), 4)


def judge_filter(tasks: list[dict], judge, min_score: int, rejected: Counter) -> tuple[list[dict], float]:
    """Keep the tasks the judge scores at least ``min_score`` on every criterion; records the scores."""
    kept = []
    for t in tasks:
        scores = judge(t)
        t["judge"] = scores
        if all(v >= min_score for v in scores.values()):
            kept.append(t)
        else:
            rejected["judge"] += 1
    return kept, round(len(kept) / max(len(tasks), 1), 4)
