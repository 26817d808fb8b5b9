"""Same seed, same bytes: two runs of the smoke experiment, each in a fresh output folder and its own
process (different Python hash seeds, different run folders, seconds apart on the clock), write
byte-identical DAGs, tasks and dataset files. Real servers (the smoke set)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import catalog_spec, installed, make_config
from firefly_exp import PROJECT_ROOT
from firefly_exp.sandbox import SEED_MTIME, copy_sandbox, restore_sandbox, seed_sandbox, snapshot

# the artifacts that must not depend on anything but the seed: stage -> files
ARTIFACTS = {"sampler": ("dags.jsonl",), "synthesizer": ("tasks.jsonl",),
             "dataset": ("train.jsonl", "test.jsonl", "train.parquet", "test.parquet")}
# the smoke servers, a few DAGs, no embedding model (seconds per run)
SMOKE = ["+experiment=smoke", "sampler.n_dags=12", "graph.weights.similarity=0",
         "synthesizer.near_duplicate_threshold=null", "synthesizer.test_fraction=0.5"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(outputs: Path, hash_seed: int) -> tuple[dict[str, str], dict]:
    """One ``python -m firefly_exp`` run into ``outputs``: the sha256 of each artifact, and the summary."""
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    proc = subprocess.run([sys.executable, "-m", "firefly_exp", *SMOKE, f"paths.outputs={outputs}"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((outputs / "latest" / "summary.json").read_text())
    digests = {f"{stage}/{name}": _sha256(Path(summary["stages"][stage]["folder"]) / name)
               for stage, names in ARTIFACTS.items() for name in names}
    return digests, summary


def _mtimes(root: Path) -> set[int]:
    return {p.lstat().st_mtime_ns for p in [root, *root.rglob("*")] if ".logs" not in p.parts}


def test_seeded_files_carry_one_fixed_time_and_restores_keep_it(tmp_path):
    """No clock of the seeding run, nor of a DAG that added or removed files, is left in a sandbox's
    file and folder mtimes (tools report them: file info, a database's last-modified). Atimes are set
    too, but any read moves them on a relatime mount (listing a folder included): not checked."""
    specs = [catalog_spec(s) for s in ("git", "sqlite", "filesystem", "memory")]
    template = tmp_path / "template"
    seed_sandbox(template, specs)
    stamp = SEED_MTIME * 1_000_000_000
    assert _mtimes(template) == {stamp}
    dest = copy_sandbox(template, tmp_path / "slot")
    assert _mtimes(dest) == {stamp}
    manifest = snapshot(template)
    (dest / "files" / "docs" / "new.txt").write_text("added")       # a folder gains an entry
    (dest / "files" / "src" / "util.js").unlink()                   # and another loses one
    (dest / "shop.db").write_bytes(b"rewritten")                    # a changed file
    (dest / "made" / "deep").mkdir(parents=True)                    # a new folder at the top
    (dest / ".logs").mkdir()
    (dest / ".logs" / "server.log").write_text("kept")
    assert _mtimes(dest) != {stamp}
    restore_sandbox(template, dest, manifest)
    assert _mtimes(dest) == {stamp}
    # the repeat probe's sandbox: the same files, dated later
    seed_sandbox(tmp_path / "later", specs, SEED_MTIME + 60)
    assert _mtimes(tmp_path / "later") == {stamp + 60 * 1_000_000_000}


@pytest.mark.servers
def test_two_runs_of_one_seed_write_the_same_bytes(tmp_path):
    missing = [s for s in make_config(tmp_path, SMOKE).servers.enabled if not installed(s)]
    if missing:
        pytest.skip(f"servers not installed: {missing} (run `make servers`)")
    a, summary_a = _run(tmp_path / "a" / "outputs", 1)
    b, summary_b = _run(tmp_path / "b" / "outputs", 2)
    assert summary_a["run_dir"] != summary_b["run_dir"]
    assert not any(st.get("reused") for st in summary_b["stages"].values())   # computed afresh, not copied
    assert summary_a["counts"]["verified_tasks"] > 0
    assert a == b
    assert summary_a["counts"]["verified_tasks"] == summary_b["counts"]["verified_tasks"]
    # the probe ran every answering tool twice; time's clock is stopped (catalog `clock`), so its clock
    # readers answered alike (tests/test_frozen_clock.py: on a running clock the probe finds them volatile)
    if summary_a["servers"]["time"]["clock"]:
        assert "time/get_current_time" not in summary_a["stages"]["probe"]["metrics"]["volatile_tools"]
    else:
        assert "time/get_current_time" in summary_a["stages"]["probe"]["metrics"]["volatile_tools"]
