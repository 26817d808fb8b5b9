"""Run an experiment: ``python -m firefly_exp [+experiment=NAME] [group=choice ...] [-m for sweeps]``.

Every job's config is composed and validated before Hydra starts anything (firefly_exp/cli.py):
a bad value, key, choice or experiment is one line on stderr and exit status 2.
"""

import sys

import hydra
from omegaconf import DictConfig

import firefly_exp  # noqa: F401 - registers the ${firefly.root:} resolver before Hydra composes
from firefly_exp.cli import precheck, fail


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from firefly_exp.pipeline import run
    from firefly_exp.settings import ConfigError
    from firefly_exp.summary import print_summary

    try:
        summary = run(cfg)
    except ConfigError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted: finished stages and recorded calls are kept; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
    print_summary(summary)
    return summary["counts"]["verified_tasks"]


if __name__ == "__main__":
    precheck(sys.argv[1:])
    main()
