"""Does GRPO buy anything? SFT-only vs SFT-then-GRPO on the default experiment's held-out tasks, over 3
training seeds (the tasks stay those of the run's seed; ``train.seed`` varies). Writes outputs/bench/grpo.json.

    .venv/bin/python -m bench.grpo                          # the default experiment (its upstream stages are reused)
    .venv/bin/python -m bench.grpo +experiment=smoke        # any overrides pass through
    .venv/bin/python -m bench.grpo --parallel 3             # the seeds in 3 processes at once (same numbers, each
                                                            # seed's wall time then includes waiting for a core)

Each seed is one pipeline run with ``train=grpo train.seed=<s>``: the train stage saves the SFT checkpoint
and the GRPO checkpoint trained from it, and the eval stage scores both (greedy pass@1) in the same table.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from firefly_exp import PROJECT_ROOT, pipeline

SEEDS = (0, 1, 2)


def run_seed(seed: int, overrides: list[str]) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["train=grpo", f"train.seed={seed}", *overrides])
    run_dir = Path(cfg.paths.outputs) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-bench-grpo-seed{seed}"
    summary = pipeline.run(cfg, run_dir)
    train = summary["stages"]["train"]
    return {"seed": seed, "sft_pass1": summary["eval"]["sft"]["pass@1"], "grpo_pass1": summary["eval"]["grpo"]["pass@1"],
            "sft_field_accuracy": summary["eval"]["sft"]["field_accuracy"],
            "grpo_field_accuracy": summary["eval"]["grpo"]["field_accuracy"],
            "train_s": train["wall_s"], "sft_s": train["metrics"]["sft"]["wall_s"],
            "grpo_s": train["metrics"]["grpo"]["wall_s"], "train_reused": train["reused"],
            "train_cpu_s": train["metrics"].get("cpu_s_sft_plus_grpo"),
            "sft_variants": train["metrics"].get("sft_variants"),
            "grpo_reward_binary": train["metrics"]["grpo"].get("reward_binary_mean"),
            "test_tasks": summary["counts"]["test_tasks"], "run_dir": summary["run_dir"]}


def spread(xs: list[float]) -> float:
    """The sample standard deviation (0 for one value)."""
    return round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0


def main(overrides: list[str], parallel: int = 1) -> dict:
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    if parallel > 1:
        with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = list(pool.map(run_seed, SEEDS, [overrides] * len(SEEDS)))
    else:
        per_seed = [run_seed(s, overrides) for s in SEEDS]
    sft, grpo = [r["sft_pass1"] for r in per_seed], [r["grpo_pass1"] for r in per_seed]
    out = {"seeds": list(SEEDS), "overrides": overrides, "parallel": parallel,
           "sft_pass1_mean": round(statistics.mean(sft), 4), "sft_pass1_spread": spread(sft),
           "grpo_pass1_mean": round(statistics.mean(grpo), 4), "grpo_pass1_spread": spread(grpo),
           "sft_pass1": sft, "grpo_pass1": grpo,
           "train_s_per_seed": [r["train_s"] for r in per_seed],
           "train_cpu_s_per_seed": [r["train_cpu_s"] for r in per_seed], "per_seed": per_seed,
           "wall_s": round(time.perf_counter() - started, 1),
           "loadavg_1_5_15": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}}
    gain = out["grpo_pass1_mean"] - out["sft_pass1_mean"]
    out["gain"] = round(gain, 4)
    out["ratio_grpo_over_sft"] = round(out["grpo_pass1_mean"] / out["sft_pass1_mean"], 3) if out["sft_pass1_mean"] else None
    out["grpo_beats_sft_beyond_spread"] = gain > max(out["sft_pass1_spread"], out["grpo_pass1_spread"])
    path = PROJECT_ROOT / "outputs" / "bench" / "grpo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"held-out pass@1 over seeds {list(SEEDS)} ({per_seed[0]['test_tasks']} tasks): "
          f"SFT {out['sft_pass1_mean']:.3f} ± {out['sft_pass1_spread']:.3f}  ->  SFT+GRPO "
          f"{out['grpo_pass1_mean']:.3f} ± {out['grpo_pass1_spread']:.3f}  (gain {gain:+.3f}, x{out['ratio_grpo_over_sft']}; "
          f"beyond the spread: {out['grpo_beats_sft_beyond_spread']})")
    print(f"train s per seed (SFT + GRPO + curve evals): {out['train_s_per_seed']}; wrote {path}")
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    n = 1
    if "--parallel" in args:
        i = args.index("--parallel")
        n = int(args[i + 1])
        del args[i:i + 2]
    main(args, n)
