"""Readable reasoning (`--explain=N`): for N sampled test users, the history, the chain evidence the
prompt listed, every candidate with its score and rank, the generated thoughts, the answer and the
truth, as a self-contained HTML page and as Markdown, so a person can judge whether the reasoning is
grounded in the user's items."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from jinja2 import Environment

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>R2Rec reasoning: {{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
section { border: 1px solid #ccc; border-radius: 6px; padding: 1rem 1.2rem; margin: 1.2rem 0; }
h2 { font-size: 1.1rem; margin: 0 0 .6rem; } .hit { color: #176b2c; } .miss { color: #a12622; }
.thoughts { background: #f6f6f0; padding: .6rem .8rem; border-left: 4px solid #b8a040; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: .9rem; } td, th { padding: .15rem .6rem; text-align: left; }
tr.truth td { font-weight: bold; } tr.answer td:first-child::after { content: " \\2190 answer"; color: #555; }
.grounded { background: #e3f1e6; } small { color: #666; }
.evidence { background: #eef3fa; padding: .6rem .8rem; border-left: 4px solid #4a78b0; white-space: pre-wrap; }
</style></head><body>
<h1>R2Rec reasoning on {{ dataset }}</h1>
<p>{{ summary }}</p>
{% for u in users %}<section>
<h2>User {{ u.user }}: <span class="{{ 'hit' if u.rank == 1 else 'miss' }}">truth ranked {{ u.rank }} of {{ u.candidates|length }}</span>; answer {{ 'names the truth' if u.answer_is_truth else ('names ' ~ u.answer
if u.answer else 'is invalid') }}</h2>
<p><b>History</b> (oldest first): {{ u.history|join('; ') }}</p>
{% if u.evidence %}<p><b>Evidence in the prompt</b> <small>(real chains of the training graph)</small></p>
<div class="evidence">{{ u.evidence }}</div>
{% endif %}<p><b>Thoughts</b> <small>(highlighted: items of the user's history or candidates named in them)</small></p>
<div class="thoughts">{{ u.thoughts_html|safe }}</div>
<p><b>Completion</b>: <code>{{ u.completion }}</code></p>
<table><tr><th>candidate</th><th>score</th><th>rank <small>(= tied)</small></th></tr>
{% for c in u.candidates %}<tr class="{{ 'truth' if c.truth else '' }} {{ 'answer' if c.answer else '' }}">
<td>{{ c.title }}{% if c.truth %} (truth){% endif %}</td><td>{{ '%.3f'|format(c.score) }}</td><td>{{ c.rank }}</td>
</tr>{% endfor %}</table>
</section>{% endfor %}
</body></html>
"""

MARKDOWN = """# R2Rec reasoning on {{ dataset }}

{{ summary }}
{% for u in users %}
## User {{ u.user }}: truth ranked {{ u.rank }} of {{ u.candidates|length }}

- History (oldest first): {{ u.history|join('; ') }}
{% if u.evidence %}- Evidence in the prompt: {{ u.evidence|replace('\n', ' ') }}
{% endif %}- Thoughts: {{ u.thoughts or '(none)' }}
- Answer: {{ u.answer or '(invalid)' }}; truth: {{ u.truth }}

| candidate | score | rank |
|---|---|---|
{% for c in u.candidates %}| {{ c.title }}{% if c.truth %} **(truth)**{% endif %}{% if c.answer %} *(answer)*{% endif %} | {{ '%.3f'|format(c.score) }} | {{ c.rank }} |
{% endfor %}{% endfor %}"""


def _highlight(text: str, titles: list) -> str:
    """HTML-escape `text` and mark every title of `titles` it mentions (grounding at a glance)."""
    out = html.escape(text or "(no thoughts)")
    for title in sorted({t for t in titles if t}, key=len, reverse=True):
        escaped = html.escape(title)
        out = out.replace(escaped, f'<span class="grounded">{escaped}</span>')
    return out


def explain_users(answers: list, truth: dict, titles, n: int, seed: int, ranks: dict | None = None) -> list:
    """Views of `n` seeded-sampled recorded answers (see R2Rec.answers); truth: user -> true item;
    ranks: user -> the truth's rank in the evaluation (ties broken there at random), when known."""
    pool = [a for a in answers if a["user"] in truth]
    rng = np.random.default_rng([int(seed), 23])
    picked = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False)) if pool else []
    views = []
    for k in picked:
        a = pool[k]
        scores = np.asarray(a["scores"])
        tied = lambda s: "=" if (scores == s).sum() > 1 else ""  # noqa: E731
        cands = [{"title": titles[item], "score": float(a["scores"][i]),
                  "rank": f"{1 + int((scores > scores[i]).sum())}{tied(scores[i])}",
                  "truth": item == truth[a["user"]], "answer": item == a["answer_item"]}
                 for i, item in enumerate(a["candidates"])]
        cands.sort(key=lambda c: -c["score"])
        named = [titles[i] for i in a["history"]] + [c["title"] for c in cands]
        views.append({
            "user": a["user"], "history": [titles[i] for i in a["history"]], "candidates": cands,
            "thoughts": a["thoughts"], "thoughts_html": _highlight(a["thoughts"], named),
            "evidence": a.get("evidence", ""),
            "completion": a["completion"], "truth": titles[truth[a["user"]]],
            "answer": titles[a["answer_item"]] if a["answer_item"] is not None else None,
            "answer_is_truth": a["answer_item"] == truth[a["user"]],
            "rank": (ranks or {}).get(a["user"]) or next(c["rank"] for c in cands if c["truth"]),
        })
    return views


def write_explanations(folder, dataset: str, answers: list, truth: dict, titles, n: int, seed: int,
                       summary: str = "", ranks: dict | None = None) -> dict:
    """Write explain.html and explain.md under `folder`; returns their paths."""
    users = explain_users(answers, truth, titles, n, seed, ranks)
    env = Environment(autoescape=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    context = {"dataset": dataset, "title": dataset, "users": users, "summary": summary}
    paths = {"html": folder / "explain.html", "md": folder / "explain.md"}
    paths["html"].write_text(env.from_string(HTML).render(**context))
    paths["md"].write_text(Environment(autoescape=False).from_string(MARKDOWN).render(**context))
    return {k: str(v) for k, v in paths.items()}
