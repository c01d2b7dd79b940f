"""Benchmark: R2Rec's shared-prompt candidate scorer vs a per-candidate scorer vs LLaRA-style
generate-then-match, on the same model, users and candidates (ml-100k test users).

    .venv/bin/python bench/bench_scoring.py [--users 100] [--naive_users 10] [--out results/bench_scoring.json]

Writes its numbers to the --out JSON (and prints them). Not a test: wall times depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from recbole.data import create_dataset

from recbole_r2rec.config import build_config
from recbole_r2rec.protocol import prepare_data
from recbole_r2rec.model import R2Rec
from recbole_r2rec import prompts
from recbole_r2rec.scoring import common_head_length, generate, score_candidates, score_naive


def matmul_peak(dtype, n=2048, reps=5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_flops(model, tokens: int, logits_positions: int, context: float) -> float:
    """Matmul FLOPs of a decoder forward: 2 * (non-embedding weights) per token, the LM head per logits
    position, and attention scores/values (4 * layers * hidden * context per token)."""
    cfg = model.config
    embed = cfg.vocab_size * cfg.hidden_size
    body = sum(p.numel() for p in model.parameters()) - embed * (1 if cfg.tie_word_embeddings else 2)
    return 2 * body * tokens + 2 * embed * logits_positions + 4 * cfg.num_hidden_layers * cfg.hidden_size * context * tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--naive_users", type=int, default=10, help="per-candidate scorer is slow: fewer users")
    parser.add_argument("--batch_users", type=int, default=16)
    parser.add_argument("--answer_tokens", type=int, default=24, help="generate-then-match budget")
    parser.add_argument("--llm_dtype", default="auto")
    parser.add_argument("--out", default="results/bench_scoring.json")
    args = parser.parse_args()

    os.makedirs("saved", exist_ok=True)
    config = build_config("R2Rec", "ml-100k", overrides={"eval_users": args.users, "state": "WARNING",
                                                          "llm_dtype": args.llm_dtype})
    train, _, test = prepare_data(config, create_dataset(config))
    model = R2Rec(config, train._dataset)
    llm, tok = model.llm, model.tokenizer

    # The same users, candidates and prompts for every method.
    inter = test._dataset.inter_feat
    queries = []
    for row in range(len(inter)):
        uid = int(inter["user_id"][row])
        shown = [int(i) for i in test.candidates[uid]]
        history = prompts.history_ids(inter["item_id_list"][row].numpy(), int(inter["item_length"][row]),
                                      model.history_len)
        prompt = model.encode(model.prompt_text(history, shown, uid))
        queries.append((prompt, shown, [model.answer_tokens(model.titles[i]) for i in shown]))
    # Every method gets the same batches: users of similar prompt length together (as R2Rec.score_users
    # batches them), so no method pays for padding the others do not.
    queries.sort(key=lambda q: len(q[0]))
    prefix = model.encode(prompts.answer_prefix(None))
    n = len(queries)

    def run_shared(share_head=False):  # R2Rec's default
        out = []
        for s in range(0, n, args.batch_users):
            chunk = queries[s:s + args.batch_users]
            out += score_candidates(llm, [q[0] + prefix for q in chunk], [q[2] for q in chunk], tok.pad_token_id,
                                    share_head=share_head)
        return out

    def run_naive(k):
        return [score_naive(llm, q[0] + prefix, q[2]) for q in queries[:k]]

    def run_generate_then_match():
        answers = []
        for s in range(0, n, args.batch_users):
            chunk = queries[s:s + args.batch_users]
            texts = generate(llm, tok, [q[0] + prefix for q in chunk], args.answer_tokens, stop=prompts.ANSWER_CLOSE)
            answers += [prompts.matched_candidates(t.split(prompts.ANSWER_CLOSE)[0], [model.titles[i] for i in q[1]])
                        for t, q in zip(texts, chunk)]
        return answers

    results = {}

    def timed(key, fn):
        start = time.perf_counter()
        results[key] = fn()
        return time.perf_counter() - start

    score_candidates(llm, [queries[0][0] + prefix], [queries[0][2]], tok.pad_token_id)  # warm-up
    t_shared = timed("shared", run_shared)
    t_head = timed("head", lambda: run_shared(share_head=True))
    t_naive = timed("naive", lambda: run_naive(args.naive_users))
    t_gen = timed("gen", run_generate_then_match)

    agree = max(abs(a - b) for s, nv in zip(results["shared"], results["naive"]) for a, b in zip(s.mean, nv))
    head = common_head_length([q[0] + prefix for q in queries])
    prompt_tokens = sum(len(q[0]) + len(prefix) for q in queries)  # what the default scorer (no shared head) runs
    cand_tokens = sum(len(c) for q in queries for c in q[2])
    avg_ctx_cand = prompt_tokens / n
    avg_ctx_prompt = avg_ctx_cand / 2
    flops = forward_flops(llm, prompt_tokens, n, avg_ctx_prompt) + forward_flops(llm, cand_tokens, cand_tokens, avg_ctx_cand)
    dtype = next(llm.parameters()).dtype
    valid = sum(len(a) == 1 for a in results["gen"]) / n
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "device": str(llm.device), "dtype": str(dtype)},
        "model": "SmolLM2-135M-Instruct (embedded default)",
        "users": n, "candidates_per_user": 20,
        "avg_prompt_tokens": prompt_tokens / n, "avg_candidate_tokens": cand_tokens / (20 * n),
        "shared_scorer": {"users_per_s": n / t_shared, "seconds": t_shared,
                          "gflop_per_s": flops / t_shared / 1e9, "gflop_per_user": flops / n / 1e9},
        "shared_scorer_with_shared_head": {"users_per_s": n / t_head, "seconds": t_head,
                                           "shared_head_tokens": head},
        "naive_per_candidate_scorer": {"users": args.naive_users, "users_per_s": args.naive_users / t_naive,
                                       "seconds": t_naive},
        "generate_then_match": {"users_per_s": n / t_gen, "seconds": t_gen, "max_new_tokens": args.answer_tokens,
                                "valid_ratio": valid, "note": "top-1 only, no ranking"},
        "speedup_vs_naive": (n / t_shared) / (args.naive_users / t_naive),
        "speedup_vs_generate_then_match": t_gen / t_shared,
        "speedup_from_shared_head": t_shared / t_head,
        "batches": f"{args.batch_users} users of similar prompt length, the same for every method",
        "max_abs_diff_shared_vs_naive_loglik": agree,
        # bf16 at a small size: on CPUs without bf16 units a 2048^2 bf16 matmul takes minutes
        "matmul_peak_gflop_per_s": {"float32": matmul_peak(torch.float32),
                                    "bfloat16": matmul_peak(torch.bfloat16, n=512, reps=2)},
    }
    report["shared_scorer"]["fraction_of_peak"] = (
        report["shared_scorer"]["gflop_per_s"] / report["matmul_peak_gflop_per_s"][str(dtype).split(".")[-1]])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
