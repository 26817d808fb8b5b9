"""Shared fixtures: a composed config pointed at a temporary outputs folder, and clean global state."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import firefly_exp
from firefly_exp import PROJECT_ROOT

CONF = str(PROJECT_ROOT / "conf")
FIXTURES = Path(__file__).parent / "fixtures"   # the fixture servers and samplers, for tests in any folder


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


def catalog_spec(server_id: str) -> dict:
    """A server's catalog entry with its id, as the pipeline hands it to the stages."""
    from omegaconf import OmegaConf

    cat = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf/servers/catalog.yaml"))["catalog"]
    return {**cat[server_id], "id": server_id}


def discovered(server_id: str, tmp_path: Path):
    """(specs, tools) of one real server, its tools listed by the servers stage into ``tmp_path``."""
    from firefly_exp.servers import discover_tools, load_tools

    specs = {server_id: catalog_spec(server_id)}
    discover_tools(list(specs.values()), PROJECT_ROOT / ".servers", tmp_path / "sb", tmp_path)
    return specs, load_tools(tmp_path)


def installed(server_id: str) -> bool:
    from firefly_exp.install import command_path

    return command_path(catalog_spec(server_id), PROJECT_ROOT / ".servers").exists()
