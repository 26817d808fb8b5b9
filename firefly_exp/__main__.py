"""Run an experiment: ``python -m firefly_exp [+experiment=NAME] [group=choice ...] [-m for sweeps]``."""

import sys

import hydra
from omegaconf import DictConfig

import firefly_exp  # noqa: F401 - registers the ${firefly.root:} resolver before Hydra composes


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from firefly_exp.pipeline import ConfigError, print_summary, run

    try:
        summary = run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print_summary(summary)
    return summary["counts"]["verified_tasks"]


if __name__ == "__main__":
    main()
