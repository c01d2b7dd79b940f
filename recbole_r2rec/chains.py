"""Interaction chains over the *training* user-item graph (r2rec.md, "Interaction chains").

For a training example (user u0, history H, next item t), a closed chain is

    u0 -> i0 -> u1 -> t            (i0 in H; u1 != u0 interacted with both i0 and t)
    u0 -> i0 -> u1 -> i1 -> u2 -> t (optional longer chain)

It closes back on u0 through the target (the closure constraint). An *ordered* chain (`evidence_window`
w > 0) also asks that u1 chose t within w steps after i0 in u1's training sequence, for datasets where
what comes next matters (ml-100k), not only what goes together. u1 is preferred from the paper's pool
U_cand(u0) = users sharing at least `min_shared` (2) items with u0 (not counting the target, which every
closing user shares), weighted by how many they share;
a user with no such neighbour falls back to any user who chose both i0 and t. The graph holds training
interactions only, and a user's own valid/test items never appear in that user's chains.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Chain:
    user: int
    target: int
    items: tuple  # i0 (, i1): the items the chain passes through, in order
    neighbours: tuple  # u1 (, u2)
    shared: tuple = field(default=())  # items u0 and u1 both chose (evidence for the similarity thought)

    @property
    def hops(self) -> int:
        return len(self.neighbours)


EVIDENCE_SIGNALS = ("max_cochoosers", "sum_cochoosers", "sum_cosine")
# How much a chain u0 -> i0 -> u1 -> c counts by how alike u0 and u1 are: none (every co-chooser alike) |
# cosine (of their item sets: neighbours who share much with the user count more)
NEIGHBOUR_WEIGHTS = ("none", "cosine")


def standardised(values) -> np.ndarray:
    """z-scores over one user's candidates (all equal -> zeros): signals of different scales add up."""
    values = np.asarray(values, dtype=float)
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def check_blend(unordered: float, popularity: float, window: int) -> None:
    """The blend weights (`evidence_unordered`, `evidence_popularity`) are >= 0, and chains in any order
    are blended only into ordered ones (with window 0 they are the signal already)."""
    if unordered < 0 or popularity < 0:
        raise ValueError(f"evidence blend weights must be >= 0 (0: not blended): evidence_unordered and "
                         f"evidence_popularity must be >= 0, not {unordered} and {popularity}")
    if unordered and not window:
        raise ValueError("evidence_unordered blends chains in any order into ordered ones; it needs "
                         "evidence_window > 0 (with 0 the chains are in any order already)")


def check_neighbours(neighbours: str, window: int, unordered: float) -> None:
    """`evidence_neighbours` weighs chains in any order (per co-chooser); ordered chains are counted per
    item pair, so with only ordered chains (window > 0, nothing unordered blended in) it would do nothing."""
    if neighbours not in NEIGHBOUR_WEIGHTS:
        raise ValueError(f"unknown evidence_neighbours {neighbours!r}; known: {list(NEIGHBOUR_WEIGHTS)}")
    if neighbours != "none" and window and not unordered:
        raise ValueError("evidence_neighbours weighs chains in any order; with evidence_window > 0 it needs "
                         "evidence_unordered > 0 (or evidence_window 0)")


def check_per_step_factor(key: str, value: float, one_means: str) -> None:
    """A weight applied once per step (`evidence_recency`, `evidence_decay`) must be in (0, 1]."""
    if not 0 < value <= 1:
        raise ValueError(f"{key} must be in (0, 1] (1: {one_means}), not {value}")


def check_recency(recency: float) -> None:
    """`evidence_recency` weighs the k-th most recent history item recency**k."""
    check_per_step_factor("evidence_recency", recency, "every history item counts alike")


def check_decay(decay: float, window: int) -> None:
    """`evidence_decay` weighs an ordered chain by how soon the co-chooser chose c after i0 (decay**(d-1) at
    d steps); below 1 it needs ordered chains (a window) to act on."""
    check_per_step_factor("evidence_decay", decay, "every step within the window counts alike")
    if decay < 1 and not window:
        raise ValueError("evidence_decay weighs ordered chains by their distance; it needs evidence_window > 0")


def check_regularised(weight: float, penalty: float, recency: float) -> None:
    """`evidence_regularised` (a blend weight, >= 0), its EASE `evidence_regularised_penalty` (> 0) and its
    per-step `evidence_regularised_recency` (in (0, 1])."""
    if weight < 0:
        raise ValueError(f"evidence_regularised must be >= 0 (0: not blended), not {weight}")
    if penalty <= 0:
        raise ValueError(f"evidence_regularised_penalty must be > 0 (EASE's L2 penalty), not {penalty}")
    check_per_step_factor("evidence_regularised_recency", recency, "every history item counts alike")


def check_evidence(recency: float, window: int, unordered: float, popularity: float, neighbours: str,
                   decay: float = 1.0, regularised: float = 0.0, penalty: float = 500.0,
                   regularised_recency: float = 0.7) -> None:
    """Every check of the evidence keys together, as the model (at construction) and the graph apply them."""
    check_recency(recency)
    check_blend(unordered, popularity, window)
    check_neighbours(neighbours, window, unordered)
    check_decay(decay, window)
    check_regularised(regularised, penalty, regularised_recency)


def training_interactions(train_dataset) -> tuple:
    """(user -> set of items, user -> training items in time order) from RecBole's training split: every
    item of a user's training rows (histories and targets); the sequences only for sequential data."""
    uid, iid = train_dataset.uid_field, train_dataset.iid_field
    inter = train_dataset.inter_feat
    user_items: dict = {}
    sequences: dict = {}
    users = inter[uid].tolist()
    targets = inter[iid].tolist()
    seq_field = iid + train_dataset.config["LIST_SUFFIX"]
    ordered = seq_field in inter.interaction  # sequential data: rows carry the history in time order
    histories = inter[seq_field].tolist() if ordered else [[]] * len(users)
    for u, t, h in zip(users, targets, histories):
        items = user_items.setdefault(u, set())
        items.add(t)
        items.update(i for i in h if i)
        if ordered:  # a user's rows come in time order: its first history, then each target
            if u not in sequences:
                sequences[u] = [i for i in h if i]
            sequences[u].append(t)
    return user_items, sequences


def interaction_matrix(user_items: dict, n_users: int, n_items: int) -> sp.csr_matrix:
    """Users x items, 1 where the user chose the item (int32)."""
    rows = [u for u, items in user_items.items() for _ in items]
    cols = [i for items in user_items.values() for i in items]
    return sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(n_users, n_items))


class InteractionGraph:
    """Users x items of the training split, indexed once (sparse), with co-interaction counts."""

    def __init__(self, user_items: dict, n_users: int, n_items: int, held_out: dict | None = None,
                 sequences: dict | None = None):
        self.matrix = interaction_matrix(user_items, n_users, n_items)
        self.by_item = self.matrix.T.tocsr()
        self.co = (self.matrix @ self.matrix.T).tocsr()  # co[u, v] = items u and v share
        self.popularity = np.asarray(self.by_item.sum(axis=1)).ravel()  # users per item
        self.sizes = np.asarray(self.matrix.sum(axis=1)).ravel().astype(float)  # items per user
        self.held_out = held_out or {}
        self.sequences = sequences or {}  # user -> training items in time order (ordered chains)
        self._followers = {}  # (window, decay) -> item x item matrix of users who chose the column soon after the row
        self._regularised = {}  # EASE penalty -> (X'X + penalty I)^-1, dense items x items

    @classmethod
    def from_training(cls, train_dataset, seen: dict | None = None):
        """From RecBole's training split: every item of a user's training rows (histories and targets).
        `seen` (user -> all items in any split, see `protocol.seen_items`) marks the rest as held out."""
        user_items, sequences = training_interactions(train_dataset)
        held_out = {u: items - user_items.get(u, set()) for u, items in (seen or {}).items()}
        return cls(user_items, train_dataset.user_num, train_dataset.item_num, held_out, sequences)

    def items_of(self, user: int) -> np.ndarray:
        return self.matrix.indices[self.matrix.indptr[user]:self.matrix.indptr[user + 1]]

    def users_of(self, item: int) -> np.ndarray:
        return self.by_item.indices[self.by_item.indptr[item]:self.by_item.indptr[item + 1]]

    def _pairs(self, user: int, window: int, decay: float = 1.0) -> tuple:
        """(i, c) pairs, as i * n_items + c, where the user chose c within `window` steps after i, and each
        pair's weight decay**(d-1), d the fewest steps from an i to a later c (all 1 without decay)."""
        seq = np.asarray(self.sequences.get(user, ()), dtype=np.int64)
        n = self.matrix.shape[1]
        steps = range(1, min(window, len(seq) - 1) + 1)
        keys = [seq[:-d] * n + seq[d:] for d in steps]
        if not keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        weights = np.concatenate([np.full(len(k), decay ** (d - 1)) for d, k in zip(steps, keys)])
        keys, first = np.unique(np.concatenate(keys), return_index=True)  # first: the fewest steps
        keep = keys // n != keys % n
        return keys[keep], weights[first][keep]

    def followers(self, window: int, decay: float = 1.0) -> sp.csr_matrix:
        """[i, c] = users who chose c within `window` steps after i (ordered co-choosers), each counting
        decay**(d-1) at d steps (see `_pairs`), built once per (window, decay)."""
        if not self.sequences:
            raise ValueError("ordered chains (evidence_window > 0) need the training sequences in time order; "
                             "this graph was built from data without item lists")
        if (window, decay) not in self._followers:
            n = self.matrix.shape[1]
            pairs = [self._pairs(u, window, decay) for u in self.sequences] or [(np.zeros(0, np.int64), np.zeros(0))]
            keys = np.concatenate([k for k, _ in pairs])
            weights = np.concatenate([w for _, w in pairs])
            values = weights if decay < 1 else np.ones(len(keys), dtype=np.int32)
            self._followers[window, decay] = sp.csr_matrix((values, (keys // n, keys % n)), shape=(n, n))
        return self._followers[window, decay]

    # Dense items x items in float64: 30000 items would be 7 GiB, past what a chain signal should cost.
    MAX_REGULARISED_ITEMS = 30000

    def regularised_inverse(self, penalty: float) -> np.ndarray:
        """(X'X + penalty I)^-1 over the binary training matrix X, the inverse EASE (Steck, WWW 2019) builds
        its item-item weights from; computed once per penalty."""
        n = self.matrix.shape[1]
        if n > self.MAX_REGULARISED_ITEMS:
            raise ValueError(f"evidence_regularised needs a dense {n} x {n} item matrix "
                             f"({n * n * 8 / 2 ** 30:.1f} GiB); it is meant for datasets of at most "
                             f"{self.MAX_REGULARISED_ITEMS} items: set evidence_regularised to 0")
        if penalty not in self._regularised:
            binary = self.matrix.astype(np.float64)
            gram = (binary.T @ binary).toarray()
            gram[np.diag_indices(n)] += penalty
            self._regularised[penalty] = np.linalg.inv(gram)
        return self._regularised[penalty]

    def regularised_strength(self, user: int, hist: np.ndarray, cands: np.ndarray, penalty: float,
                             recency: float) -> np.ndarray:
        """Per candidate, EASE's score sum_k recency**k B[h_k, c] over the history (most recent first, k = 0),
        with B learnt *without the user's own row*: the chain counts never count the user, and at training
        time the user chose the target, so with the row in the user's own target would look stronger in
        SFT prompts than any test target can. Exact leave-one-user-out by Sherman-Morrison on the cached
        inverse P: P' = P + (P x)(P x)' / (1 - x'P x), x the user's binary row; B'[h, c] = -P'[h, c] / P'[c, c],
        0 where h = c."""
        inverse = self.regularised_inverse(penalty)
        mine = self.items_of(user)
        px = inverse[:, mine].sum(axis=1) if len(mine) else np.zeros(len(inverse))
        scale = 1.0 / (1.0 - px[mine].sum()) if len(mine) else 0.0
        block = inverse[np.ix_(hist, cands)] + scale * np.outer(px[hist], px[cands])
        diagonal = inverse[cands, cands] + scale * px[cands] ** 2
        weights = -block / diagonal
        weights[hist[:, None] == cands[None, :]] = 0.0
        return (recency ** np.arange(len(hist)))[::-1] @ weights

    def cochoosers(self, item: int, then: int, window: int = 0) -> np.ndarray:
        """Users who chose both `item` and `then` (with `window`: `then` within that many steps after)."""
        users = np.intersect1d(self.users_of(item), self.users_of(then))
        if window:
            key = item * self.matrix.shape[1] + then
            users = np.array([u for u in users.tolist() if key in self._pairs(u, window)[0]], dtype=np.int64)
        return users

    def candidate_support(self, user: int, history, candidates) -> list:
        """Per candidate c, the strongest real chain u0 -> i0 -> u1 -> c through the history: (number of
        other users who chose both i0 and c, i0), maximised over i0 in `history`; (0, None) if none.
        The user's own interactions never count (at training time u0 chose the target itself)."""
        return self.evidence(user, history, candidates)[0]

    def chain_strength(self, user: int, history, candidates, signal: str = "max_cochoosers",
                       recency: float = 1.0, window: int = 0, unordered: float = 0.0,
                       popularity: float = 0.0, neighbours: str = "none", decay: float = 1.0,
                       regularised: float = 0.0, penalty: float = 500.0,
                       regularised_recency: float = 0.7) -> np.ndarray:
        """Per candidate, how strongly chains through the history lead to it (what the evidence is
        ranked by; 0 = no chain): `max_cochoosers`, the co-choosers of its best chain (the count the
        evidence line shows); `sum_cochoosers`, summed over the history items; `sum_cosine`, the cosine of
        each history item and the candidate over users, summed (chains normalised by popularity, so a
        blockbuster every user chose is not the strongest chain of everyone). Again without the user.
        recency (summed signals): the chains through the k-th most recent history item count recency**k
        (1 = all alike), for datasets where the last items say most about the next one. window > 0: only
        ordered chains count (co-choosers who chose the candidate within `window` steps after i0); decay < 1:
        such a co-chooser counts decay**(d-1) when c came d steps after i0, so "right after" weighs most.
        unordered / popularity / regularised > 0: a blend, see `evidence`. neighbours: see `neighbour_weights`."""
        return self.evidence(user, history, candidates, signal, recency, window, unordered, popularity,
                             neighbours, decay, regularised, penalty, regularised_recency)[1]

    def evidence(self, user: int, history, candidates, signal: str = "max_cochoosers", recency: float = 1.0,
                 window: int = 0, unordered: float = 0.0, popularity: float = 0.0,
                 neighbours: str = "none", decay: float = 1.0, regularised: float = 0.0,
                 penalty: float = 500.0, regularised_recency: float = 0.7) -> tuple:
        """(`candidate_support`, `chain_strength`) from one count of co-choosers, for prompts that show
        the one and rank by the other. `history` is oldest first; `window` as in `chain_strength`.

        Blend (`evidence_unordered`, `evidence_popularity`): with either > 0 the strength is the signal
        standardised over the candidates, plus `unordered` x the same signal over chains in any order
        (with a window: what goes together, besides what comes next), plus `popularity` x the candidate's
        log popularity (without the user), each standardised alike, so the weights compare like with like.
        `neighbours` (`evidence_neighbours`) weighs each co-chooser of the chains in any order; the
        support (the count an evidence line shows) stays the number of real co-choosers, also with `decay`
        (`evidence_decay`, ordered chains weighed by their distance; see `chain_strength`).
        `regularised` (`evidence_regularised`) > 0: the strength so far, standardised over the candidates,
        plus `regularised` x EASE's standardised score (`regularised_strength`): co-interaction counts with
        what every item's popularity explains regressed away, a ranking signal only (no line shows it)."""
        check_evidence(recency, window, unordered, popularity, neighbours, decay, regularised, penalty,
                       regularised_recency)
        if signal not in EVIDENCE_SIGNALS:
            raise ValueError(f"unknown evidence signal {signal!r}; known: {list(EVIDENCE_SIGNALS)}")
        hist = np.array([i for i in history if i], dtype=np.int64)
        cands = np.asarray(candidates, dtype=np.int64)
        if not len(hist) or not len(cands):
            return [(0, None)] * len(cands), np.zeros(len(cands))
        mine = self.matrix[user].toarray().ravel()
        co = self._cochooser_counts(user, hist, cands, mine, window)
        best = co.argmax(axis=0)
        counts = co[best, np.arange(len(cands))]
        support = [(int(n), int(hist[b]) if n > 0 else None) for n, b in zip(counts, best)]
        weight = self.neighbour_weights(user, cands) if neighbours != "none" else None
        if weight is not None and not window:
            co = self._cochooser_counts(user, hist, cands, mine, 0, weight)
        if decay < 1:
            co = self._cochooser_counts(user, hist, cands, mine, window, decay=decay)
        strength = self._signal(co, signal, recency, hist, cands, mine)
        if unordered or popularity:
            strength = standardised(strength)
        if unordered:
            any_order = self._cochooser_counts(user, hist, cands, mine, 0, weight)
            strength = strength + unordered * standardised(self._signal(any_order, signal, recency, hist, cands, mine))
        if popularity:
            strength = strength + popularity * standardised(np.log1p(self.popularity[cands] - mine[cands]))
        if regularised:
            ease = self.regularised_strength(user, hist, cands, penalty, regularised_recency)
            strength = standardised(strength) + regularised * standardised(ease)
        return support, strength

    def any_order_signals(self, user: int, history, candidates, signals, recency: float = 1.0) -> list:
        """`chain_strength` of each of `signals` over chains in any order (no blend), from one count of
        co-choosers instead of one per signal."""
        hist = np.array([i for i in history if i], dtype=np.int64)
        cands = np.asarray(candidates, dtype=np.int64)
        if not len(hist) or not len(cands):
            return [np.zeros(len(cands)) for _ in signals]
        mine = self.matrix[user].toarray().ravel()
        co = self._cochooser_counts(user, hist, cands, mine, 0)
        return [self._signal(co, signal, recency, hist, cands, mine) for signal in signals]

    def neighbour_weights(self, user: int, candidates=()) -> np.ndarray:
        """Per other user, the cosine of their item set and `user`'s (0 for `user`): chains through
        co-choosers who share much with the user count more (`evidence_neighbours: cosine`). The user's own
        choice of a `candidates` item is left out of its set: at training time u0 chose the target, so with
        it in, every co-chooser of the target would share one item more with u0 than the co-choosers of a
        negative do, and the target would lead SFT prompts more often than a held-out target can."""
        shared = np.asarray(self.co[user].todense()).ravel().astype(float)
        size = self.sizes[user]
        chosen = np.asarray(candidates, dtype=np.int64)
        chosen = chosen[self.matrix[user, chosen].toarray().ravel() > 0] if len(chosen) else chosen
        if len(chosen):
            shared -= np.asarray(self.by_item[chosen].sum(axis=0)).ravel()
            size -= len(chosen)
        weight = shared / np.sqrt(np.maximum(self.sizes * size, 1))
        weight[user] = 0.0
        return weight

    def _cochooser_counts(self, user: int, hist: np.ndarray, cands: np.ndarray, mine: np.ndarray,
                          window: int, weight: np.ndarray | None = None, decay: float = 1.0) -> np.ndarray:
        """[H, C] other users who chose both i0 and c (with `window`: c within that many steps after i0,
        each counting decay**(d-1); with `weight`, in any order, each such user counting its weight)."""
        if window:
            n = self.matrix.shape[1]
            co = self.followers(window, decay)[hist][:, cands].toarray()
            keys, weights = self._pairs(user, window, decay)  # the user's own pairs (sorted), taken out
            own = np.zeros(co.shape)
            if len(keys):
                grid = hist[:, None] * n + cands[None, :]
                at = np.searchsorted(keys, grid).clip(max=len(keys) - 1)
                own = np.where(keys[at] == grid, weights[at], 0.0)
            return co - own.astype(co.dtype)
        if weight is not None:  # the user's own weight is 0: nothing to take out
            return (self.by_item[hist].multiply(weight[None, :]).tocsr() @ self.by_item[cands].T).toarray()
        return (self.by_item[hist] @ self.by_item[cands].T).toarray() - np.outer(mine[hist], mine[cands])

    def _signal(self, co: np.ndarray, signal: str, recency: float, hist: np.ndarray, cands: np.ndarray,
                mine: np.ndarray) -> np.ndarray:
        """Per candidate, `signal` from the [H, C] co-chooser counts (see `chain_strength`)."""
        if signal == "max_cochoosers":
            return co.max(axis=0).astype(float)
        weight = recency ** np.arange(len(hist))[::-1]  # the most recent item (last) counts 1
        if signal == "sum_cochoosers":
            return weight @ co.astype(float)
        pop_h, pop_c = self.popularity[hist] - mine[hist], self.popularity[cands] - mine[cands]
        return weight @ (co / self._cosine_norm(pop_h, pop_c))

    def _cosine_norm(self, pop_h: np.ndarray, pop_c: np.ndarray) -> np.ndarray:
        """[H, C] denominators of `sum_cosine` (the user left out of both popularities)."""
        return np.sqrt(np.maximum(np.outer(pop_h, pop_c), 1))

    def shared_count(self, user: int, others: np.ndarray) -> np.ndarray:
        return np.asarray(self.co[user, others].todense()).ravel() if len(others) else np.zeros(0)


class ChainSampler:
    """Samples closed chains for training examples, reproducibly from a seed."""

    def __init__(self, graph: InteractionGraph, seed: int, chains_per_example: int = 2, min_shared: int = 2,
                 long_chains: bool = False):
        self.graph = graph
        self.seed = seed
        self.chains_per_example = chains_per_example
        self.min_shared = min_shared
        self.long_chains = long_chains

    def rng(self, user: int, target: int) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), int(user), int(target)])

    def sample(self, user: int, history, target: int) -> list:
        """Up to `chains_per_example` distinct chains for (user, history, target); [] if none closes."""
        g = self.graph
        banned = g.held_out.get(user, set())
        if target in banned:
            return []
        history = np.array([i for i in history if i and i not in banned], dtype=np.int64)
        rng = self.rng(user, target)
        closers = g.users_of(target)
        closers = closers[closers != user]
        if len(closers) == 0 or len(history) == 0:
            return []
        # a closing neighbour must share at least one history item with u0 (that item is i0)
        closers = closers[np.asarray(g.matrix[closers][:, history].sum(axis=1)).ravel() > 0]
        if len(closers) == 0:
            return []
        # similarity = items shared with u0 besides the target itself (which every closer shares)
        strength = g.shared_count(user, closers) - int(target in set(g.items_of(user).tolist()))
        pool = strength >= self.min_shared
        if pool.any():  # the paper's U_cand; else fall back to every closing user
            closers, strength = closers[pool], strength[pool]
        k = min(self.chains_per_example, len(closers))
        chosen = rng.choice(closers, size=k, replace=False, p=strength / strength.sum())
        chains = []
        for u1 in chosen.tolist():
            own = g.items_of(u1)
            via = np.intersect1d(own, history)
            i0 = int(rng.choice(via))
            shared = tuple(int(i) for i in via if i != i0)
            chain = Chain(user, int(target), (i0,), (u1,), shared)
            if self.long_chains:
                chain = self._extend(chain, own, history, banned, rng) or chain
            chains.append(chain)
        return chains

    def _extend(self, chain: Chain, own_u1, history, banned, rng):
        """u0 -> i0 -> u1 -> i1 -> u2 -> t: i1 is an item of u1 outside H, u2 chose i1 and t."""
        g = self.graph
        closers = set(g.users_of(chain.target).tolist()) - {chain.user, chain.neighbours[0]}
        options = [int(i) for i in own_u1 if i not in banned and i != chain.target and i not in set(history.tolist())]
        rng.shuffle(options)
        for i1 in options[:50]:
            u2s = sorted(closers & set(g.users_of(i1).tolist()))
            if u2s:
                u2 = int(rng.choice(u2s))
                return Chain(chain.user, chain.target, chain.items + (i1,), chain.neighbours + (u2,), chain.shared)
        return None
