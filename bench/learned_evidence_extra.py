"""Would R2Rec's learnt chain strength (`evidence_model: gbdt`, standardised columns) gain from more columns
or more training examples? Hit@1 of the 20 candidates of every *validation* user, no LLM, ties broken at
random, each model fitted as R2Rec fits it (5 folds of users, each user scored by the model fitted on the
other 4). Why these: on ml-100k the chains lose to GRU4Rec on rare targets and on what comes right next
(bench/error_analysis.py), so each added column is a guess at what a sequential model sees and the chains
do not. Every column is standardised over the 20 candidates and appended to the `--features` set
(default `standardised`):

- `late`: the candidate's mean relative position in the other users' training sequences (0 first, 1 last;
  the user's own sequence left out): items that tend to come late, a stand-in for time without timestamps;
- `short`: ordered chains from the last 3 history items only, within 3 steps (what comes right next);
- `attr`: cosine of the candidate's attributes (ml-100k `class`, lastfm `tags`, steam `genre`) with the
  history's, the k-th most recent item weighed 0.9**k (a chain through an attribute instead of a user);
- `year` (ml-100k): the candidate's release year, and minus its distance to the history's mean year;
- `now`: how often the other users chose the candidate among the last 1% and the last 5% of all training
  interactions before the user's latest history item (by timestamp, so nothing from the user's future):
  a chain through the users active at the same time, which the sequential models can only infer.

Rows: `none@n` (R2Rec's standardised set) and `<columns>@n`, n training examples a user (`--examples`).

    .venv/bin/python bench/learned_evidence_extra.py --dataset ml-100k --seed 2020 \
        --out results/analysis/learned_evidence_extra-ml-100k-seed2020.json
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recbole_r2rec.chains import standardised
from recbole_r2rec.learned_evidence import FEATURE_SETS, LearnedEvidence

from evidence_setup import CHAIN_KEYS, evidence_parser, evidence_setup, learned_hits

ATTRIBUTE = {"ml-100k": "class", "lastfm": "tags", "steam": "genre"}
RECENCY = 0.9
NOW_SHARES = (0.01, 0.05)  # `now`: the windows, as shares of all training interactions


def attribute_matrix(dataset, field: str) -> sp.csr_matrix:
    """items x attribute tokens, each row of unit length (RecBole's token_seq ids, 0 = padding)."""
    tokens = dataset.item_feat[field].numpy()
    rows = np.repeat(np.arange(len(tokens)), tokens.shape[1])
    keep = tokens.ravel() > 0
    matrix = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], tokens.ravel()[keep])),
                           shape=(len(tokens), tokens.max() + 1))
    matrix.data[:] = 1.0  # a token repeated in one item counts once
    norm = np.sqrt(np.asarray(matrix.sum(axis=1)).ravel())
    return sp.csr_matrix(matrix.multiply(1 / np.maximum(norm, 1e-9)[:, None]))


def release_years(dataset) -> np.ndarray:
    """Per item its release year as a number; unknown years (and padding) get the median."""
    names = dataset.id2token("release_year", dataset.item_feat["release_year"].numpy())
    years = np.array([float(name) if str(name).isdigit() else np.nan for name in names])
    return np.where(np.isnan(years), np.nanmedian(years), years)


def training_times(dataset) -> dict:
    """user -> the timestamps of its training sequence (as `training_interactions` orders the items): the
    first row's history, then each row's target."""
    inter, times = dataset.inter_feat, {}
    users, lengths = inter["user_id"].tolist(), inter["item_length"].tolist()
    stamps, lists = inter["timestamp"].tolist(), inter["timestamp_list"].tolist()
    for user, length, stamp, history in zip(users, lengths, stamps, lists):
        if user not in times:
            times[user] = history[:length]
        times[user].append(stamp)
    return times


def positions(sequence) -> tuple:
    """(items, each one's relative position in the sequence: 0 first, 1 last)."""
    sequence = np.asarray(sequence, dtype=np.int64)
    return sequence, np.arange(len(sequence)) / max(len(sequence) - 1, 1)


class ExtraEvidence(LearnedEvidence):
    """R2Rec's learnt strength with the columns named in `extra` appended (see the module docstring)."""

    def __init__(self, *args, extra=(), attributes=None, years=None, times=None, **kwargs):
        self.extra, self.attributes, self.years = extra, attributes, years
        graph = args[0]
        if "now" in extra:
            self.when = {(u, i): t for u, sequence in graph.sequences.items() for i, t in zip(sequence, times[u])}
            order = sorted(self.when.items(), key=lambda pair: pair[1])
            self.clock = np.array([t for _, t in order])
            self.item_times = {}
            for (_, item), t in order:  # per item its training timestamps, sorted
                self.item_times.setdefault(item, []).append(t)
            self.item_times = {item: np.array(ts) for item, ts in self.item_times.items()}
        n = graph.matrix.shape[1]
        self.position_sum, self.position_count = np.zeros(n), np.zeros(n)
        for sequence in graph.sequences.values():
            sequence, relative = positions(sequence)
            np.add.at(self.position_sum, sequence, relative)
            np.add.at(self.position_count, sequence, 1)
        super().__init__(*args, **kwargs)

    def features(self, user: int, history, candidates, configured=None) -> np.ndarray:
        base = super().features(user, history, candidates, configured)
        shown = list(candidates)
        cands = np.asarray(shown, dtype=np.int64)
        hist = np.array([i for i in history if i], dtype=np.int64)
        columns = []
        if "late" in self.extra:
            total, count = self.position_sum[cands].copy(), self.position_count[cands].copy()
            sequence, relative = positions(self.graph.sequences.get(user, ()))
            mine = sequence[None, :] == cands[:, None]
            total -= mine @ relative
            count -= mine.sum(axis=1)
            columns.append(np.where(count > 0, total / np.maximum(count, 1), 0.5))
        if "short" in self.extra:
            columns.append(self.graph.chain_strength(user, list(hist[-3:]), shown, "sum_cosine", 0.5, 3))
        if "attr" in self.extra:
            weights = RECENCY ** np.arange(len(hist))[::-1]
            profile = np.asarray(self.attributes[hist].T @ weights).ravel()  # zeros without a history
            columns.append(np.asarray(self.attributes[cands] @ profile).ravel())
        if "year" in self.extra:
            year = self.years[cands]
            mean = self.years[hist].mean() if len(hist) else year.mean()
            columns += [year, -np.abs(year - mean)]
        if "now" in self.extra:
            now = max(self.when[user, int(i)] for i in hist) if len(hist) else self.clock[-1]
            end = np.searchsorted(self.clock, now, side="right")
            stamps = [self.item_times.get(int(c), np.zeros(0)) for c in cands]
            until = np.array([np.searchsorted(ts, now, "right") for ts in stamps])
            own = np.array([self.when.get((user, int(c)), np.inf) for c in cands])  # the user's own choice of c
            for share in NOW_SHARES:
                start = self.clock[max(0, end - int(share * len(self.clock)))]
                since = np.array([np.searchsorted(ts, start, "right") for ts in stamps])
                columns.append(np.log1p(until - since - ((start < own) & (own <= now))))
        return np.concatenate([base] + [standardised(column)[:, None] for column in columns], axis=1)


def main():
    parser = evidence_parser(__doc__)
    parser.add_argument("--sets", default="none,late,short,attr",
                        help="comma-separated; columns joined by +, e.g. none,late,attr+year")
    parser.add_argument("--examples", default="3", help="training examples a user, comma-separated")
    parser.add_argument("--features", default="standardised", choices=FEATURE_SETS,
                        help="the evidence_model_features the columns are added to (lastfm's rows use all)")
    args = parser.parse_args()
    own, (train, valid, _), graph = evidence_setup(args.dataset, args.seed)
    dataset = train._dataset
    attributes = attribute_matrix(dataset, ATTRIBUTE[args.dataset]) if args.dataset in ATTRIBUTE else None
    years = release_years(dataset) if "release_year" in dataset.item_feat else None
    times = training_times(dataset) if "now" in args.sets else None
    keys = [own[key] for key in CHAIN_KEYS]
    configured = lambda user, history, shown: graph.evidence(user, history, shown, *keys)
    models = {}
    for name in args.sets.split(","):
        extra = () if name == "none" else tuple(name.split("+"))
        if ("attr" in extra and attributes is None) or ("year" in extra and years is None):
            raise SystemExit(f"{args.dataset} has no item attribute for {name!r}")
        for examples in map(int, args.examples.split(",")):
            models[f"{name}@{examples}"] = ExtraEvidence(
                graph, configured, own["evidence_window"], own["evidence_regularised_penalty"],
                own["evidence_regularised_recency"], args.history_len, examples, args.seed, args.features,
                extra=extra, attributes=attributes, years=years, times=times)
    learned_hits(valid, args.history_len, args.seed, configured, models).write(args, next(iter(models)))


if __name__ == "__main__":
    main()
