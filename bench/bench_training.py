"""Benchmark: throughput of R2Rec's training stages with the default model on ml-100k.

    .venv/bin/python bench/bench_training.py --stage sft [--steps 4] [--out results/bench_sft.json]
    .venv/bin/python bench/bench_training.py --stage rl  [--steps 3] [--out results/bench_rl.json]
    .venv/bin/python bench/bench_training.py --stage sft --set sft_gradient_checkpointing=true  # any config key

SFT: tokens/s and examples/s of trl's SFTTrainer with the shipped SFT settings. RL: prompts/s and
completion tokens/s of trl's GRPOTrainer with the shipped RL settings (from a fresh LoRA adapter: the
cost per step does not depend on where the adapter starts). Both report peak memory. Each runs a few
optimizer steps in a temporary checkpoint folder and reads trl's own logs. Not a test: wall times
depend on the machine; the numbers go to the --out JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from recbole.data import create_dataset

from recbole_r2rec.chains import InteractionGraph
from recbole_r2rec.config import build_config
from recbole_r2rec.llm import add_lora
from recbole_r2rec.model import R2Rec
from recbole_r2rec.protocol import prepare_data
from recbole_r2rec.runner import parse_overrides
from recbole_r2rec.stages import run_rl, run_sft, stage_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["sft", "rl"], required=True)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps to time")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", default=None, help="default: results/bench_<stage>.json")
    parser.add_argument("--set", action="append", default=[], help="key=value: a config override (repeatable)")
    args = parser.parse_args()
    overrides = parse_overrides([f"--{kv}" for kv in args.set])

    folder = tempfile.mkdtemp(prefix="r2rec-bench-")
    config = build_config("R2Rec", args.dataset, overrides={
        "state": "WARNING", "checkpoint_dir": folder, f"{args.stage}_max_steps": args.steps,
        f"{args.stage}_save_steps": args.steps, f"{args.stage}_logging_steps": 1, "eval_users": 1, **overrides})
    train, _, _ = prepare_data(config, create_dataset(config))
    model = R2Rec(config, train._dataset)
    graph = InteractionGraph.from_training(train._dataset, train.seen_items)
    if args.stage == "rl":
        model.llm = add_lora(model.llm, config["lora_r"], config["lora_alpha"], config["lora_dropout"])
    start = time.perf_counter()
    output = (run_sft if args.stage == "sft" else run_rl)(model, train._dataset, graph, config)
    wall = time.perf_counter() - start

    checkpoints = sorted(stage_dir(config, args.stage).glob("checkpoint-*"))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    runtime = float(output.metrics["train_runtime"])  # the optimizer steps alone, without the setup
    steps = state["global_step"]
    per_step = config[f"{args.stage}_batch_size"] * config[f"{args.stage}_grad_accum"]
    report = {
        "stage": args.stage, "dataset": args.dataset, "model": str(config["llm_path"]), "overrides": overrides,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "device": str(model.llm.device), "dtype": str(next(model.llm.parameters()).dtype)},
        "steps": steps, "train_runtime_s": runtime, "wall_s_with_setup": wall,
        "seconds_per_step": runtime / steps,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        + (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0),
    }
    tokens = float(logs[-1].get("num_tokens", 0)) if logs else 0.0
    if args.stage == "sft":
        report.update(examples_per_step=per_step, examples_per_s=steps * per_step / runtime,
                      tokens_per_s=tokens / runtime, tokens_per_example=tokens / (steps * per_step))
    else:
        completions = steps * per_step
        lengths = [entry["completions/mean_length"] for entry in logs if "completions/mean_length" in entry]
        mean_length = sum(lengths) / len(lengths) if lengths else float("nan")
        report.update(completions_per_step=per_step, num_generations=config["rl_num_generations"],
                      prompts_per_s=completions / config["rl_num_generations"] / runtime,
                      completion_tokens_per_s=completions * mean_length / runtime,
                      mean_completion_length=mean_length, tokens_per_s_total=tokens / runtime,
                      mean_reward=[entry.get("reward") for entry in logs])
    out = Path(args.out or f"results/bench_{args.stage}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
