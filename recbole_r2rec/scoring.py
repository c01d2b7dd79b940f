"""Candidate scoring with one shared prompt pass per user.

A candidate's score is the length-normalised log-likelihood of its answer text (title + </answer>)
given the prompt (and the thoughts, when generated). The prompt of each user runs once; its KV cache
then serves all of that user's candidates in one packed forward, each candidate attending to the
prompt and to itself only (a tree-shaped 4D mask), with positions continuing the prompt. No forward
pass per candidate, no copy of the cache per candidate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList


@dataclass
class CandidateScores:
    """Per candidate: mean log-prob (the score) and the log-prob of each of its tokens."""

    mean: list
    token_logprobs: list


def _left_pad(seqs, pad_id, device):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = True
    return ids.to(device), mask.to(device)


@torch.no_grad()
def score_shared(model, prefixes: list, candidates: list, pad_id: int) -> list:
    """Scores of every candidate of every user, sharing each user's prompt pass.

    prefixes: per user, the token ids of prompt (+ thoughts) up to the answer.
    candidates: per user, a list of token-id lists (each candidate's answer text).
    Returns per user a CandidateScores.
    """
    device = model.device
    ids, mask = _left_pad(prefixes, pad_id, device)
    batch, width = ids.shape
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=True,
                logits_to_keep=1)
    first_logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]
    prefix_len = mask.sum(-1)  # real prompt length per user

    # Pack each user's candidates into one block: [c1 tokens, c2 tokens, ...], right-padded.
    packed = [[t for cand in user for t in cand] for user in candidates]
    block = max(len(p) for p in packed)
    cand_ids = torch.full((batch, block), pad_id, dtype=torch.long)
    segment = torch.full((batch, block), -1, dtype=torch.long)  # candidate index of each token
    offset = torch.zeros((batch, block), dtype=torch.long)  # position of the token inside its candidate
    for b, user in enumerate(candidates):
        start = 0
        for k, cand in enumerate(user):
            n = len(cand)
            cand_ids[b, start:start + n] = torch.tensor(cand)
            segment[b, start:start + n] = k
            offset[b, start:start + n] = torch.arange(n)
            start += n
    cand_ids, segment, offset = cand_ids.to(device), segment.to(device), offset.to(device)

    # Tree mask: a candidate token sees the real prompt tokens, and earlier tokens of its own candidate.
    same = segment[:, :, None] == segment[:, None, :]
    causal = offset[:, :, None] >= offset[:, None, :]
    own = same & causal & (segment[:, :, None] >= 0)
    own |= torch.eye(block, dtype=torch.bool, device=device)[None]  # padding rows see themselves
    sees_prompt = mask[:, None, :].expand(batch, block, width) & (segment[:, :, None] >= 0)
    tree_mask = torch.cat([sees_prompt, own], dim=-1)[:, None]  # [B, 1, block, width + block]
    cand_positions = prefix_len[:, None] + offset
    out = model(input_ids=cand_ids, attention_mask=tree_mask, position_ids=cand_positions,
                cache=out.cache, use_cache=True)
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [B, block, V]

    results = []
    for b, user in enumerate(candidates):
        means, per_token = [], []
        start = 0
        for cand in user:
            n = len(cand)
            targets = torch.tensor(cand, device=device)
            lp = torch.empty(n, device=device)
            lp[0] = first_logprobs[b, targets[0]]
            if n > 1:
                lp[1:] = logprobs[b, start:start + n - 1].gather(-1, targets[1:, None]).squeeze(-1)
            means.append(float(lp.mean()))
            per_token.append(lp.tolist())
            start += n
        results.append(CandidateScores(means, per_token))
    return results


@torch.no_grad()
def score_naive(model, prefix: list, candidates: list) -> list:
    """Reference scorer: one full forward of prompt + candidate per candidate (for tests and
    benchmarks). Logits only where needed, no cache: the per-candidate method at its best."""
    means = []
    for cand in candidates:
        ids = torch.tensor([prefix + cand], device=model.device)
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(cand) + 1).logits[0, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        lp = logprobs.gather(-1, torch.tensor(cand, device=model.device)[:, None])
        means.append(float(lp.mean()))
    return means


def constrained_choice(candidates: list, token_logprobs: list) -> int:
    """Greedy decoding restricted to the candidates' token sequences (a trie), read off the scores
    already computed: at each step take the allowed next token of highest log-prob. Equivalent to
    `generate(..., prefix_allowed_tokens_fn=trie)` with greedy search, and always a candidate."""
    alive = list(range(len(candidates)))
    depth = 0
    while len(alive) > 1:
        ended = [k for k in alive if len(candidates[k]) <= depth]
        going = [k for k in alive if len(candidates[k]) > depth]
        if not going:
            return ended[0]
        best = max(going, key=lambda k: token_logprobs[k][depth])
        token = candidates[best][depth]
        alive = [k for k in going if candidates[k][depth] == token]
        depth += 1
    return alive[0]


class StopOnText(StoppingCriteria):
    """Stops each sequence once its decoded tail contains `text`. Works with any tokenizer, unlike
    generate(stop_strings=...), which assumes byte-level BPE vocabularies."""

    def __init__(self, tokenizer, text: str, prompt_width: int, window: int = 16):
        self.tokenizer, self.text, self.start, self.window = tokenizer, text, prompt_width, window

    def __call__(self, input_ids, scores, **kwargs):
        tails = self.tokenizer.batch_decode(input_ids[:, max(self.start, input_ids.shape[1] - self.window):])
        return torch.tensor([self.text in t for t in tails], device=input_ids.device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list, max_new_tokens: int, stop: str | None = None) -> list:
    """Greedy completions of a batch of prompt token lists (left-padded), decoded to text and cut
    just after `stop`."""
    ids, mask = _left_pad(prompts, tokenizer.pad_token_id, model.device)
    criteria = StoppingCriteriaList([StopOnText(tokenizer, stop, ids.shape[1])] if stop else [])
    out = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, stopping_criteria=criteria)
    # Keep added tokens such as <think> (a tokenizer may mark them special); drop only padding/eos.
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=False)
    for marker in {tokenizer.pad_token, tokenizer.eos_token} - {None}:
        texts = [t.replace(marker, "") for t in texts]
    return [t[: t.index(stop) + len(stop)] if stop and stop in t else t for t in texts]
