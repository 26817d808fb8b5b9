"""Experiments, sweeps and scale-out: executor=ray against executor=local, the comparison report, the
ablation and SLURM configs. Real servers (the smoke set), a real local Ray instance, a real MLflow store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF, installed, make_config
from firefly_exp import PROJECT_ROOT
from firefly_exp.pipeline import ConfigError, run
from firefly_exp.store import read_jsonl

# a tiny experiment: smoke servers, 10 DAGs, no embedding model (seconds per run)
# recipe tasks from 10 DAGs: every seed's job holds some out (6 DAGs of 3+ tools left seed 0 none)
TINY = ["+experiment=smoke", "name=tiny", "sampler.n_dags=10", "synthesizer=recipe", "graph.weights.similarity=0",
        "synthesizer.near_duplicate_threshold=null", "synthesizer.test_fraction=0.5"]


def _tasks(summary: dict) -> list[tuple]:
    return [(t["id"], t["question"], t["answer"], t["gold_calls"], t["split"])
            for t in read_jsonl(Path(summary["stages"]["synthesizer"]["folder"]) / "tasks.jsonl")]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A small grid run locally in one store: eval.reward binary at seeds 0 and 1, partial at seed 0."""
    tmp = tmp_path_factory.mktemp("experiments")
    cfg = make_config(tmp, TINY)
    missing = [s for s in cfg.servers.enabled if not installed(s)]
    if missing:
        pytest.skip(f"servers not installed: {missing} (run `make servers`)")
    grid = {}
    for seed, reward in ((0, "binary"), (0, "partial"), (1, "binary")):
        grid[seed, reward] = run(make_config(tmp, [*TINY, f"seed={seed}", f"eval.reward={reward}"]),
                                 tmp / f"run-{seed}-{reward}")
    GlobalHydra.instance().clear()
    return grid, tmp


@pytest.mark.slow
@pytest.mark.servers
def test_ray_executor_gives_the_same_verified_tasks_as_local(tiny_runs):
    """Seed 0 again with executor=ray on a local Ray instance (2 workers), in a second store holding
    only the first store's upstream stages (servers, graph, sampler): explorer and synthesizer are
    computed sharded and must give what the local run gave (pytest -m slow, make test-all)."""
    grid, tmp = tiny_runs
    local = grid[0, "binary"]
    store = tmp / "ray-store"
    for stage in ("servers", "graph", "sampler"):   # content-addressed: a copied folder is reused as it is
        folder = Path(local["stages"][stage]["folder"])
        shutil.copytree(folder, store / stage / folder.name)
    ray_run = run(make_config(tmp, [*TINY, "name=tiny-ray", "seed=0", "executor=ray", "executor.num_workers=2",
                                    f"paths.store={store}"]), tmp / "run-ray")
    GlobalHydra.instance().clear()
    assert ray_run["executor"] == {"kind": "ray", "workers": 2}
    for stage in ("servers", "graph", "sampler"):
        assert ray_run["stages"][stage]["reused"]
    for stage in ("explorer", "synthesizer"):   # computed here, sharded, under the same address as locally
        st = ray_run["stages"][stage]
        assert not st["reused"] and st["metrics"]["shards"] == 2
        assert st["key"] == local["stages"][stage]["key"]
    shards = sorted(p.name for p in (Path(ray_run["stages"]["explorer"]["folder"]) / "shards").iterdir())
    assert shards == ["0", "1"]
    tasks = _tasks(ray_run)
    assert tasks and tasks == _tasks(local)
    ordered = [read_jsonl(Path(r["stages"]["explorer"]["folder"]) / "trajectories.ordered.jsonl")
               for r in (local, ray_run)]
    strip = lambda ts: [(t["dag_id"], t["status"], [(c["tool"], c["arguments"], c["content"]) for c in t["calls"]])  # noqa: E731
                        for t in ts]
    assert strip(ordered[0]) == strip(ordered[1])
    assert ray_run["counts"] == local["counts"]


@pytest.mark.servers
def test_changing_only_the_reward_reuses_every_upstream_stage(tiny_runs):
    grid, _ = tiny_runs
    partial = grid[0, "partial"]["stages"]
    assert [n for n, st in partial.items() if "reused" in st and not st["reused"]] == ["eval"]
    assert grid[0, "partial"]["eval"]["random"]["pass@1"] >= grid[0, "binary"]["eval"]["random"]["pass@1"]
    other_seed = grid[1, "binary"]["stages"]   # the servers stage does not depend on the seed
    assert other_seed["servers"]["reused"] and not other_seed["sampler"]["reused"]


@pytest.mark.servers
def test_report_table_with_spreads_over_seeds(tiny_runs):
    from firefly_exp import report

    grid, tmp = tiny_runs
    uri = grid[0, "binary"]["mlflow"]["tracking_uri"]
    result = report.write_report("tiny", uri, outputs=tmp / "outputs")
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"eval.reward=binary", "eval.reward=partial"}   # the seed is the spread, not a row
    binary = rows["eval.reward=binary"]
    assert binary["seeds"] == [0, 1] and rows["eval.reward=partial"]["seeds"] == [0]
    verified = [grid[s, "binary"]["counts"]["verified_tasks"] for s in (0, 1)]
    assert binary["mean"]["verified tasks"] == pytest.approx(sum(verified) / 2)
    assert binary["sd"]["verified tasks"] == pytest.approx(abs(verified[0] - verified[1]) / 2 ** 0.5)
    assert binary["mean"]["pass@1 gold"] == 1.0
    md = Path(result["out_dir"], "report.md").read_text()
    assert "## Ablation table" in md and "## Reused stages" in md and " ± " in md
    assert "| eval | 0 of 3 jobs | 3 |" in md and "| servers | 2 of 3 jobs | 1 |" in md
    html = Path(result["out_dir"], "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html
    import mlflow

    arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(result["mlflow_run_id"], "report")}
    assert {"report/report.md", "report/report.html", "report/report_metrics.png"} <= arts


@pytest.mark.servers
def test_report_names_a_missing_target_in_one_line(tiny_runs, tmp_path, capsys):
    from firefly_exp import report

    _, tmp = tiny_runs
    assert report.main(["no-such-experiment", "--outputs", str(tmp / "outputs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no-such-experiment" in err
    assert report.main(["--outputs", str(tmp_path)]) == 2           # no store there at all
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no sweep" in err


def test_unknown_executor_is_a_one_line_config_error(config):
    with pytest.raises(ConfigError, match="executor.kind='dask'"):
        run(config("+experiment=smoke", "executor.kind=dask"))


def _experiment(name: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={name}", "hydra/launcher=joblib"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize("name", ["ablate_sampler", "ablate_edges", "ablate_explorer", "ablate_synthesizer",
                                  "ablate_simulator", "ablate_reward"])
def test_ablation_experiments_sweep_their_stage_over_seeds(name):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = _experiment(name)
    params = cfg["hydra"]["sweeper"]["params"]
    assert params["seed"] == "0,1,2" and len(params) >= 2
    for axis, values in params.items():   # each axis a real sweep of 2 values or more
        parsed = OverridesParser.create().parse_overrides([f"{axis}={values}"])[0]
        assert parsed.is_sweep_override() and len(list(parsed.sweep_iterator())) >= 2
    assert cfg["hydra"]["launcher"]["_target_"].endswith("JoblibLauncher")
    yaml = (PROJECT_ROOT / "conf/experiment" / f"{name}.yaml").read_text()
    assert yaml.startswith("# @package _global_")


def test_slurm_launcher_config_resolves_to_submitit_and_a_valid_sbatch_script(tmp_path):
    """No SLURM here: compose hydra/launcher=slurm, type-check it against the plugin's schema, and have
    submitit write the sbatch script from it, as the launcher does."""
    import hydra.utils
    import submitit.slurm.slurm as slurm
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=cpu"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    checked = OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), launcher)   # unknown keys or bad types raise
    cls = hydra.utils.get_class(checked._target_)
    assert cls.__name__ == "SlurmLauncher" and cls._EXECUTOR == "slurm"
    params = {k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items()
              if k not in ("_target_", "submitit_folder", "max_num_timeout", "name")}
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    renames = slurm.SlurmExecutor._equivalence_dict()
    sbatch = {renames.get(k, k) if k in base else k: v for k, v in params.items()}
    sbatch["mem"] = slurm._convert_mem(sbatch["mem"])
    script = slurm._make_sbatch_string(command="python -m firefly_exp", folder=tmp_path, **sbatch)
    for line in ("#SBATCH --partition=cpu", "#SBATCH --cpus-per-task=8", "#SBATCH --time=120",
                 f"export FIREFLY_ROOT={PROJECT_ROOT}"):
        assert line in script


@pytest.mark.slow
@pytest.mark.servers
def test_joblib_sweep_reuses_upstream_stages_and_make_report(tmp_path):
    """The must-show path at the smallest size: a sampler x seed sweep with the joblib launcher, then
    the report from the sweep folder (pytest -m slow)."""
    outputs = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "firefly_exp", "-m", *TINY, "sampler=random_walk,uniform", "seed=0,1",
           "hydra/launcher=joblib", f"paths.outputs={outputs}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    sweep = next((outputs / "multirun").iterdir())
    rep = subprocess.run([sys.executable, "-m", "firefly_exp.report", "--outputs", str(outputs)],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    data = json.loads((sweep / "report.json").read_text())
    assert sorted(r["label"] for r in data["rows"]) == ["sampler=random_walk", "sampler=uniform"]
    jobs = [s for r in data["rows"] for s in r["stages"]]
    # computed once (the servers), once per seed (probe, graph), waited for by the parallel job, then reused
    assert len(jobs) == 4 and sum("servers" in s["ran"] for s in jobs) == 1
    assert sum("graph" in s["ran"] for s in jobs) == 2 and sum("graph" in s["reused"] for s in jobs) == 2
