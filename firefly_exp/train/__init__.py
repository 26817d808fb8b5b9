"""Stage 8, train: a tool-calling policy, SFT warm start on the gold trajectories, then GRPO in the simulator.

    policy = build_policy(...)                         # conf/train/policy/: tiny (CPU) or any HF causal LM
    sft(policy, train tasks)                           # optional warm start: gold turns, loss on the policy's tokens
    GRPOTrainer(..., rollout_func=<episodes in the simulator>, reward_funcs=[binary, ...]).train()

GRPO runs through TRL's ``GRPOTrainer`` with its custom-rollout extension point (``rollout_func``): each
completion is a whole multi-turn episode against the replay simulator (tool responses masked out of the
loss through ``env_mask``), scored by the reward functions in ``rewards.py``.

Writes ``sft/`` and ``grpo/`` (model + tokenizer + ``meta.json``), ``curves.json`` and ``curves.png``
(reward and held-out pass@1 over GRPO steps), ``rollouts.jsonl`` (every GRPO episode: calls, simulator
hits, tool responses, answer, binary reward).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import torch

from ..evaluate import binary_reward
from ..simulator import Simulator
from ..simulator.env import ToolEnvironment
from ..store import JsonlWriter, write_json_atomic
from . import chat, rewards
from .augment import field_variants
from .policy import (LMPolicy, PolicySettings, build_policy, encode, parameters_delta, prompt_ids, rollout,
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
def sft(model, tok, examples: list[tuple], epochs: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """A plain torch loop over the gold trajectories; returns the loss per epoch."""
    if epochs <= 0:
        return []
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    losses = []
    model.train()
    for _ in range(epochs):
        total = 0.0
        for batch in length_batches(examples, batch_size, rng):
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


def held_out_pass1(model, tok, tasks: list[dict], sim: Simulator, schemas: dict, settings: PolicySettings,
                   descriptions: dict) -> float:
    """Greedy pass@1 on ``tasks`` (the curve's points; the eval stage makes the reported table)."""
    if not tasks:
        return 0.0
    envs, fns = [], []
    for t in tasks:
        env = ToolEnvironment(sim, max_calls=settings.max_turns)
        env.reset(tools=t["tools"])
        envs.append(env)
        fns.append(chat.tool_functions(t, schemas, settings.tools_in_prompt, descriptions))
    outs = rollout(model, tok, tasks, envs, fns, settings, 0.0)
    return round(sum(binary_reward(t, o.answer or {}) for t, o in zip(tasks, outs)) / len(tasks), 4)


def save_checkpoint(model, tok, folder: Path, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    write_json_atomic(folder / "meta.json", meta)   # written last: the checkpoint is complete


def train_policy(tasks: list[dict], make_simulator, schemas: dict[str, dict], descriptions: dict[str, str],
                 out_dir: Path, seed: int, policy: dict, sft_cfg: dict, grpo_cfg: dict, reward_weights: dict,
                 curve_split: str = "test", curve_every: int = 0, curve_max_tasks: int = 64) -> dict:
    """Train on the ``train`` split; returns the stage metrics (see the module docstring for the files)."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    random.seed(seed)
    train = [t for t in tasks if t["split"] == "train"]
    curve_tasks = [t for t in tasks if t["split"] == curve_split][:curve_max_tasks]
    if not train:
        raise ValueError("no train tasks: the synthesizer produced no train split (more DAGs, or another split)")
    settings = settings_from(policy)
    # more questions over the train split's own recorded outputs (augment.py); the held-out split is not read
    variants = field_variants(train, descriptions, int(sft_cfg.get("variants_per_call", 0)),
                              int(sft_cfg.get("variant_max_fields", 2)), max_response_chars=settings.max_response_chars,
                              seed=seed)
    train = train + variants
    fns = {t["id"]: chat.tool_functions(t, schemas, settings.tools_in_prompt, descriptions) for t in tasks + variants}
    corpus = tokenizer_corpus(train, [f for fs in fns.values() for f in fs], settings.max_response_chars)
    model, tok = build_policy(policy, seed, corpus)
    metrics: dict = {"train_tasks": len(train) - len(variants), "sft_variants": len(variants), "parameters": sum(p.numel() for p in model.parameters()),
                     "vocab": len(tok)}
    sim = make_simulator()
    meta = {"policy": policy, "seed": seed, "train_tasks": len(train)}

    started, cpu = time.perf_counter(), time.process_time()
    losses = sft(model, tok, sft_examples(tok, train, fns, settings), int(sft_cfg.get("epochs", 0)),
                 float(sft_cfg.get("lr", 1e-3)), int(sft_cfg.get("batch_size", 16)), seed)
    metrics["sft"] = {"epochs": len(losses), "final_loss": losses[-1] if losses else None,
                      "wall_s": round(time.perf_counter() - started, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    save_checkpoint(model, tok, out_dir / "sft", {**meta, "stage": "sft", "losses": losses})

    before = snapshot(model)
    hits_before = dict(sim.counts)
    started, cpu = time.perf_counter(), time.process_time()
    curves = grpo(model, tok, train, fns, sim, settings, grpo_cfg, reward_weights, seed, out_dir,
                  curve_tasks, curve_every, schemas, descriptions)
    hits = {k: sim.counts.get(k, 0) - hits_before.get(k, 0) for k in sim.counts}
    metrics["grpo"] = {"steps": len(curves["reward"]), "wall_s": round(time.perf_counter() - started, 2),
                       # CPU seconds of this process: the training cost without the time spent waiting for a core
                       "cpu_s": round(time.process_time() - cpu, 2),
                       "weights_delta_l2": round(parameters_delta(before, snapshot(model)), 6),
                       "reward_first": curves["reward"][0] if curves["reward"] else None,
                       # the binary reward TRL received, averaged over every GRPO episode
                       "reward_binary_mean": (round(sum(curves["reward_binary"]) / len(curves["reward_binary"]), 4)
                                              if curves.get("reward_binary") else None),
                       "reward_last": curves["reward"][-1] if curves["reward"] else None,
                       "simulator_hits": hits, "episodes": curves["episodes"]}
    metrics["wall_s_sft_plus_grpo"] = round(metrics["sft"]["wall_s"] + metrics["grpo"]["wall_s"], 2)
    metrics["cpu_s_sft_plus_grpo"] = round(metrics["sft"]["cpu_s"] + metrics["grpo"]["cpu_s"], 2)
    write_json_atomic(out_dir / "curves.json", curves)
    plot_curves(curves, out_dir / "curves.png")
    save_checkpoint(model, tok, out_dir / "grpo", {**meta, "stage": "grpo", "grpo": grpo_cfg,
                                                   "rewards": reward_weights})
    return metrics


@torch.enable_grad()
def grpo(model, tok, train: list[dict], fns: dict, sim: Simulator, settings: PolicySettings, cfg: dict,
         reward_weights: dict, seed: int, out_dir: Path, curve_tasks: list[dict], curve_every: int,
         schemas: dict, descriptions: dict) -> dict:
    """GRPO with TRL's GRPOTrainer; each completion is an episode in the simulator (``rollout_func``)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    curves: dict = {"step": [], "reward": [], "kl": [], "loss": [], "pass1_step": [], "pass1": [], "episodes": 0}
    steps = int(cfg["steps"])
    if steps <= 0:
        return curves
    by_question = {}
    for t in train:
        by_question.setdefault(t["question"], t)
    data = Dataset.from_list([{"prompt": chat.prompt_messages(t), "answer": json.dumps(t["answer"]),
                               "task_id": t["id"]} for t in train])
    log = JsonlWriter(out_dir / "rollouts.jsonl", fsync=False)
    trainer_ref: dict = {}

    def rollout_func(prompts: list, trainer) -> dict:
        ts = [by_question[p[-1]["content"]] for p in prompts]
        envs = []
        for t in ts:
            env = ToolEnvironment(sim, max_calls=settings.max_turns)
            env.reset(tools=t["tools"])
            envs.append(env)
        outs = rollout(trainer.model, tok, ts, envs, [fns[t["id"]] for t in ts], settings,
                       float(cfg.get("temperature", 1.0)))
        curves["episodes"] += len(outs)
        step = trainer.state.global_step
        for t, o in zip(ts, outs):
            log.write({"step": step, "task_id": t["id"], "calls": o.calls, "tool_responses": o.tool_responses,
                       "answer": o.answer, "reward_binary": binary_reward(t, o.answer or {}),
                       "malformed_calls": o.malformed})
        return {"prompt_ids": [o.prompt_ids for o in outs], "completion_ids": [o.completion_ids for o in outs],
                "logprobs": None, "env_mask": [o.env_mask for o in outs],
                "tool_responses": [o.tool_responses for o in outs]}

    class Curves(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                curves["step"].append(state.global_step)
                curves["reward"].append(round(float(logs["reward"]), 4))
                curves["kl"].append(round(float(logs.get("kl", 0.0)), 6))
                curves["loss"].append(round(float(logs.get("loss", 0.0)), 6))
                for name in reward_names:   # each reward function's mean, as TRL computed it
                    curves.setdefault(f"reward_{name}", []).append(
                        round(float(logs.get(f"rewards/{name}/mean", 0.0)), 4))

        def on_step_end(self, args, state, control, **kwargs):
            if curve_every and (state.global_step % curve_every == 0 or state.global_step == steps):
                curves["pass1_step"].append(state.global_step)
                curves["pass1"].append(held_out_pass1(trainer_ref["t"].model, tok, curve_tasks, sim, schemas,
                                                      settings, descriptions))

    funcs, weights = rewards.reward_functions(reward_weights)
    reward_names = [f.__name__ for f in funcs]
    g = int(cfg["group_size"])
    args = GRPOConfig(
        output_dir=str(out_dir / "trainer"), max_steps=steps, learning_rate=float(cfg["lr"]),
        num_generations=g, per_device_train_batch_size=g * int(cfg["prompts_per_step"]),
        num_iterations=int(cfg.get("num_iterations", 1)),
        gradient_accumulation_steps=1, beta=float(cfg["kl_coef"]), temperature=float(cfg.get("temperature", 1.0)),
        max_completion_length=settings.max_seq_len, reward_weights=weights, seed=seed, data_seed=seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=policy_device(model) == "cpu", bf16=bool(cfg.get("bf16", False)),
        loss_type=cfg.get("loss_type", "dapo"), scale_rewards=cfg.get("scale_rewards", "group"),
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        gradient_checkpointing=bool(cfg.get("gradient_checkpointing", False)))
    if curve_every:
        curves["pass1_step"].append(0)
        curves["pass1"].append(held_out_pass1(model, tok, curve_tasks, sim, schemas, settings, descriptions))
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=data, processing_class=tok,
                          rollout_func=rollout_func, callbacks=[Curves()])
    trainer_ref["t"] = trainer
    trainer.remove_callback(PrinterCallback)   # the per-step logs land in curves.json, not on stdout
    with log:
        trainer.train()
    return curves


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
