"""Chain sampler on a hand-made graph: closure, no held-out item, neighbour pool, determinism."""

import numpy as np
import pytest

from recbole_r2rec.chains import ChainSampler, InteractionGraph

# users 1..5, items 1..9. u1 is the example user: history [1, 2, 3], target 4.
TRAIN = {
    1: {1, 2, 3, 4},
    2: {1, 2, 4, 7},     # shares 1,2 (and the target) with u1: in the pool
    3: {3, 4, 8},        # shares only 3 with u1: a fallback neighbour
    4: {5, 6, 4},        # chose the target but nothing of u1's history: cannot close
    5: {7, 4, 9},        # for long chains: reaches t from u2's item 7
}
HELD_OUT = {1: {8, 9}}   # u1's valid/test items


def graph():
    return InteractionGraph(TRAIN, n_users=6, n_items=10, held_out=HELD_OUT)


def test_chains_close_on_the_target_through_a_real_neighbour():
    sampler = ChainSampler(graph(), seed=0, chains_per_example=3)
    chains = sampler.sample(1, [1, 2, 3], 4)
    assert chains
    for c in chains:
        i0, u1 = c.items[0], c.neighbours[0]
        assert c.target == 4 and c.user == 1 and u1 != 1
        assert i0 in {1, 2, 3} and i0 in TRAIN[u1] and 4 in TRAIN[u1]
    # the pool (>= 2 shared items) is preferred over the fallback neighbour
    assert {c.neighbours[0] for c in chains} == {2}


def test_fallback_when_no_neighbour_shares_two_items():
    g = InteractionGraph({1: {3, 4}, 3: {3, 4, 8}}, n_users=4, n_items=10)
    (chain,) = ChainSampler(g, seed=0).sample(1, [3], 4)
    assert chain.neighbours == (3,) and chain.items == (3,)
    assert ChainSampler(g, seed=0).sample(1, [5], 4) == []  # nothing closes: no chain, no crash


def test_held_out_items_never_appear():
    sampler = ChainSampler(graph(), seed=0, chains_per_example=5, long_chains=True)
    for target in (4, 8, 9):
        for c in sampler.sample(1, [1, 2, 3, 8], target):
            assert not set(c.items + c.shared + (c.target,)) & HELD_OUT[1]
    assert sampler.sample(1, [1, 2, 3], 8) == []  # a held-out target is never a training example


def test_long_chains_pass_through_a_second_neighbour():
    sampler = ChainSampler(graph(), seed=0, chains_per_example=1, long_chains=True)
    (c,) = sampler.sample(1, [1, 2, 3], 4)
    assert c.hops == 2
    i1, u2 = c.items[1], c.neighbours[1]
    assert i1 in TRAIN[c.neighbours[0]] and i1 not in {1, 2, 3}
    assert i1 in TRAIN[u2] and 4 in TRAIN[u2] and u2 not in (1, c.neighbours[0])


def test_same_seed_same_chains_other_seed_may_differ():
    a = ChainSampler(graph(), seed=1, chains_per_example=2).sample(1, [1, 2, 3], 4)
    b = ChainSampler(graph(), seed=1, chains_per_example=2).sample(1, [1, 2, 3], 4)
    assert a == b
    picks = {ChainSampler(graph(), seed=s).sample(1, [1, 2, 3], 4)[0].items for s in range(20)}
    assert len(picks) > 1  # i0 varies with the seed (1 or 2 are both shared with u2)


def test_graph_from_recbole_splits_holds_training_interactions_only(tiny_data_path, in_tmp):
    from recbole.data import create_dataset

    from conftest import tiny
    from recbole_r2rec.config import build_config
    from recbole_r2rec.protocol import prepare_data

    config = build_config("SASRec", "tiny", overrides=tiny(data_path=tiny_data_path))
    train, valid, test = prepare_data(config, create_dataset(config))
    g = InteractionGraph.from_training(train._dataset, train.seen_items)
    for ds in (valid._dataset, test._dataset):
        for u, i in zip(ds.inter_feat["user_id"].tolist(), ds.inter_feat["item_id"].tolist()):
            assert i not in set(g.items_of(u).tolist())
            assert i in g.held_out[u]
    sampler = ChainSampler(g, seed=0, chains_per_example=3, long_chains=True)
    inter = train._dataset.inter_feat
    closed = 0
    for row in range(len(inter)):
        u, t = int(inter["user_id"][row]), int(inter["item_id"][row])
        history = inter["item_id_list"][row][: int(inter["item_length"][row])].tolist()
        for c in sampler.sample(u, history, t):
            closed += 1
            assert t in g.items_of(c.neighbours[-1]) and c.items[0] in history
            assert not set(c.items) & g.held_out.get(u, set())
    assert closed > 0


def test_candidate_support_counts_other_users_chains_through_the_history():
    g = graph()
    # candidates 4 (the target), 7, 5, 9 for u1 with history [1, 2, 3]
    support = g.candidate_support(1, [1, 2, 3], [4, 7, 5, 9])
    # 4: users choosing 1 and 4 -> u2 (u1 itself never counts) = 1; via 3 -> u3 = 1; max 1 via the first best (1)
    assert support[0] == (1, 1)
    assert support[1] == (1, 1)        # 7: u2 chose 1 and 7
    assert support[2] == (0, None)     # 5: only u4, who shares no history item
    assert support[3] == (0, None)     # 9: u5 shares no history item
    # the user's own interactions are excluded: with u2 gone, the target has support through u3 only
    g2 = InteractionGraph({k: v for k, v in TRAIN.items() if k != 2}, n_users=6, n_items=10)
    assert g2.candidate_support(1, [1, 2, 3], [4]) == [(1, 3)]
    assert g.candidate_support(1, [], [4]) == [(0, None)]


def test_chain_strength_signals_computed_by_hand():
    g = graph()
    # u1, history [1, 2, 3], candidates 4 (target), 7, 5. Other users' choices (u1 never counts):
    # co-choosers of (1,4): u2; (2,4): u2; (3,4): u3 -> max 1, sum 3. (1,7): u2; (2,7): u2 -> max 1, sum 2.
    hist, cands = [1, 2, 3], [4, 7, 5]
    assert g.chain_strength(1, hist, cands, "max_cochoosers").tolist() == [1, 1, 0]
    assert g.chain_strength(1, hist, cands, "sum_cochoosers").tolist() == [3, 2, 0]
    # cosine without u1: popularity of 1 -> 1 (u2), 2 -> 1 (u2), 3 -> 1 (u3), 4 -> 4 (u2..u5), 7 -> 2 (u2, u5)
    cos = g.chain_strength(1, hist, cands, "sum_cosine")
    assert cos[0] == pytest.approx(3 / np.sqrt(1 * 4))
    assert cos[1] == pytest.approx(2 / np.sqrt(1 * 2))
    assert cos[2] == 0
    assert g.chain_strength(1, [], cands, "sum_cosine").tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown evidence signal 'pmi'"):
        g.chain_strength(1, hist, cands, "pmi")


def test_neighbour_weighted_chains_count_each_cochooser_by_its_cosine_with_the_user():
    """evidence_neighbours: cosine. u1 has 4 items; u2 shares 3 of its 4 (cosine 3/4), u3 2 of its 3
    (2/sqrt(12)). Among candidates u1 chose 4 (its training target): scoring them, u1's items are {1, 2, 3},
    u2 shares 2 of its 4 (2/sqrt(12)), u3 1 of its 3 (1/3). The support an evidence line shows stays the
    number of real co-choosers."""
    g = graph()
    hist, cands = [1, 2, 3], [4, 7, 5]
    np.testing.assert_allclose(g.neighbour_weights(1)[[1, 2, 3]], [0, 0.75, 2 / np.sqrt(12)])
    np.testing.assert_allclose(g.neighbour_weights(1, cands)[[1, 2, 3]], [0, 2 / np.sqrt(12), 1 / 3])
    weighted = g.chain_strength(1, hist, cands, "sum_cochoosers", neighbours="cosine")
    # 4: (1,4) u2, (2,4) u2, (3,4) u3; 7: (1,7) u2, (2,7) u2 (u5 chose 7 but no history item); 5: none
    u2, u3 = 2 / np.sqrt(12), 1 / 3
    assert weighted == pytest.approx([u2 + u2 + u3, u2 + u2, 0])
    support, _ = g.evidence(1, hist, cands, "sum_cochoosers", neighbours="cosine")
    assert support == g.candidate_support(1, hist, cands) and support[0][0] == 1
    with pytest.raises(ValueError, match="unknown evidence_neighbours 'jaccard'"):
        g.chain_strength(1, hist, cands, "sum_cochoosers", neighbours="jaccard")
    with pytest.raises(ValueError, match="evidence_neighbours weighs chains in any order"):
        g.chain_strength(1, hist, cands, "sum_cochoosers", window=3, neighbours="cosine")


def test_a_users_own_choice_of_a_candidate_never_counts_in_its_evidence():
    """At training time u1 chose its target 4: the evidence of its SFT prompt must be what it would be if
    u1 had not chosen it, as a held-out target's is, for every signal and weighting (the co-choosers'
    counts, their cosine with u1, popularity, ordered pairs). Else the target leads SFT prompts more often
    than a test target can."""
    without = {user: items - {4} if user == 1 else items for user, items in TRAIN.items()}
    sequences = {user: [i for i in seq if i != 4] if user == 1 else seq for user, seq in SEQUENCES.items()}
    g = InteractionGraph(TRAIN, n_users=6, n_items=10, held_out=HELD_OUT, sequences=SEQUENCES)
    g_without = InteractionGraph(without, n_users=6, n_items=10, held_out=HELD_OUT, sequences=sequences)
    hist, cands = [1, 2, 3], [4, 7, 5]
    for signal in ("max_cochoosers", "sum_cochoosers", "sum_cosine"):
        for kwargs in ({}, {"neighbours": "cosine"}, {"popularity": 1.0}, {"window": 2, "unordered": 1.0},
                       {"window": 2, "unordered": 1.0, "neighbours": "cosine", "decay": 0.5}):
            mine, held_out = g.evidence(1, hist, cands, signal, **kwargs), g_without.evidence(1, hist, cands, signal, **kwargs)
            assert mine[0] == held_out[0]
            np.testing.assert_allclose(mine[1], held_out[1], err_msg=f"{signal} {kwargs}")


def test_recency_weighs_chains_through_recent_history_items_more():
    g = graph()
    hist, cands = [1, 2, 3], [4, 7, 5]  # oldest first: 3 is the most recent (weight 1), 2 gets 0.5, 1 gets 0.25
    # co-choosers per history item: 4 <- (1: 1, 2: 1, 3: 1); 7 <- (1: 1, 2: 1, 3: 0)
    assert g.chain_strength(1, hist, cands, "sum_cochoosers", recency=0.5).tolist() == [1.75, 0.75, 0]
    cos = g.chain_strength(1, hist, cands, "sum_cosine", recency=0.5)
    assert cos[0] == pytest.approx(1.75 / np.sqrt(1 * 4)) and cos[1] == pytest.approx(0.75 / np.sqrt(1 * 2))
    # the evidence line (the best single chain) does not depend on it
    assert g.chain_strength(1, hist, cands, "max_cochoosers", recency=0.5).tolist() == [1, 1, 0]
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=r"recency must be in \(0, 1\]"):
            g.chain_strength(1, hist, cands, "sum_cosine", recency=bad)


# Sequences (time order) for ordered chains: u1 = [1, 2, 3, 4] ... as TRAIN, in an order chosen by hand.
SEQUENCES = {1: [1, 2, 3, 4], 2: [4, 1, 2, 7], 3: [3, 8, 4], 4: [5, 6, 4], 5: [7, 4, 9]}


def ordered_graph():
    return InteractionGraph(TRAIN, n_users=6, n_items=10, held_out=HELD_OUT, sequences=SEQUENCES)


def test_ordered_chains_count_only_users_who_chose_the_candidate_soon_after():
    g = ordered_graph()
    hist, cands = [1, 2, 3], [4, 7, 5]
    # Other users' pairs (i0 then c within 2 steps): u2 [4,1,2,7]: (4,1) (4,2) (1,2) (1,7) (2,7);
    # u3 [3,8,4]: (3,8) (3,4) (8,4). So 4 follows 3 once (u3) and never follows 1 or 2 (u2 chose 4 first);
    # 7 follows 1 and 2 (u2). Unordered, 4 had 3 co-choosers.
    assert g.chain_strength(1, hist, cands, "sum_cochoosers", window=2).tolist() == [1, 2, 0]
    assert g.candidate_support(1, hist, cands) == [(1, 1), (1, 1), (0, None)]  # unordered: unchanged
    support, _ = g.evidence(1, hist, cands, "max_cochoosers", window=2)
    assert support == [(1, 3), (1, 1), (0, None)]
    # window 1: only the very next item. (1,2) u2; (3,8) u3; (8,4) u3 -> 4 follows no history item, 7 follows 2
    assert g.chain_strength(1, hist, cands, "sum_cochoosers", window=1).tolist() == [0, 1, 0]
    # cosine over the ordered counts, popularity without u1 as before: 3 -> 1, 4 -> 4; 1, 2 -> 1, 7 -> 2
    cos = g.chain_strength(1, hist, cands, "sum_cosine", window=2)
    assert cos[0] == pytest.approx(1 / np.sqrt(4)) and cos[1] == pytest.approx(2 / np.sqrt(2))


def test_blended_evidence_adds_standardised_any_order_chains_and_popularity():
    g = ordered_graph()
    hist, cands = [1, 2, 3], [4, 7, 5]

    def z(values):  # z-scores over the three candidates, written out
        values = np.array(values, dtype=float)
        return (values - values.mean()) / values.std()

    # sum_cochoosers: ordered (window 2) [1, 2, 0] as above; in any order [3, 2, 0]. Ordered alone ranks 7
    # first; z = [0, 1.22, -1.22] + [1.07, 0.27, -1.34]: still 7 (1.49 vs 1.07); twice the weight: 4 wins
    ordered, any_order = z([1, 2, 0]), z([3, 2, 0])
    blend = g.chain_strength(1, hist, cands, "sum_cochoosers", window=2, unordered=1.0)
    np.testing.assert_allclose(blend, ordered + any_order)
    assert int(np.argmax(blend)) == 1
    assert int(np.argmax(g.chain_strength(1, hist, cands, "sum_cochoosers", window=2, unordered=2.0))) == 0
    # popularity without u1: 4 -> 4 users (u2..u5), 7 -> 2 (u2, u5), 5 -> 1 (u4); log(1 + n), standardised
    with_pop = g.chain_strength(1, hist, cands, "sum_cochoosers", window=2, popularity=0.5)
    np.testing.assert_allclose(with_pop, ordered + 0.5 * z(np.log1p([4, 2, 1])))
    # the evidence lines (the strongest ordered chain of each candidate) do not depend on the blend
    assert g.evidence(1, hist, cands, "sum_cochoosers", window=2, unordered=1.0)[0] == [(1, 3), (1, 1), (0, None)]
    with pytest.raises(ValueError, match="blend weights must be >= 0"):
        g.chain_strength(1, hist, cands, "sum_cochoosers", window=2, popularity=-1)


def test_ordered_chains_never_count_the_user_itself():
    # u1 chose 4 right after 3 in its own sequence (at training time 4 is its target): only u3 counts
    g = ordered_graph()
    assert g.chain_strength(1, [3], [4], "sum_cochoosers", window=3).tolist() == [1]
    assert g.cochoosers(3, 4, window=3).tolist() == [1, 3]  # both chose 4 after 3; callers drop u0
    assert g.cochoosers(2, 4, window=3).tolist() == [1]     # u2 chose 4 before 2: not an ordered chain
    assert g.cochoosers(2, 4).tolist() == [1, 2]            # in any order it is


def test_decayed_ordered_chains_weigh_a_cochooser_by_how_soon_it_chose_the_candidate():
    g = ordered_graph()
    hist, cands = [1, 2, 3], [4, 7, 5]
    # Window 3, others' pairs at d steps: u2 [4,1,2,7]: (1,2) (2,7) at 1, (1,7) at 2, (4,7) at 3;
    # u3 [3,8,4]: (3,4) at 2. Undecayed 4 <- 3 (u3) and 7 <- 1, 2 (u2): [1, 2, 0]. With decay 0.5 a
    # co-chooser counts 0.5**(d-1): 4 <- 3 at 2 steps = 0.5; 7 <- 1 at 2 steps 0.5 + 7 <- 2 at 1 step 1.
    assert g.chain_strength(1, hist, cands, "sum_cochoosers", window=3).tolist() == [1, 2, 0]
    np.testing.assert_allclose(g.chain_strength(1, hist, cands, "sum_cochoosers", window=3, decay=0.5), [0.5, 1.5, 0])
    # the evidence lines keep the real number of co-choosers
    assert g.evidence(1, hist, cands, "max_cochoosers", window=3, decay=0.5)[0] == [(1, 3), (1, 1), (0, None)]
    # u1 itself chose 4 right after 3 (weight 1), u3 two steps after (0.5): only u3's 0.5 counts
    np.testing.assert_allclose(g.chain_strength(1, [3], [4], "sum_cochoosers", window=3, decay=0.5), [0.5])
    with pytest.raises(ValueError, match=r"evidence_decay must be in \(0, 1\]"):
        g.chain_strength(1, hist, cands, "sum_cochoosers", window=3, decay=0.0)
    with pytest.raises(ValueError, match="evidence_decay weighs ordered chains by their distance; it needs "
                                         "evidence_window > 0"):
        g.chain_strength(1, hist, cands, "sum_cochoosers", decay=0.5)


def test_regularised_chains_are_ease_learnt_without_the_users_own_row():
    g = graph()
    hist, cands, penalty = [1, 2, 3], [4, 7, 5], 2.0
    # EASE from scratch on the other users' rows only (u1 chose the target 4 itself: with its row in, its
    # own target would look stronger in its SFT prompt than any held-out target can)
    others = np.zeros((6, 10))
    for user, items in TRAIN.items():
        if user != 1:
            others[user, sorted(items)] = 1.0
    inverse = np.linalg.inv(others.T @ others + penalty * np.eye(10))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    expected = np.array([0.25, 0.5, 1.0]) @ weights[np.ix_(hist, cands)]  # item 3, the latest, counts 1
    np.testing.assert_allclose(g.regularised_strength(1, np.array(hist), np.array(cands), penalty, 0.5), expected)
    # with u1's row in the Gram matrix the target 4 would score differently: the leave-one-out is real
    mine = others.copy()
    mine[1, sorted(TRAIN[1])] = 1.0
    leaky = np.linalg.inv(mine.T @ mine + penalty * np.eye(10))
    leaky_weights = -leaky / np.diag(leaky)
    np.fill_diagonal(leaky_weights, 0.0)
    assert not np.allclose(np.array([0.25, 0.5, 1.0]) @ leaky_weights[np.ix_(hist, cands)], expected)

    def z(values):
        return (values - values.mean()) / values.std()

    # the blend: the chain strength so far, standardised, + weight x EASE's score, standardised
    base = g.chain_strength(1, hist, cands, "sum_cochoosers")
    blend = g.chain_strength(1, hist, cands, "sum_cochoosers", regularised=0.5, penalty=penalty,
                             regularised_recency=0.5)
    np.testing.assert_allclose(blend, z(base) + 0.5 * z(expected))
    # the evidence lines (real co-chooser counts) do not depend on it
    assert (g.evidence(1, hist, cands, "max_cochoosers", regularised=0.5, penalty=penalty)[0]
            == g.evidence(1, hist, cands, "max_cochoosers")[0])
    with pytest.raises(ValueError, match="evidence_regularised must be >= 0"):
        g.chain_strength(1, hist, cands, regularised=-1.0)
    with pytest.raises(ValueError, match="evidence_regularised_penalty must be > 0"):
        g.chain_strength(1, hist, cands, regularised=1.0, penalty=0.0)
    with pytest.raises(ValueError, match=r"evidence_regularised_recency must be in \(0, 1\]"):
        g.chain_strength(1, hist, cands, regularised=1.0, regularised_recency=0.0)


def test_regularised_chains_refuse_an_item_matrix_too_big_to_hold(monkeypatch):
    monkeypatch.setattr(InteractionGraph, "MAX_REGULARISED_ITEMS", 5)
    with pytest.raises(ValueError, match=r"evidence_regularised needs a dense 10 x 10 item matrix .*set "
                                         "evidence_regularised to 0"):
        graph().chain_strength(1, [1, 2, 3], [4, 7, 5], regularised=1.0)


def test_ordered_chains_need_sequences():
    with pytest.raises(ValueError, match="need the training sequences in time order"):
        graph().chain_strength(1, [1, 2, 3], [4], "sum_cosine", window=5)


def test_sequences_from_recbole_rows_follow_time_order(tiny_data_path, in_tmp):
    from recbole.data import create_dataset

    from conftest import tiny
    from recbole_r2rec.config import build_config
    from recbole_r2rec.protocol import prepare_data

    config = build_config("SASRec", "tiny", overrides=tiny(data_path=tiny_data_path))
    dataset = create_dataset(config)
    inter = dataset.inter_feat  # before splitting (the split rewrites it): every user's items by timestamp
    order = np.lexsort((np.asarray(inter["timestamp"]), np.asarray(inter["user_id"])))
    users, items = np.asarray(inter["user_id"])[order], np.asarray(inter["item_id"])[order]
    train, _, _ = prepare_data(config, dataset)
    g = InteractionGraph.from_training(train._dataset, train.seen_items)
    for u in np.unique(users).tolist():
        everything = items[users == u].tolist()
        assert g.sequences[u] == everything[:-2]  # leave-one-out: the last two are valid and test
