"""Stage 1b, probe: call every tool once on a freshly seeded sandbox to see what it returns.

Most MCP tools declare no output schema, so before the graph is built each tool is explored alone
(a one-node DAG, arguments from the catalog hints and the schema, the explorer's own machinery,
retries and sandboxes included). The graph stage reads these calls to infer output schemas and to
find *value* evidence: a tool whose result holds a value known to be valid for another tool's
parameter (a catalog hint, e.g. a table name, a file path, a commit hash) can feed that tool.

Every tool starts from the seeded files (the sandbox slot is restored between tools), and each
stateful server runs as one process for all its tools (a *probe session*, whatever its ``reset``):
servers with state in memory keep it from one probed tool to the next, which saves a
restart per tool (basic-memory takes ~5 s to start) and only ever adds context to a probe.

    metrics = probe_tools(tools, ctx, settings)     # ctx: the run's specs, folders and seed

A tool whose call failed is probed a second time (``second/``) with what the first pass saw and
repaired (:class:`firefly_exp.explorer.values.Knowledge`: a table name another tool listed, a value an
error text named); its calls follow the first pass's in what the graph and the explorer read.

Then every tool is probed once more (``repeat/``), at least :data:`REPEAT_GAP_S` later, on a sandbox
whose seeded files are dated :data:`MTIME_SHIFT_S` later: a tool that answers the same arguments
differently reads the wall clock, a file's times or something else that changes from run to run
(fresh ids). Those tools are ``volatile`` (``volatile.json``; :func:`firefly_exp.servers.catalog` marks
them for every later stage): never answer fields.

The ``probe`` stage (skipped when ``graph.probe`` is false) reads the explorer's settings.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import polars as pl

from . import explorer
from .explorer.values import Knowledge
from .results import value_of
from .sandbox import SEED_MTIME
from .servers import VOLATILE
from .settings import ExplorerSettings, Settings
from .stage import RunContext, Stage, StageResult


def probe_dags(tools: pl.DataFrame, prefix: str = "probe") -> list[dict]:
    """One single-node DAG per tool, in a stable order."""
    return [{"id": f"{prefix}-{row['tool']}", "index": i, "nodes": [row["tool"]], "edges": [], "shape": "single",
             "servers": [row["server"]], "depth": 1}
            for i, row in enumerate(tools.sort("tool").to_dicts())]


def probe_tools(tools: pl.DataFrame, ctx: RunContext, settings: ExplorerSettings) -> dict:
    """Explore every tool alone with the run's specs, install folder and seed (``calls.jsonl`` and
    ``trajectories.jsonl`` in ``ctx.out``, resumable; sandboxes under ``<sandbox_root>/probe``);
    returns the stage metrics."""
    # one session per server; each tool alone (no read appended after a write: explorer.verify_writes)
    session = settings.model_copy(update={"warm_stateful": True, "warm_all": True, "verify_writes": False})
    run = explorer.Exploration(tools, ctx.specs, ctx.install_dir, ctx.sandbox_root / "probe", session, ctx.seed,
                               explorer.HeuristicProposer())
    metrics = explorer.explore(probe_dags(tools), run, ctx.out)
    _, calls = explorer.load_trajectories(ctx.out)
    # a second pass for the tools that failed, with what the first pass saw and repaired (a table name
    # another tool listed, a unit an error named): the same for any scheduling, as every first-pass call is in
    knowledge = Knowledge.from_calls(calls, value_of)
    first = _answered(calls)
    failed = tools.filter(~pl.col("tool").is_in(sorted(first)))
    second_answered: set[str] = set()
    if failed.height and knowledge.observed:
        second = explorer.Exploration(failed, ctx.specs, ctx.install_dir, ctx.sandbox_root / "probe-2", session,
                                      ctx.seed, explorer.HeuristicProposer(), knowledge)
        explorer.explore(probe_dags(failed, SECOND), second, ctx.out / SECOND)
        more = explorer.load_trajectories(ctx.out / SECOND)[1]
        calls, second_answered = calls + more, _answered(more)
    answered = first | second_answered
    # the same calls again, later and on later-dated files: what changes is not the tool's answer. Only
    # the tools that answered: a failure is never compared (volatile_tools), so repeating it costs and
    # tells nothing (on the full catalog, a fifth of the probe's time)
    time.sleep(REPEAT_GAP_S)
    repeat = session.model_copy(update={"seed_mtime": SEED_MTIME + MTIME_SHIFT_S})
    again_tools = tools.filter(pl.col("tool").is_in(sorted(first)))
    again = explorer.Exploration(again_tools, ctx.specs, ctx.install_dir, ctx.sandbox_root / "probe-repeat", repeat,
                                 ctx.seed, explorer.HeuristicProposer())
    explorer.explore(probe_dags(again_tools), again, ctx.out / REPEAT)
    repeated = explorer.load_trajectories(ctx.out / REPEAT)[1]
    if second_answered:
        again2_tools = failed.filter(pl.col("tool").is_in(sorted(second_answered)))
        again2 = explorer.Exploration(again2_tools, ctx.specs, ctx.install_dir, ctx.sandbox_root / "probe-repeat-2",
                                      repeat, ctx.seed, explorer.HeuristicProposer(), knowledge)
        explorer.explore(probe_dags(again2_tools, SECOND), again2, ctx.out / REPEAT / SECOND)
        repeated = repeated + explorer.load_trajectories(ctx.out / REPEAT / SECOND)[1]
    volatile = volatile_tools(calls, repeated)
    (ctx.out / VOLATILE).write_text(json.dumps(volatile, indent=1) + "\n")
    return {**{k: v for k, v in metrics.items() if k in ("calls", "errors", "wall_s")},
            "tools": len(tools), "tools_answered": len(answered),
            "answered_fraction": round(len(answered) / max(len(tools), 1), 4),
            "answered_by_server": dict(sorted(Counter(t.split("/", 1)[0] for t in answered).items())),
            "volatile_found": len(volatile), "volatile_tools": volatile}


def _answered(calls: list[dict]) -> set[str]:
    return {f"{c['server']}/{c['tool']}" for c in calls if not c["is_error"]}


REPEAT = "repeat"
SECOND = "second"       # the second pass over the tools the first could not get an answer from
REPEAT_GAP_S = 1.1       # a clock read to the second ticks between the two calls of a tool
MTIME_SHIFT_S = 90061    # the repeat's seeded files: a day, an hour, a minute and a second later


def _result(call: dict) -> str:
    return json.dumps([call["content"], call.get("structured")], sort_keys=True, default=str)


def volatile_tools(first: list[dict], again: list[dict]) -> list[str]:
    """The tools (``server/tool``) that answered a successful call with the same arguments differently in
    the two probes. Calls that failed in either probe (a timeout, say) are not compared: only answers.

    >>> c = lambda tool, text, err=False: {"dag_id": "d-" + tool, "server": "s", "tool": tool, "arguments": {},
    ...                                  "content": [{"type": "text", "text": text}], "is_error": err}
    >>> volatile_tools([c("now", "12:00:01"), c("add", "3"), c("slow", "x")],
    ...                [c("now", "12:00:02"), c("add", "3"), c("slow", "timed out", True)])
    ['s/now']
    """
    def key(c: dict) -> tuple:
        return c["dag_id"], json.dumps(c["arguments"], sort_keys=True, default=str)

    answers = {key(c): _result(c) for c in first if not c["is_error"]}
    return sorted({f"{c['server']}/{c['tool']}" for c in again
                   if not c["is_error"] and key(c) in answers and answers[key(c)] != _result(c)})


def tool_hints(specs: dict, tools: pl.DataFrame) -> dict[str, dict[str, list]]:
    """Per tool, per parameter, the catalog's hinted values (``<tool>.<param>`` over ``<param>``)."""
    out: dict[str, dict[str, list]] = {}
    for row in tools.to_dicts():
        hints = (specs.get(row["server"]) or {}).get("hints") or {}
        name = row["tool"].split("/", 1)[1]
        params = (json.loads(row["input_schema"]) or {}).get("properties") or {}
        found = {p: explorer.hinted_values(hints, name, p) for p in params}
        found = {p: v for p, v in found.items() if v}
        if found:
            out[row["tool"]] = found
    return out


# -- stage ---------------------------------------------------------------------------------------------------


def run(settings: ExplorerSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    return probe_tools(inputs["servers"].value, ctx, settings)


def load(folder: Path, ctx: RunContext) -> list[dict]:
    """The probe's calls (in call order; the second pass's after the first), what the graph and the
    explorer read."""
    calls = explorer.load_trajectories(folder)[1]
    if (folder / SECOND).exists():
        calls = calls + explorer.load_trajectories(folder / SECOND)[1]
    return calls


def _params(settings: ExplorerSettings, ctx: RunContext) -> dict:
    """The seed, the catalog hints the arguments come from (with the servers stage's address, which
    fixes the tools, they fix ``tool_hints``), and the proposer the probe really uses: always the
    heuristic one, whatever ``explorer.kind``, so switching the explorer does not re-probe."""
    return {"seed": ctx.seed, "kind": "heuristic", "verify_writes": False,
            "hints": {sid: spec.get("hints") or {} for sid, spec in sorted(ctx.specs.items())}}


def _skip(settings: Settings) -> str | None:
    return None if settings.graph.probe else "graph.probe=false"


STAGE = Stage("probe", run, load, inputs=("servers",), group="explorer", params=_params, skip=_skip,
              code=(run, explorer.runtime, explorer.proposal, explorer.values))
