"""The RL stage: reward functions on hand-written completions, and GRPO steps inside the R2Rec trainer."""
import json

import pytest

from conftest import tiny
from recbole_r2rec.config import ConfigError
from recbole_r2rec.rewards import RankReward, correct_reward, format_reward, valid_reward
from recbole_r2rec.runner import run

TITLES = ["Alien", "Aliens", "Toy Story", "Heat"]
GOOD = "<think>The user chose Alien. Another user who chose Alien went on to Aliens.</think>\n<answer>Aliens</answer>"
CASES = {  # completion -> (format, valid, correct) with target "Aliens"
    "good": (GOOD, 1, 1, 1),
    "wrong candidate": (GOOD.replace("<answer>Aliens", "<answer>Heat"), 1, 1, 0),
    "no thoughts": ("<answer>Aliens</answer>", 0, 1, 1),
    "empty": ("", 0, 0, 0),
    "untagged": ("I recommend Aliens.", 0, 0, 0),
    "truncated (over-long)": ("<think>" + "so " * 200 + "</think>\n<answer>Alie", 0, 0, 0),
    "unclosed answer": ("<think>a</think><answer>Aliens", 0, 0, 0),
    "every candidate": ("<think>all</think><answer>Alien, Aliens, Toy Story, Heat</answer>", 1, 0, 0),
    "two answers": ("<think>x</think><answer>Heat</answer><answer>Aliens</answer>", 0, 0, 0),
    "answer before thoughts": ("<answer>Aliens</answer><think>x</think>", 0, 1, 1),
    "text after the answer": (GOOD + " or maybe Heat", 0, 1, 1),
    "not a candidate": ("<think>x</think><answer>Casablanca</answer>", 1, 0, 0),
    "title inside a longer one": ("<think>x</think><answer>Aliens</answer>", 1, 1, 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rewards_on_hand_written_completions(name):
    text, fmt, valid, correct = CASES[name]
    kwargs = {"candidates": [TITLES], "target": ["Aliens"]}
    assert format_reward([text], **kwargs) == [fmt]
    assert valid_reward([text], **kwargs) == [valid]
    assert correct_reward([text], **kwargs) == [correct]


def test_rewards_accept_chat_style_completions_and_batches():
    chat = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "nothing"}]]
    assert correct_reward(chat, candidates=[TITLES, TITLES], target=["Aliens", "Aliens"]) == [1.0, 0.0]


def test_rank_reward_is_the_reciprocal_rank_under_the_policy_scores():
    seen = {}

    def score_fn(prompts, completions, candidates):
        seen["args"] = (prompts, completions)
        return [[-1.0, -3.0, -0.5, -2.0], [-1.0, -0.1, -5.0, -2.0]]

    reward = RankReward(score_fn)
    out = reward(prompts=["p1", "p2"], completions=[GOOD, "x"], candidates=[TITLES, TITLES],
                 target=["Aliens", "Aliens"])
    assert out == [1 / 4, 1.0]  # Aliens ranks 4th, then 1st
    assert seen["args"] == (["p1", "p2"], [GOOD, "x"]) and reward.__name__ == "rank_reward"


def _overrides(tiny_data_path, tiny_llm_path, **extra):
    return tiny(data_path=tiny_data_path, llm_path=tiny_llm_path, sft_max_steps=2, sft_batch_size=2,
                sft_grad_accum=1, sft_save_steps=1, sft_logging_steps=1, sft_max_length=512, eval_users=4,
                generate_thoughts=True, max_new_tokens=8, rl_max_steps=2, rl_batch_size=4, rl_grad_accum=1,
                rl_num_generations=2, rl_prompts=6, rl_save_steps=1, rl_logging_steps=1, **extra)


def test_grpo_steps_run_inside_the_r2rec_trainer_and_select_on_validation(tiny_data_path, tiny_llm_path, in_tmp):
    overrides = _overrides(tiny_data_path, tiny_llm_path, stages="sft,rl",
                           rl_reward_weights={"correct": 1.0, "valid": 0.2, "format": 0.2, "rank": 0.5})
    result = run("R2Rec", "tiny", overrides=overrides)
    stages = result["stages"]
    assert set(stages) == {"sft", "rl", "selected"} and stages["selected"] in ("sft", "rl")
    best = max(stages["sft"]["hit@1"], stages["rl"]["hit@1"])
    assert result["best_valid_result"]["hit@1"] == best  # the better of SFT and SFT+RL on validation
    rl_dir = in_tmp / "saved" / "checkpoints" / "R2Rec-tiny-seed2020" / "rl"
    assert (rl_dir / "final" / "adapter_model.safetensors").is_file()
    assert not (rl_dir / "final" / "model.safetensors").exists()
    assert list(rl_dir.glob("checkpoint-*")) and list(in_tmp.glob("saved/checkpoints/**/events.out.tfevents*"))
    # both stages finished: a rerun loads them and gives the same numbers
    stamp = (rl_dir / "final" / "adapter_model.safetensors").stat().st_mtime
    again = run("R2Rec", "tiny", overrides=overrides)
    assert (rl_dir / "final" / "adapter_model.safetensors").stat().st_mtime == stamp
    assert again["test_result"] == result["test_result"]


def test_rl_alone_needs_a_finished_sft_stage(tiny_data_path, tiny_llm_path, in_tmp):
    with pytest.raises(ConfigError, match="--stages=sft,rl"):
        run("R2Rec", "tiny", overrides=_overrides(tiny_data_path, tiny_llm_path, stages="rl"))


def test_unknown_or_all_zero_rewards_are_refused(tiny_data_path, tiny_llm_path, in_tmp):
    run("R2Rec", "tiny", overrides=_overrides(tiny_data_path, tiny_llm_path, stages="sft"))
    with pytest.raises(ValueError, match="unknown reward"):
        run("R2Rec", "tiny", overrides=_overrides(tiny_data_path, tiny_llm_path, stages="rl",
                                                  rl_reward_weights={"hit": 1.0}))


def test_a_finished_stage_trained_with_other_settings_is_refused(tiny_data_path, tiny_llm_path, in_tmp):
    run("R2Rec", "tiny", overrides=_overrides(tiny_data_path, tiny_llm_path, stages="sft"))
    with pytest.raises(ConfigError, match="sft_learning_rate"):
        run("R2Rec", "tiny", overrides=_overrides(tiny_data_path, tiny_llm_path, stages="sft", sft_learning_rate=1e-3))


def test_a_stage_saved_before_a_setting_existed_matches_only_that_settings_old_behaviour(tiny_data_path,
                                                                                        tiny_llm_path, in_tmp):
    """evidence_signal came after SFT adapters were saved without it: such an adapter was made with
    max_cochoosers, so it loads for that value and is refused for another."""
    old = _overrides(tiny_data_path, tiny_llm_path, stages="sft", evidence_signal="max_cochoosers")
    run("R2Rec", "tiny", overrides=old)
    [saved] = in_tmp.glob("**/sft/final/stage_settings.json")
    settings = json.loads(saved.read_text())
    assert settings.pop("evidence_signal") == "max_cochoosers"
    saved.write_text(json.dumps(settings))
    run("R2Rec", "tiny", overrides=old)  # loads
    with pytest.raises(ConfigError, match="evidence_signal: 'max_cochoosers' -> 'sum_cosine'"):
        run("R2Rec", "tiny", overrides=_overrides(tiny_data_path, tiny_llm_path, stages="sft"))  # the default
