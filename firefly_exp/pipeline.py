"""The orchestrator: the only module that knows Hydra and MLflow.

    catalog --servers--> tools --graph--> tool graph --sampler--> DAGs --explorer--> trajectories
    trajectories --simulator--> replay cache --synthesizer--> verified tasks --dataset--> parquet/JSONL + card
    verified tasks --eval--> scores

Each stage is a plain function from inputs and parameters to an artifact folder in the
content-addressed store; this module builds it from its config group, reuses a finished folder
whose address is unchanged, logs a nested MLflow run per stage, and writes ``summary.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from . import (__version__, dataset, evaluate, executor, explorer, graph, observed, probe, sampler, servers,
               simulator, synthesizer)
from . import embeddings
from . import train
from .simulator import fidelity, live, retrieval
from .train import augment as train_augment, chat as train_chat, policy as train_policy_mod, rewards as train_rewards
from .store import StageStore, code_version, read_jsonl, write_json_atomic


class ConfigError(ValueError):
    """Bad input from the user: printed as one line that names the problem and the fix."""


@dataclass
class StageResult:
    name: str
    key: str
    folder: Path
    metrics: dict
    reused: bool
    wall_s: float


class Stages:
    """Runs stages at their content addresses and logs each as a nested MLflow run."""

    def __init__(self, store: StageStore, resume: bool, summary: dict):
        self.store, self.resume, self.summary = store, resume, summary

    def run(self, name: str, params: Any, inputs: dict[str, StageResult], fn: Callable[[Path], dict],
            code: tuple, artifacts: tuple[str, ...] = (), log: Callable[[Path], None] | None = None) -> StageResult:
        import mlflow

        from . import tracking

        key = self.store.address(name, params, {k: v.key for k, v in inputs.items()}, code_version(*code))
        # one process computes a folder at a time: parallel sweep jobs that need the same stage wait
        # for the first, then reuse what it finished
        with _stage_lock(self.store.root / name / f".{key}.lock"):
            folder = self.store.folder(name, key)
            manifest = self.store.manifest(folder)
            if manifest is not None and not self.resume:
                shutil.move(str(folder), f"{folder}.old-{int(time.time())}")
                folder, manifest = self.store.folder(name, key), None
            started = time.perf_counter()
            if manifest is not None:
                metrics, reused, wall = manifest["metrics"], True, manifest["wall_s"]
                print(f"[{name}] reused {folder.relative_to(self.store.root.parent)} (inputs and config unchanged)")
            else:
                print(f"[{name}] running -> {folder.relative_to(self.store.root.parent)}")
                metrics = fn(folder)
                wall = round(time.perf_counter() - started, 3)
                reused = False
                self.store.finish(folder, {"stage": name, "key": key, "params": params, "metrics": metrics,
                                           "inputs": {k: v.key for k, v in inputs.items()}, "wall_s": wall,
                                           "code_version": __version__, "finished": time.time()})
        with mlflow.start_run(run_name=name, nested=True):
            mlflow.set_tags({"stage": name, "store_key": key, "reused": str(reused)})
            tracking.log_params(params if isinstance(params, dict) else {"params": params})
            tracking.log_metrics({**metrics, "wall_s": wall, "reused": float(reused)})
            tracking.log_artifacts(folder, list(artifacts) + ["manifest.json"], name)
            if log is not None:  # stage-specific logging inside the nested run (e.g. mlflow.data inputs)
                log(folder)
        result = StageResult(name, key, folder, metrics, reused, wall)
        self.summary["stages"][name] = {"key": key, "folder": str(folder), "reused": reused, "wall_s": wall,
                                        "metrics": metrics}
        return result


@contextlib.contextmanager
def _stage_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)   # released by the OS if the process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def with_lm_usage(fn: Callable[[Path], dict], lm: Any) -> Callable[[Path], dict]:
    """A stage function whose metrics also hold the LM calls, tokens and cost it spent (with an LM)."""
    if lm is None:
        return fn
    from programs.lm import history_ids, lm_usage

    def run(out: Path) -> dict:
        before = history_ids(lm)
        metrics = fn(out)   # with executor=ray it already holds the workers' LM usage: add ours to it
        return {**metrics, **{k: round(metrics.get(k, 0) + v, 6) for k, v in lm_usage(lm, before).items()}}

    return run


def server_specs(cfg_servers: dict) -> dict[str, dict]:
    """The enabled catalog entries, each with its id; unknown ids are a one-line error."""
    catalog = cfg_servers.get("catalog") or {}
    enabled = cfg_servers.get("enabled") or sorted(catalog)
    unknown = [s for s in enabled if s not in catalog]
    if unknown:
        raise ConfigError(f"unknown server(s) {', '.join(unknown)} in servers.enabled: known are "
                          f"{', '.join(sorted(catalog))} (add an entry to conf/servers/catalog.yaml)")
    for sid in enabled:
        reset = catalog[sid].get("reset", "restart")
        if reset not in ("files", "restart", "always"):
            raise ConfigError(f"servers.catalog.{sid}.reset is '{reset}': use files (state only in the sandbox "
                              f"files, warm process), restart (a fresh process after a state-changing call) "
                              f"or always (a fresh process per DAG)")
    return {sid: {**catalog[sid], "id": sid} for sid in enabled}


def check_installed(specs: dict[str, dict], install_dir: Path) -> None:
    """A one-line error naming the enabled servers that are not installed, and the command that installs them."""
    from .install import command_path, enabled_ids

    missing = [sid for sid, spec in specs.items() if not command_path(spec, install_dir).exists()]
    if not missing:
        return
    target = "make servers" if set(missing) <= set(enabled_ids("default")) else "make servers-full"
    raise ConfigError(f"{len(missing)} enabled server(s) not installed in {install_dir}: {', '.join(missing)}: "
                      f"run `{target}` (or `python -m firefly_exp.install {' '.join(missing)}`)")


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Run the whole experiment described by ``cfg``; returns the summary (also summary.json)."""
    from programs.lm import configure_lm

    conf = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(run_dir or _hydra_output_dir() or Path(conf["paths"]["outputs"]) / "runs" /
                   time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    specs = server_specs(conf["servers"])
    check_installed(specs, Path(conf["servers"]["install_dir"]))
    seed = int(conf["seed"])
    lm = configure_lm(conf.get("lm"))
    started = time.perf_counter()
    try:
        runner = executor.make_executor(conf.get("executor"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    summary: dict = {"name": conf["name"], "seed": seed, "run_dir": str(run_dir), "version": __version__,
                     "choices": _hydra_choices(), "overrides": _hydra_overrides(), "sweep": _hydra_sweep(),
                     "executor": executor.describe(runner), "lm": (conf.get("lm") or {}).get("model"),
                     "stages": {}}
    try:
        return _run(cfg, conf, run_dir, specs, seed, lm, started, summary, runner)
    finally:
        runner.close()


def _run(cfg: DictConfig, conf: dict, run_dir: Path, specs: dict, seed: int, lm: Any, started: float,
         summary: dict, runner: executor.Executor) -> dict:
    import mlflow

    from . import tracking

    stages = Stages(StageStore(conf["paths"]["store"]), bool(conf.get("resume", True)), summary)
    exp_id = tracking.setup(conf["mlflow"]["tracking_uri"], conf["mlflow"]["experiment"],
                            conf["mlflow"].get("artifact_location"))
    with mlflow.start_run(run_name=f"{conf['name']}-{run_dir.name}") as parent:
        summary["mlflow"] = {"tracking_uri": conf["mlflow"]["tracking_uri"], "experiment_id": exp_id,
                             "run_id": parent.info.run_id}
        mlflow.set_tags({"experiment": conf["name"], "run_dir": str(run_dir), "seed": str(seed),
                         "overrides": " ".join(summary["overrides"]), "executor": runner.kind,
                         **({"sweep_dir": summary["sweep"]["dir"], "sweep_job": str(summary["sweep"]["job"])}
                            if summary["sweep"] else {}),
                         **{f"choice.{k}": str(v) for k, v in summary["choices"].items()}})
        tracking.log_params({"seed": seed, "name": conf["name"], **{f"choice.{k}": v for k, v in
                                                                     summary["choices"].items()}})
        mlflow.log_artifact(str(run_dir / "config.yaml"))
        sc, install_dir = conf["servers"], Path(conf["servers"]["install_dir"])
        sandbox_root = run_dir / "sandbox"

        tools_st = stages.run(
            "servers", {"specs": specs, "startup_timeout_s": sc["startup_timeout_s"]}, {},
            lambda out: servers.discover_tools(list(specs.values()), install_dir, sandbox_root, out,
                                               sc["startup_timeout_s"], sc["call_timeout_s"]),
            (servers,), ("tools.parquet", "servers.json"))
        tools = servers.load_tools(tools_st.folder)
        reports = json.loads((tools_st.folder / "servers.json").read_text())
        summary["servers"] = [{k: r.get(k) for k in ("id", "status", "server_version", "n_tools", "tools_hash",
                                                     "reason")} for r in reports]
        mlflow.log_dict(summary["servers"], "servers.json")

        g = conf["graph"]
        e = conf["explorer"]
        settings = explorer.ExploreSettings(**{k: v for k, v in e.items() if k in
                                               explorer.ExploreSettings.__dataclass_fields__})
        graph_inputs, probe_calls, hints = {"servers": tools_st}, None, None
        if g.get("probe", True):
            hints = probe.tool_hints(specs, tools)
            probe_st = stages.run(
                "probe", {"seed": seed, "hints": hints, "settings": settings.__dict__}, {"servers": tools_st},
                lambda out: probe.probe_tools(tools, specs, install_dir, sandbox_root, out, seed, settings),
                (probe, explorer), ())
            probe_calls = explorer.load_trajectories(probe_st.folder)[1]
            tools = probe.with_volatile(tools, probe_st.folder)   # answers that changed between two probes
            graph_inputs["probe"] = probe_st
        observed_calls, observed_key = _observed_calls(g.get("observed_from"))
        graph_st = stages.run(
            "graph", {**g, "lm": summary["lm"], "observed_key": observed_key}, graph_inputs,
            with_lm_usage(lambda out: graph.build_graph(
                tools, out, g["weights"], g["thresholds"], g["max_out_degree"], g.get("lm_judge"), lm,
                embedding={k: v for k, v in (g.get("embedding") or {}).items() if k != "cache"},
                observed_calls=observed_calls, infer_schemas=g.get("infer_schemas", True),
                probe_calls=probe_calls, hints=hints, drop_echoes=g.get("drop_echoes", True),
                cache_dir=Path(conf["paths"]["outputs"]) / "cache" if (g.get("embedding") or {}).get("cache") else None),
                lm),
            (graph,), ("edges.parquet", "nodes.parquet", "graph.png", "report.json", "inferred_schemas.parquet"))
        tool_graph = graph.load_graph(graph_st.folder)

        s = conf["sampler"]
        dags_st = stages.run(
            "sampler", {**s, "seed": seed}, {"graph": graph_st},
            lambda out: sampler.sample_subdags(tool_graph, out, seed, **s),
            (sampler,), ("dags.jsonl", "shapes.png"))
        dags = read_jsonl(dags_st.folder / "dags.jsonl")

        explore_st = stages.run(
            "explorer", {**e, "seed": seed, "lm": summary["lm"] if e["kind"] == "dspy" else None},
            {"sampler": dags_st, "servers": tools_st},
            with_lm_usage(lambda out: executor.explore(runner, dags, tools, specs, install_dir, sandbox_root, out, seed,
                                                       e["kind"], conf.get("lm"), lm, settings), lm),
            (explorer,), ())
        trajectories, calls = explorer.load_trajectories(explore_st.folder)

        # edge validity: along how many sampled edges exploration really passed a value
        flow_st = stages.run(
            "flow", {}, {"sampler": dags_st, "explorer": explore_st},
            lambda out: _save_json(out / "flow.json", observed.edge_validity(dags, calls)),
            (observed,), ("flow.json",))


        m = conf["simulator"]
        scopes = {sid: spec.get("state_scope") or sid for sid, spec in specs.items()}
        sim_st = stages.run(
            "simulator", {**m, "scopes": scopes}, {"explorer": explore_st},
            lambda out: simulator.build_simulator(calls, tools, out, scopes, m["cascade"], m["retrieval_threshold"]),
            (simulator, retrieval), ("meta.json",))
        sim_kwargs: dict = {}
        if lm is not None and m.get("adapt"):
            from programs.adapter import ResultAdapter

            sim_kwargs["adapter"] = ResultAdapter(lm)
        if m.get("live"):
            from .simulator.live import LiveFallback

            sim_kwargs["live"] = LiveFallback(specs, install_dir, sandbox_root / "live", sc["call_timeout_s"],
                                              sc["startup_timeout_s"])
            sim_kwargs["cascade"] = tuple(m["cascade"]) + ("live",)
        sim = simulator.Simulator.load(sim_st.folder, tools, **sim_kwargs)

        y = conf["synthesizer"]
        tool_rows = {r["tool"]: r for r in tools.to_dicts()}
        writer = None
        if y["kind"] == "dspy" and lm is not None:
            from programs.synthesizer import TaskWriter

            writer = TaskWriter(lm)
        judge = None
        if lm is not None and y.get("judge", True):
            from programs.judge import TaskJudge

            judge = TaskJudge(lm, tool_rows)
        live_check = None
        if y.get("determinism", "off") != "off":
            from .simulator.live import changed_fields

            def live_check(ts: list[dict]) -> dict:
                return changed_fields(ts, specs, install_dir, sandbox_root / "determinism", sc["call_timeout_s"],
                                      sc["startup_timeout_s"], int(conf["explorer"].get("concurrency", 4)))
        tasks_st = stages.run(
            "synthesizer", {**y, "seed": seed, "lm": summary["lm"] if y["kind"] == "dspy" or judge else None},
            {"explorer": explore_st, "simulator": sim_st},
            with_lm_usage(lambda out: executor.synthesize(
                runner, trajectories, calls, {d["id"]: d for d in dags}, tool_rows, sim, sim_st.folder, tools, out,
                seed, {k: v for k, v in y.items() if k not in ("kind", "judge")}, y["kind"], conf.get("lm"),
                writer=writer, judge=judge, live_check=live_check), lm),
            (synthesizer, live, embeddings), ("tasks.jsonl",))
        tasks = read_jsonl(tasks_st.folder / "tasks.jsonl")

        f = m["fidelity"]
        fid_kwargs: dict = {"scopes": scopes, "cascade": tuple(m["cascade"]),
                            "retrieval_threshold": m["retrieval_threshold"]}
        if f.get("live"):  # measure the cascade with the live fallback behind it
            from .simulator.live import LiveFallback

            fid_kwargs["live"] = LiveFallback(specs, install_dir, sandbox_root / "live-fidelity",
                                              sc["call_timeout_s"], sc["startup_timeout_s"])
            fid_kwargs["cascade"] += ("live",)
        fid_st = stages.run(
            "fidelity", {**f, "seed": seed, "cascade": m["cascade"],
                         "retrieval_threshold": m["retrieval_threshold"], "scopes": scopes},
            {"explorer": explore_st, "synthesizer": tasks_st},
            lambda out: _save_json(out / "fidelity.json", fidelity.measure_fidelity(
                calls, tasks, tools, seed, f["holdout_fraction"], **fid_kwargs)),
            (fidelity,), ("fidelity.json",))

        data_st = stages.run(
            "dataset", {"name": conf["name"], "seed": seed}, {"synthesizer": tasks_st, "servers": tools_st},
            lambda out: dataset.export_dataset(tasks, tool_rows, out, len(trajectories), tasks_st.metrics,
                                               conf["name"], seed),
            (dataset,), ("README.md", "stats.json", "train.parquet", "test.parquet", "train.jsonl", "test.jsonl"),
            log=dataset.log_to_mlflow)
        summary["tasks"] = data_st.metrics
        summary["dataset"] = str(data_st.folder)

        tool_schemas = evaluate.tool_schemas(tools.to_dicts())
        descriptions = {r["tool"]: r.get("description") or "" for r in tools.to_dicts()}
        tr = conf.get("train") or {}
        train_st = None
        if tr.get("enabled"):
            train_st = stages.run(
                "train", {k: v for k, v in tr.items() if k != "enabled"}, {"synthesizer": tasks_st, "simulator": sim_st},
                lambda out: train.train_policy(
                    tasks, lambda: simulator.Simulator.load(sim_st.folder, tools, **sim_kwargs), tool_schemas,
                    descriptions, out, int(tr["seed"]), tr["policy"], tr["sft"], tr["grpo"], tr["rewards"],
                    tr["curve"]["split"], int(tr["curve"]["every"]), int(tr["curve"]["max_tasks"])),
                (train, train_policy_mod, train_chat, train_rewards, train_augment), ("curves.json", "curves.png"),
                log=train.log_to_mlflow)
        else:
            summary["stages"]["train"] = {"skipped": True, "reason": "train=none"}

        v = conf["eval"]
        held_out = [t for t in tasks if t["split"] == v["split"]]
        eval_sim = simulator.Simulator.load(sim_st.folder, tools, **sim_kwargs)
        policies, skipped = _eval_policies(v, tool_schemas, descriptions, train_st, tr, lm, eval_sim)
        unknown = [p for p in v["policies"] if p not in policies and p not in skipped]
        if unknown:
            raise ConfigError(f"unknown eval policy {unknown}: choose from {sorted([*policies, *skipped])} "
                              f"(eval.policies)")
        eval_st = stages.run(
            "eval", {**v, "seed": seed}, {"synthesizer": tasks_st, "simulator": sim_st,
                                          **({"train": train_st} if train_st else {})},
            lambda out: {**evaluate.evaluate(held_out, eval_sim, {p: policies[p] for p in v["policies"]
                                                                  if p in policies}, out, seed, v["k"],
                                               v.get("reward", "binary")),
                         "skipped": skipped},
            (evaluate, train_policy_mod), ("eval.json",))

        summary["wall_s"] = round(time.perf_counter() - started, 3)
        summary["counts"] = {"servers": tools_st.metrics["servers"], "tools": tools_st.metrics["tools"],
                             "edges": graph_st.metrics["edges"], "dags": dags_st.metrics["dags"],
                             "calls": explore_st.metrics["calls"], "verified_tasks": tasks_st.metrics["tasks"],
                             "test_tasks": len(held_out)}
        summary["counts"]["tasks_per_dag"] = round(tasks_st.metrics["tasks"] / max(explore_st.metrics["dags"], 1), 4)
        summary["counts"]["edge_validity"] = flow_st.metrics["edge_validity"]
        summary["eval"] = eval_st.metrics["policies"]
        summary["simulator"] = {"reward_flip_rate": fid_st.metrics["calls"]["reward_flip_rate"],
                                "reward_flip_rate_trajectories": fid_st.metrics["trajectories"]["reward_flip_rate"],
                                "hits": eval_st.metrics["simulator_hits"], "fidelity": fid_st.metrics}
        summary["cost"] = {"lm_cost_usd": round(sum(st.get("metrics", {}).get("lm_cost_usd") or 0
                                                    for st in summary["stages"].values()), 6),
                           "lm_calls": sum(st.get("metrics", {}).get("lm_calls") or 0
                                           for st in summary["stages"].values())}
        tracking.log_metrics({**{f"count.{k}": v for k, v in summary["counts"].items()},
                              **{f"tasks.{k}": v for k, v in summary["tasks"].items()},
                              **{f"eval.{p}.{m}": x for p, ms in summary["eval"].items() for m, x in ms.items()},
                              **{f"simulator.{k}": summary["simulator"][k] for k in
                                 ("reward_flip_rate", "reward_flip_rate_trajectories", "hits")},
                              **{f"cost.{k}": v for k, v in summary["cost"].items()},
                              "stages_reused": sum(bool(st.get("reused")) for st in summary["stages"].values()),
                              "wall_s": summary["wall_s"]})
        write_json_atomic(run_dir / "summary.json", summary)
        mlflow.log_artifact(str(run_dir / "summary.json"))
    _point_latest(Path(conf["paths"]["outputs"]), run_dir)
    return summary


def _eval_policies(v: dict, tool_schemas: dict, descriptions: dict, train_st: StageResult | None, tr: dict,
                   lm: Any, sim: "simulator.Simulator") -> tuple[dict[str, Callable], dict[str, str]]:
    """The evaluation policies available in this run, and why the others listed in eval.policies are skipped."""
    policies: dict[str, Callable] = {"gold": evaluate.gold_policy,
                                     "random": evaluate.make_random_policy(tool_schemas)}
    skipped: dict[str, str] = {}
    temperature = float(v.get("temperature", 1.0)) if int(v["k"]) > 1 else 0.0
    if train_st is not None:
        train_policy_mod.set_threads(tr["policy"])
    for name in ("sft", "grpo"):
        if train_st is None:
            skipped[name] = "train=none"
        elif name in v["policies"]:
            model, tok = train_policy_mod.load_policy(train_st.folder / name, tr["policy"].get("device", "cpu"))
            policies[name] = train_policy_mod.LMPolicy(model, tok, sim, tool_schemas,
                                                       train_policy_mod.settings_from(tr["policy"]), temperature,
                                                       descriptions)
    if lm is None:
        skipped["dspy_react"] = "lm=none"
    elif "dspy_react" in v["policies"]:
        from programs.react import ReActPolicy

        policies["dspy_react"] = ReActPolicy(lm, sim, tool_schemas, descriptions, temperature=temperature)
    return policies, skipped


def _save_json(path: Path, metrics: dict) -> dict:
    write_json_atomic(path, metrics)
    return metrics


def _observed_calls(source: str | None) -> tuple[list[dict] | None, str | None]:
    """The calls of an earlier exploration (``graph.observed_from``) and that folder's store key."""
    if not source:
        return None, None
    folder = Path(source)
    if (folder / "summary.json").exists():  # a run folder: its summary names its explorer folder
        folder = Path(json.loads((folder / "summary.json").read_text())["stages"]["explorer"]["folder"])
    manifest = folder / "manifest.json"
    if not (folder / "calls.jsonl").exists() or not manifest.exists():
        raise ConfigError(f"graph.observed_from={source}: not a finished explorer folder (outputs/store/explorer/<key>) "
                          f"or run folder; use graph.observed_from=null")
    _, calls = explorer.load_trajectories(folder)
    return calls, json.loads(manifest.read_text())["key"]


def _hydra_output_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except Exception:  # noqa: BLE001 - not running under @hydra.main (tests, library use)
        return None


def _hydra_overrides() -> list[str]:
    """The command-line overrides of this job (a sweep job's own values), as Hydra recorded them."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001
        return []


def _hydra_sweep() -> dict | None:
    """The sweep folder and this job's number when running under ``-m``, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return {"dir": str(Path(hc.sweep.dir).resolve()), "job": int(hc.job.num)}
    except Exception:  # noqa: BLE001
        return None


def _hydra_choices() -> dict:
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: v for k, v in HydraConfig.get().runtime.choices.items()
                if not k.startswith("hydra") and v is not None}
    except Exception:  # noqa: BLE001
        return {}


def _point_latest(outputs: Path, run_dir: Path) -> None:
    link = outputs / "latest"
    tmp = outputs / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(run_dir, outputs))
        os.replace(tmp, link)
    except OSError as exc:
        print(f"[firefly] could not update {link}: {exc}", file=sys.stderr)


def print_summary(summary: dict) -> None:
    c = summary["counts"]
    print("\n== firefly_exp run:", summary["run_dir"])
    print(f"servers {c['servers']} | tools {c['tools']} | edges {c['edges']} | DAGs {c['dags']} | "
          f"calls {c['calls']} | verified tasks {c['verified_tasks']} (held out {c['test_tasks']})")
    print(f"edge validity {c.get('edge_validity', 0):.3f} | verified tasks per explored DAG {c.get('tasks_per_dag', 0):.3f}")
    t = summary.get("tasks") or {}
    if t:
        print(f"  tasks: {t['verified']} verified ({t['splits']}, split {t['split_strategy']}), "
              f"calls/task {t['calls_per_task_mean']} {t['calls_per_task_hist']}, fields/task "
              f"{t['answer_fields_mean']}, multi-server {t['multi_server_fraction']:.1%}, yield/DAG "
              f"{t['yield_per_dag']}; dataset: {summary['dataset']}")
    for name, st in summary["stages"].items():
        if "wall_s" in st:
            print(f"  {name:<12} {'reused' if st['reused'] else 'ran   '} {st['wall_s']:>8.1f}s")
    for policy, m in summary["eval"].items():
        print(f"  eval {policy:<8} pass@1 {m['pass@1']:.3f}  field accuracy {m['field_accuracy']:.3f}  "
              f"calls/task {m['calls_per_task']:.2f}")
    sim = summary["simulator"]
    print(f"  simulator: reward-flip rate {sim['reward_flip_rate']:.3f} on held-out calls "
          f"({sim['reward_flip_rate_trajectories']:.3f} on held-out DAGs); eval hits {sim['hits']}")
    ml = summary["mlflow"]
    print(f"MLflow run {ml['run_id']} in {ml['tracking_uri']}")
    print(f"  look at it: .venv/bin/mlflow ui --backend-store-uri {ml['tracking_uri']}  (then open http://127.0.0.1:5000)")
    print(f"summary: {summary['run_dir']}/summary.json (also outputs/latest/summary.json)")
