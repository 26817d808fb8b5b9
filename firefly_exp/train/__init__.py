"""Stage 8, train: a tool-calling policy, SFT warm start on the gold trajectories, then GRPO in the simulator.

    policy = build_policy(...)                         # conf/train/policy/: tiny (CPU) or any HF causal LM
    sft(policy, train tasks)                           # optional warm start: gold turns, loss on the policy's tokens
    GRPOTrainer(..., rollout_func=<episodes in the simulator>, reward_funcs=[binary, ...]).train()

GRPO runs through TRL's ``GRPOTrainer`` with its custom-rollout extension point (``rollout_func``): each
completion is a whole multi-turn episode against the replay simulator (tool responses masked out of the
loss through ``env_mask``), scored by the rewards ``train.rewards`` names (functions of
``firefly_exp/rewards.py`` or dotted paths, in TRL's form through ``train/rewards.py``).

Writes ``sft/`` and ``grpo/`` (model + tokenizer + ``meta.json``), ``curves.json`` and ``curves.png``
(reward and held-out pass@1 over GRPO steps), ``rollouts.jsonl`` (every GRPO episode: calls, simulator
hits, tool responses, answer, binary reward).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import evaluate
from .. import rewards as reward_fns
from ..settings import TrainSettings
from ..simulator import Simulator
from ..stage import RunContext, Stage, StageResult
from ..store import JsonlWriter, write_json_atomic
from . import augment, chat, policy as policy_mod, rewards
from .augment import field_variants
from .policy import (LMPolicy, PolicySettings, ToolCatalog, build_policy, encode, parameters_delta, prompt_ids,
                     settings_from, snapshot, tokenizer_corpus)


def sft_examples(tok, tasks: list[dict], fns: dict[str, list[dict]], settings: PolicySettings) -> list[tuple]:
    """(input ids, labels) per gold trajectory; labels are -100 except on the policy's own tokens."""
    out = []
    for t in tasks:
        ids = prompt_ids(tok, t, fns[t["id"]], settings)
        labels = [-100] * len(ids)
        for text, mine in chat.gold_turns(t, settings.max_response_chars):
            piece = encode(tok, text)
            ids, labels = ids + piece, labels + (piece if mine else [-100] * len(piece))
        out.append((ids[:settings.max_seq_len], labels[:settings.max_seq_len]))
    return out


@torch.enable_grad()   # another stage (embeddings) may have turned autograd off process-wide
def sft(model, tok, examples: list[tuple], settings, seed: int) -> list[float]:
    """A plain torch loop over the gold trajectories (``settings``: ``train.sft``); returns the loss per epoch."""
    if settings.epochs <= 0:
        return []
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    device = next(model.parameters()).device
    losses = []
    model.train()
    for _ in range(settings.epochs):
        total = 0.0
        for batch in length_batches(examples, settings.batch_size, rng):
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in batch], device=device)
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch], device=device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(batch)
        losses.append(round(total / len(examples), 4))
    return losses


def length_batches(examples: list[tuple], batch_size: int, rng: random.Random) -> list[list[tuple]]:
    """Shuffled batches of similar lengths (less padding): shuffle, sort windows of 8 batches by length,
    cut them into batches, shuffle the batches."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 8
    batches = []
    for w in range(0, len(order), window):
        part = sorted(order[w:w + window], key=lambda i: len(examples[i][0]))
        batches += [[examples[i] for i in part[b:b + batch_size]] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def held_out_pass1(model, tok, tasks: list[dict], sim: Simulator, catalog: ToolCatalog,
                   settings: PolicySettings) -> float:
    """Greedy pass@1 on ``tasks`` (the curve's points; the eval stage makes the reported table)."""
    if not tasks:
        return 0.0
    lm = LMPolicy(model, tok, sim, catalog, settings, 0.0)
    outs = lm.play(tasks, lm.envs(tasks))
    return round(sum(reward_fns.binary(t, o.answer) for t, o in zip(tasks, outs)) / len(tasks), 4)


def save_checkpoint(model, tok, folder: Path, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    write_json_atomic(folder / "meta.json", meta)   # written last: the checkpoint is complete


@dataclass
class Trainee:
    """The policy in training and what its episodes need (shared by SFT, GRPO and the curve's points)."""
    model: Any
    tok: Any
    policy: PolicySettings
    sim: Simulator
    catalog: ToolCatalog
    out_dir: Path


def train_policy(tasks: list[dict], make_simulator: Callable[[], Simulator], catalog: ToolCatalog,
                 settings: TrainSettings, out_dir: Path) -> dict:
    """Train on the ``train`` split (``settings``: ``train``); returns the stage metrics (see the module
    docstring for the files)."""
    out_dir, seed = Path(out_dir), settings.seed
    torch.manual_seed(seed)
    random.seed(seed)
    train = [t for t in tasks if t["split"] == "train"]
    curve_tasks = [t for t in tasks if t["split"] == settings.curve.split][:settings.curve.max_tasks]
    if not train:
        raise ValueError("no train tasks: the synthesizer produced no train split (more DAGs, or another split)")
    spec = settings.policy.plain()
    policy = settings_from(spec)
    # more questions over the train split's own recorded outputs (augment.py); the held-out split is not read
    variants = field_variants(train, catalog.descriptions, settings.sft.variants_per_call,
                              settings.sft.variant_max_fields, policy.max_response_chars, seed)
    train = train + variants
    fns = {t["id"]: catalog.functions(t, policy.tools_in_prompt) for t in tasks + variants}
    corpus = tokenizer_corpus(train, [f for fs in fns.values() for f in fs], policy.max_response_chars)
    model, tok = build_policy(spec, seed, corpus)
    metrics: dict = {"train_tasks": len(train) - len(variants), "sft_variants": len(variants),
                     "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tok)}
    trainee = Trainee(model, tok, policy, make_simulator(), catalog, out_dir)
    meta = {"policy": spec, "seed": seed, "train_tasks": len(train)}

    started, cpu = time.perf_counter(), time.process_time()
    losses = sft(model, tok, sft_examples(tok, train, fns, policy), settings.sft, seed)
    metrics["sft"] = {"epochs": len(losses), "final_loss": losses[-1] if losses else None,
                      "wall_s": round(time.perf_counter() - started, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    save_checkpoint(model, tok, out_dir / "sft", {**meta, "stage": "sft", "losses": losses})

    metrics["grpo"] = grpo_phase(trainee, train, curve_tasks, settings)
    metrics["wall_s_sft_plus_grpo"] = round(metrics["sft"]["wall_s"] + metrics["grpo"]["wall_s"], 2)
    metrics["cpu_s_sft_plus_grpo"] = round(metrics["sft"]["cpu_s"] + metrics["grpo"]["cpu_s"], 2)
    save_checkpoint(model, tok, out_dir / "grpo", {**meta, "stage": "grpo", "grpo": settings.grpo.plain(),
                                                   "rewards": dict(settings.rewards)})
    return metrics


def grpo_phase(trainee: Trainee, train: list[dict], curve_tasks: list[dict], settings: TrainSettings) -> dict:
    """GRPO from the SFT weights; writes ``curves.json`` and ``curves.png``, returns the ``grpo`` metrics."""
    sim = trainee.sim
    before = snapshot(trainee.model)
    hits_before = dict(sim.counts)
    started, cpu = time.perf_counter(), time.process_time()
    curves = grpo(trainee, train, curve_tasks, settings)
    hits = {k: sim.counts.get(k, 0) - hits_before.get(k, 0) for k in sim.counts}
    metrics = {"steps": len(curves["reward"]), "wall_s": round(time.perf_counter() - started, 2),
               # CPU seconds of this process: the training cost without the time spent waiting for a core
               "cpu_s": round(time.process_time() - cpu, 2),
               "weights_delta_l2": round(parameters_delta(before, snapshot(trainee.model)), 6),
               "reward_first": curves["reward"][0] if curves["reward"] else None,
               # the binary reward TRL received, averaged over every GRPO episode
               "reward_binary_mean": (round(sum(curves["reward_binary"]) / len(curves["reward_binary"]), 4)
                                      if curves.get("reward_binary") else None),
               "reward_last": curves["reward"][-1] if curves["reward"] else None,
               "simulator_hits": hits, "episodes": curves["episodes"]}
    write_json_atomic(trainee.out_dir / "curves.json", curves)
    plot_curves(curves, trainee.out_dir / "curves.png")
    return metrics


@torch.enable_grad()
def grpo(trainee: Trainee, train: list[dict], curve_tasks: list[dict], settings: TrainSettings) -> dict:
    """GRPO with TRL's GRPOTrainer; each completion is an episode in the simulator (``rollout_func``);
    returns the curves."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    curves: dict = {"step": [], "reward": [], "kl": [], "loss": [], "pass1_step": [], "pass1": [], "episodes": 0}
    steps, every = settings.grpo.steps, settings.curve.every
    if steps <= 0:
        return curves
    by_question = {}
    for t in train:
        by_question.setdefault(t["question"], t)
    data = Dataset.from_list([{"prompt": chat.prompt_messages(t), "answer": json.dumps(t["answer"]),
                               "task_id": t["id"]} for t in train])
    log = JsonlWriter(trainee.out_dir / "rollouts.jsonl", fsync=False)
    trainer_ref: dict = {}

    def curve_point(step: int) -> None:   # held-out greedy pass@1 every ``curve.every`` steps and at the end
        if every and (step % every == 0 or step == steps):
            curves["pass1_step"].append(step)
            curves["pass1"].append(held_out_pass1(trainer_ref["t"].model, trainee.tok, curve_tasks, trainee.sim,
                                                  trainee.catalog, trainee.policy))

    funcs, weights = rewards.reward_functions(settings.rewards)
    args = grpo_args(settings, weights, trainee)
    if every:
        curves["pass1_step"].append(0)
        curves["pass1"].append(held_out_pass1(trainee.model, trainee.tok, curve_tasks, trainee.sim, trainee.catalog,
                                              trainee.policy))
    trainer = GRPOTrainer(model=trainee.model, reward_funcs=funcs, args=args, train_dataset=data,
                          processing_class=trainee.tok,
                          rollout_func=_rollout_func(trainee, by_question, curves, log, settings.grpo.temperature),
                          callbacks=[_curves_callback(curves, [f.__name__ for f in funcs], curve_point)])
    trainer_ref["t"] = trainer
    trainer.remove_callback(PrinterCallback)   # the per-step logs land in curves.json, not on stdout
    with log:
        trainer.train()
    return curves


def grpo_args(settings: TrainSettings, weights: list[float], trainee: Trainee):
    """TRL's GRPOConfig from ``train.grpo`` (a constant learning rate, one batch of episodes per step)."""
    from trl import GRPOConfig

    g, seed = settings.grpo, settings.seed
    return GRPOConfig(
        output_dir=str(trainee.out_dir / "trainer"), max_steps=g.steps, learning_rate=g.lr,
        num_generations=g.group_size, per_device_train_batch_size=g.group_size * g.prompts_per_step,
        num_iterations=g.num_iterations, gradient_accumulation_steps=1, beta=g.kl_coef, temperature=g.temperature,
        max_completion_length=trainee.policy.max_seq_len, reward_weights=weights, seed=seed, data_seed=seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=policy_device(trainee.model) == "cpu", bf16=g.bf16, loss_type=g.loss_type,
        scale_rewards=g.scale_rewards, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        gradient_checkpointing=g.gradient_checkpointing)


def _rollout_func(trainee: Trainee, by_question: dict, curves: dict, log: JsonlWriter, temperature: float):
    """TRL's ``rollout_func``: the episodes of a batch of prompts in the simulator, each logged to
    ``rollouts.jsonl``; tool responses are masked out of the loss (``env_mask``)."""
    def rollout_func(prompts: list, trainer) -> dict:
        ts = [by_question[p[-1]["content"]] for p in prompts]
        lm = LMPolicy(trainer.model, trainee.tok, trainee.sim, trainee.catalog, trainee.policy, temperature)
        outs = lm.play(ts, lm.envs(ts))
        curves["episodes"] += len(outs)
        step = trainer.state.global_step
        for t, o in zip(ts, outs):
            log.write({"step": step, "task_id": t["id"], "calls": o.calls, "tool_responses": o.tool_responses,
                       "answer": o.answer, "reward_binary": reward_fns.binary(t, o.answer),
                       "malformed_calls": o.malformed})
        return {"prompt_ids": [o.prompt_ids for o in outs], "completion_ids": [o.completion_ids for o in outs],
                "logprobs": None, "env_mask": [o.env_mask for o in outs],
                "tool_responses": [o.tool_responses for o in outs]}

    return rollout_func


def _curves_callback(curves: dict, reward_names: list[str], after_step: Callable[[int], None]):
    """A TrainerCallback that copies TRL's per-step logs into ``curves`` (reward, kl, loss, each reward
    function's mean as TRL computed it) and calls ``after_step(global_step)`` after each step."""
    from transformers import TrainerCallback

    class Curves(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                curves["step"].append(state.global_step)
                curves["reward"].append(round(float(logs["reward"]), 4))
                curves["kl"].append(round(float(logs.get("kl", 0.0)), 6))
                curves["loss"].append(round(float(logs.get("loss", 0.0)), 6))
                for name in reward_names:
                    curves.setdefault(f"reward_{name}", []).append(
                        round(float(logs.get(f"rewards/{name}/mean", 0.0)), 4))

        def on_step_end(self, args, state, control, **kwargs):
            after_step(state.global_step)

    return Curves()


def policy_device(model) -> str:
    return next(model.parameters()).device.type


def plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curves["step"], curves["reward"], label="train reward (group mean)", alpha=0.7)
    if curves["pass1"]:
        ax.plot(curves["pass1_step"], curves["pass1"], "o-", label="held-out pass@1 (greedy)")
    ax.set_xlabel("GRPO step")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_to_mlflow(folder: Path) -> None:
    """Inside the stage's MLflow run: the curves as step metrics, the checkpoints (files + meta.json) as
    artifacts under ``train/sft`` and ``train/grpo``."""
    import mlflow

    curves_path = Path(folder) / "curves.json"
    if curves_path.exists():
        c = json.loads(curves_path.read_text())
        for i, step in enumerate(c["step"]):
            mlflow.log_metrics({"grpo.reward": c["reward"][i], "grpo.kl": c["kl"][i], "grpo.loss": c["loss"][i]},
                               step=int(step))
        for step, p in zip(c["pass1_step"], c["pass1"]):
            mlflow.log_metric("grpo.held_out_pass_at_1", p, step=int(step))
    for name in ("sft", "grpo"):
        if (Path(folder) / name / "meta.json").exists():
            mlflow.log_artifacts(str(Path(folder) / name), artifact_path=f"train/{name}")


# -- the stage -------------------------------------------------------------------------------------------


def run(settings: TrainSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """Train on the synthesizer's tasks, episodes in fresh simulators from the simulator stage; writes into ctx.out."""
    rows = inputs["servers"].value.to_dicts()
    catalog = ToolCatalog(evaluate.tool_schemas(rows), evaluate.tool_descriptions(rows))
    return train_policy(inputs["synthesizer"].value, inputs["simulator"].value.make, catalog, settings, ctx.out)


STAGE = Stage("train", run, inputs=("synthesizer", "simulator", "servers"), artifacts=("curves.json", "curves.png"),
              skip=lambda s: None if s.train.enabled else "train=none", log=log_to_mlflow,
              code=(sys.modules[__name__], policy_mod, chat, rewards, reward_fns, augment))
