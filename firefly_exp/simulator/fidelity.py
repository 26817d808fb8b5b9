"""How faithful is the simulator to live execution? Hold recorded live calls out, rebuild the
simulator from the rest, and replay the held-out calls and tasks through it.

Two hold-outs, each with its own seeded draw:
- ``calls``: a fraction of individual recorded calls is removed from the cache;
- ``trajectories``: every call of a fraction of whole explored DAGs is removed.

For each: the exact-output rate (simulated result identical to the live one), per-field agreement
(share of the live result's leaves that the simulated result reproduces), the hit breakdown, and
the **reward-flip rate**: among tasks whose gold chain touches a held-out call, the share whose
binary reward under simulation differs from live execution (where it is 1 by construction).
"""

from __future__ import annotations

from collections import defaultdict

import polars as pl

from ..results import answers_match, get_path, leaves, value_of
from ..seeding import rng_for
from ..settings import SimulatorSettings
from ..stage import RunContext, Stage, StageResult
from ..store import write_json_atomic
from . import HIT_KINDS, Simulator, canonical_args, state_scopes


def _agreement(live: dict, simulated: dict) -> float:
    expected = dict(leaves(value_of(live)))
    if not expected:
        return float(value_of(live) == value_of(simulated))
    got = dict(leaves(value_of(simulated)))
    return sum(1 for p, v in expected.items() if p in got and answers_match(v, got[p])) / len(expected)


def _same(live: dict, simulated: dict) -> bool:
    return (live["content"] == simulated["content"] and live.get("structured") == simulated.get("structured")
            and bool(live["is_error"]) == bool(simulated["is_error"]))


def _measure(sim: Simulator, held_calls: list[dict], tasks: list[dict], held_keys: set,
             episode_calls: dict[str, list[dict]]) -> dict:
    last_held: dict[str, int] = defaultdict(int)
    for c in held_calls:
        last_held[c["episode"]] = max(last_held[c["episode"]], c["seq"])
    held_ids = {(c["episode"], c["seq"]) for c in held_calls}
    same, agree, n = 0, 0.0, 0
    hits: dict[str, int] = defaultdict(int)
    for ep_id, upto in last_held.items():
        episode = sim.episode()
        # replay the whole episode up to its last held-out call, so the state matches the live run
        for c in episode_calls[ep_id]:
            if c["seq"] > upto:
                break
            got = episode.step(c["server"], c["tool"], c["arguments"])
            if (ep_id, c["seq"]) in held_ids:
                n += 1
                hits[got["hit"]] += 1
                same += _same(c, got)
                agree += _agreement(c, got)
    flips, touched = 0, 0
    for task in tasks:
        keys = {(g["server"], g["tool"], canonical_args(g["arguments"], sim.tools[f"{g['server']}/{g['tool']}"]
                                                       ["input_schema"])) for g in task["gold_calls"]}
        if not keys & held_keys:
            continue
        touched += 1
        episode = sim.episode()
        results = [episode.step(g["server"], g["tool"], g["arguments"]) for g in task["gold_calls"]]
        ok = all(answers_match(v, get_path(value_of(results[task["provenance"][k]["step"]]),
                                           task["provenance"][k]["path"], None)) for k, v in task["answer"].items())
        flips += int(not ok)
    return {"held_out_calls": n, "exact_output_rate": round(same / max(n, 1), 4),
            "field_agreement": round(agree / max(n, 1), 4), "tasks_touched": touched,
            "reward_flip_rate": round(flips / max(touched, 1), 4),
            **{f"hits.{k}": hits.get(k, 0) for k in HIT_KINDS}}


def measure_fidelity(calls: list[dict], tasks: list[dict], tools: pl.DataFrame, seed: int,
                     holdout_fraction: float = 0.2, **sim_kwargs) -> dict:
    """Fidelity of the simulator against the recorded live calls (see the module docstring)."""
    info = {r["tool"]: r for r in tools.to_dicts()}
    usable = [c for c in calls if c.get("error_kind") not in ("timeout", "crash", "protocol")
              and f"{c['server']}/{c['tool']}" in info]
    episode_calls: dict[str, list[dict]] = defaultdict(list)
    for c in sorted(usable, key=lambda c: c["seq"]):
        episode_calls[c["episode"]].append(c)
    out = {}
    dags = sorted({c["dag_id"] for c in usable})
    held_dags = {d for d in dags if rng_for(seed, "fidelity", "dag", d).random() < holdout_fraction}
    for mode in ("calls", "trajectories"):
        if mode == "calls":
            held = [c for c in usable if rng_for(seed, "fidelity", "call", c["episode"], c["seq"]).random()
                    < holdout_fraction]
        else:
            held = [c for c in usable if c["dag_id"] in held_dags]
        held_ids = {(c["episode"], c["seq"]) for c in held}
        sim = Simulator.from_calls([c for c in usable if (c["episode"], c["seq"]) not in held_ids], tools,
                                   **sim_kwargs)
        held_keys = {(c["server"], c["tool"], canonical_args(c["arguments"], sim.tools[f"{c['server']}/{c['tool']}"]
                                                             ["input_schema"])) for c in held}
        task_pool = tasks if mode == "calls" else [t for t in tasks if t["dag_id"] in held_dags]
        out[mode] = _measure(sim, held, task_pool, held_keys, episode_calls)
    return out


# -- the stage ------------------------------------------------------------------------------------------


def run(settings: SimulatorSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """The fidelity stage: the simulator's cascade measured against the explored calls and the tasks."""
    _, calls = inputs["explorer"].value
    sim_kwargs: dict = {"scopes": state_scopes(ctx.specs), "cascade": tuple(settings.cascade),
                        "retrieval_threshold": settings.retrieval_threshold}
    if settings.fidelity.live:   # measure the cascade with the live fallback behind it
        from .live import LiveFallback

        sim_kwargs["live"] = LiveFallback.for_run(ctx, "live-fidelity")
        sim_kwargs["cascade"] += ("live",)
    metrics = measure_fidelity(calls, inputs["synthesizer"].value, inputs["servers"].value, ctx.seed,
                               settings.fidelity.holdout_fraction, **sim_kwargs)
    write_json_atomic(ctx.out / "fidelity.json", metrics)
    return metrics


STAGE = Stage("fidelity", run, inputs=("explorer", "synthesizer", "servers"), artifacts=("fidelity.json",),
              group="simulator", params=lambda settings, ctx: {"seed": ctx.seed, "scopes": state_scopes(ctx.specs)})
