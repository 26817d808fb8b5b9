"""Stage 5, synthesizer: backward task synthesis from recorded trajectories, then verification.

From what a trajectory observed, write a task (the question), an answer schema (named, typed
fields) and the answer values, taken from recorded outputs, so the label is correct by
construction. Field selection is always done here from recorded outputs; only the wording of the
question may come from an LM:

- ``template`` (offline default; the same as ``recipe``): the question is assembled from phrase
  templates, naming the given arguments and saying which earlier result feeds which later argument
  (:mod:`.wording`);
- ``goal``: a request in plain words from the tools' descriptions, no tool, step or JSON path named,
  passed values described, answer fields with meaningful names (:mod:`.goal`);
- ``dspy``: the DSPy program ``programs.synthesizer.TaskWriter`` words the question with the
  configured LM (checked for leaked answers like the template's).

With ``informative`` (off by default), an answer field must carry information
(:mod:`firefly_exp.answers`: no error text, write confirmation, echo of an argument of the chain, or
value its tool returns whatever it is asked), a state-changing call's own result is never one, and a
later read whose result the write changed (:func:`.fields.state_reads`; it differs from the same call
on the seeded state) is the preferred answer call, the write part of its chain.

Verification keeps a task only if (1) every answer value is found at its provenance (call, path)
in a recorded output, (2) its gold chain replays in the simulator to identical outputs and the
answer read from the replay equals the label, (3) it is not a duplicate (same wording and answer,
or same gold chain and answer). Then, by config: the LM judge (with an LM), live re-execution for
volatile fields (``determinism``), near-duplicate removal (embedding cosine of the questions)
(:mod:`.verify`), and the split (:mod:`.splits`: ``random`` by DAG, ``held_out_tools``,
``held_out_servers``, or your own function). Writes ``tasks.jsonl``; ``dataset.py`` exports them.

:func:`synthesize_tasks` is :func:`candidate_tasks` (per trajectory: can be sharded across
workers, ``executor=ray``) then :func:`finish_tasks` (needs them all).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import answers, embeddings, quality, servers
from ..answers import answer_fields, candidate_fields, leaks as _leaks  # noqa: F401 - candidate_fields: re-exported
from ..seeding import rng_for
from ..settings import SynthesizerSettings, choices_in, resolve
from ..simulator import Simulator, live
from ..stage import RunContext, Stage, StageResult, with_lm_usage
from ..store import code_version, read_jsonl, stable_hash, write_jsonl
from . import fields, goal, splits, verify, wording
# the names other modules and the tests import from firefly_exp.synthesizer, wherever they now live
from .fields import (answer_spec, chain_depth, chain_passes, data_dependencies, field_group,  # noqa: F401
                     pick_fields, renumber, state_reads, task_variants, top_up, variant_groups, volatile_steps)
from .verify import apply_determinism, cap_single_calls, dedup, judge_filter, remove_near_duplicates, verify_task
from .wording import (ASK_FORMS, INTROS, SHAPE_INTROS, STEP_FORMS, TYPE_ASKS, describe_path,  # noqa: F401
                      field_description, path_key, path_text, template_question)


@dataclass(frozen=True)
class Wording:
    """How one ``synthesizer.kind`` words a task: the answer schema of the picked fields, the question
    (None: the LM writer's) and a last check that rejects a question (``rejected.<check_reason>``)."""

    spec: Callable                        # (picks, gold, tools) -> (fields, answer, provenance)
    question: Callable | None             # (gold, tools, fields, rng) -> question
    check: Callable | None = None         # (question, gold, tools, fields) -> True to reject
    check_reason: str = ""


def recipe_spec(picks: list, gold: list[dict], tools: dict) -> tuple[dict, dict, dict]:
    """The recipe wording's answer schema (names from the path's last key, described by step and tool)."""
    return answer_spec(picks, gold)


WORDINGS = {"template": Wording(recipe_spec, template_question), "recipe": Wording(recipe_spec, template_question),
            "dspy": Wording(recipe_spec, None),
            "goal": Wording(goal.goal_spec, goal.goal_question, goal.structure_leak, "goal_structure_leak")}


@dataclass(frozen=True)
class Recorded:
    """What exploration recorded, the material tasks are written from: the trajectories, their calls
    (found by episode and seq) and the tool rows by name (description, read_only, volatile, ...)."""

    trajectories: list[dict]
    calls: list[dict]
    tools: dict[str, dict]
    # per tool, the result paths constant over the whole exploration (answers.constant_paths): computed
    # from ``calls`` when None, given when ``calls`` are a worker's share of them
    constants: dict[str, frozenset] | None = None


@dataclass(frozen=True)
class Programs:
    """The optional callables a synthesis is handed (the stage builds them from the LM and the servers)."""

    writer: Callable | None = None       # (gold, tools, fields) -> question: synthesizer=dspy
    judge: Callable | None = None        # task -> {criterion: score}: with an LM and synthesizer.judge
    live_check: Callable | None = None   # tasks -> {task id: changed fields}: synthesizer.determinism


@dataclass
class Candidates:
    """The verified tasks of some trajectories, in order, before deduplication; what was rejected and
    why; and how many trajectories were considered (the denominator of the yield per DAG)."""

    tasks: list[dict]
    rejected: Counter
    explored: int


def synthesize_tasks(recorded: Recorded, simulator: Simulator, settings: SynthesizerSettings, seed: int,
                     out_dir: Path, programs: Programs | None = None) -> dict:
    """Write verified tasks to tasks.jsonl; returns the stage metrics.

    ``settings.require_chain``: a multi-step task's gold chain is the answer calls, the calls whose
    outputs fed them (``arg_sources``, transitively) and the state-changing calls before them, and at
    least one answer call must have received a value from an earlier call, which the question never
    states. ``single_call`` (``fallback|always|never``): one-call tasks from a trajectory only when it
    gives no chained task, always, or never. ``field_groups``: up to this many tasks per variant whose
    one answer call returned more fields than ``max_fields``, each asking for a different group of them.
    What happens after verification: :func:`finish_tasks`."""
    programs = programs or Programs()
    check_options(settings, programs)
    return finish_tasks(candidate_tasks(recorded, simulator, settings, seed, programs.writer), settings, seed,
                        out_dir, programs)


def check_options(settings: SynthesizerSettings, programs: Programs) -> None:
    """A one-line error for settings the given programs cannot carry out (before any work)."""
    if settings.determinism != "off" and programs.live_check is None:
        raise ValueError("synthesizer.determinism needs the live servers (live_check)")
    if settings.kind == "dspy" and programs.writer is None:
        raise ValueError("synthesizer=dspy needs an LM: set lm=<choice> (see conf/lm/) or use synthesizer=template")


def candidate_tasks(recorded: Recorded, simulator: Simulator, settings: SynthesizerSettings, seed: int,
                    writer: Callable | None = None) -> Candidates:
    """The verified tasks of each trajectory, in trajectory order, before deduplication.

    Each trajectory is handled on its own (its random choices derive from the seed and its DAG id),
    so trajectories can be split across workers and the results concatenated in order
    (``executor=ray``); :func:`finish_tasks` then does what needs them all."""
    by_seq = {(c["episode"], c["seq"]): c for c in recorded.calls}
    constants = recorded.constants
    if constants is None:
        constants = answers.constant_paths(recorded.calls) if settings.informative else {}
    maker = _TaskMaker(recorded.tools, simulator, settings, seed, writer, constants)
    tasks: list[dict] = []
    for traj in recorded.trajectories:
        if not traj["steps"] or (traj["status"] != "complete" and not settings.include_partial):
            continue
        gold_full = [by_seq[(traj["episode"], s["seq"])] for s in traj["steps"]]
        tasks.extend(maker.trajectory_tasks(traj["dag_id"], gold_full))
    return Candidates(tasks, maker.rejected, len(recorded.trajectories))


@dataclass
class _TaskMaker:
    """Writes and verifies the tasks of one trajectory at a time, counting what it rejects and why."""

    tools: dict[str, dict]
    simulator: Simulator
    settings: SynthesizerSettings
    seed: int
    writer: Callable | None = None
    constants: dict[str, frozenset] = field(default_factory=dict)   # answers.constant_paths (informative)
    rejected: Counter = field(default_factory=Counter)

    def trajectory_tasks(self, dag_id: str, gold_full: list[dict]) -> list[dict]:
        """The verified tasks of one trajectory (its recorded calls ``gold_full``), best variant first."""
        s = self.settings
        tainted = volatile_steps(gold_full, self.tools)
        per_step = self.answer_candidates(gold_full, tainted)
        informative = [k for k, c in enumerate(per_step) if c]
        if not informative:
            self.rejected["no_answerable_output"] += 1
            return []
        observes = (state_reads(gold_full, self.tools, self.simulator.scope, self.shows_change)
                    if s.informative else None)
        variants = task_variants(gold_full, informative, self.tools, s.require_chain, s.single_call, observes,
                                 s.variant_order)
        if any(tainted) and variants:
            variants = self.stable_variants(variants, tainted, gold_full, informative, observes)
            if not variants:
                self.rejected["volatile_chain"] += 1
                return []
        if not variants:
            self.rejected["no_chain_dependency"] += 1
            return []
        # further questions about other fields of the same answer call (one answer step only)
        groups = variant_groups(variants, per_step, s.field_groups, s.max_fields)
        tasks = []
        for v_index, variant in enumerate(groups[:s.tasks_per_trajectory]):
            task = self.variant_task(dag_id, v_index, gold_full, per_step, variant)
            if task is None:
                continue
            if quality.placeholder_task(task):   # built on nothing a description or result suggested
                self.rejected["placeholder_arguments"] += 1
                continue
            reason = verify_task(task, self.simulator)
            if reason:
                self.rejected[reason] += 1
                continue
            tasks.append(task)
        return tasks

    def answer_candidates(self, gold_full: list[dict], tainted: list[bool]) -> list[list[tuple[str, Any]]]:
        """Per call, the (path, value) leaves that can be answer fields (:func:`answers.answer_fields`).

        With ``informative``, only informative leaves (no error text, write confirmation, echo, or
        value constant for its tool over the exploration), and none from a state-changing call: its
        result confirms the write; a later read of that state is the answer (:func:`state_reads`).
        What is left out is counted in ``rejected`` as ``field_<reason>``."""
        s = self.settings
        # echoes of an argument would be read off the question: not answer material (a volatile call's
        # arguments are never in a question, and would make the choice differ from run to run)
        given = json.dumps([c["arguments"] for k, c in enumerate(gold_full) if not tainted[k]],
                           ensure_ascii=False, default=str)
        if not s.informative:
            return [answer_fields(call, tainted[k], s.max_value_len, given) for k, call in enumerate(gold_full)]
        dropped: Counter = Counter()
        out = []
        for k, call in enumerate(gold_full):
            tool = f"{call['server']}/{call['tool']}"
            row = self.tools[tool]
            rules = answers.Informative(row["read_only"], self.constants.get(tool, frozenset()))
            cands = answer_fields(call, tainted[k], s.max_value_len, given, rules, dropped)
            if cands and not row["read_only"]:
                dropped["write_result"] += len(cands)
                cands = []
            out.append(cands)
        self.rejected.update({f"field_{reason}": n for reason, n in dropped.items()})
        return out

    def shows_change(self, call: dict) -> bool:
        """Whether a read shows what earlier writes did: the simulator holds the same call on the
        seeded state, and with another result (a read the writes left alike, or one never recorded
        there, would make them a needless part of the chain)."""
        seeded = self.simulator.episode().step(call["server"], call["tool"], call["arguments"])
        return seeded["hit"] in ("exact", "state_aware") and (
            seeded["content"], seeded.get("structured"), seeded["is_error"]) != (
            call["content"], call.get("structured"), call["is_error"])

    def stable_variants(self, variants: list, tainted: list[bool], gold_full: list[dict],
                        informative: list[int], observes: list[set[int]] | None = None) -> list:
        """The variants whose gold chain holds no volatile call (its arguments and results would differ
        in the next run), falling back to one-call variants as ``single_call: fallback`` allows."""
        s = self.settings
        kept = [v for v in variants if not any(tainted[j] for j in v[1])]
        if not kept and s.single_call == "fallback":
            kept = [v for v in task_variants(gold_full, informative, self.tools, s.require_chain, "always", observes,
                                             s.variant_order) if not any(tainted[j] for j in v[1])]
        return kept

    def variant_task(self, dag_id: str, v_index: int, gold_full: list[dict], per_step: list[list],
                     variant: tuple[list[int], list[int], int]) -> dict | None:
        """The task of one variant (answer steps, chain, field group), or None when its question would
        give the answer or the chain away. Its random choices derive from the seed, DAG and variant."""
        s = self.settings
        steps, keep, group = variant
        rng = rng_for(self.seed, "synth", dag_id, v_index)
        gold = renumber(gold_full, keep)
        regroup = None
        if s.field_groups > 1 and len(steps) == 1:   # the group-th max_fields distinct names, fixed shuffle
            def regroup(k: int, cands: list) -> list:
                return field_group(cands, group, s.max_fields, rng_for(self.seed, "fields", dag_id, k))
        position = {k: i for i, k in enumerate(keep)}
        picks = pick_fields(per_step, steps, position, rng, s.max_fields, regroup)
        if len(picks) < min(s.min_fields, s.max_fields):   # never with min_fields 1: answer calls first
            picks += top_up(per_step, steps + [k for k in reversed(keep) if k not in steps], position, picks, rng,
                            min(s.min_fields, s.max_fields))
        wording = WORDINGS[s.kind]
        spec, answer, provenance = wording.spec(picks, gold, self.tools)
        if wording.question is None:
            question = self.writer(gold, self.tools, spec)
        else:
            question = wording.question(gold, self.tools, spec, rng)
        for name in [n for n, v in answer.items() if _leaks(v, question)]:
            spec.pop(name), answer.pop(name), provenance.pop(name)
            self.rejected["field_leaked_in_question"] += 1
        if not answer:
            self.rejected["all_fields_leaked"] += 1
            return None
        if wording.question is not None:   # worded again for the fields left, with the same draws
            question = wording.question(gold, self.tools, spec, rng_for(self.seed, "synth", dag_id, v_index))
        passes = chain_passes(gold)
        if s.require_chain and len(gold) > 1 and any(_leaks(v, question, strict=True) for *_, v in passes):
            self.rejected["intermediate_leaked_in_question"] += 1   # the chain could be skipped
            return None
        if wording.check is not None and wording.check(question, gold, self.tools, spec):
            self.rejected[wording.check_reason] += 1
            return None
        return self.task_record(dag_id, gold, question, (spec, answer, provenance), passes)

    def task_record(self, dag_id: str, gold: list[dict], question: str, labels: tuple[dict, dict, dict],
                    passes: list[tuple]) -> dict:
        """The task as written to tasks.jsonl (its id a hash of question, answer and gold calls);
        ``labels``: its answer schema, answer and provenance."""
        spec, answer, provenance = labels
        task = {
            "question": question, "answer_schema": spec, "answer": answer, "provenance": provenance,
            "gold_calls": [{"server": c["server"], "tool": c["tool"], "arguments": c["arguments"]} for c in gold],
            "gold_results": [{"content": c["content"], "structured": c.get("structured"),
                              "is_error": c["is_error"]} for c in gold],
            "tools": sorted(t for t in self.tools if t.split("/")[0] in {c["server"] for c in gold}),
            "difficulty": {"calls": len(gold), "servers": len({c["server"] for c in gold}),
                           "depth": chain_depth(gold)},
            "chain": [{"from_step": a, "to_step": b, "param": p} for a, b, p, _ in passes],
            "dag_id": dag_id, "synthesizer": self.settings.kind, "seed": self.seed,
        }
        task["id"] = "task-" + stable_hash([task["question"], task["answer"], task["gold_calls"]], 12)
        return task


def finish_tasks(candidates: Candidates, settings: SynthesizerSettings, seed: int, out_dir: Path,
                 programs: Programs | None = None) -> dict:
    """Deduplicate the verified candidates (in order), then: the LM ``judge`` (when given) keeps the
    tasks scoring at least ``judge_min_score`` on every criterion; ``determinism`` (``exclude|drop``)
    re-executes the gold chains live through ``live_check`` and excludes the volatile fields or drops
    their tasks; near-duplicate questions (cosine >= ``near_duplicate_threshold``) are removed; one-call
    tasks beyond ``max_single_call_share`` are dropped (:func:`.verify.cap_single_calls`); then
    ``split`` assigns train/test. Writes ``tasks.jsonl`` and returns the stage metrics."""
    programs = programs or Programs()
    rejected = Counter(candidates.rejected)
    tasks = dedup(candidates.tasks, rejected)
    extra: dict = {}
    if programs.judge is not None:
        tasks, extra["judge_keep_rate"] = judge_filter(tasks, programs.judge, settings.judge_min_score, rejected)
    if settings.determinism != "off":
        tasks, extra["volatile_field_rate"] = apply_determinism(tasks, programs.live_check, settings.determinism,
                                                                rejected)
    if settings.near_duplicate_threshold:
        tasks = remove_near_duplicates(tasks, settings.near_duplicate_threshold, rejected)
    if settings.max_single_call_share is not None:
        tasks = cap_single_calls(tasks, settings.max_single_call_share, rejected)
    assign_splits(tasks, settings.split, settings.test_fraction, seed)
    write_jsonl(Path(out_dir) / "tasks.jsonl", tasks)
    return task_metrics(tasks, rejected, candidates.explored, settings.split, extra)


def task_metrics(tasks: list[dict], rejected: Counter, explored: int, split: str, extra: dict) -> dict:
    """The synthesizer's stage metrics: counts, shape of the tasks, and the rejections by reason."""
    n = max(len(tasks), 1)
    multi_step = [t for t in tasks if len(t["gold_calls"]) > 1]
    return {"tasks": len(tasks), "train": sum(t["split"] == "train" for t in tasks), "split_strategy": split,
            **extra,
            "test": sum(t["split"] == "test" for t in tasks),
            "yield_per_dag": round(len(tasks) / max(explored, 1), 4),
            "calls_per_task": round(sum(len(t["gold_calls"]) for t in tasks) / n, 3),
            "fields_per_task": round(sum(len(t["answer"]) for t in tasks) / n, 3),
            "multi_server_fraction": round(sum(t["difficulty"]["servers"] > 1 for t in tasks) / n, 4),
            "multi_step_fraction": round(len(multi_step) / n, 4),
            # multi-step tasks whose answer needs a value passed along the chain (1.0 with require_chain)
            "chained_fraction": round(sum(bool(t["chain"]) for t in multi_step) / max(len(multi_step), 1), 4),
            **{f"rejected.{k}": v for k, v in sorted(rejected.items())}}


def split_strategy(name: str) -> Callable[[list[dict], float, int], None]:
    """The split function ``synthesizer.split`` names: a function of :mod:`.splits`, or a dotted path."""
    try:
        return resolve(name, splits.__name__)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"unknown split strategy {name!r}: choose from {', '.join(choices_in(splits.__name__))} "
                         f"or give the dotted path of your own function") from None


def assign_splits(tasks: list[dict], strategy: str, test_fraction: float, seed: int) -> None:
    """Set each task's ``split`` in place with the strategy named ``strategy`` (see :mod:`.splits`)."""
    split_strategy(strategy)(tasks, test_fraction, seed)


# -- the stage ------------------------------------------------------------------------------------------


def make_programs(settings: SynthesizerSettings, tool_rows: dict[str, dict], ctx: RunContext) -> Programs:
    """The question writer (synthesizer=dspy), the LM judge (an LM and ``judge``) and the live check
    (``determinism`` on) that this run's settings call for."""
    writer = judge = live_check = None
    if settings.kind == "dspy" and ctx.lm is not None:
        from programs.synthesizer import TaskWriter

        writer = TaskWriter(ctx.lm)
    if ctx.lm is not None and settings.judge:
        from programs.judge import TaskJudge

        judge = TaskJudge(ctx.lm, tool_rows)
    if settings.determinism != "off":
        timeouts = ctx.settings.servers

        def live_check(ts: list[dict]) -> dict:
            return live.changed_fields(ts, ctx.specs, ctx.install_dir, ctx.sandbox_root / "determinism",
                                       timeouts.call_timeout_s, timeouts.startup_timeout_s,
                                       ctx.settings.explorer.concurrency)
    return Programs(writer, judge, live_check)


def _synthesize(settings: SynthesizerSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    from ..executor import worker_lm_conf
    from . import shards

    trajectories, calls = inputs["explorer"].value
    simulators = inputs["simulator"].value          # firefly_exp.simulator.SimulatorFactory
    tools = servers.catalog(inputs)   # volatile as the probe found it
    tool_rows = {r["tool"]: r for r in tools.to_dicts()}
    programs = make_programs(settings, tool_rows, ctx)
    job = shards.SynthesisJob(trajectories, calls, tool_rows, simulators.make(), simulators.folder, tools,
                              ctx.seed, settings, worker_lm_conf(ctx.settings.lm),
                              programs.writer, programs.judge, programs.live_check)
    return shards.synthesize(ctx.executor, job, ctx.out)


def run(settings: SynthesizerSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """The synthesizer stage: tasks.jsonl from the explored trajectories (metrics hold the LM usage)."""
    return with_lm_usage(_synthesize, ctx.lm)(settings, inputs, ctx)


def load(folder: Path, ctx: RunContext) -> list[dict]:
    return read_jsonl(Path(folder) / "tasks.jsonl")


def _params(settings: SynthesizerSettings, ctx: RunContext) -> dict:
    uses_lm = settings.kind == "dspy" or settings.judge
    out: dict[str, Any] = {"seed": ctx.seed, "lm": ctx.lm_identity if uses_lm else None}
    if "." in settings.split:   # a split function of the user's: its source is part of what the tasks are
        out["split_code"] = code_version(split_strategy(settings.split))
    return out


STAGE = Stage("synthesizer", run, load, inputs=("explorer", "simulator", "servers", "probe"),
              artifacts=("tasks.jsonl",), params=_params,
              code=(sys.modules[__name__], wording, goal, fields, verify, splits, answers, live, embeddings,
                    quality))
