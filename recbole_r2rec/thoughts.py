"""Interaction-of-thought traces with progressive masked prompting (r2rec.md).

Each hop of a chain becomes one grounded thought (real titles and attributes; a neighbour is described
by what it chose, never named), ending in exactly one answer, in the format of `prompts`:
`<think>1. ... 2. ...</think>\\n<answer>TITLE</answer>`.

Levels hide more and more of the chain in the prompt, so the model learns to produce it itself:
  0: the whole chain is shown as evidence, only its final item is masked; the thoughts resolve it;
  1: the neighbour's hop is masked as well; the thoughts supply it;
  2: no evidence at all: exactly the inference prompt of `R2Rec.prompt_text`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from recbole_r2rec import prompts
from recbole_r2rec.chains import Chain

MASK = "[MASK]"
LEVELS = (0, 1, 2)
TRACE_FORMAT = 2  # bump when the text of traces changes: adapters trained on another format are refused


@dataclass
class Trace:
    user: int
    level: int
    prompt: str  # the user turn (before the chat template)
    thoughts: str
    answer: str
    target: int
    candidates: list
    chain_items: list
    chain_users: list

    @property
    def completion(self) -> str:
        return prompts.completion(self.thoughts, self.answer)

    def to_json(self) -> dict:
        return {**asdict(self), "completion": self.completion}


def chain_thoughts(chain: Chain, title, describe, support: int = 0, ordered: bool = False) -> list:
    """One short thought per hop of the chain, grounded in the real items (the user's item with its
    attributes; a neighbour described by what it chose, never named). A chain the prompt's evidence
    lists (`support` users) is quoted from that line first, then tied to the user's item: the candidate
    is named where the model can copy it, not recalled. Short on purpose: at inference the model
    writes them token by token before every answer."""
    i0, t = chain.items[0], chain.target
    neighbour = f"Another user who also chose {title(i0)}" + (f" and {title(chain.shared[0])}" if chain.shared else "")
    if support:  # the chain is one the prompt's evidence lists: quote that line, then ground it in the history
        return [f"1. {prompts.evidence_line(title(t), support, title(i0), ordered)}.",
                f"2. The user chose {describe(i0)}."]
    steps = [f"The user chose {describe(i0)}."]
    if chain.hops == 2:
        i1 = chain.items[1]
        steps += [f"{neighbour} chose {title(i1)}.", f"A user who chose {title(i1)} too went on to {title(t)}."]
    else:
        steps.append(f"{neighbour} went on to {title(t)}.")
    return [f"{k}. {s}" for k, s in enumerate(steps, 1)]


def evidence(chain: Chain, level: int, title) -> str:
    """The chain as shown in the prompt at `level` (masked from the end); empty at level 2."""
    if level >= 2:
        return ""
    i0 = title(chain.items[0])
    if level == 1:
        return f"Evidence from other users: someone who chose {i0} then chose {MASK}; {MASK} is the item to find."
    hop = f"another user who chose {i0}"
    if chain.hops == 2:
        hop += f" also chose {title(chain.items[1])}; a user who chose that too"
    return f"Evidence from other users: {hop} then chose {MASK}. Work out {MASK} from the candidates."


def build_trace(chain: Chain, level: int, history: list, shown: list, title, describe,
                candidate_text, grounding: str = "", support: int = 0, ordered: bool = False) -> Trace:
    """The SFT example for one chain at one level. `shown` are candidate item ids in display order;
    the chain's target must be among them. `grounding`: chain evidence shown at every level, as at
    inference (`chain_evidence`); `ordered`: its chains are ordered (`evidence_window`)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level}")
    if chain.target not in shown:
        raise ValueError("the chain's target is not among the candidates")
    context = "\n\n".join(part for part in (grounding, evidence(chain, level, title)) if part)
    message = prompts.user_message([describe(i) for i in history], [candidate_text(i) for i in shown], context)
    return Trace(
        user=chain.user, level=level, prompt=message,
        thoughts=" ".join(chain_thoughts(chain, title, describe, support, ordered)),
        answer=title(chain.target), target=chain.target, candidates=list(shown),
        chain_items=list(chain.items), chain_users=[chain.user, *chain.neighbours],
    )


def well_formed(trace: Trace, candidate_titles: list) -> bool:
    """A trace parses back to exactly its target among its candidates, with thoughts."""
    thoughts, answer = prompts.split_completion(trace.completion)
    choice = prompts.parse_answer(trace.completion, candidate_titles)
    return bool(thoughts) and answer == trace.answer and choice is not None and \
        trace.candidates[choice] == trace.target
