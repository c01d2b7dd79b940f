"""Candidate scoring with one shared prompt pass per user.

A candidate's score is the length-normalised log-likelihood of its answer tokens (its title, then the
first token of </answer>, which marks where the title ends) given the prompt and, when generated, the
thoughts. Everything before the answer runs once per user: either a fresh prompt pass, or the KV cache
that generation already filled (prompt + thoughts), continued by a short "bridge" (e.g.
`</think>\\n<answer>`). All of a user's candidates then go through one packed forward against that
cache, each attending to the shared context and to itself only (a tree-shaped 4D mask), with positions
continuing the context. No forward pass per candidate, and logits only where a log-prob is read.
Optionally (`share_head`), the head every prompt of a batch starts with runs once per batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from recbole_r2rec.chains import standardised


@dataclass
class CandidateScores:
    """Per candidate: mean log-prob (the score) and the log-prob of each of its tokens."""

    mean: list
    token_logprobs: list


@dataclass
class Generation:
    """What `generate` leaves behind for scoring: texts, generated token ids and the filled KV cache.
    cache_mask[b, j] marks the cache slots of row b that hold real tokens (prompt, then generated)."""

    texts: list
    new_tokens: list  # per row: generated token ids (padding/eos removed)
    cache: object
    prompt_mask: torch.Tensor  # [B, W]


def _left_pad(seqs, pad_id, device):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = True
    return ids.to(device), mask.to(device)


def common_head_length(seqs: list) -> int:
    """How many leading tokens every sequence shares."""
    width = min(len(s) for s in seqs)
    rows = np.array([s[:width] for s in seqs])
    differs = (rows != rows[0]).any(axis=0)
    return int(differs.argmax()) if differs.any() else width


@torch.no_grad()
def shared_head(model, bridges: list, min_tokens: int = 8) -> tuple:
    """Run the tokens all `bridges` start with once and hand every row a copy of its KV cache:
    (bridges without the head, cache, cache_mask), or (bridges, None, None) when the head is short
    (< min_tokens) or there is one row. Each bridge keeps at least one token."""
    if len(bridges) < 2:
        return bridges, None, None
    head = min(common_head_length(bridges), min(len(b) for b in bridges) - 1)
    if head < min_tokens:
        return bridges, None, None
    out = model(input_ids=torch.tensor([bridges[0][:head]], device=model.device), use_cache=True, logits_to_keep=1)
    out.cache.batch_repeat_interleave(len(bridges))
    return [b[head:] for b in bridges], out.cache, torch.ones((len(bridges), head), dtype=torch.bool)


@torch.no_grad()
def score_candidates(model, bridges: list, candidates: list, pad_id: int, cache=None, cache_mask=None,
                     share_head: bool = False) -> list:
    """Scores of every candidate of every user in one forward.

    bridges: per user, the tokens between the cache and the answer (>= 1 each); without a cache, the
        whole prompt up to the answer.
    candidates: per user, a list of token-id lists (each candidate's answer tokens).
    cache, cache_mask: an optional filled KV cache and [B, C] bool of its slots each row may see; the
        visible slots of a row hold its positions 0..n-1, so the bridge continues at n.
    share_head: without a cache, run the tokens every bridge starts with once (`shared_head`); R2Rec
        turns it on (`score_share_head`): the bench measured 1.08x and 1.12x, about the ~9% of tokens it saves.
    Returns per user a CandidateScores.
    """
    device = model.device
    batch = len(bridges)
    if any(not b for b in bridges):
        raise ValueError("every user needs at least one bridge token before its candidates")
    if cache is None and share_head:
        bridges, cache, cache_mask = shared_head(model, bridges)
    if cache_mask is None:
        cache_mask = torch.zeros((batch, 0), dtype=torch.bool)
    cache_mask = cache_mask.to(device)
    start_pos = cache_mask.sum(-1)
    ids, bmask = _left_pad(bridges, pad_id, device)
    width = ids.shape[1]
    bridge_pos = start_pos[:, None] + (bmask.long().cumsum(-1) - 1).clamp(min=0)

    # Pack each user's candidates, all but their last token (whose prediction is never read).
    fed = [[t for cand in user for t in cand[:-1]] for user in candidates]
    block = max(1, max(len(f) for f in fed))
    cand_ids = torch.full((batch, block), pad_id, dtype=torch.long)
    segment = torch.full((batch, block), -1, dtype=torch.long)  # candidate index of each token
    offset = torch.zeros((batch, block), dtype=torch.long)  # position of the token inside its candidate
    target = torch.zeros((batch, block), dtype=torch.long)  # the token it predicts
    for b, user in enumerate(candidates):
        start = 0
        for k, cand in enumerate(user):
            n = len(cand) - 1
            if n > 0:
                cand_ids[b, start:start + n] = torch.tensor(cand[:-1])
                target[b, start:start + n] = torch.tensor(cand[1:])
                segment[b, start:start + n] = k
                offset[b, start:start + n] = torch.arange(n)
            start += n
    cand_ids, segment, offset, target = (t.to(device) for t in (cand_ids, segment, offset, target))
    real_cand = segment >= 0
    cand_pos = start_pos[:, None] + bmask.sum(-1, keepdim=True) + offset

    # Mask over keys [cache | bridge | candidates]: the bridge is causal over itself; a candidate token
    # sees the whole bridge and earlier tokens of its own candidate; padding rows see themselves only.
    real = torch.cat([bmask, real_cand], dim=1)  # [B, Q]
    q = width + block
    new = torch.zeros((batch, q, q), dtype=torch.bool, device=device)
    new[:, :width, :width] = torch.ones(width, width, dtype=torch.bool, device=device).tril() & bmask[:, None, :]
    new[:, width:, :width] = bmask[:, None, :]
    new[:, width:, width:] = (segment[:, :, None] == segment[:, None, :]) & (offset[:, :, None] >= offset[:, None, :])
    new &= real[:, :, None]
    new |= torch.eye(q, dtype=torch.bool, device=device)[None]
    sees_cache = cache_mask[:, None, :] & real[:, :, None]
    mask = torch.cat([sees_cache, new], dim=-1)[:, None]  # [B, 1, Q, C + Q]

    keep = torch.arange(width - 1, q, device=device)  # last bridge token, then every candidate token
    out = model(input_ids=torch.cat([ids, cand_ids], 1), attention_mask=mask,
                position_ids=torch.cat([bridge_pos, cand_pos], 1), cache=cache, use_cache=cache is not None,
                logits_to_keep=keep)
    logits = out.logits.float()
    norm = torch.logsumexp(logits, dim=-1)  # [B, 1 + block]
    first = logits[:, 0] - norm[:, :1]  # log-probs of every first token, [B, V]
    rest = logits[:, 1:].gather(-1, target[..., None]).squeeze(-1) - norm[:, 1:]  # [B, block]

    results = []
    for b, user in enumerate(candidates):
        means, per_token = [], []
        start = 0
        for cand in user:
            n = len(cand) - 1
            lp = [float(first[b, cand[0]])] + rest[b, start:start + n].tolist()
            means.append(sum(lp) / len(lp))
            per_token.append(lp)
            start += n
        results.append(CandidateScores(means, per_token))
    return results


def continue_generation(gen: Generation, encode, decode, prefix_text) -> tuple:
    """Turn a `Generation` into (bridges, cache_mask) for `score_candidates`: per row, keep the longest
    run of generated tokens whose text is a prefix of `prefix_text(row)` (what must precede the answer:
    the thoughts as the model wrote them, then `</think>\\n<answer>`), and bridge the rest by encoding
    the missing text. The scored context is then the model's own tokens, not a re-tokenisation."""
    batch, width = gen.prompt_mask.shape
    cached = gen.cache.get_seq_length() - width  # generated tokens held in the cache (the last one is not)
    keep_mask = torch.zeros((batch, max(cached, 0)), dtype=torch.bool)
    bridges = []
    for b, tokens in enumerate(gen.new_tokens):
        target = prefix_text(b)
        k = 0
        while k < len(tokens) and target.startswith(decode(tokens[:k + 1])):
            k += 1
        rest = encode(target[len(decode(tokens[:k])):]) if k else encode(target)
        in_cache = min(k, cached)
        bridge = tokens[in_cache:k] + rest
        if not bridge:  # the generation reproduced the whole prefix: feed its last token again
            in_cache -= 1
            bridge = tokens[in_cache:k]
        keep_mask[b, :in_cache] = True
        bridges.append(bridge)
    return bridges, torch.cat([gen.prompt_mask.cpu(), keep_mask], dim=1)


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


def evidence_fused(llm_scores: list, strength, weight: float) -> list:
    """The ranking score of each candidate: its LLM score plus `weight` times its chain-evidence
    strength standardised over the user's candidates (z-score; all equal -> 0). The LLM reads the
    evidence, but a 135M model copies it unreliably; adding it to the score lets the LLM re-rank what
    the graph supports instead of having to restate it. weight 0 (or no strength) = the LLM alone."""
    if not weight or strength is None:
        return list(llm_scores)
    return [float(x) + weight * float(e) for x, e in zip(llm_scores, standardised(strength))]


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
def generate(model, tokenizer, prompts: list, max_new_tokens: int, stop: str | None = None,
             keep_cache: bool = False):
    """Greedy completions of a batch of prompt token lists (left-padded), decoded to text and cut
    just after `stop`. With keep_cache, returns a `Generation` (texts, tokens and the filled KV cache)
    so that scoring can continue from it instead of re-reading the prompt."""
    ids, mask = _left_pad(prompts, tokenizer.pad_token_id, model.device)
    criteria = StoppingCriteriaList([StopOnText(tokenizer, stop, ids.shape[1])] if stop else [])
    out = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, stopping_criteria=criteria,
                         return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:].tolist()
    ends = {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}
    tokens = [row[:next((j for j, t in enumerate(row) if t in ends), len(row))] for row in new]
    # Keep added tokens such as <think> (a tokenizer may mark them special); drop only padding/eos.
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=False)
    texts = [t[: t.index(stop) + len(stop)] if stop and stop in t else t for t in texts]
    if keep_cache:
        return Generation(texts, tokens, out.cache, mask)
    return texts
