"""The command line's checks: every job's config composed and validated before anything runs.

A bad override, an unknown choice or experiment, a bad value or an unknown key prints one line on
stderr (what is wrong, what is allowed, how to fix it) and exits with status 2; Hydra's own
multi-line messages and Python tracebacks never reach the user for these.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from . import PROJECT_ROOT
from .settings import choices

CONF = PROJECT_ROOT / "conf"
MAX_JOBS = 64   # sweeps: each value is checked with the others at their first value beyond this many


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def precheck(argv: list[str]) -> None:
    """Compose and validate every job ``argv`` describes; exit 2 with one line on the first problem."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return   # --help, --cfg, --info, ...: Hydra's own
    try:
        jobs = expand([a for a in argv if a not in ("-m", "--multirun")])
    except ValueError as exc:
        fail(str(exc))
    for job in jobs:
        message = check(job, with_lm=True)
        if message:
            fail(message)


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a (multirun) command line, Hydra's own overrides left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ValueError(f"{str(exc).splitlines()[0]} (see `python -m firefly_exp --help`)") from None
    fixed, sweeps = [], []
    for o in parsed:
        if o.key_or_group.startswith("hydra") and o.key_or_group != "hydra.searchpath":
            continue   # where and how Hydra runs the job (launcher, run dir): not the experiment's config
        if o.is_sweep_override():
            sweeps.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            fixed.append(o.input_line)
    jobs = [fixed]
    for values in sweeps:
        if len(jobs) * len(values) <= MAX_JOBS:
            jobs = [job + [v] for job in jobs for v in values]
        else:
            jobs = jobs + [jobs[0] + [v] for v in values[1:]]
            jobs[0] = jobs[0] + [values[0]]
    return jobs


def check(overrides: list[str], with_lm: bool = False) -> str | None:
    """The one-line problem of one job's config, or None. With ``with_lm``, an LM the job configures
    must answer one short request (each endpoint once a process: ``programs.lm.check_lm``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from .settings import ConfigError, load_settings

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        settings = load_settings(cfg)
        if with_lm and settings.lm.model:
            from programs.lm import check_lm, configure_lm

            check_lm(configure_lm(settings.lm), settings.lm)
    except ConfigError as exc:
        return str(exc)
    except MissingConfigException:
        return missing_choice(overrides) or "a config file is missing (check the group=choice overrides)"
    except (HydraException, OmegaConfBaseException) as exc:
        return hydra_message(exc)
    finally:
        GlobalHydra.instance().clear()
    return None


def missing_choice(overrides: list[str]) -> str | None:
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if "." in key or not value or not (CONF / key).is_dir():
            continue
        if not (CONF / key / f"{value}.yaml").exists():
            what = "experiment" if key == "experiment" else f"choice of {key}"
            return (f"{key}={value}: no such {what}; available: {', '.join(choices(key))} "
                    f"(files in conf/{key}/)")
    return None


def hydra_message(exc: Exception) -> str:
    """Hydra's or OmegaConf's message in one line, with the fix for the common cases."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = exc.__cause__ or exc.__context__
    more = [ln.strip() for ln in str(cause).splitlines() if ln.strip()] if cause else []
    text = " ".join(lines[:1] + more[:1])
    if "not in struct" in text or "Could not override" in text:
        return f"{text}: no such key; {known_keys(text)}"
    if "Could not append" in text or "already exists" in text:
        return f"{text}: the key exists already; drop the leading +"
    return f"{text} (check the overrides)"


def known_keys(text: str) -> str:
    """What the group named in Hydra's 'Could not override 'a.b.c'' message does have."""
    import re

    from .settings import Settings, _model_at

    m = re.search(r"override '([^']+)'", text)
    parts = tuple(m.group(1).split(".")[:-1]) if m else ()
    model = _model_at(Settings, parts) if parts else Settings
    if model is None:
        return "`python -m firefly_exp --cfg job` lists every key"
    names = sorted(f.alias or n for n, f in model.model_fields.items())
    return f"{'.'.join(parts) or 'the top level'} has {', '.join(names)}"
