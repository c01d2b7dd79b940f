"""Thought traces and masked-prompting levels on a hand-made chain."""
import pytest

from recbole_r2rec import prompts
from recbole_r2rec.chains import Chain
from recbole_r2rec.thoughts import MASK, build_trace, well_formed

TITLES = {1: "Toy Story", 2: "Heat", 3: "Alien", 4: "Aliens", 5: "Fargo", 6: "Casino", 7: "Babe"}
GENRES = {1: "Animation", 2: "Crime", 3: "Sci-Fi", 4: "Sci-Fi; Action", 5: "Crime", 6: "Crime", 7: "Comedy"}
title = TITLES.__getitem__
describe = lambda i: prompts.describe(TITLES[i], GENRES[i])  # noqa: E731
SHOWN = [6, 4, 7, 2]
HISTORY = [1, 3, 5]


def trace(level, chain=Chain(user=9, target=4, items=(3,), neighbours=(12,), shared=(1,))):
    return build_trace(chain, level, HISTORY, SHOWN, title, describe, title)


def test_level_two_is_the_inference_prompt():
    t = trace(2)
    expected = prompts.user_message([describe(i) for i in HISTORY], [title(i) for i in SHOWN])
    assert t.prompt == expected and MASK not in t.prompt


def test_levels_mask_exactly_what_they_should():
    level0, level1 = trace(0).prompt, trace(1).prompt
    for p in (level0, level1):
        assert MASK in p and "Alien" in p  # i0 is shown
        evidence = p.split("Evidence")[1].split("Candidates:")[0]
        assert "Aliens" not in evidence  # the final item is always masked
    assert "another user who chose Alien then chose [MASK]" in level0  # the neighbour's hop is shown
    assert "another user" not in level1  # ...and masked at level 1
    long_chain = Chain(user=9, target=4, items=(3, 5), neighbours=(12, 13))
    assert "also chose Fargo" in trace(0, long_chain).prompt
    assert "Fargo" not in trace(1, long_chain).prompt.split("Candidates:")[0].split("Evidence")[1]


def test_thoughts_are_grounded_one_per_hop_and_end_in_the_answer():
    t = trace(2)
    assert t.thoughts == ("1. The user chose Alien (Sci-Fi). "
                          "2. Another user who also chose Alien and Toy Story went on to Aliens.")
    assert "Toy Story" in t.thoughts  # the shared item is evidence of similar taste
    assert t.answer == "Aliens" and t.completion.endswith("<answer>Aliens</answer>")
    assert "12" not in t.thoughts  # users are never named
    long_t = trace(2, Chain(user=9, target=4, items=(3, 5), neighbours=(12, 13)))
    assert long_t.thoughts.count(". ") > t.thoughts.count(". ")


def test_a_chain_listed_in_the_evidence_is_quoted_verbatim_then_tied_to_the_history():
    """With chain evidence, the thoughts first copy the prompt's evidence line of the target (the
    candidate is named where the model can read it), then name the user's item it goes through."""
    grounding = prompts.support_evidence([(title(6), 0, ""), (title(4), 3, title(3)), (title(7), 5, title(1)),
                                          (title(2), 0, "")], top=5)
    chain = Chain(user=9, target=4, items=(3,), neighbours=(12,))
    t = build_trace(chain, 2, HISTORY, SHOWN, title, describe, title, grounding=grounding, support=3)
    first, second = t.thoughts.split(" 2. ")
    assert first == "1. Aliens: 3 users who chose Alien also chose it."
    assert f"- {first[3:-1]}\n" in t.prompt + "\n"  # verbatim a line of the prompt
    assert grounding.index("Babe") < grounding.index("Aliens")  # strongest first
    assert second == "The user chose Alien (Sci-Fi)."
    assert well_formed(t, [title(i) for i in SHOWN]) and t.answer == "Aliens"
    # ordered chains (evidence_window): the line and its quote say the users chose it after the item
    grounding = prompts.support_evidence([(title(4), 3, title(3))], top=5, ordered=True)
    t = build_trace(chain, 2, HISTORY, SHOWN, title, describe, title, grounding=grounding, support=3, ordered=True)
    assert t.thoughts.startswith("1. Aliens: 3 users chose it soon after Alien. 2.")
    assert "- Aliens: 3 users chose it soon after Alien\n" in t.prompt + "\n"


def test_every_trace_parses_to_its_target():
    for level in (0, 1, 2):
        t = trace(level)
        assert well_formed(t, [title(i) for i in SHOWN])
        assert prompts.parse_answer(t.completion, [title(i) for i in SHOWN]) == SHOWN.index(4)
    broken = trace(2)
    broken.answer = "Heat or Aliens"
    assert not well_formed(broken, [title(i) for i in SHOWN])


def test_target_must_be_a_candidate_and_level_must_exist():
    with pytest.raises(ValueError, match="candidates"):
        build_trace(Chain(9, 5, (3,), (12,)), 2, HISTORY, SHOWN, title, describe, title)
    with pytest.raises(ValueError, match="level"):
        trace(3)


def test_evidence_is_ranked_by_the_given_strength_and_lists_only_candidates_with_a_chain():
    support = [(title(6), 0, ""), (title(4), 3, title(3)), (title(7), 5, title(1)), (title(2), 1, title(1))]
    by_users = prompts.support_evidence(support, top=5)
    assert by_users.index("Babe") < by_users.index("Aliens") < by_users.index(title(2))
    # e.g. sum_cosine: the line with fewer co-choosers can be the strongest chain; no chain, not listed
    by_cosine = prompts.support_evidence(support, top=2, strength=[0.0, 0.9, 0.2, 0.5])
    lines = by_cosine.splitlines()[1:]
    assert lines == ["- Aliens: 3 users who chose Alien also chose it",
                     f"- {title(2)}: 1 user who chose {title(1)} also chose it"]
    # a blended strength (z-scores) can be <= 0 for a candidate with a chain and > 0 for one without:
    # what is listed is decided by the chain, the order by the strength
    blended = prompts.support_evidence(support, top=5, strength=[2.0, -0.3, -0.1, -1.6])
    assert blended.splitlines()[1:] == [f"- Babe: 5 users who chose {title(1)} also chose it",
                                        "- Aliens: 3 users who chose Alien also chose it",
                                        f"- {title(2)}: 1 user who chose {title(1)} also chose it"]
