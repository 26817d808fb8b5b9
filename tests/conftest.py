"""Shared fixtures: a composed config pointed at a temporary outputs folder, and clean global state."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import firefly_exp
from firefly_exp import PROJECT_ROOT

CONF = str(PROJECT_ROOT / "conf")


def make_config(tmp_path: Path, overrides: list[str] = ()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"paths.outputs={tmp_path}/outputs", *overrides])


@pytest.fixture
def config(tmp_path):
    def build(*overrides: str):
        return make_config(tmp_path, list(overrides))

    yield build
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _reset_dspy():
    yield
    try:
        import dspy

        dspy.settings.configure(lm=None)
    except Exception:  # noqa: BLE001
        pass


def installed(server_id: str) -> bool:
    from omegaconf import OmegaConf

    from firefly_exp.mcp_client import expand, install_prefix

    cat = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf/servers/catalog.yaml"))["catalog"]
    spec = {**cat[server_id], "id": server_id}
    cmd = expand(spec["command"], env=str(install_prefix(spec, PROJECT_ROOT / ".servers")), sandbox="/x")
    return Path(cmd).exists()
