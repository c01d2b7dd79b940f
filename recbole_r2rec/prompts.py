"""Item text and the R2Rec prompt (history + shuffled candidates, through the model's chat template),
plus the one trace format shared by the scorer, the SFT traces and the RL rewards:

    <think> ...thoughts... </think>
    <answer> ONE CANDIDATE TITLE </answer>
"""
from __future__ import annotations

import logging
import re

import numpy as np

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

SYSTEM_PROMPT = (
    "You are a recommender system. Reason step by step about the user's taste from the items they "
    "chose, then recommend exactly one item from the candidate list."
)
INSTRUCTION = (
    "Think inside <think></think>, then give the title of exactly one candidate inside <answer></answer>."
)

logger = logging.getLogger(__name__)


class ItemTextError(ValueError):
    """The dataset has no usable item text for an LLM."""


def _field_text(dataset, field, values) -> list:
    """Each item's value of `field` as text (token / token_seq via RecBole's id->token map)."""
    from recbole.utils import FeatureType

    ftype = dataset.field2type[field]
    if ftype == FeatureType.TOKEN:
        tokens = dataset.field2id_token[field]
        return ["" if v == 0 else str(tokens[v]) for v in values.tolist()]
    if ftype == FeatureType.TOKEN_SEQ:
        tokens = dataset.field2id_token[field]
        return [" ".join(str(tokens[t]) for t in row if t != 0) for row in values.tolist()]
    if ftype == FeatureType.FLOAT:
        return [f"{v:g}" for v in values.tolist()]
    return [" ".join(f"{x:g}" for x in row) for row in values.tolist()]


def item_texts(dataset, fields, fallback_to_id=False):
    """(titles, attributes): per internal item id, the first field as title, the rest joined.

    Raises ItemTextError when none of `fields` was loaded, unless `fallback_to_id`, which describes
    items by their dataset token with a warning.
    """
    n = dataset.item_num
    ids = dataset.field2id_token[dataset.iid_field]
    feat = dataset.item_feat
    present = [f for f in fields if feat is not None and f in feat.columns]
    if not present or present[0] != fields[0]:
        if not fallback_to_id:
            raise ItemTextError(
                f"R2Rec needs item text, but dataset '{dataset.dataset_name}' has no field "
                f"'{fields[0]}' loaded from its .item file (item fields: "
                f"{list(feat.columns) if feat is not None else 'no .item file'}). Set item_text_fields "
                "to fields of the .item file (and load_col: item: [...]), or set "
                "item_text_fallback_to_id=True to describe items by their ids."
            )
        logger.warning("no item title field: describing items by their ids (item_text_fallback_to_id)")
        return [f"item {ids[i]}" for i in range(n)], [""] * n
    columns = {f: _field_text(dataset, f, feat[f]) for f in present}
    titles = [re.sub(r"\s+", " ", t).strip() for t in columns[present[0]]]
    missing = [i for i in range(1, n) if not titles[i]]
    if missing:
        logger.warning(f"{len(missing)} items have no title; they are described by their ids")
        for i in missing:
            titles[i] = f"item {ids[i]}"
    attributes = [
        "; ".join(columns[f][i].replace("_", " ") for f in present[1:] if columns[f][i]) for i in range(n)
    ]
    return titles, attributes


def describe(title: str, attributes: str) -> str:
    return f"{title} ({attributes})" if attributes else title


def user_message(history: list, candidates: list, context: str = "") -> str:
    """The user turn: history (oldest first, with attributes), optional chain context, candidates."""
    lines = ["The user chose these items, oldest first:"]
    lines += [f"- {h}" for h in history]
    if context:
        lines += ["", context]
    lines += ["", "Candidates:"]
    lines += [f"- {c}" for c in candidates]
    lines += ["", INSTRUCTION]
    return "\n".join(lines)


def strongest(counts: list, top: int, users: list | None = None) -> list:
    """Indices of the `top` entries with the largest count, strongest first, ties in order, among those
    with a chain: `users` > 0 (each candidate's co-choosers; default: the counts themselves). A blended
    strength is a sum of z-scores, so it says nothing about whether a chain exists."""
    users = counts if users is None else users
    return sorted((k for k, n in enumerate(users) if n > 0), key=lambda k: -counts[k])[:top]


def support_evidence(support: list, top: int, strength=None, ordered: bool = False) -> str:
    """Chain-grounded evidence for the prompt: the `top` candidates with the strongest real chains
    through the user's history, strongest first (ties keep the display order). support: per shown
    candidate (title, users, via title); `strength`: per candidate, what to rank by (default: users);
    `ordered`: the users chose the candidate soon after the history item (`evidence_window`)."""
    users = [n for _, n, _ in support]
    ranked = [support[k] for k in strongest(users if strength is None else list(strength), top, users)]
    if not ranked:
        return "Evidence from other users: none of the candidates was chosen by users who share your items."
    lines = ["Evidence from other users (strongest first):"]
    lines += [f"- {evidence_line(title, n, via, ordered)}" for title, n, via in ranked]
    return "\n".join(lines)


def evidence_line(title: str, users: int, via: str, ordered: bool = False) -> str:
    """One line of chain evidence; SFT thoughts quote it verbatim, so the model learns to copy a line
    of its prompt (easy) before it names its answer."""
    if ordered:
        return f"{title}: {users} user{'s' if users > 1 else ''} chose it soon after {via}"
    return f"{title}: {users} user{'s' if users > 1 else ''} who chose {via} also chose it"


def chat_prompt(tokenizer, message: str) -> str:
    """The prompt text through the model's chat template (plain text if it has none)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": message}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{SYSTEM_PROMPT}\n\n{message}\n\n"


def completion(thoughts: str, answer: str) -> str:
    return f"{THINK_OPEN}{thoughts}{THINK_CLOSE}\n{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def answer_prefix(thoughts: str | None) -> str:
    """What precedes a candidate title when it is scored: the thoughts (if any), then <answer>."""
    if thoughts is None:
        return f"{THINK_OPEN}{THINK_CLOSE}\n{ANSWER_OPEN}"
    return f"{THINK_OPEN}{thoughts}{THINK_CLOSE}\n{ANSWER_OPEN}"


def scoring_prefix(completion: str) -> str:
    """What precedes the answer when candidates are scored after a generation: the completion's own
    text up to the end of its thoughts (verbatim, so its tokens can be reused), then `<answer>`.
    Thoughts left open are closed; an answer the model already wrote is dropped."""
    text = completion or ""
    if THINK_CLOSE in text:
        return text[: text.index(THINK_CLOSE) + len(THINK_CLOSE)] + "\n" + ANSWER_OPEN
    return f"{text.split(ANSWER_OPEN)[0].rstrip()}{THINK_CLOSE}\n{ANSWER_OPEN}"


_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)(?:" + re.escape(ANSWER_CLOSE) + r"|$)", re.S)


def split_completion(text: str):
    """(thoughts, answer) of a generated completion; missing parts are None. Never raises."""
    text = text or ""
    answer_match = _ANSWER_RE.search(text)
    head = text[: answer_match.start()] if answer_match else text
    thoughts = head.replace(THINK_OPEN, "").split(THINK_CLOSE)[0].strip() or None
    answer = answer_match.group(1).strip() if answer_match else None
    return thoughts, answer


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def matched_candidates(answer, titles: list) -> list:
    """Indices of the candidates an answer names: titles found in it as whole words, keeping only the
    longest of overlapping matches (so "Aliens" does not also name "Alien")."""
    if not answer:
        return []
    text = f" {_norm(answer)} "
    spans = []
    for i, title in enumerate(titles):
        key = _norm(title)
        if not key:
            continue
        for m in re.finditer(re.escape(f" {key} "), text):
            spans.append((m.start(), m.end(), i))
    chosen = []
    for s, e, i in spans:
        if not any((s2 <= s and e <= e2) and (e2 - s2) > (e - s) for s2, e2, _ in spans):
            chosen.append(i)
    return sorted(set(chosen))


def parse_answer(text: str, titles: list):
    """The candidate index a completion names, or None when it names none or several (invalid).
    Answers outside <answer> tags are read as the whole text (lenient for an untrained model)."""
    _, answer = split_completion(text)
    if answer is None:
        answer = text
    found = matched_candidates(answer, titles)
    return found[0] if len(found) == 1 else None


def history_ids(item_list: np.ndarray, length: int, n: int) -> list:
    """The last `n` real items of a RecBole history row."""
    return [int(i) for i in item_list[:length][-n:] if i != 0]
