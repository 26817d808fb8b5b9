"""firefly_exp: verified tool-call data from real MCP servers, and policies trained on it."""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

# Nothing here may reach a hub or a telemetry endpoint at run time: the machines are offline.
for _var, _val in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false",
                   "DSPY_CACHEDIR": ""}.items():
    if _val:
        os.environ.setdefault(_var, _val)

#: The project root: the folder holding ``conf/`` (override with FIREFLY_ROOT).
PROJECT_ROOT = Path(os.environ.get("FIREFLY_ROOT") or Path(__file__).resolve().parents[1])


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("firefly.root"):
        OmegaConf.register_new_resolver("firefly.root", lambda: str(PROJECT_ROOT))


_register_resolvers()
