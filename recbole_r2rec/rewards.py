"""Reward signals of the RL stage, as plain functions with the signature trl's `GRPOTrainer` calls:
`f(completions, **dataset_columns) -> list[float]`, one value per completion.

The dataset columns are `candidates` (the titles shown, in order) and `target` (the true title).
Rewards read only the closed `<answer>…</answer>` block, so a truncated completion earns nothing, and
an answer that names several candidates (e.g. all of them) is invalid: it is never rewarded.
"""
from __future__ import annotations

import re

from recbole_r2rec import prompts

_THINK = re.escape(prompts.THINK_OPEN), re.escape(prompts.THINK_CLOSE)
_ANSWER = re.escape(prompts.ANSWER_OPEN), re.escape(prompts.ANSWER_CLOSE)
_FORMAT_RE = re.compile(rf"\s*{_THINK[0]}(.+?){_THINK[1]}\s*{_ANSWER[0]}(.+?){_ANSWER[1]}\s*", re.S)
_CLOSED_ANSWER_RE = re.compile(rf"{_ANSWER[0]}(.*?){_ANSWER[1]}", re.S)
_TAGS = (prompts.THINK_OPEN, prompts.THINK_CLOSE, prompts.ANSWER_OPEN, prompts.ANSWER_CLOSE)


def _text(completion) -> str:
    """trl passes plain strings, or chat messages for conversational datasets."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return completion or ""


def answer_choice(completion, titles: list):
    """Index of the one candidate the closed answer names, or None (no closed answer, none or several)."""
    answers = _CLOSED_ANSWER_RE.findall(_text(completion))
    if len(answers) != 1:
        return None
    found = prompts.matched_candidates(answers[0], titles)
    return found[0] if len(found) == 1 else None


def format_reward(completions, **kwargs) -> list:
    """1 for thoughts then exactly one answer and nothing else (each tag once, in order), else 0."""
    out = []
    for c in completions:
        text = _text(c)
        once = all(text.count(tag) == 1 for tag in _TAGS)
        out.append(float(once and _FORMAT_RE.fullmatch(text) is not None))
    return out


def valid_reward(completions, candidates, **kwargs) -> list:
    """1 when the answer names exactly one of the shown candidates, else 0 (ValidRatio as a reward)."""
    return [float(answer_choice(c, titles) is not None) for c, titles in zip(completions, candidates)]


def correct_reward(completions, candidates, target, **kwargs) -> list:
    """1 when the answer names the target and only it, else 0 (Hit@1 of the generated answer)."""
    out = []
    for c, titles, truth in zip(completions, candidates, target):
        choice = answer_choice(c, titles)
        out.append(float(choice is not None and titles[choice] == truth))
    return out


class RankReward:
    """Rank-aware reward: the reciprocal rank of the target among all candidates under the policy's
    own scores given prompt + these thoughts (the scores R2Rec ranks by at test time). It rewards
    thoughts that lift the target even when the generated answer misses it."""

    __name__ = "rank_reward"

    def __init__(self, score_fn):
        self.score_fn = score_fn  # (prompts, completions, candidate titles) -> per completion, scores

    def __call__(self, prompts, completions, candidates, target, **kwargs) -> list:
        all_scores = self.score_fn(prompts, [_text(c) for c in completions], candidates)
        out = []
        for scores, titles, truth in zip(all_scores, candidates, target):
            mine = scores[titles.index(truth)]
            out.append(1.0 / (1 + sum(s > mine for s in scores)))
        return out


REWARDS = {"correct": correct_reward, "valid": valid_reward, "format": format_reward}
