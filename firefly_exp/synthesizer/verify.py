"""Which synthesized tasks are kept: verification against the records and the replay simulator,
deduplication, then by config the LM judge, live re-execution for volatile fields
(``determinism``) and near-duplicate removal. Each filter counts what it rejects, by reason."""

from __future__ import annotations

from collections import Counter

from ..quality import tool_of
from ..results import answers_match, get_path, normalise, value_of
from ..simulator import Simulator
from ..store import stable_hash


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




def dedup(candidates: list[dict], rejected: Counter) -> list[dict]:
    """The candidates (in order) less the repeats of an earlier one: the same wording and answer, or
    the same gold chain and answer (the same task however it is worded, which would leak across a
    split by DAG when two DAGs recorded it)."""
    tasks: list[dict] = []
    seen: set[str] = set()
    for task in candidates:
        answer = task["answer"]
        wording = stable_hash([normalise(task["question"]), {k: normalise(v) for k, v in answer.items()}])
        same_task = stable_hash([task["gold_calls"], {k: normalise(v) for k, v in answer.items()}])
        if wording in seen or same_task in seen:
            rejected["duplicate"] += 1
            continue
        seen.update((wording, same_task))
        tasks.append(task)
    return tasks


def cap_single_calls(tasks: list[dict], max_share: float, rejected: Counter) -> list[dict]:
    """The tasks (in order) with at most ``max_share`` of them one-call tasks: the one-call tasks kept
    are taken round-robin over their tools, a tool the chained tasks use least first, so the few kept
    cover the tools no chain reached; the others are dropped (``rejected.single_call_cap``).

    >>> t = lambda tool, n=1: {"gold_calls": [{"server": "s", "tool": tool}] * n}
    >>> kept = cap_single_calls([t("a", 3), t("a", 2), t("a"), t("a"), t("b"), t("c")], 0.5, Counter())
    >>> [[c["tool"] for c in k["gold_calls"]] for k in kept]
    [['a', 'a', 'a'], ['a', 'a'], ['b'], ['c']]
    """
    multi = [t for t in tasks if len(t["gold_calls"]) > 1]
    single = [i for i, t in enumerate(tasks) if len(t["gold_calls"]) == 1]
    # n single of n + multi total: n / (n + multi) <= share  <=>  n <= share * multi / (1 - share)
    room = int(max_share * len(multi) / (1 - max_share)) if max_share < 1 else len(single)
    if len(single) <= room:
        return tasks
    used = Counter(tool_of(c) for t in multi for c in t["gold_calls"])
    by_tool: dict[str, list[int]] = {}
    for i in single:
        by_tool.setdefault(tool_of(tasks[i]["gold_calls"][0]), []).append(i)
    order = sorted(by_tool, key=lambda tool: (used[tool], tool))
    keep: set[int] = set()
    while len(keep) < room:
        for tool in order:
            if by_tool[tool] and len(keep) < room:
                keep.add(by_tool[tool].pop(0))
    rejected["single_call_cap"] += len(single) - len(keep)
    return [t for i, t in enumerate(tasks) if len(t["gold_calls"]) > 1 or i in keep]


def remove_near_duplicates(tasks: list[dict], threshold: float, rejected: Counter) -> list[dict]:
    """Drop a task whose question embedding has cosine >= threshold with an earlier kept task's
    (greedy, in order). One embedding batch and one matrix product: cheap for thousands of tasks."""
    if len(tasks) < 2:
        return tasks
    from ..embeddings import embed

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
