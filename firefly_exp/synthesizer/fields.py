"""Which recorded values become a task's answer, and which calls its gold chain keeps.

A trajectory gives several task *variants* (:func:`task_variants`: the answer steps and the chain
of calls they need); each variant picks up to ``max_fields`` answer fields from its answer steps
(:func:`pick_fields`), named and described for the question (:func:`answer_spec`). Whether a value
can be an answer at all is :func:`firefly_exp.answers.answer_fields`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..observed import SOURCE
from ..results import field_name, json_type, value_of
from .wording import field_description

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


def state_reads(gold: list[dict], tools: dict, scope: Callable[[str], str],
                changed: Callable[[dict], bool] = lambda call: True) -> list[set[int]]:
    """Per call (by position), the successful state-changing calls before it in its state scope
    (``scope``: server -> scope) when it is a successful read-only call whose result the writes
    ``changed`` (it differs from what the same call returned on the seeded state): the writes whose
    effect it observes (add a row, then count the rows), which a task may ask about instead of the
    write's confirmation (``synthesizer.informative``).

    >>> tools = {"db/add": {"read_only": False}, "db/count": {"read_only": True}, "fs/ls": {"read_only": True}}
    >>> call = lambda t: {"server": t.split("/")[0], "tool": t.split("/")[1], "is_error": False}
    >>> state_reads([call("db/count"), call("db/add"), call("fs/ls"), call("db/count")], tools, lambda s: s)
    [set(), set(), set(), {1}]
    >>> state_reads([call("db/add"), call("db/count")], tools, lambda s: s, changed=lambda c: False)
    [set(), set()]
    """
    def row(c: dict) -> dict:
        return tools[f"{c['server']}/{c['tool']}"]

    out: list[set[int]] = []
    for i, c in enumerate(gold):
        writes = {j for j in range(i) if not gold[j]["is_error"] and not row(gold[j])["read_only"]
                  and scope(gold[j]["server"]) == scope(c["server"])}
        out.append(writes if writes and row(c)["read_only"] and not c["is_error"] and changed(c) else set())
    return out


def task_variants(gold_full: list[dict], informative: list[int], tools: dict, require_chain: bool = True,
                  single_call: str = "fallback", observes: list[set[int]] | None = None,
                  order: str = "found") -> list[tuple[list[int], list[int]]]:
    """The questions a trajectory supports, best first: (steps the answer fields come from, the
    positions of the calls making up the gold chain).

    With ``require_chain``, the chain is the answer calls, their data ancestors and the successful
    state-changing calls before them (the state the answers were read in), and a multi-step
    variant exists only where an answer call received a value from an earlier call, or, given
    ``observes`` (:func:`state_reads`), reads the state an earlier write changed: those come first.
    Without it, the chain is the whole prefix up to the last answer call (the older behaviour).
    ``order="longest"`` adds a variant asking about every chained answer call that feeds no other
    answer call (the sinks of the DAG's chained branches: a fan-out asks about each branch), and
    puts the variants with the longest chains first (stable: the order otherwise kept).

    >>> calls = [{"step": 0, "server": "s", "tool": "list", "is_error": False, "arg_sources": {}},
    ...          {"step": 1, "server": "s", "tool": "stat", "is_error": False, "arg_sources": {}},
    ...          {"step": 2, "server": "s", "tool": "read", "is_error": False, "arg_sources": {"p": "edge:0:x"}}]
    >>> tools = {"s/list": {"read_only": True}, "s/stat": {"read_only": True}, "s/read": {"read_only": True}}
    >>> task_variants(calls, [0, 1, 2], tools)   # the unrelated stat call is not part of the chain
    [([2], [0, 2]), ([0, 2], [0, 2])]
    >>> task_variants(calls, [1], tools)          # no chain to ask about: one-call fallback
    [([1], [1])]
    >>> fan = calls + [{"step": 3, "server": "s", "tool": "stat", "is_error": False, "arg_sources": {"p": "edge:0:y"}}]
    >>> task_variants(fan, [0, 2, 3], tools, order="longest")[0]   # both branches of the fan-out
    ([2, 3], [0, 2, 3])
    """
    if not require_chain:
        last = informative[-1]
        prefix = list(range(last + 1))
        return [([last], prefix)] + [([k, last], prefix) for k in reversed(informative[:-1])]
    direct = data_dependencies(gold_full)
    if observes is not None:   # a read of a changed state depends on the write as on a passed value
        direct = [d | o for d, o in zip(direct, observes)]
    anc = _ancestors(direct)
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
    if observes is not None:   # reads that observe a write first (a stable sort: the order otherwise kept)
        variants.sort(key=lambda v: not observes[v[0][-1]])
    if order == "longest" and variants:
        chained = [k for k in informative if anc[k]]
        sinks = [k for k in chained if not any(k in anc[m] for m in chained)]
        whole = (sinks, chain_for(sinks)) if len(sinks) > 1 else None
        if whole and whole not in variants:
            variants.insert(0, whole)
        variants.sort(key=lambda v: -len(v[1]))
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


def variant_groups(variants: list[tuple[list[int], list[int]]], per_step: list[list[tuple[str, Any]]],
                   field_groups: int, max_fields: int) -> list[tuple[list[int], list[int], int]]:
    """(answer steps, chain, field group) per question, best first: every variant asks about field
    group 0; with ``field_groups`` > 1, a variant with one answer call that returned more than
    ``group * max_fields`` distinct field names also asks about its group-th ``max_fields`` of them."""
    groups = [(steps, keep, 0) for steps, keep in variants]
    for g in range(1, max(1, field_groups)):
        groups += [(steps, keep, g) for steps, keep in variants
                   if len(steps) == 1 and len({p.split(".")[-1] for p, _ in per_step[steps[0]]}) > g * max_fields]
    return groups


def field_group(cands: list[tuple[str, Any]], group: int, max_fields: int, rng) -> list[tuple[str, Any]]:
    """The candidates whose name is among the group-th ``max_fields`` distinct names of a shuffle by
    ``rng`` (fixed per answer call, so the groups of one call never overlap)."""
    rng.shuffle(cands)
    names = list(dict.fromkeys(p.split(".")[-1] for p, _ in cands))
    mine = set(names[group * max_fields:(group + 1) * max_fields])
    return [(p, v) for p, v in cands if p.split(".")[-1] in mine]


def pick_fields(per_step: list[list[tuple[str, Any]]], steps: list[int], position: dict[int, int], rng,
                max_fields: int, regroup: Callable[[int, list], list] | None = None) -> list[tuple[int, str, Any]]:
    """(chain position, path, value) of the answer fields: per answer step, in order, a share of the
    ``max_fields`` left, distinct names only, from its candidates shuffled by ``rng`` (or, with
    ``regroup(step, candidates)``, from one field group of them). :func:`top_up` may add more."""
    picks: list[tuple[int, str, Any]] = []
    for k in steps:
        cands = list(per_step[k])
        if regroup is not None:
            cands = regroup(k, cands)
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
    return picks


def top_up(per_step: list[list[tuple[str, Any]]], steps: list[int], position: dict[int, int],
           picks: list[tuple[int, str, Any]], rng, target: int) -> list[tuple[int, str, Any]]:
    """More fields for a task asking for fewer than ``target`` (``synthesizer.min_fields``): the leaves
    not picked yet of ``steps`` (the answer calls, then the other calls of the chain), a name picked
    again at another place too (the third table's name beside the first's: names that carry the
    place, as the goal wording's do), in step order, each step's shuffled by ``rng``.

    >>> import random
    >>> per_step = [[("0.name", "a"), ("1.name", "b"), ("2.name", "c")]]
    >>> sorted(top_up(per_step, [0], {0: 0}, [(0, "0.name", "a")], random.Random(0), 3))
    [(0, '1.name', 'b'), (0, '2.name', 'c')]
    """
    have = {(k, path) for k, path, _ in picks}
    extra: list[tuple[int, str, Any]] = []
    for k in steps:
        # a path through a key that is a file name ("/a/b.txt.size") cannot be followed back: its dot
        cands = [(p, v) for p, v in per_step[k] if (position[k], p) not in have and "/" not in p]
        rng.shuffle(cands)
        for path, value in cands[:max(0, target - len(picks) - len(extra))]:
            extra.append((position[k], path, value))
    return extra


def answer_spec(picks: list[tuple[int, str, Any]], gold: list[dict]) -> tuple[dict, dict, dict]:
    """The answer schema (name -> type, description), the answer and each field's provenance (chain
    position, seq, path, tool) of the picked fields; names are made unique in pick order."""
    fields, answer, provenance, taken = {}, {}, {}, set()
    for k, path, value in picks:
        name = field_name(path or gold[k]["tool"] + "_result", taken)
        taken.add(name)
        fields[name] = {"type": json_type(value),
                        "description": field_description(value_of(gold[k]), path, gold[k]["tool"], k + 1)}
        answer[name] = value
        provenance[name] = {"step": k, "seq": gold[k]["seq"], "path": path,
                            "tool": f"{gold[k]['server']}/{gold[k]['tool']}"}
    return fields, answer, provenance
