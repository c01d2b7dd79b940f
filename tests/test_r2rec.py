"""R2Rec with a tiny LLM built in the test: scoring, row order, candidate order, answers, errors."""
import re

import numpy as np
import pytest
import torch
from recbole.data import create_dataset
from recbole.utils import ModelType, init_seed

from conftest import tiny, write_tiny_dataset
from recbole_r2rec import prompts
from recbole_r2rec.chains import InteractionGraph
from recbole_r2rec.config import ConfigError, build_config
from recbole_r2rec.llm import load_backbone
from recbole_r2rec.model import R2Rec
from recbole_r2rec.protocol import ProtocolError, candidate_order, prepare_data
from recbole_r2rec.registry import get_trainer
from recbole_r2rec.runner import run
from recbole_r2rec.scoring import (common_head_length, constrained_choice, continue_generation, evidence_fused, generate,
                                   score_candidates, score_naive)
from recbole_r2rec.trainer import parse_stages


def _r2rec(dataset_name, data_path, llm, **extra):
    overrides = tiny(**{"llm_path": llm, "llm_dtype": "float32", "generate_thoughts": False, "evidence_weight": 0.0,
                        **extra})
    if data_path:
        overrides["data_path"] = data_path
    else:
        overrides = {k: v for k, v in overrides.items() if k not in ("load_col", "item_text_fields")}
    config = build_config("R2Rec", dataset_name, overrides=overrides)
    init_seed(config["seed"], True)
    data = prepare_data(config, create_dataset(config))
    return config, data


@pytest.fixture(scope="module")
def tiny_r2rec(tiny_data_path, tiny_llm_path, tmp_path_factory):
    import os

    os.chdir(tmp_path_factory.mktemp("r2rec"))
    config, (train, valid, test) = _r2rec("tiny", tiny_data_path, tiny_llm_path)
    return config, R2Rec(config, train._dataset), test


def test_shared_prefix_scores_equal_naive_per_candidate_scores(tiny_llm_path):
    model, tok = load_backbone(tiny_llm_path, dtype="float32", device="cpu")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefixes = [enc("the user chose red star <answer>"),
                enc("the user chose these items oldest first moon sun river <think> fire </think> <answer>"),
                enc("<answer>")]
    cands = [[enc(t + " </answer>") for t in ("red star 1", "moon", "king queen 3 war", "ice")],
             [enc(t + " </answer>") for t in ("sun river", "night")],
             [enc(t + " </answer>") for t in ("day", "game 2", "love city road dream")]]
    shared = score_candidates(model, prefixes, cands, tok.pad_token_id)
    for p, c, s in zip(prefixes, cands, shared):
        np.testing.assert_allclose(s.mean, score_naive(model, p, c), atol=1e-5)
        assert len(s.token_logprobs) == len(c)


def test_the_head_all_prompts_share_runs_once_and_scores_stay_the_same(tiny_llm_path):
    """The system turn every prompt of a batch starts with is run once and its cache copied to each row;
    rows of different lengths (left-padded after the shared head) must score as if run alone."""
    model, tok = load_backbone(tiny_llm_path, dtype="float32", device="cpu")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head = "<|im_start|> the user chose these items oldest first blue green"
    prefixes = [enc(f"{head} red star moon <answer>"), enc(f"{head} sun <answer>"),
                enc(f"{head} king queen war love city road <think> fire </think> <answer>")]
    assert common_head_length(prefixes) == len(enc(head))
    assert common_head_length([[1, 2, 3], [1, 2], [1, 2, 3, 4]]) == 2 and common_head_length([[5], [6]]) == 0
    cands = [[enc(t + " </answer>") for t in titles]
             for titles in (["red star 1", "moon"], ["sun river", "night", "ice"], ["day", "love city road dream"])]
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    shared = score_candidates(model, prefixes, cands, tok.pad_token_id, share_head=True)
    hook.remove()
    assert calls[0] == (1, len(enc(head)))  # the head, once
    assert calls[1][0] == 3 and calls[1][1] < max(map(len, prefixes))  # then each row without it
    alone = score_candidates(model, prefixes, cands, tok.pad_token_id, share_head=False)
    for p, c, s, a in zip(prefixes, cands, shared, alone):
        np.testing.assert_allclose(s.mean, a.mean, atol=1e-5)
        np.testing.assert_allclose(s.mean, score_naive(model, p, c), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scoring_from_the_generation_cache_equals_scoring_the_text_afresh(tiny_llm_path, seed):
    """Thoughts are generated once; candidates are scored against that cache (prompt + the model's own
    thought tokens + a bridge), which must equal a fresh forward over the same tokens, for rows of
    different lengths, stopped or truncated, with or without </think>."""
    model, tok = load_backbone(tiny_llm_path, dtype="float32", device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():  # a random tiny model rarely writes tags: make it like them
        emb = model.get_input_embeddings().weight
        for tag in ("</think>", "<answer>", "</answer>", "red"):
            emb[tok.convert_tokens_to_ids(tag)] += 0.5 * seed * torch.randn(emb.shape[1])
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    dec = lambda t: tok.decode(t, skip_special_tokens=False)  # noqa: E731
    prompts_ids = [enc("the user chose red star moon"), enc("sun river <think>"), enc("king queen war love city road")]
    cands = [[enc(t) + enc("</answer>")[:1] for t in titles]
             for titles in (["red star 1", "moon", "ice"], ["sun river", "night"], ["day", "game 2", "love city"])]
    gen = generate(model, tok, prompts_ids, max_new_tokens=6 + seed, stop="</answer>", keep_cache=True)
    bridges, visible = continue_generation(gen, enc, dec, lambda b: prompts.scoring_prefix(gen.texts[b]))
    cached = score_candidates(model, bridges, cands, tok.pad_token_id, cache=gen.cache, cache_mask=visible)
    for b, p in enumerate(prompts_ids):
        kept = int(visible[b].sum()) - len(p)
        context = p + gen.new_tokens[b][:kept] + bridges[b]
        squeeze = lambda s: "".join(s.split())  # noqa: E731  (the word-level tokenizer drops whitespace)
        assert squeeze(dec(context[len(p):])) == squeeze(prompts.scoring_prefix(gen.texts[b]))
        np.testing.assert_allclose(cached[b].mean, score_naive(model, context, cands[b]), atol=1e-4)


def test_scores_follow_recbole_row_order(tiny_r2rec):
    config, model, test = tiny_r2rec
    interaction = test.collate_fn(np.arange(4))[0]
    scores = model.predict(interaction)
    perm = torch.randperm(len(interaction), generator=torch.Generator().manual_seed(0))
    permuted = model.predict(interaction[perm])
    torch.testing.assert_close(permuted, scores[perm])
    # and each score is that row's own candidate's log-likelihood
    answer = model.answers[0]
    item = answer["candidates"][3]
    row = [r for r in range(len(interaction)) if int(interaction["item_id"][r]) == item
           and int(interaction["user_id"][r]) == answer["user"]][0]
    prefix = model.encode(model.prompt_text(answer["history"], answer["candidates"], answer["user"]) + prompts.answer_prefix(None))
    naive = score_naive(model.llm, prefix, [model.answer_tokens(model.titles[item])])[0]
    assert abs(float(scores[row]) - naive) < 1e-4


def test_item_prior_calibration_subtracts_each_titles_content_free_log_likelihood(tiny_r2rec):
    """score_calibration: item_prior ranks by mean log p(title | prompt) - mean log p(title | the same
    template with nothing in it), each term checked against a naive forward; the prior is recomputed
    after the weights change (a new evaluation)."""
    config, model, test = tiny_r2rec
    interaction = test.collate_fn(np.arange(2))[0]
    plain = model.predict(interaction)
    model.score_calibration = "item_prior"
    try:
        model.begin_evaluation()
        calibrated = model.predict(interaction)
        answer = model.answers[0]
        empty = model.encode(prompts.chat_prompt(model.tokenizer, prompts.user_message([], []))
                             + prompts.answer_prefix(None))
        for item in answer["candidates"][:3]:
            row = [r for r in range(len(interaction)) if int(interaction["item_id"][r]) == item
                   and int(interaction["user_id"][r]) == answer["user"]][0]
            prior = score_naive(model.llm, empty, [model.answer_tokens(model.titles[item])])[0]
            assert abs(float(calibrated[row]) - (float(plain[row]) - prior)) < 1e-4
        assert not torch.equal(torch.argsort(plain), torch.argsort(calibrated))
        first = dict(model._prior)
        head = model.llm.get_output_embeddings().weight
        saved = head.detach().clone()
        with torch.no_grad():
            head.mul_(1.5)
        try:
            model.begin_evaluation()
            model.predict(interaction)
            assert all(abs(model._prior[i] - first[i]) > 1e-6 for i in answer["candidates"])
        finally:
            with torch.no_grad():
                head.copy_(saved)
    finally:
        model.score_calibration = "none"
        model.begin_evaluation()


def test_evidence_fused_adds_the_standardised_chain_strength_by_hand():
    # strength 0, 2, 4, 2: mean 2, population std sqrt(2) -> z = -sqrt(2), 0, sqrt(2), 0
    fused = evidence_fused([-1.0, -2.0, -3.0, -0.5], [0.0, 2.0, 4.0, 2.0], 0.5)
    r = 0.5 * np.sqrt(2)
    np.testing.assert_allclose(fused, [-1.0 - r, -2.0, -3.0 + r, -0.5])
    assert evidence_fused([-1.0, -2.0], [3.0, 3.0], 2.0) == [-1.0, -2.0]  # no contrast, nothing added
    assert evidence_fused([-1.0, -2.0], [0.0, 9.0], 0.0) == [-1.0, -2.0]  # weight 0: the LLM alone


def test_evidence_weight_ranks_by_llm_score_plus_chain_strength(tiny_r2rec):
    """evidence_weight > 0: each row's score is its LLM score plus the weight times its candidate's
    standardised chain strength in the training graph (recomputed here from the graph itself)."""
    config, model, test = tiny_r2rec
    interaction = test.collate_fn(np.arange(4))[0]
    plain = model.predict(interaction)
    model.evidence_weight = 3.0
    try:
        fused = model.predict(interaction)
        answer = model.answers[-1]
        _, strength = model.graph.evidence(answer["user"], answer["history"], answer["candidates"],
                                           model.evidence_signal)
        assert strength.std() > 0, "the tiny user's candidates should differ in chain strength"
        z = (strength - strength.mean()) / strength.std()
        for item, zi in zip(answer["candidates"], z):
            row = [r for r in range(len(interaction)) if int(interaction["item_id"][r]) == item
                   and int(interaction["user_id"][r]) == answer["user"]][0]
            assert abs(float(fused[row]) - (float(plain[row]) + 3.0 * zi)) < 1e-4
        assert answer["llm_scores"] != answer["scores"]
    finally:
        model.evidence_weight = 0.0
        model.begin_evaluation()


@pytest.mark.parametrize("window,unordered,popularity,neighbours,decay,regularised", [
    (0, 0.0, 0.0, "none", 1.0, 0.0), (3, 0.0, 0.0, "none", 1.0, 0.0), (3, 1.0, 0.5, "none", 1.0, 0.0),
    (0, 0.0, 0.0, "cosine", 1.0, 0.0), (3, 1.0, 0.0, "none", 0.5, 0.0), (3, 1.0, 0.0, "none", 0.5, 0.5)])
def test_without_llm_candidates_are_ranked_by_chain_strength_alone(tiny_data_path, tiny_llm_path, window,
                                                                   unordered, popularity, neighbours, decay,
                                                                   regularised):
    """llm_path: none (the ablation "chains without the LLM"): no backbone is loaded, and each row's
    score is its candidate's chain strength in the training graph (recent history items weighing more,
    evidence_recency; ordered chains only with evidence_window; blended with evidence_unordered and
    evidence_popularity; co-choosers weighted with evidence_neighbours; ordered chains decayed with
    evidence_decay; plus EASE's score with evidence_regularised), recomputed here from the graph."""
    config, (train, _, test) = _r2rec("tiny", tiny_data_path, "none", stages="none", evidence_recency=0.5,
                                      evidence_window=window, evidence_unordered=unordered,
                                      evidence_popularity=popularity, evidence_neighbours=neighbours,
                                      evidence_decay=decay, evidence_regularised=regularised,
                                      evidence_regularised_penalty=5.0)
    model = R2Rec(config, train._dataset)
    assert model.llm is None and model.tokenizer is None
    interaction = test.collate_fn(np.arange(len(test.uid_list)))[0]
    scores = model.predict(interaction)
    assert len(model.answers) == len(test.uid_list)
    differs = ease_moved = 0
    for answer in model.answers:
        _, strength = model.graph.evidence(answer["user"], answer["history"], answer["candidates"],
                                           model.evidence_signal, 0.5, window, unordered, popularity, neighbours,
                                           decay, regularised, 5.0, 0.7)
        _, unweighted = model.graph.evidence(answer["user"], answer["history"], answer["candidates"],
                                             model.evidence_signal, 1.0, window, unordered, popularity,
                                             neighbours, decay, regularised, 5.0, 0.7)
        differs += not np.allclose(strength, unweighted)
        if regularised:  # EASE's term reaches the scores (not a constant on this graph)
            _, chains_only = model.graph.evidence(answer["user"], answer["history"], answer["candidates"],
                                                  model.evidence_signal, 0.5, window, unordered, popularity,
                                                  neighbours, decay)
            ease_moved += not np.allclose(strength, chains_only)
        by_item = dict(zip(answer["candidates"], strength.tolist()))
        rows = [r for r in range(len(interaction)) if int(interaction["user_id"][r]) == answer["user"]]
        assert len(rows) == 20
        np.testing.assert_allclose([float(scores[r]) for r in rows],
                                   [by_item[int(interaction["item_id"][r])] for r in rows], atol=1e-6)
    assert differs > 0  # the recency weighting reached the scores
    assert ease_moved > 0 or not regularised
    result = get_trainer(ModelType.SEQUENTIAL, "R2Rec")(config, model).evaluate(test)
    assert "valid_ratio" not in result  # no answers are generated without an LLM


def test_without_llm_there_is_nothing_to_train(tiny_data_path):
    config, (train, _, _) = _r2rec("tiny", tiny_data_path, "none", stages="sft")
    with pytest.raises(ConfigError, match="llm_path: none ranks by the chain evidence alone .* --stages=none"):
        R2Rec(config, train._dataset)


def test_negative_evidence_weight_is_a_config_error(tiny_data_path, tiny_llm_path):
    config, (train, _, _) = _r2rec("tiny", tiny_data_path, tiny_llm_path, evidence_weight=-1)
    with pytest.raises(ConfigError, match="evidence_weight must be >= 0"):
        R2Rec(config, train._dataset)


@pytest.mark.parametrize("recency", [0, -0.5, 2])
def test_evidence_recency_outside_zero_one_is_a_config_error(tiny_data_path, recency):
    config, (train, _, _) = _r2rec("tiny", tiny_data_path, "none", stages="none", evidence_recency=recency)
    with pytest.raises(ConfigError, match=r"evidence_recency must be in \(0, 1\]"):
        R2Rec(config, train._dataset)


def test_unknown_score_calibration_is_a_config_error(tiny_data_path, tiny_llm_path):
    config, (train, _, _) = _r2rec("tiny", tiny_data_path, tiny_llm_path, score_calibration="pmi")
    with pytest.raises(ConfigError, match="score_calibration must be 'none' or 'item_prior'"):
        R2Rec(config, train._dataset)


def test_unknown_evidence_signal_is_refused_before_any_data_is_loaded(tiny_data_path, tiny_llm_path, in_tmp):
    with pytest.raises(ConfigError, match=r"evidence_signal must be one of \['max_cochoosers', 'sum_cochoosers', "
                                          r"'sum_cosine'\], not 'cosine'"):
        run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, evidence_signal="cosine"))


@pytest.mark.parametrize("history_len", [0, 21])
def test_history_len_beyond_the_protocols_history_is_refused(tiny_data_path, tiny_llm_path, in_tmp, history_len):
    # RecBole truncates histories to MAX_ITEM_LIST_LENGTH (20 in properties/overall.yaml): 21 would read 20
    with pytest.raises(ConfigError, match=rf"history_len must be an integer from 1 to MAX_ITEM_LIST_LENGTH "
                                          rf"\(20, .*\), not {history_len}"):
        run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, history_len=history_len))


def test_prompt_order_does_not_depend_on_which_row_is_positive(tiny_r2rec):
    config, model, test = tiny_r2rec
    interaction = test.collate_fn(np.arange(1))[0]
    positive_first = torch.cat([torch.nonzero(interaction["label"] == 1).view(-1),
                                torch.nonzero(interaction["label"] == 0).view(-1)])
    model.answers = []
    model.predict(interaction)
    model.predict(interaction[positive_first])
    model.predict(interaction[torch.arange(len(interaction)).flip(0)])
    shown = [tuple(a["candidates"]) for a in model.answers]
    assert shown[0] == shown[1] == shown[2]
    uid = model.answers[0]["user"]
    assert list(shown[0]) == list(candidate_order(config["seed"], uid, interaction["item_id"].tolist()))
    text = model.prompt_text(model.answers[0]["history"], list(shown[0]), uid).split("Candidates:")[1]
    assert text.index(model.titles[shown[0][0]]) < text.index(model.titles[shown[0][1]])


class FirstListedR2Rec(R2Rec):
    """Always prefers the first candidate of its prompt."""

    def score_users(self, queries, sequential=None):
        for query in queries:
            shown = query[3]
            yield query, {item: float(k == 0) for k, item in enumerate(shown)}


def test_scorer_preferring_first_listed_candidate_is_at_chance(tiny_llm_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, (train, valid, test) = _r2rec("ml-100k", None, tiny_llm_path, item_text_fallback_to_id=False)
    model = FirstListedR2Rec(config, train._dataset)
    trainer = get_trainer(ModelType.SEQUENTIAL, "R2Rec")(config, model)
    hit1 = trainer.evaluate(test)["hit@1"]
    n = len(test.uid_list)
    assert n > 900 and abs(hit1 - 0.05) < 3 * np.sqrt(0.05 * 0.95 / n)


@pytest.mark.parametrize("text", [
    "", None, "<answer></answer>", "<answer>", "</answer>", "<think>red star</think>",
    "<answer>nothing of that sort</answer>", "<answer>red star 1 or moon sun 2</answer>",
    "<answer>" + " ".join(f"red star {i}" for i in range(1, 4)) + "</answer>", "\x00\ufffd<answer>\n</answer>",
    "<answer>red star 1" * 500,
])
def test_malformed_empty_or_ambiguous_answers_are_invalid(text):
    titles = ["red star 1", "moon sun 2", "red star 3"]
    result = prompts.parse_answer(text, titles)
    if text and "red star 1" * 2 in text.replace("<answer>", ""):
        assert result == 0  # one candidate named (repeatedly) is still that candidate
    else:
        assert result is None


def test_answer_parsing_prefers_the_longest_title_and_reads_tags():
    titles = ["Alien", "Aliens", "Toy Story"]
    assert prompts.parse_answer("<think>I like Alien</think><answer>Aliens</answer>", titles) == 1
    assert prompts.parse_answer("<answer>alien</answer>", titles) == 0
    assert prompts.parse_answer("I would pick Toy Story.", titles) == 2  # untagged: whole text
    assert prompts.split_completion("<think>a</think>\n<answer>b</answer>") == ("a", "b")
    assert prompts.split_completion("no tags") == ("no tags", None)


def test_constrained_decoding_is_greedy_trie_decoding(tiny_llm_path):
    model, tok = load_backbone(tiny_llm_path, dtype="float32", device="cpu")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    titles = ["red star 1", "red star 3", "red moon", "sun", "king queen 4"]
    for seed, text in enumerate(["the user chose red <answer>", "moon sun river <answer>", "<answer>"]):
        prefix = enc(text)
        cands = [enc(t + " </answer>") for t in titles]
        res = score_candidates(model, [prefix], [cands], tok.pad_token_id)[0]
        choice = constrained_choice(cands, res.token_logprobs)
        assert 0 <= choice < len(titles)

        def allowed(batch_id, ids):
            done = ids.tolist()[len(prefix):]
            nxt = {c[len(done)] for c in cands if c[:len(done)] == done and len(c) > len(done)}
            return sorted(nxt) or [tok.eos_token_id]

        out = model.generate(torch.tensor([prefix]), max_new_tokens=max(map(len, cands)), do_sample=False,
                             prefix_allowed_tokens_fn=allowed, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        generated = out[0, len(prefix):].tolist()
        assert generated[:len(cands[choice])] == cands[choice]


def test_full_ranking_mode_is_refused_with_the_protocol_to_use(tiny_data_path, tiny_llm_path, in_tmp):
    with pytest.raises(ProtocolError, match="uni19"):
        run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path,
                                            eval_args={"mode": "full"}))


def test_missing_item_text_is_an_error_or_an_explicit_id_fallback(tmp_path, tiny_llm_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    root = write_tiny_dataset(tmp_path / "data", name="notext", with_titles=False)
    base = tiny(data_path=str(root), llm_path=tiny_llm_path, load_col={"inter": ["user_id", "item_id", "timestamp"]})
    with pytest.raises(prompts.ItemTextError, match="item_text_fallback_to_id"):
        run("R2Rec", "notext", overrides=base)
    config = build_config("R2Rec", "notext", overrides={**base, "item_text_fallback_to_id": True})
    train = prepare_data(config, create_dataset(config))[0]
    model = R2Rec(config, train._dataset)
    assert model.titles[1].startswith("item i")


def test_unknown_stage_is_a_config_error():
    assert parse_stages("none") == [] and parse_stages("sft,rl") == ["sft", "rl"]
    with pytest.raises(ConfigError, match="unknown stage"):
        parse_stages("sft,dpo")


def test_zero_shot_run_reports_valid_ratio(tiny_data_path, tiny_llm_path, in_tmp):
    result = run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path,
                                                 stages="none", eval_users=6, max_new_tokens=6,
                                                 generate_thoughts=True))
    test = result["test_result"]
    assert 0.0 <= test["valid_ratio"] <= 1.0 and "hit@1" in test and "mrr@10" in test
    assert result["eval_users"]["test"] == 6


def test_constrained_answers_are_always_valid(tiny_data_path, tiny_llm_path, in_tmp):
    result = run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path,
                                                 stages="none", eval_users=6, generate_thoughts=False,
                                                 constrained_answer=True))
    assert result["test_result"]["valid_ratio"] == 1.0


def test_default_llm_end_to_end_on_a_few_ml100k_users(in_tmp):
    """The real embedded SmolLM2-135M through both stages, one step each, on 3 users (slow: converts
    the GGUF once, then ~2 min)."""
    result = run("R2Rec", "ml-100k", overrides={
        "eval_users": 3, "valid_users": 2, "max_new_tokens": 12, "generate_thoughts": True, "state": "WARNING",
        "show_progress": False,
        "stages": "sft,rl", "sft_max_steps": 1, "sft_batch_size": 2, "sft_grad_accum": 1, "sft_max_traces": 2,
        "rl_max_steps": 1, "rl_batch_size": 2, "rl_grad_accum": 1, "rl_num_generations": 2, "rl_prompts": 1})
    assert set(result["stages"]) == {"sft", "rl", "selected"}
    test = result["test_result"]
    assert result["eval_users"]["test"] == 3
    assert set(test) >= {"hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10", "valid_ratio"}
    assert result["config"]["llm_path"] == "smollm2"


def test_lora_trains_only_the_adapter_and_saves_it_alone(tiny_llm_path, tmp_path):
    from recbole_r2rec.llm import add_lora

    model, tok = load_backbone(tiny_llm_path, dtype="float32", device="cpu")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = add_lora(model, r=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.tensor([tok("red star moon <answer> sun </answer>")["input_ids"]])
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0).step()
    after = peft_model.get_base_model().state_dict()
    for key, value in base.items():  # base weights frozen (wrapped layers keep them in base_layer)
        wrapped = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(value, after[wrapped if wrapped in after else key]), key
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved


def test_export_traces_without_training_and_no_held_out_item_in_them(tiny_data_path, tiny_llm_path, in_tmp):
    import json

    path = in_tmp / "traces.jsonl"
    result = run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, stages="none",
                                                 export_traces=str(path), eval_users=2, generate_thoughts=False))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows and {r["level"] for r in rows} == {0, 1, 2}
    config = build_config("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path))
    train, valid, test = prepare_data(config, create_dataset(config))
    held = {}
    for ds in (valid._dataset, test._dataset):
        for u, i in zip(ds.inter_feat["user_id"].tolist(), ds.inter_feat["item_id"].tolist()):
            held.setdefault(u, set()).add(i)
    for r in rows:
        assert r["target"] in r["candidates"] and r["completion"].endswith(f"<answer>{r['answer']}</answer>")
        assert not (set(r["candidates"]) | set(r["chain_items"])) & held[r["user"]]
    assert result["test_result"]["hit@1"] >= 0


def test_sft_stage_trains_a_lora_adapter_resumes_and_is_not_redone(tiny_data_path, tiny_llm_path, in_tmp):
    overrides = tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, stages="sft", sft_max_steps=3,
                     sft_batch_size=2, sft_grad_accum=1, sft_save_steps=2, sft_logging_steps=1, eval_users=4,
                     generate_thoughts=False, sft_max_length=512)
    first = run("R2Rec", "tiny", overrides=overrides)
    sft_dir = in_tmp / "saved" / "checkpoints" / "R2Rec-tiny-seed2020" / "sft"
    assert (sft_dir / "final" / "adapter_model.safetensors").is_file()
    assert not (sft_dir / "final" / "model.safetensors").exists()  # the adapter, not the base weights
    assert list(sft_dir.glob("checkpoint-*"))
    assert "hit@1" in first["best_valid_result"]
    stamp = (sft_dir / "final" / "adapter_model.safetensors").stat().st_mtime
    again = run("R2Rec", "tiny", overrides=overrides)  # finished stage: loaded, not redone
    assert (sft_dir / "final" / "adapter_model.safetensors").stat().st_mtime == stamp
    assert again["test_result"] == first["test_result"]
    # An intermediate checkpoint's adapter (a learning curve's point) replaces the one on the backbone
    # instead of stacking on it, and what is loaded is exactly what was saved.
    from safetensors.torch import load_file

    from recbole_r2rec.stages import load_adapter
    config = build_config("R2Rec", "tiny", overrides=overrides)
    model = R2Rec(config, prepare_data(config, create_dataset(config))[0]._dataset)
    for folder in (sft_dir / "final", sorted(sft_dir.glob("checkpoint-*"))[0]):
        load_adapter(model, folder)
        saved = load_file(folder / "adapter_model.safetensors")
        loaded = {k: v for k, v in model.llm.state_dict().items() if "lora_" in k}
        assert len(loaded) == len(saved) and list(model.llm.peft_config) == ["default"]
        for key, value in saved.items():
            assert torch.equal(loaded[key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")], value)


def test_explain_writes_readable_reasoning_for_sampled_test_users(tiny_data_path, tiny_llm_path, in_tmp):
    result = run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, stages="none",
                                                 eval_users=6, generate_thoughts=True, max_new_tokens=6,
                                                 explain=3, explain_dir=str(in_tmp / "why")))
    page = (in_tmp / "why" / "explain.html").read_text()
    md = (in_tmp / "why" / "explain.md").read_text()
    assert page.count("<section>") == 3 and md.count("## User") == 3
    assert page.count("(truth)") == 3 and "History" in page and "Thoughts" in page
    # the chain evidence the model read is shown, so a reader can check the thoughts against it
    assert page.count("Evidence in the prompt") == 3 and md.count("- Evidence in the prompt: Evidence from") == 3
    # the ranks shown agree with the run's test Hit@1 for these users (scores come from the same pass)
    ranks = [int(r) for r in re.findall(r"truth ranked (\d+) of\s+20", page)]
    assert len(ranks) == 3 and all(1 <= r <= 20 for r in ranks)
    users = [int(u) for u in re.findall(r"<h2>User (\d+):", page)]
    assert all(result["test_user_ranks"][str(u)] == r for u, r in zip(users, ranks))
    assert "<script" not in page and result["explain"]["html"].endswith("explain.html")


def test_sft_interrupted_mid_stage_resumes_from_its_last_checkpoint(tiny_data_path, tiny_llm_path, in_tmp,
                                                                     monkeypatch):
    import shutil

    from safetensors.torch import load_file
    from transformers import Trainer

    overrides = tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, stages="sft", sft_max_steps=3,
                     sft_batch_size=2, sft_grad_accum=1, sft_save_steps=1, sft_logging_steps=1, eval_users=2,
                     generate_thoughts=False, sft_max_length=512)
    run("R2Rec", "tiny", overrides=overrides)
    sft_dir = in_tmp / "saved" / "checkpoints" / "R2Rec-tiny-seed2020" / "sft"
    uninterrupted = load_file(sft_dir / "final" / "adapter_model.safetensors")
    # "interrupt" after step 2: the final adapter and the step-3 checkpoint never got written
    shutil.rmtree(sft_dir / "final")
    shutil.rmtree(sft_dir / "checkpoint-3")
    steps = []
    original = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    run("R2Rec", "tiny", overrides=overrides)
    assert len(steps) == 1  # only the missing step ran
    resumed = load_file(sft_dir / "final" / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-5, rtol=1e-4)


def test_sft_under_accelerate_launch_with_two_cpu_processes(tiny_data_path, tiny_llm_path, tmp_path):
    """DDP on two CPU processes (gloo): a valid adapter, and one result file written once. On CPUs,
    `accelerate launch --cpu --num_processes 2` starts ONE process (its CPU multi-process mode needs MPI);
    `--multi_gpu --num_processes 2` starts two through torchrun, and on a machine without GPUs they train
    on the CPU over gloo."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    script = Path(__file__).resolve().parent.parent / "run_recbole_r2rec.py"
    result_file = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
           "--model=R2Rec", "--dataset=tiny", f"--data_path={tiny_data_path}", f"--llm_path={tiny_llm_path}",
           "--load_col={inter: [user_id, item_id, timestamp], item: [item_id, title, genre]}",
           "--item_text_fields=[title, genre]", "--state=WARNING", "--show_progress=False", "--stages=sft",
           "--sft_max_steps=2", "--sft_batch_size=2", "--sft_grad_accum=1", "--sft_save_steps=1",
           "--eval_users=2", "--valid_users=2", "--generate_thoughts=False", "--sft_max_length=512",
           f"--result_file={result_file}", f"--checkpoint_dir={tmp_path / 'ckpt'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = tmp_path / "ckpt" / "R2Rec-tiny-seed2020" / "sft" / "final"
    weights = load_file(final / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights) and all(torch.isfinite(w).all() for w in weights.values())
    state = json.loads((tmp_path / "ckpt" / "R2Rec-tiny-seed2020" / "sft" / "checkpoint-2" /
                        "trainer_state.json").read_text())
    assert state["global_step"] == 2
    result = json.loads(result_file.read_text())
    assert "hit@1" in result["test_result"] and result["processes"] == 2


def test_ordered_evidence_traces_quote_chains_whose_neighbour_chose_the_target_soon_after(tiny_data_path, tiny_llm_path,
                                                                                         in_tmp):
    """evidence_window > 0: the prompt's evidence and the thoughts that quote it speak of ordered chains,
    and the chain each such thought goes through is one: u1 chose the target within the window after i0."""
    import json

    path = in_tmp / "traces.jsonl"
    run("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, stages="none",
                                        export_traces=str(path), eval_users=2, generate_thoughts=False,
                                        evidence_window=3))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    config = build_config("R2Rec", "tiny", overrides=tiny(data_path=tiny_data_path, llm_path=tiny_llm_path))
    train, _, _ = prepare_data(config, create_dataset(config))
    sequences = InteractionGraph.from_training(train._dataset).sequences
    quoted = [r for r in rows if "soon after" in r["thoughts"]]
    assert quoted and not any("also chose it" in r["prompt"] + r["thoughts"] for r in rows)
    for r in quoted:
        assert r["thoughts"][3:r["thoughts"].index(". 2.")] in r["prompt"]  # the line, verbatim
        (i0,), (u0, u1) = r["chain_items"], r["chain_users"]
        seq = sequences[u1]
        assert u1 != u0 and any(seq[k] == i0 and r["target"] in seq[k + 1:k + 4] for k in range(len(seq)))


@pytest.mark.parametrize("settings,message", [
    ({"evidence_unordered": 1.0}, "evidence_unordered blends chains in any order into ordered ones; it needs "
                                  r"evidence_window > 0"),
    ({"evidence_window": 3, "evidence_popularity": -0.5}, "evidence_unordered and evidence_popularity must be >= 0"),
    ({"evidence_window": 3, "evidence_neighbours": "cosine"}, "evidence_neighbours weighs chains in any order"),
    ({"evidence_neighbours": "jaccard"}, "unknown evidence_neighbours 'jaccard'"),
    ({"evidence_decay": 0.5}, "evidence_decay weighs ordered chains by their distance"),
    ({"evidence_window": 3, "evidence_decay": 1.5}, r"evidence_decay must be in \(0, 1\]"),
    ({"evidence_regularised": -0.5}, "evidence_regularised must be >= 0"),
    ({"evidence_regularised": 0.5, "evidence_regularised_penalty": -1}, "evidence_regularised_penalty must be > 0"),
])
def test_evidence_blend_needs_ordered_chains_and_non_negative_weights(tiny_data_path, settings, message):
    config, (train, _, _) = _r2rec("tiny", tiny_data_path, "none", stages="none", **settings)
    with pytest.raises(ConfigError, match=message):
        R2Rec(config, train._dataset)


@pytest.mark.parametrize("window", [-1, 2.5, "ten"])
def test_evidence_window_must_be_a_whole_number_of_steps(tiny_data_path, window):
    config, (train, _, _) = _r2rec("tiny", tiny_data_path, "none", stages="none", evidence_window=window)
    with pytest.raises(ConfigError, match=r"evidence_window must be an integer >= 0 \(0: chains in any order\)"):
        R2Rec(config, train._dataset)
