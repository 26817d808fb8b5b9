"""Typed settings: one model per config group, checked before anything runs.

``load_settings(cfg)`` turns the composed Hydra config into :class:`Settings`; a bad value, an
unknown key or an impossible combination raises :class:`ConfigError` with one line that names the
key, the value, what is allowed and how to fix it (``__main__`` prints it and exits 2).

Every field's ``description`` is its help text. A field marked ``runtime`` changes where or how
fast a stage runs, not what it produces, and stays out of the stage's store address.

>>> SamplerSettings(**{"_target_": "firefly_exp.sampler.random_walk"}).strategy
'random_walk'
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, Literal, Optional

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)


class ConfigError(ValueError):
    """Bad input from the user: printed as one line that names the problem and the fix."""


def runtime(default: Any = ..., **kw) -> Any:
    """A field that changes how a stage runs, not its output (kept out of store addresses)."""
    return Field(default, json_schema_extra={"runtime": True}, **kw)


class Group(BaseModel):
    """A config group: unknown keys are errors, values are checked on construction."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def store_params(self) -> dict:
        """What this group contributes to a store address: every field but the runtime ones."""
        out = {}
        for name, info in type(self).model_fields.items():
            if (info.json_schema_extra or {}).get("runtime"):
                continue
            value = getattr(self, name)
            out[info.alias or name] = value.store_params() if isinstance(value, Group) else _plain(value)
        return out

    def plain(self) -> dict:
        return self.model_dump(by_alias=True, mode="json")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, mode="json")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolve(target: str, default_module: str | None = None) -> Any:
    """The object a ``_target_`` names: ``pkg.module.name``, or a bare ``name`` in ``default_module``."""
    module, _, name = target.rpartition(".")
    module = module or default_module
    if not module:
        raise ImportError(f"'{target}' is not a dotted path")
    return getattr(importlib.import_module(module), name)


def choices_in(module: str, prefix: str = "") -> list[str]:
    """The public callables of ``module`` (the choices a bare name may pick), for error messages."""
    mod = importlib.import_module(module)
    names = getattr(mod, "CHOICES", None)
    if names is not None:
        return list(names)
    return sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                  and getattr(v, "__module__", None) == mod.__name__ and n.startswith(prefix))


def choices(group: str) -> list[str]:
    """The choices of a config group: its YAML files in conf/<group>/, ``_base`` aside."""
    from . import PROJECT_ROOT

    return sorted(p.stem for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml") if not p.stem.startswith("_"))


def _check_target(value: str, default_module: str | None, what: str, group: str | None = None) -> str:
    try:
        obj = resolve(value, default_module)
    except (ImportError, AttributeError, ValueError):
        if group:   # the choices are the group's YAML files
            known = f"; pick {group}=<{'|'.join(choices(group))}> or a dotted path to your own function"
        else:
            known = f"; choose from {', '.join(choices_in(default_module))}" if default_module else ""
        raise ValueError(f"no {what} named '{value}'{known}") from None
    if not callable(obj):
        raise ValueError(f"'{value}' is not callable")
    return value


# -- groups -------------------------------------------------------------------------------------------


class PathsSettings(Group):
    root: str = Field(description="the project root (the folder holding conf/)")
    outputs: str = Field(description="run folders, the stage store, caches, mlflow.db")
    store: str = Field(description="the content-addressed stage store")
    servers: str = Field(description="where `make servers` installs the MCP servers")


class ServerSpec(Group):
    """One catalog entry (conf/servers/catalog.yaml documents every key)."""

    package: str
    version: str
    registry: Literal["pypi", "npm"]
    python: Optional[str] = None
    requirements: Optional[list[str]] = None
    npm_group: Optional[str] = None
    domain: str = ""
    stateful: bool = False
    reset: Literal["files", "restart", "always"] = "restart"
    state_scope: Optional[str] = None
    command: str
    args: list[str] = []
    env: dict[str, str] = {}
    seed: list[dict] = []
    hints: dict[str, list] = {}
    init_calls: list[dict] = []
    always_fill: list[str] = []
    volatile_tools: list[str] = []
    clock_tools: list[str] = []   # read the wall clock: volatile unless `clock` stops it
    read_only_tools: list[str] = []
    error_shapes: bool = True     # false: a result shaped {"status": "error"} etc. is data for this server
    clock: Optional[str] = None   # "YYYY-MM-DD HH:MM:SS" (UTC): the server's wall clock stopped there (libfaketime)

    @field_validator("clock")
    @classmethod
    def _instant(cls, value):
        import datetime

        if value is not None:
            try:
                datetime.datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S")
            except ValueError:
                raise ValueError(f"clock '{value}' is not an instant; write \"YYYY-MM-DD HH:MM:SS\" (UTC)") from None
        return value

    @field_validator("hints", "env", "seed", "args", "volatile_tools", "clock_tools", "read_only_tools", "init_calls",
                     "always_fill", mode="before")
    @classmethod
    def _none_is_empty(cls, v, info):
        if v is None:   # a YAML key left empty
            return {} if info.field_name in ("hints", "env") else []
        return v


class ServersSettings(Group):
    # the enabled entries are in the servers stage's address (its specs): an edit to another entry,
    # or a move of the install folder, must not re-run every stage
    catalog: dict[str, ServerSpec] = runtime(description="every server this project can explore")
    enabled: list[str] = Field(description="the catalog ids this experiment explores")
    startup_timeout_s: float = Field(gt=0, le=3600, description="spawn + initialize, per server")
    call_timeout_s: float = Field(gt=0, le=3600, description="one tools/call")
    install_dir: str = runtime(description="the servers' install prefix (paths.servers)")
    use_hints: bool = Field(True, description="false: every entry's hints, init_calls and always_fill are "
                                              "dropped, as for a server a user adds with none (+experiment=no_hints)")
    frozen_clock: bool = Field(True, description="an entry's `clock` stops its server's wall clock there "
                                                 "(libfaketime; without it, or false, the real clock, and its "
                                                 "`clock_tools` are volatile: never answers)")

    @model_validator(mode="after")
    def _known_servers(self):
        unknown = [s for s in self.enabled if s not in self.catalog]
        if unknown:
            raise ValueError(f"unknown server(s) {', '.join(unknown)}; known are {', '.join(sorted(self.catalog))} "
                             f"(add an entry to conf/servers/catalog.yaml)")
        if not self.enabled:
            raise ValueError("no server enabled; list catalog ids in servers.enabled")
        return self

    def specs(self) -> dict[str, dict]:
        """The enabled catalog entries as plain dicts, each with its id (without the hand-written help when
        ``use_hints`` is false)."""
        none = {} if self.use_hints else {"hints": {}, "init_calls": [], "always_fill": []}
        real = {} if self.frozen_clock and self.clock_available() else {"clock": None}
        return {sid: {**self.catalog[sid].plain(), **none, **real, "id": sid} for sid in self.enabled}

    @staticmethod
    def clock_available() -> bool:
        from .mcp_client import faketime_lib

        return faketime_lib() is not None

    def real_clock(self) -> list[str]:
        """The enabled servers whose entry stops the clock but which run on the real one (no libfaketime)."""
        if not self.frozen_clock:
            return []
        return [] if self.clock_available() else [s for s in self.enabled if self.catalog[s].clock]


class GraphWeights(Group):
    flow: float = Field(ge=0, le=10, description="data-flow compatibility of output field and input parameter")
    similarity: float = Field(ge=0, le=10, description="description similarity (all-MiniLM-L6-v2, offline)")
    observed: float = Field(ge=0, le=10, description="pairs an earlier exploration passed a value along")
    value: float = Field(ge=0, le=10, description="a probed result holds a value known valid for the target")


class GraphThresholds(Group):
    low: float = Field(ge=0, le=1)
    medium: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low <= self.medium <= self.high:
            raise ValueError(f"thresholds must satisfy low <= medium <= high (got {self.low}, {self.medium}, "
                             f"{self.high})")
        return self


class EmbeddingSettings(Group):
    max_seq_length: int = Field(ge=8, le=512)
    batch_size: int = Field(ge=1, le=4096)
    quantize: bool
    cache: bool = runtime(description="reuse vectors by content hash across runs")


class LMJudgeSettings(Group):
    enabled: bool
    max_pairs: int = Field(ge=0, le=1_000_000)
    num_threads: int = runtime(ge=1, le=256)


class GraphSettings(Group):
    weights: GraphWeights
    thresholds: GraphThresholds
    max_out_degree: int = Field(ge=1, le=10_000)
    embedding: EmbeddingSettings
    observed_from: Optional[str] = None
    probe: bool = True
    infer_schemas: bool = True
    drop_echoes: bool = True
    coherence_threshold: Optional[float] = Field(ge=-1, le=1, description=(
        "drop a flow mapping F -> P whose MiniLM cosine (F's key + A's description vs P's name and "
        "description + B's description) is below this; null = off"))
    lm_judge: LMJudgeSettings


class SamplerSettings(Group):
    target: str = Field(alias="_target_", description="the strategy: a function (firefly_exp/sampler.py)")
    n_dags: int = Field(1000, ge=1, le=10_000_000, description="sub-DAGs to draw")
    min_size: int = Field(2, ge=1, le=64)
    max_size: int = Field(4, ge=1, le=64)
    max_depth: int = Field(4, ge=1, le=64)
    min_servers: int = Field(1, ge=1, le=64)
    max_servers: int = Field(3, ge=1, le=64)
    require_cross_server: bool = False
    start_rule: Literal["firefly", "any"] = "firefly"
    min_confident_successors: int = Field(2, ge=0, le=1000)
    branch_prob: float = Field(0.3, ge=0, le=1)
    burn_prob: float = Field(0.5, ge=0, lt=1)
    level_weights: dict[Literal["high", "medium", "low"], float] = {"high": 1.0, "medium": 0.5, "low": 0.15}
    max_attempts_factor: int = Field(30, ge=1, le=10_000)
    servers: Optional[list[str]] = None
    answer_sink: bool = True
    probe_failed: Literal["same_server", "skip", "allow"] = "same_server"
    server_weights: dict[str, float] = {}
    start_balance: Literal["server", "tool"] = "server"
    cover_servers: int = Field(2, ge=0, le=1000)
    plot: bool = runtime(True)

    @field_validator("target")
    @classmethod
    def _target(cls, v):
        return _check_target(v, "firefly_exp.sampler", "sampler strategy", group="sampler")

    @model_validator(mode="after")
    def _sizes(self):
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} > max_size {self.max_size}")
        if self.min_servers > self.max_servers:
            raise ValueError(f"min_servers {self.min_servers} > max_servers {self.max_servers}")
        return self

    @property
    def strategy(self) -> str:
        return self.target.rpartition(".")[2]


class ExplorerSettings(Group):
    kind: Literal["heuristic", "dspy"] = Field(description="heuristic (offline) or dspy (the proposer calls the LM: "
                                                           "needs lm=..., and the LM is in the store address)")
    proposer: str = Field(description="who proposes arguments: a factory (settings, ctx) -> Proposer "
                                      "(firefly_exp/explorer/proposal.py, programs/explorer.py)")
    concurrency: int = runtime(ge=1, le=256, description="DAGs explored at once")
    max_retries: int = Field(ge=0, le=100, description="argument repairs after a tool error, per node")
    dag_retries: int = Field(ge=0, le=100, description="reruns of a DAG whose server crashed or hung")
    call_timeout_s: float = Field(gt=0, le=3600)
    dag_timeout_s: float = Field(gt=0, le=86400)
    startup_timeout_s: float = Field(gt=0, le=3600)
    include_optional_prob: float = Field(ge=0, le=1)
    keep_sandboxes: bool = runtime(False)
    warm_stateful: bool = runtime(True)
    warm_all: bool = runtime(False)
    seed_mtime: Optional[float] = Field(None, description="the seeded files' mtime (None: sandbox.SEED_MTIME; "
                                                          "the probe's repeat shifts it)")
    verify_writes: bool = Field(description="after a DAG whose last write on a server has no later read of it, "
                                            "call one read-only tool of that server whose inputs are known")

    @field_validator("proposer")
    @classmethod
    def _proposer(cls, v):
        return _check_target(v, "firefly_exp.explorer.proposal", "explorer proposer")


class SynthesizerSettings(Group):
    kind: Literal["template", "recipe", "goal", "dspy"] = Field(
        description="who words the question: template or recipe (steps and tools named), goal (a request in "
                    "plain words) or dspy (LM)")
    tasks_per_trajectory: int = Field(ge=1, le=1000)
    max_fields: int = Field(ge=1, le=100)
    min_fields: int = Field(ge=1, le=100, description="fewer picked: topped up from the answer calls' other leaves")
    max_value_len: int = Field(ge=1, le=100_000)
    include_partial: bool
    require_chain: bool
    single_call: Literal["fallback", "always", "never"]
    max_single_call_share: Optional[float] = Field(
        None, ge=0, le=1, description="at most this share of the tasks are one call (the kept ones spread over "
                                      "the tools chains did not reach); null = no cap")
    variant_order: Literal["found", "longest"] = Field(
        "found", description="which questions of a trajectory come first: found (each answer call's own chain, "
                             "latest first) or longest (the longest gold chains first, one asking about every "
                             "chained branch of the DAG among them)")
    field_groups: int = Field(ge=1, le=100)
    test_fraction: float = Field(ge=0, lt=1, description="held-out share (of DAGs, tool sets or servers)")
    split: str = Field(description="split strategy: a function in firefly_exp/synthesizer/splits.py, or the "
                                   "dotted path of your own (tasks, test_fraction, seed) -> None")
    near_duplicate_threshold: Optional[float] = Field(None, gt=0, le=1)
    determinism: Literal["off", "exclude", "drop"] = "off"
    judge_min_score: int = Field(ge=1, le=5)
    judge: bool = True
    informative: bool = Field(description="answer fields carry information: no error text, write confirmation, "
                                          "echo or constant value, no write's own result; a later read is the answer")

    @field_validator("split")
    @classmethod
    def _split(cls, v):
        return _check_target(v, "firefly_exp.synthesizer.splits", "split strategy")


class FidelitySettings(Group):
    holdout_fraction: float = Field(gt=0, lt=1)
    live: bool = False


class SimulatorSettings(Group):
    cascade: list[Literal["exact", "state_aware", "retrieval"]] = Field(min_length=1)
    retrieval_threshold: float = Field(ge=0, le=1)
    adapt: bool = True
    live: bool = False
    fidelity: FidelitySettings


EVAL_POLICIES = ("gold", "random", "lookup", "sft", "grpo", "dspy_react")
REWARDS_MODULE = "firefly_exp.rewards"     # where a bare reward name (eval.reward, train.rewards) is looked up


class EvalSettings(Group):
    split: Literal["train", "test"] = "test"
    policies: list[Literal["gold", "random", "lookup", "sft", "grpo", "dspy_react"]] = Field(min_length=1)
    reward: str = Field("binary", description="a reward function (firefly_exp/rewards.py) or a dotted path")
    k: int = Field(1, ge=1, le=1000)
    temperature: float = Field(1.0, ge=0, le=10)

    @field_validator("reward")
    @classmethod
    def _reward(cls, v):
        return _check_target(v, REWARDS_MODULE, "reward")


class PolicySettingsModel(Group):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)   # kind-specific keys
    kind: Literal["tiny", "hf"]
    device: str = "cpu"
    max_seq_len: int = Field(1024, ge=16, le=1_000_000)
    max_turns: int = Field(6, ge=1, le=100)
    max_new_tokens: int = Field(64, ge=1, le=100_000)
    max_response_chars: int = Field(300, ge=1, le=10_000_000)
    tools_in_prompt: Literal["names", "schemas"] = "names"

    def store_params(self) -> dict:
        """The declared fields and the kind-specific extra keys (name_or_path, hidden_size, ...): both make the
        policy what it is."""
        return {**super().store_params(), **_plain(dict(self.model_extra or {}))}


class SFTSettings(Group):
    epochs: int = Field(ge=0, le=10_000)
    lr: float = Field(gt=0, le=10)
    batch_size: int = Field(ge=1, le=100_000)
    variants_per_call: int = Field(ge=0, le=100)
    variant_max_fields: int = Field(ge=1, le=100)


class GRPOSettings(Group):
    steps: int = Field(ge=0, le=1_000_000)
    group_size: int = Field(ge=2, le=1024)
    prompts_per_step: int = Field(ge=1, le=100_000)
    num_iterations: int = Field(ge=1, le=100)
    lr: float = Field(gt=0, le=10)
    kl_coef: float = Field(ge=0, le=100)
    temperature: float = Field(gt=0, le=10)
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"]
    scale_rewards: Literal["group", "batch", "none"]
    bf16: bool
    gradient_checkpointing: bool


def _check_rewards(weights: dict[str, float]) -> dict[str, float]:
    for name in weights:
        _check_target(name, REWARDS_MODULE, "reward")
    return weights


# reward name (a function in firefly_exp/rewards.py, or a dotted path) -> its weight in GRPO; 0 leaves it out
RewardWeights = Annotated[dict[str, Annotated[float, Field(ge=0, le=100)]], AfterValidator(_check_rewards)]


class CurveSettings(Group):
    every: int = Field(ge=0, le=1_000_000)
    split: Literal["train", "test"]
    max_tasks: int = Field(ge=1, le=1_000_000)


class TrainSettings(Group):
    # out of the address: a stage that runs is enabled (train=none skips it)
    enabled: bool = runtime(description="train a policy (train=grpo) or not (train=none)")
    seed: Optional[int] = None
    policy: Optional[PolicySettingsModel] = None
    sft: Optional[SFTSettings] = None
    grpo: Optional[GRPOSettings] = None
    rewards: Optional[RewardWeights] = None
    curve: Optional[CurveSettings] = None

    @model_validator(mode="after")
    def _complete(self):
        if self.enabled:
            missing = [k for k in ("seed", "policy", "sft", "grpo", "rewards", "curve") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"train.enabled needs {', '.join(missing)}; use train=grpo")
        return self


class LMSettings(Group):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)   # any LiteLLM keyword
    model: Optional[str] = None
    api_base: Optional[str] = None
    api_key: Optional[str] = None
    temperature: float = Field(0.0, ge=0, le=10)
    max_tokens: int = Field(2048, ge=1, le=1_000_000)
    check_timeout_s: float = runtime(15.0, gt=0, le=600, description="the start-up check's request timeout")

    def identity(self) -> dict | None:
        """What makes this LM's answers what they are: model and endpoint (never the key)."""
        return None if self.model is None else {"model": self.model, "api_base": self.api_base}


class ExecutorSettings(Group):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    target: str = Field("firefly_exp.executor.Executor", alias="_target_",
                        description="the executor: a class in firefly_exp/executor.py, built from the other keys")
    kind: Literal["local", "ray"] = Field("local", description="the executor's label (summary.json): its class's kind")
    address: Optional[str] = None
    num_workers: int = Field(2, ge=1, le=100_000)
    num_cpus: Optional[int] = Field(None, ge=1)
    object_store_memory_mb: Optional[int] = Field(256, ge=64)
    runtime_env: Optional[dict] = None

    @field_validator("target")
    @classmethod
    def _target(cls, v):
        return _check_target(v, "firefly_exp.executor", "executor")

    @field_validator("kind")
    @classmethod
    def _kind_of_target(cls, v, info):
        target = info.data.get("target")
        made = getattr(resolve(target, "firefly_exp.executor"), "kind", v) if target else v
        if made != v:
            raise ValueError(f"{target} runs kind '{made}', not '{v}'; pick executor=local or executor=ray")
        return v


class MLflowSettings(Group):
    tracking_uri: str
    artifact_location: Optional[str] = None
    experiment: str = Field(min_length=1)


class Settings(Group):
    """The whole experiment (conf/config.yaml and the groups it composes)."""

    paths: PathsSettings
    servers: ServersSettings
    graph: GraphSettings
    sampler: SamplerSettings
    explorer: ExplorerSettings
    synthesizer: SynthesizerSettings
    simulator: SimulatorSettings
    eval: EvalSettings
    train: TrainSettings
    lm: LMSettings
    executor: ExecutorSettings
    mlflow: MLflowSettings
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="experiment name")
    seed: int = Field(ge=0, le=2**32 - 1, description="the one seed every random choice derives from")
    resume: bool = True

    @model_validator(mode="after")
    def _combinations(self):
        if self.explorer.kind == "dspy" and self.lm.model is None:
            raise ValueError("explorer=dspy needs an LM: add lm=litellm (or lm=openai_compatible) or use "
                             "explorer=heuristic")
        if self.synthesizer.kind == "dspy" and self.lm.model is None:
            raise ValueError("synthesizer=dspy needs an LM: add lm=litellm (or lm=openai_compatible) or use "
                             "synthesizer=template")
        return self


# -- loading -------------------------------------------------------------------------------------------


def load_settings(cfg: Any) -> Settings:
    """Validate a composed config (DictConfig or dict); a problem is a one-line :class:`ConfigError`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig):
        try:
            data = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{str(exc).splitlines()[0]}: check the interpolation") from None
    else:
        data = dict(cfg)
    data.pop("hydra", None)
    data.pop("experiment", None)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, data)) from None


def _one_line(exc: ValidationError, data: dict) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    value = _lookup(data, err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        group = ".".join(loc[:-1])
        model = _model_at(Settings, err["loc"][:-1])
        known = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items())) if model else "?"
        return (f"unknown key '{key}' (value {value!r}): {group or 'the top level'} has {known}; "
                f"remove it or fix its spelling")
    if kind == "missing":
        return f"missing key '{key}': set it on the command line ({key}=...) or in its YAML"
    if not key:
        return f"{msg} (fix the values named)"
    if isinstance(value, (dict, list)):
        return f"{key}: {msg} (fix the values named)"
    return f"{key}={value!r}: {msg} (set {key}=<a valid value>)"


def _lookup(data: Any, loc: tuple) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part)) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return model if isinstance(part, str) is False else None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        nxt = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            dict_val = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if dict_val is None:
                return None
            nxt = dict_val
        model = nxt
    return model


SECRET_WORDS = ("key", "token", "secret", "password")


def redacted(obj: Any, key: str = "") -> Any:
    """``obj`` with every string under a key that names a secret (``api_key``, ``*token*``, ...) masked.

    >>> redacted({"lm": {"api_key": "sk-1", "max_tokens": 8, "model": "m"}})
    {'lm': {'api_key': '***', 'max_tokens': 8, 'model': 'm'}}
    """
    if isinstance(obj, dict):
        return {k: redacted(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redacted(v, key) for v in obj]
    if isinstance(obj, str) and obj and any(w in key.lower() for w in SECRET_WORDS):
        return "***"
    return obj
