"""Benchmark: R2Rec's shared-prompt candidate scorer vs a per-candidate scorer vs LLaRA-style
generate-then-match, on the same model, users and candidates (ml-100k test users).

    .venv/bin/python bench/bench_scoring.py [--users 192] [--naive_users 5] [--out results/bench_scoring.json]

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
from scipy.stats import wilcoxon
from tqdm import tqdm

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
    parser.add_argument("--users", type=int, default=192, help="12 batches of 16: enough for a paired test")
    parser.add_argument("--naive_users", type=int, default=5, help="per-candidate scorer is slow: fewer users")
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

    def shared(chunk, share_head):  # R2Rec's scorer (score_share_head: true by default)
        return score_candidates(llm, [q[0] + prefix for q in chunk], [q[2] for q in chunk], tok.pad_token_id,
                                share_head=share_head)

    def generate_then_match(chunk):
        texts = generate(llm, tok, [q[0] + prefix for q in chunk], args.answer_tokens, stop=prompts.ANSWER_CLOSE)
        return [(prompts.matched_candidates(t.split(prompts.ANSWER_CLOSE)[0], [model.titles[i] for i in q[1]]), t)
                for t, q in zip(texts, chunk)]

    # Interleaved timing: every batch runs every method back to back, in an order that rotates from
    # batch to batch, so a slow spell of this shared machine (or a warm cache) hits all methods alike.
    # (Timing whole methods one after another made whichever ran first look 8-15% slower.)
    batches = [queries[s:s + args.batch_users] for s in range(0, n, args.batch_users)]
    methods = {"scorer": lambda chunk: shared(chunk, share_head=True),
               "scorer_without_shared_head": lambda chunk: shared(chunk, share_head=False),
               "generate_then_match": generate_then_match}
    for fn in methods.values():  # warm-up, untimed
        fn(batches[0][:2])
    seconds = {key: [] for key in methods}
    results = {key: [] for key in methods}
    for b, chunk in enumerate(tqdm(batches, desc="batches (every method)")):
        order = list(methods)[b % len(methods):] + list(methods)[:b % len(methods)]
        for key in order:
            start = time.perf_counter()
            out = methods[key](chunk)
            seconds[key].append(time.perf_counter() - start)
            results[key] += out
    # The per-candidate scorer is ~15x slower: a few users, one from each of the first batches.
    picks = [b * args.batch_users + len(batch) // 2 for b, batch in enumerate(batches)][:args.naive_users]
    naive_queries = [queries[i] for i in picks]
    start = time.perf_counter()
    naive = [score_naive(llm, q[0] + prefix, q[2]) for q in naive_queries]
    t_naive = time.perf_counter() - start
    t_head, t_shared, t_gen = (sum(seconds[key]) for key in methods)

    def paired(a, b):
        """Per-batch time ratio b/a (median and quartiles) and a Wilcoxon signed-rank test on the
        per-batch log ratios: is one method faster than the other batch for batch?"""
        ratio = np.asarray(seconds[b]) / np.asarray(seconds[a])
        return {"batch_ratio_median": float(np.median(ratio)),
                "batch_ratio_quartiles": [float(q) for q in np.percentile(ratio, [25, 75])],
                f"batches_{a}_faster": int((ratio > 1).sum()), "batches": len(ratio),
                "wilcoxon_p": float(wilcoxon(np.log(ratio)).pvalue)}

    def max_diff(scored, reference):
        return max(abs(a - b) for s, r in zip(scored, reference) for a, b in zip(s.mean, r))

    agree = max_diff([results["scorer"][i] for i in picks], naive)
    dtype = next(llm.parameters()).dtype
    head = common_head_length([q[0] + prefix for q in queries])
    prompt_tokens = sum(len(q[0]) + len(prefix) for q in queries)
    cand_tokens = sum(len(c) for q in queries for c in q[2])
    fed_tokens = cand_tokens - 20 * n  # a candidate's last token is predicted, never fed
    avg_ctx_cand = prompt_tokens / n
    candidate_flops = forward_flops(llm, fed_tokens, fed_tokens, avg_ctx_cand)
    flops = forward_flops(llm, prompt_tokens, n, avg_ctx_cand / 2) + candidate_flops
    head_flops = (forward_flops(llm, prompt_tokens - (n - len(batches)) * head, n, avg_ctx_cand / 2)
                  + candidate_flops)  # with the head run once per batch
    generated = [len(tok(t, add_special_tokens=False).input_ids) for _, t in results["generate_then_match"]]
    valid = sum(len(matched) == 1 for matched, _ in results["generate_then_match"]) / n
    naive_users = len(naive_queries)
    # bf16 at a small size first: on CPUs without bf16 units a 2048^2 bf16 matmul takes minutes
    peak = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16, n=512, reps=2)}
    if peak["bfloat16"] > 50:
        peak["bfloat16"] = matmul_peak(torch.bfloat16)
    peak_of_dtype = peak[str(dtype).split(".")[-1]]
    # bf16 rounding differs between the packed and the per-candidate forward: check the maths in float32.
    llm.float()
    few = naive_queries[:2]
    agree_fp32 = max_diff(shared(few, share_head=True), [score_naive(llm, q[0] + prefix, q[2]) for q in few])

    def scorer(seconds_, flops_):
        return {"users_per_s": n / seconds_, "seconds": seconds_, "gflop_per_user": flops_ / n / 1e9,
                "gflop_per_s": flops_ / seconds_ / 1e9, "fraction_of_peak": flops_ / seconds_ / 1e9 / peak_of_dtype}

    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "device": str(llm.device), "dtype": str(dtype)},
        "model": "SmolLM2-135M-Instruct (embedded default)",
        "users": n, "candidates_per_user": 20,
        "avg_prompt_tokens": prompt_tokens / n, "avg_candidate_tokens": cand_tokens / (20 * n),
        "avg_candidate_tokens_fed_per_user": fed_tokens / n, "avg_generated_tokens_per_user": float(np.mean(generated)),
        "scorer": {**scorer(t_head, head_flops), "shared_head_tokens": head,
                   "note": "R2Rec's default (score_share_head: true)"},
        "scorer_without_shared_head": scorer(t_shared, flops),
        "naive_per_candidate_scorer": {"users": naive_users, "users_per_s": naive_users / t_naive,
                                       "seconds": t_naive, "which": "the middle user of each of the first batches"},
        "generate_then_match": {"users_per_s": n / t_gen, "seconds": t_gen, "max_new_tokens": args.answer_tokens,
                                "valid_ratio": valid, "note": "top-1 only, no ranking"},
        "speedup_vs_naive": (n / t_head) / (naive_users / t_naive),
        "speedup_vs_generate_then_match": t_gen / t_head,
        "speedup_vs_generate_then_match_without_shared_head": t_gen / t_shared,
        "speedup_from_shared_head": t_shared / t_head,
        "per_batch_generate_then_match_over_scorer": paired("scorer", "generate_then_match"),
        "per_batch_generate_then_match_over_scorer_without_head": paired("scorer_without_shared_head",
                                                                         "generate_then_match"),
        "per_batch_without_head_over_with_head": paired("scorer", "scorer_without_shared_head"),
        "batch_seconds": seconds,
        "timing": (f"{len(batches)} batches of {args.batch_users} users of similar prompt length; each batch runs "
                   "every method back to back in an order rotating per batch, after one untimed warm-up each"),
        "max_abs_diff_scorer_vs_naive_loglik": {str(dtype): agree, "torch.float32 (2 users)": agree_fp32},
        "matmul_peak_gflop_per_s": peak,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
