"""R2Rec as a RecBole sequential recommender: an LLM reads the user's history and candidates, may
write its thoughts, and every candidate is scored by its length-normalised log-likelihood as the answer.
Training happens in stages (R2RecTrainer), not through `calculate_loss`."""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_r2rec import prompts
from recbole_r2rec.chains import EVIDENCE_SIGNALS, InteractionGraph, check_evidence
from recbole_r2rec.config import ConfigError, is_count
from recbole_r2rec.learned_evidence import LearnedEvidence, check_evidence_model
from recbole_r2rec.llm import load_backbone
from recbole_r2rec.protocol import ProtocolError, candidate_order, require_candidate_lists
from recbole_r2rec.scoring import (constrained_choice, continue_generation, evidence_fused, generate,
                                   score_candidates)
from recbole_r2rec.sequential import SequentialEncoder, check_sequential, encoder_path, fused_strength
from recbole_r2rec.trainer import parse_stages

logger = logging.getLogger(__name__)


def without_llm(config) -> bool:
    """`llm_path: none`: no LLM at all, candidates ranked by their chain strength (`evidence_signal`)
    alone: the ablation that shows what the LLM adds to the evidence it reads."""
    return str(config["llm_path"]).lower() == "none"


class R2Rec(SequentialRecommender):
    input_type = InputType.POINTWISE

    @staticmethod
    def check_config(config) -> None:
        """Refuse, before any data is loaded, what R2Rec cannot evaluate."""
        require_candidate_lists(config, "R2Rec", "reads a candidate list")
        history_len, cap = config["history_len"], config["MAX_ITEM_LIST_LENGTH"]
        if not is_count(history_len) or not 1 <= history_len <= cap:
            # RecBole keeps only the last MAX_ITEM_LIST_LENGTH items of a history: a longer history_len
            # would silently read the same items
            raise ConfigError(f"history_len must be an integer from 1 to MAX_ITEM_LIST_LENGTH ({cap}, the "
                              f"history every model reads under the shared protocol), not {history_len!r}")
        if config["evidence_signal"] not in EVIDENCE_SIGNALS:
            raise ConfigError(f"evidence_signal must be one of {list(EVIDENCE_SIGNALS)}, "
                              f"not {config['evidence_signal']!r}")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.seed = config["seed"]
        self.history_len = config["history_len"]
        self.generate_thoughts = config["generate_thoughts"]
        self.max_new_tokens = config["max_new_tokens"]
        self.constrained_answer = config["constrained_answer"]
        self.score_batch_users = config["score_batch_users"]
        self.share_head = bool(config["score_share_head"])
        self.score_calibration = config["score_calibration"]
        if self.score_calibration not in ("none", "item_prior"):
            raise ConfigError(f"score_calibration must be 'none' or 'item_prior', not {self.score_calibration!r}")
        self._prior = {}  # item -> its mean answer log-prob in a content-free prompt (item_prior)
        self.candidate_attributes = config["candidate_attributes"]
        self.titles, self.attributes = prompts.item_texts(
            dataset, list(config["item_text_fields"]), config["item_text_fallback_to_id"]
        )
        self.chain_evidence = config["chain_evidence"]
        self.llm = self.tokenizer = None
        if without_llm(config):
            # the ablation "chains without the LLM": rank by the chain evidence alone
            if parse_stages(config["stages"]):
                raise ConfigError("llm_path: none ranks by the chain evidence alone and has nothing to train: "
                                  "use --stages=none")
            self.generate_thoughts = self.constrained_answer = self.chain_evidence = False
            self.score_calibration = "none"
        else:
            self.llm, self.tokenizer = load_backbone(config["llm_path"], config["llm_dtype"], config["llm_device"])
            self._close_head = self.encode(prompts.ANSWER_CLOSE)[:1]
            # the prompt template with nothing in it, then the answer prefix (the context of `item_prior`)
            self._content_free = self.encode(prompts.chat_prompt(self.tokenizer, prompts.user_message([], []))
                                             + prompts.answer_prefix(None))
        self.evidence_items = config["evidence_items"]
        self.evidence_signal = config["evidence_signal"]
        self.evidence_recency = float(config["evidence_recency"])
        self.evidence_window = config["evidence_window"]
        window = self.evidence_window
        if not is_count(window) or window < 0:
            raise ConfigError(f"evidence_window must be an integer >= 0 (0: chains in any order), "
                              f"not {window!r}")
        self.evidence_unordered = float(config["evidence_unordered"])
        self.evidence_popularity = float(config["evidence_popularity"])
        self.evidence_neighbours = config["evidence_neighbours"]
        self.evidence_decay = float(config["evidence_decay"])
        self.evidence_regularised = tuple(float(config[key]) for key in (
            "evidence_regularised", "evidence_regularised_penalty", "evidence_regularised_recency"))
        try:  # the graph's own checks, raised at construction as config errors
            check_evidence(self.evidence_recency, window, self.evidence_unordered, self.evidence_popularity,
                           self.evidence_neighbours, self.evidence_decay, *self.evidence_regularised)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.evidence_weight = float(config["evidence_weight"])
        if self.evidence_weight < 0:
            raise ConfigError(f"evidence_weight must be >= 0 (0: the LLM alone), not {self.evidence_weight}")
        needs_graph = self.chain_evidence or self.evidence_weight > 0 or self.llm is None
        self.graph = InteractionGraph.from_training(dataset) if needs_graph else None
        self.learned = self.learned_evidence(config)
        # LLaRA-style collaborative evidence: a trained sequential model's scores blended into the chain
        # strength the candidates are ranked by (recbole_r2rec/sequential.py); None when off
        self.sequential_weight = float(config["sequential_weight"])
        check_sequential(self.sequential_weight, config["sequential_encoder"])
        if self.sequential_weight > 0 and self.graph is None:  # refused before the checkpoint is read
            raise ConfigError("sequential_weight blends into the chain evidence: it needs chain_evidence or "
                              "evidence_weight > 0")
        self.sequential = (SequentialEncoder(encoder_path(config["sequential_encoder"], config["dataset"], self.seed),
                                             config, dataset) if self.sequential_weight > 0 else None)
        self.answers = []  # per evaluated user: what the model answered (for ValidRatio, --explain)

    # -- text ---------------------------------------------------------------------------------------
    def describe(self, item: int) -> str:
        return prompts.describe(self.titles[item], self.attributes[item])

    def candidate_text(self, item: int) -> str:
        return self.describe(item) if self.candidate_attributes else self.titles[item]

    @property
    def ordered_evidence(self) -> bool:
        """Evidence lines speak of ordered chains (`evidence_window` > 0): "chose it soon after"."""
        return self.evidence_window > 0

    def learned_evidence(self, config) -> LearnedEvidence | None:
        """`evidence_model: gbdt`: the chain strength learnt from the training graph (learned_evidence.py),
        fitted here, before any stage; None for `none`."""
        try:
            check_evidence_model(config["evidence_model"], config["evidence_model_examples"],
                                 config["evidence_model_features"])
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if config["evidence_model"] == "none":
            return None
        if self.graph is None:
            raise ConfigError("evidence_model learns the chain strength: it needs chain_evidence or evidence_weight > 0")
        return LearnedEvidence(self.graph, self.configured_evidence, self.evidence_window, *self.evidence_regularised[1:],
                               self.history_len, config["evidence_model_examples"], self.seed,
                               config["evidence_model_features"])

    def configured_evidence(self, user: int, history: list, shown: list) -> tuple:
        """`graph.evidence(...)` with the evidence keys as set: (support, strength)."""
        return self.graph.evidence(user, history, shown, self.evidence_signal, self.evidence_recency,
                                   self.evidence_window, self.evidence_unordered, self.evidence_popularity,
                                   self.evidence_neighbours, self.evidence_decay, *self.evidence_regularised)

    def candidate_evidence(self, user: int, history: list, shown: list) -> tuple | None:
        """(support, strength) of the shown candidates, None without a graph: the strength learnt
        (`evidence_model`) or as set; the support (what an evidence line shows) is always the real count."""
        if self.graph is None:
            return None
        support, strength = self.configured_evidence(user, history, shown)
        if self.learned is not None:
            strength = self.learned.strength(user, history, shown, strength)
        return support, strength

    def grounding(self, user: int, history: list, shown: list, evidence: tuple | None = None) -> str:
        """Chain-grounded evidence (`chain_evidence`): the candidates with the strongest real chains
        from the user's history in the training graph (ranked by `evidence_signal`), so the model reasons
        over real interactions instead of recalling them. Empty when off. `evidence`:
        `candidate_evidence(...)` if known."""
        if not self.chain_evidence:
            return ""
        support, strength = evidence or self.candidate_evidence(user, history, shown)
        return prompts.support_evidence([(self.titles[c], n, self.titles[via] if via else "")
                                         for c, (n, via) in zip(shown, support)], self.evidence_items, strength,
                                        self.ordered_evidence)

    def prompt_text(self, history: list, shown: list, user: int = 0, context: str = "", evidence=None) -> str:
        """The chat prompt; `evidence`: this user's `grounding` if already computed."""
        evidence = self.grounding(user, history, shown) if evidence is None else evidence
        context = "\n\n".join(p for p in (evidence, context) if p)
        message = prompts.user_message([self.describe(i) for i in history], [self.candidate_text(i) for i in shown],
                                       context)
        return prompts.chat_prompt(self.tokenizer, message)

    def encode(self, text: str) -> list:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens: list) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    # -- RecBole interface ----------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        raise NotImplementedError("R2Rec is trained by the stages of R2RecTrainer (--stages=...), not by a loss")

    def full_sort_predict(self, interaction):
        raise ProtocolError("R2Rec ranks candidates only; use eval_args.mode uni19 (the shared protocol)")

    @torch.no_grad()
    def predict(self, interaction):
        """Scores for RecBole's flat (user, candidate) rows, in RecBole's row order."""
        users = interaction[self.USER_ID].tolist()
        items = interaction[self.ITEM_ID].tolist()
        seqs = interaction[self.ITEM_SEQ].cpu().numpy()
        lens = interaction[self.ITEM_SEQ_LEN].tolist()
        groups = OrderedDict()
        for row, uid in enumerate(users):
            groups.setdefault(uid, []).append(row)
        queries = []
        for uid, rows in groups.items():
            shown = [int(i) for i in candidate_order(self.seed, uid, [items[r] for r in rows])]
            history = prompts.history_ids(seqs[rows[0]], lens[rows[0]], self.history_len)
            queries.append((uid, rows, history, shown))
        sequential = None
        if self.sequential is not None:  # the encoder scores RecBole's rows as they come (full histories)
            by_row = self.sequential.predict(interaction)
            per_user = [{items[r]: by_row[r] for r in rows} for _, rows, _, _ in queries]
            sequential = [[mine[i] for i in shown] for mine, (*_, shown) in zip(per_user, queries)]
        scores = torch.empty(len(users))
        for (uid, rows, history, shown), item_scores in self.score_users(queries, sequential):
            for r in rows:
                scores[r] = item_scores[items[r]]
        return scores.to(self.device)

    def answer_tokens(self, title: str) -> list:
        """The tokens a candidate is scored on: its title, then the first token of </answer> (so a
        title that is a prefix of another does not score as the longer one)."""
        return self.encode(title) + self._close_head

    def begin_evaluation(self) -> None:
        """Forget what belongs to one evaluation: the recorded answers, and the item priors (the
        weights may have changed since, e.g. after a training stage)."""
        self.answers = []
        self._prior = {}

    @torch.no_grad()
    def item_prior(self, items: list) -> dict:
        """item -> mean log-prob of its answer tokens after a content-free prompt (the same template
        with no history, evidence or candidates). `score_calibration: item_prior` subtracts it from the
        score, so a title is not preferred for being predictable from its own first tokens or popular
        with the LLM in general (domain-conditional PMI, Holtzman et al. 2021). Computed once per item
        and evaluation, 20 items per packed row."""
        missing = [i for i in dict.fromkeys(items) if i not in self._prior]
        rows = [missing[k:k + 20] for k in range(0, len(missing), 20)]
        for s in range(0, len(rows), self.score_batch_users):
            batch = rows[s:s + self.score_batch_users]
            results = score_candidates(self.llm, [self._content_free] * len(batch),
                                       [[self.answer_tokens(self.titles[i]) for i in row] for row in batch],
                                       self.tokenizer.pad_token_id)
            for row, res in zip(batch, results):
                self._prior.update(zip(row, res.mean))
        return {i: self._prior[i] for i in items}

    def calibrated(self, shown: list, means: list) -> list:
        """The ranking scores of `shown` from their mean log-probs (see `item_prior`)."""
        if self.score_calibration == "none":
            return list(means)
        prior = self.item_prior(shown)
        return [m - prior[i] for i, m in zip(shown, means)]

    @torch.no_grad()
    def score_texts(self, prompt_texts: list, completions: list, titles: list) -> list:
        """Per (prompt, completion): the scores of its candidate titles given prompt + the completion's
        thoughts (the RL stage's rank reward). Runs the LLM in eval mode, then restores its mode."""
        training = self.llm.training
        self.llm.eval()
        scores = []
        for s in range(0, len(prompt_texts), self.score_batch_users):
            chunk = range(s, min(s + self.score_batch_users, len(prompt_texts)))
            prefixes = [self.encode(prompt_texts[i] + prompts.scoring_prefix(completions[i])) for i in chunk]
            cands = [[self.answer_tokens(t) for t in titles[i]] for i in chunk]
            scores += [r.mean for r in score_candidates(self.llm, prefixes, cands, self.tokenizer.pad_token_id,
                                                        share_head=self.share_head)]
        self.llm.train(training)
        return scores

    def score_users(self, queries, sequential=None):
        """For (uid, rows, history, shown) queries: generate thoughts/answers (optionally), score every
        shown candidate given prompt + thoughts, record the answers. Users go to the LLM in batches of
        `score_batch_users` of similar prompt length (padding is computed like real tokens); answers are
        recorded and yielded in the queries' order. `sequential`: per query, the sequential encoder's
        scores of `shown`, blended into the chain strength (the prompts keep the chains alone). Yields
        (query, {item: score})."""
        chains = [self.candidate_evidence(uid, h, shown) for uid, _, h, shown in queries]
        ranking = [None if ch is None else fused_strength(ch[1], sequential[k] if sequential else None,
                                                          self.sequential_weight)
                   for k, ch in enumerate(chains)]
        if self.llm is None:  # llm_path: none
            for query, strength in zip(queries, ranking):
                uid, _, history, shown = query
                scores = [float(x) for x in strength]
                self.answers.append({"user": uid, "history": history, "candidates": shown, "scores": scores,
                                     "llm_scores": None, "strength": scores, "completion": "", "thoughts": None,
                                     "evidence": "", "answer_item": None})
                yield query, dict(zip(shown, scores))
            return
        evidence = [self.grounding(uid, h, shown, ch) for (uid, _, h, shown), ch in zip(queries, chains)]
        prompt_ids = [self.encode(self.prompt_text(h, shown, uid, evidence=ev))
                      for (uid, _, h, shown), ev in zip(queries, evidence)]
        cand_ids = [[self.answer_tokens(self.titles[i]) for i in shown] for *_, shown in queries]
        by_length = sorted(range(len(queries)), key=lambda k: len(prompt_ids[k]))
        llm_out = {}
        for start in range(0, len(by_length), self.score_batch_users):
            batch = by_length[start:start + self.score_batch_users]
            llm_out.update(zip(batch, zip(*self._run_llm([prompt_ids[k] for k in batch], [cand_ids[k] for k in batch]))))
        for k, query in enumerate(queries):
            uid, _, history, shown = query
            completion, res = llm_out[k]
            llm_scores = self.calibrated(shown, res.mean)
            strength = [float(x) for x in ranking[k]] if ranking[k] is not None else None
            scores = evidence_fused(llm_scores, strength, self.evidence_weight)
            if self.constrained_answer:
                choice = constrained_choice(cand_ids[k], res.token_logprobs)
            elif self.generate_thoughts:
                choice = prompts.parse_answer(completion, [self.titles[i] for i in shown])
            else:
                choice = None
            self.answers.append({
                "user": uid, "history": history, "candidates": shown, "scores": scores,
                "llm_scores": llm_scores, "strength": strength, "completion": completion,
                "thoughts": (prompts.split_completion(completion)[0] or "") if self.generate_thoughts else None,
                "evidence": evidence[k], "answer_item": shown[choice] if choice is not None else None,
            })
            yield query, dict(zip(shown, scores))

    def _run_llm(self, prompt_ids: list, cand_ids: list) -> tuple:
        """One batch through the LLM: (completions, CandidateScores), per user. With generate_thoughts, the
        candidates are scored against the generation's own cache; otherwise right after the prompt."""
        if not self.generate_thoughts:
            prefixes = [p + self.encode(prompts.answer_prefix(None)) for p in prompt_ids]
            return [""] * len(prompt_ids), score_candidates(self.llm, prefixes, cand_ids, self.tokenizer.pad_token_id,
                                                            share_head=self.share_head)
        gen = generate(self.llm, self.tokenizer, prompt_ids, self.max_new_tokens, stop=prompts.ANSWER_CLOSE,
                       keep_cache=True)
        bridges, visible = continue_generation(gen, self.encode, self.decode,
                                               lambda b: prompts.scoring_prefix(gen.texts[b]))
        return gen.texts, score_candidates(self.llm, bridges, cand_ids, self.tokenizer.pad_token_id,
                                           cache=gen.cache, cache_mask=visible)
