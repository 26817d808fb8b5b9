"""Every config validates; every bad input is one line and exit 2, before any work.

Like torchtune's ``tests/recipes/test_configs.py``: compose each experiment and each choice of each
config group and validate it (firefly_exp/settings.py) without running anything. Then a table of
bad inputs, each run as a user would (``python -m firefly_exp <overrides>``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from firefly_exp import PROJECT_ROOT
from firefly_exp.settings import choices
from firefly_exp.settings import ConfigError, Settings, load_settings

CONF = PROJECT_ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment", "accelerate"))


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def _group_choices() -> list[tuple[str, str]]:
    out = []
    for group in GROUPS:
        for choice in choices(group):
            if group == "servers" and choice == "catalog":
                continue   # merged into every servers choice, not a choice itself
            out.append((group, choice))
    for choice in choices("train/policy"):
        out.append(("train/policy", choice))
    return out


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_every_experiment_validates(experiment):
    settings = load_settings(_compose(f"+experiment={experiment}"))
    assert isinstance(settings, Settings) and settings.name == experiment


@pytest.mark.parametrize("group,choice", _group_choices())
def test_every_choice_of_every_group_validates(group, choice):
    extra = ["train=grpo"] if group == "train/policy" else []
    if group in ("explorer", "synthesizer") and choice == "dspy" or group == "lm" and choice != "none":
        extra.append("lm=litellm" if group != "lm" else "")
    settings = load_settings(_compose(*[o for o in extra if o], f"{group}={choice}"))
    assert isinstance(settings, Settings)


def test_every_field_has_a_type_and_the_runtime_ones_stay_out_of_addresses():
    s = load_settings(_compose())
    assert "concurrency" not in s.explorer.store_params() and "n_dags" in s.sampler.store_params()
    assert s.sampler.strategy == "random_walk"


def test_a_bad_value_names_key_value_and_fix():
    with pytest.raises(ConfigError) as err:
        load_settings(_compose("sampler.n_dags=-5"))
    msg = str(err.value)
    assert "sampler.n_dags=-5" in msg and "greater than or equal to 1" in msg and "\n" not in msg


def test_unknown_server_is_a_one_line_error(config):
    with pytest.raises(ConfigError) as err:
        load_settings(config("servers.enabled=[time,nosuch]"))
    msg = str(err.value)
    assert "nosuch" in msg and "conf/servers/catalog.yaml" in msg and "\n" not in msg


def test_unknown_reset_mode_is_a_one_line_error(config):
    with pytest.raises(ConfigError) as err:
        load_settings(config("servers.catalog.git.reset=warm"))
    msg = str(err.value)
    assert "servers.catalog.git.reset" in msg and "files" in msg and "always" in msg and "\n" not in msg


def _child_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _closed_port() -> int:
    with socket.socket() as s:   # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD = [
    # (overrides, words the one line must hold)
    (["explorer.concurrency=0"], ["explorer.concurrency", "greater than or equal to 1"]),
    (["sampler.n_dags=-5"], ["sampler.n_dags", "-5"]),
    (["synthesizer.test_fraction=1.5"], ["synthesizer.test_fraction", "1.5"]),
    (["seed=abc"], ["seed", "abc", "integer"]),
    (["sampler.n_dags=abc"], ["sampler.n_dags", "abc", "integer"]),
    (["simulator.cascade=[bogus]"], ["simulator.cascade", "bogus", "exact"]),
    (["eval.policies=[gold,foo]"], ["eval.policies", "foo", "gold"]),
    (["sampler=nonexistent"], ["sampler=nonexistent", "random_walk", "fan_in"]),
    (["+experiment=nosuch"], ["experiment=nosuch", "smoke", "full"]),
    (["explorer.nonsense=1"], ["explorer.nonsense", "no such key"]),
    (["+explorer.nonsense=1"], ["explorer.nonsense", "unknown key", "concurrency"]),
    (["seed=-1"], ["seed", "-1"]),
    (["sampler.min_size=5", "sampler.max_size=3"], ["min_size", "max_size"]),
    (["graph.thresholds.low=0.9"], ["graph.thresholds", "low <= medium <= high"]),
    (["synthesizer.split=bogus"], ["synthesizer.split", "bogus", "held_out_servers"]),
    (["servers.enabled=[nosuchserver]"], ["nosuchserver", "catalog"]),
    (["explorer.call_timeout_s=0"], ["explorer.call_timeout_s", "greater than 0"]),
    (["explorer.dag_timeout_s=-1"], ["explorer.dag_timeout_s"]),
    (["explorer=dspy"], ["explorer=dspy", "lm="]),
    (["synthesizer=dspy"], ["synthesizer=dspy", "lm="]),
    (["eval.k=0"], ["eval.k"]),
    (["sampler.branch_prob=1.5"], ["sampler.branch_prob", "1.5"]),
    (["train=grpo", "train.grpo.group_size=1"], ["train.grpo.group_size"]),
    (["name=bad/name"], ["name", "bad/name"]),
    (["simulator.retrieval_threshold=2"], ["simulator.retrieval_threshold"]),
    (["sampler._target_=firefly_exp.sampler.nosuch"], ["sampler._target_", "nosuch", "random_walk"]),
    (["executor=nosuch"], ["executor=nosuch", "local", "ray"]),
    (["servers.call_timeout_s=0"], ["servers.call_timeout_s"]),
    (["train=grpo", "train.sft.lr=0"], ["train.sft.lr"]),
    (["sampler.n_dags=1", "sampler.n_dags"], ["sampler.n_dags"]),
    (["lm=openai_compatible", "lm.model=openai/nothing", "lm.check_timeout_s=3",
      "lm.api_base=http://127.0.0.1:{port}/v1"], ["lm.api_base", "did not answer"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(overrides, words, tmp_path):
    outputs = tmp_path / "outputs"
    argv = [o.format(port=_closed_port()) for o in overrides]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    started, cpu = time.perf_counter(), _child_cpu()
    proc = subprocess.run([sys.executable, "-m", "firefly_exp", f"paths.outputs={outputs}", *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    took, cpu = time.perf_counter() - started, _child_cpu() - cpu
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not (outputs / "store").exists() and not (outputs / "mlflow.db").exists()
    # every job is checked before the pipeline is even imported: ~2 s on an idle machine, 5-6 s on a slow
    # one where the check imports dspy (explorer=dspy, an LM check). The limit is on the process's own CPU
    # time, which the other work of a loaded machine does not stretch; starting servers or a stage costs more
    assert cpu < 12 and took < 45, (cpu, took)
