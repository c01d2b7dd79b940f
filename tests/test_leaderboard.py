"""Leaderboard: aggregation against hand-computed values, paired test, resume, failing cells, outputs."""
import json
import sys

import pandas as pd
import pytest

from recbole_r2rec import leaderboard as lb
from recbole_r2rec.runner import main


def _cell(folder, row, dataset, seed, hit1, ranks=None, **extra):
    folder.joinpath("cells").mkdir(parents=True, exist_ok=True)
    result = {"model": row.split("-")[0], "dataset": dataset, "seed": seed,
              "test_result": {"hit@1": hit1, "ndcg@10": hit1 + 0.1, **extra},
              "eval_users": {"valid": 4, "test": 4}, "timings_s": {"total": 10.0 * seed % 7},
              "peak_memory_mb": 100.0}
    if ranks is not None:
        result["test_user_ranks"] = {str(u): r for u, r in enumerate(ranks, 1)}
    folder.joinpath("cells", f"{row}-{dataset}-seed{seed}.json").write_text(json.dumps(result))


@pytest.fixture
def board(tmp_path):
    # SASRec: 0.5, 0.25; GRU4Rec: 0.25, 0.25; zero-shot: 0.0, 0.25; R2Rec: 0.75, 0.5 (4 users per seed)
    _cell(tmp_path, "SASRec", "ml-100k", 1, 0.5, [1, 1, 3, 2])
    _cell(tmp_path, "SASRec", "ml-100k", 2, 0.25, [2, 1, 5, 9])
    _cell(tmp_path, "GRU4Rec", "ml-100k", 1, 0.25, [4, 1, 3, 2])
    _cell(tmp_path, "GRU4Rec", "ml-100k", 2, 0.25, [1, 2, 5, 9])
    _cell(tmp_path, "R2Rec-zs", "ml-100k", 1, 0.0, [2, 3, 3, 2], valid_ratio=0.1)
    _cell(tmp_path, "R2Rec-zs", "ml-100k", 2, 0.25, [1, 3, 5, 9], valid_ratio=0.2)
    _cell(tmp_path, "R2Rec", "ml-100k", 1, 0.75, [1, 1, 1, 2], valid_ratio=1.0)
    _cell(tmp_path, "R2Rec", "ml-100k", 2, 0.5, [1, 4, 1, 9], valid_ratio=0.9)
    return tmp_path


def test_mean_std_and_gains_match_hand_computed_values(board):
    results, failures = lb.load_cells(board)
    assert failures == [] and {r["row"] for r in results} == {"SASRec", "GRU4Rec", "R2Rec-zs", "R2Rec"}
    summ = lb.summary(lb.long_table(results)).set_index(["model", "metric"])
    assert summ.loc[("SASRec", "hit@1"), "mean"] == pytest.approx(0.375)
    assert summ.loc[("SASRec", "hit@1"), "std"] == pytest.approx(0.1767767, abs=1e-6)  # sample std of .5, .25
    assert summ.loc[("R2Rec", "valid_ratio"), "mean"] == pytest.approx(0.95)
    assert summ.loc[("R2Rec", "hit@1"), "count"] == 2
    comps = {c["versus"]: c for c in lb.comparisons(results, lb.summary(lb.long_table(results)), "ml-100k")}
    best = comps["best classical"]
    assert best["other"] == "SASRec" and best["relative_gain"] == pytest.approx((0.625 - 0.375) / 0.375)
    assert comps["zero-shot LLM"]["relative_gain"] == pytest.approx((0.625 - 0.125) / 0.125)
    # paired over (seed, user): only R2Rec hits s1u3, s2u1, s2u3; only SASRec s2u2.
    # Exact McNemar: 2 * P(Bin(4, 1/2) <= 1) = 2 * 5 / 16
    assert (best["test"]["only_a"], best["test"]["only_b"], best["test"]["pairs"]) == (3, 1, 8)
    assert best["test"]["p_value"] == pytest.approx(10 / 16)


def test_sampled_llm_cells_get_hit1_on_the_users_every_row_evaluated(tmp_path):
    # SASRec on users 1-4 (hits users 1, 2), zero-shot on users 1-3 (hits 2, 3), an LLM cell on the
    # sample {2, 3} (hits 3). Every row evaluated users 2 and 3: SASRec 1/2, zero-shot 2/2, LLM 1/2.
    _cell(tmp_path, "SASRec", "ml-100k", 1, 0.5, [1, 1, 3, 2])
    _cell(tmp_path, "R2Rec-zs", "ml-100k", 1, 2 / 3, [5, 1, 1])
    folder = tmp_path.joinpath("cells")
    llm = {"model": "R2Rec", "dataset": "ml-100k", "seed": 1, "test_result": {"hit@1": 0.5},
           "eval_users": {"valid": 2, "test": 2}, "test_user_ranks": {"2": 4, "3": 1}}
    folder.joinpath("R2Rec-ml-100k-seed1.json").write_text(json.dumps(llm))
    results, _ = lb.load_cells(tmp_path)
    pairs, hit = lb.shared_user_hit1(results, "ml-100k")
    assert pairs == 2 and hit == {"SASRec": 0.5, "R2Rec-zs": 1.0, "R2Rec": 0.5}
    lb.report(tmp_path)
    md = tmp_path.joinpath("leaderboard.md").read_text()
    assert "hit@1 on the 2 shared users" in md
    assert "| R2Rec-zs " in md and "**1.0000**" in md.split("| R2Rec-zs ")[1].split("\n")[0]


def test_mcnemar_agrees_with_a_hand_computed_exact_test():
    # 8 users hit only by A, 2 only by B, 5 by both, 5 by neither:
    # p = 2 * P(Bin(10, 1/2) <= 2) = 2 * (1 + 10 + 45) / 1024
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    out = lb.mcnemar(a, b)
    assert (out["only_a"], out["only_b"], out["pairs"]) == (8, 2, 20)
    assert out["p_value"] == pytest.approx(2 * 56 / 1024)
    assert lb.mcnemar([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pair: no evidence


def test_report_writes_the_four_outputs_with_best_marked(board):
    out = lb.report(board)
    text = (board / "leaderboard.md").read_text()
    assert "**0.6250 ± 0.1768**" in text  # R2Rec's Hit@1 is the best of its column
    assert "relative gain +66.7%" in text and "McNemar" in text and "valid_ratio" in text
    long = pd.read_csv(board / "leaderboard.csv")
    assert list(long.columns) == ["model", "dataset", "seed", "metric", "value"]
    assert len(long[(long.model == "R2Rec") & (long.metric == "hit@1")]) == 2
    rows = json.loads((board / "leaderboard.json").read_text())["rows"]
    assert {"model", "dataset", "seed", "metric", "value"} <= set(rows[0])
    assert (board / "hit1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["failures"] == []


def test_every_trained_llm_row_is_compared_not_only_the_full_method(board):
    # An SFT-only row gets its own gains and paired tests. It ran seed 1 only (Hit@1 0.5); the best
    # classical mean is SASRec's over both seeds (0.375). Zero-shot seed 1 hits nobody.
    _cell(board, "R2Rec-sft", "ml-100k", 1, 0.5, [1, 1, 2, 3])
    comps = lb.report(board)["comparisons"]
    sft = {c["versus"]: c for c in comps if c["row"] == "R2Rec-sft"}
    assert sft["best classical"]["relative_gain"] == pytest.approx((0.5 - 0.375) / 0.375)
    assert sft["zero-shot LLM"]["test"]["pairs"] == 4  # paired on seed 1 only
    # on the paired seed-1 users SASRec hits 2 of 4: the fair gain there is 0.5 vs 0.5, not vs 0.375
    assert sft["best classical"]["paired"] == {"hit@1": 0.5, "other_hit@1": 0.5, "relative_gain": 0.0}
    assert (sft["zero-shot LLM"]["test"]["only_a"], sft["zero-shot LLM"]["test"]["only_b"]) == (2, 0)
    assert {c["row"] for c in comps} == {"R2Rec", "R2Rec-sft"}
    assert "R2Rec-sft vs best classical (SASRec)" in (board / "leaderboard.md").read_text()


def test_llm_rows_are_compared_with_their_chains_without_the_llm(board):
    # The no-LLM ablation (seed 1: hits users 1 and 4) against R2Rec (seed 1: hits users 1, 2, 3):
    # R2Rec alone hits 2 and 3, the chains alone hit 4 -> 2 vs 1 discordant, p = 2 * P(Bin(3, 1/2) <= 1) = 1.
    _cell(board, "R2Rec-evidence_only", "ml-100k", 1, 0.5, [1, 2, 3, 1])
    comps = lb.report(board)["comparisons"]
    vs = {c["row"]: c for c in comps if c["versus"] == "chains without the LLM"}
    assert set(vs) == {"R2Rec"}  # the ablation row is not compared with itself
    assert (vs["R2Rec"]["test"]["only_a"], vs["R2Rec"]["test"]["only_b"], vs["R2Rec"]["test"]["pairs"]) == (2, 1, 4)
    assert vs["R2Rec"]["paired"]["hit@1"] == 0.75 and vs["R2Rec"]["paired"]["other_hit@1"] == 0.5
    assert vs["R2Rec"]["test"]["p_value"] == pytest.approx(1.0)


def test_rerun_skips_finished_cells_and_a_failing_cell_does_not_stop_the_grid(tmp_path):
    calls = []

    def fake(cell, folder, overrides):
        calls.append(cell.name)
        if cell.row == "Broken":
            raise RuntimeError("boom")
        _cell(folder, cell.row, cell.dataset, cell.seed, 0.5, [1, 2])

    status = lb.run_grid(["SASRec", "Broken", "BPR"], ["d1"], [1, 2], tmp_path, runner=fake)
    assert status["Broken-d1-seed1"].startswith("failed") and status["BPR-d1-seed2"] == "ran"
    assert len(calls) == 6
    calls.clear()
    status = lb.run_grid(["SASRec", "Broken", "BPR"], ["d1"], [1, 2], tmp_path, runner=fake)
    assert calls == ["Broken-d1-seed1", "Broken-d1-seed2"]  # finished cells skipped, failed ones retried
    assert status["SASRec-d1-seed1"] == "done (skipped)"
    lb.report(tmp_path)
    text = (tmp_path / "leaderboard.md").read_text()
    assert "## Failed cells" in text and "Broken-d1-seed1" in text and "SASRec" in text


def test_leaderboard_command_runs_real_cells_in_their_own_processes(tiny_data_path, tmp_path):
    folder = tmp_path / "board"
    overrides = [f"--data_path={tiny_data_path}", "--load_col={inter: [user_id, item_id, timestamp]}",
                 "--user_inter_num_interval=[5,inf)", "--state=WARNING", "--epochs=1",
                 f"--checkpoint_dir={tmp_path / 'ckpt'}"]
    main(["--leaderboard", "--models=Pop,NoSuchModel", "--datasets=tiny", "--seeds=2020",
          f"--leaderboard_dir={folder}", *overrides])
    result = json.loads((folder / "cells" / "Pop-tiny-seed2020.json").read_text())
    assert 0 <= result["test_result"]["hit@1"] <= 1 and result["peak_memory_mb"] > 0
    ranks = result["test_user_ranks"]
    assert sum(r == 1 for r in ranks.values()) / len(ranks) == pytest.approx(result["test_result"]["hit@1"], abs=1e-4)
    assert "NoSuchModel" in (folder / "cells" / "NoSuchModel-tiny-seed2020.error.txt").read_text()
    text = (folder / "leaderboard.md").read_text()
    assert "| Pop" in text and "NoSuchModel-tiny-seed2020" in text.split("## Failed cells")[1]


def test_a_killed_cell_says_it_was_killed_and_a_grid_of_failures_names_them(tmp_path, monkeypatch):
    # A cell process killed by the out-of-memory killer leaves no traceback: the error must say what
    # happened, and a report with nothing finished must name the failed cells, not claim an empty folder.
    _cell(tmp_path, "SASRec", "d1", 1, 0.5, [1, 2])  # another row's cell: must not hide the failure
    monkeypatch.setattr(lb, "cell_command", lambda cell, result, overrides: [
        sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    status = lb.run_grid(["R2Rec-sft"], ["d1"], [1], tmp_path)
    assert status["R2Rec-sft-d1-seed1"].startswith("failed: killed by SIGKILL")
    error = (tmp_path / "cells" / "R2Rec-sft-d1-seed1.error.txt").read_text()
    assert "out-of-memory" in error
    with pytest.raises(lb.NoFinishedCellError) as err:
        lb.report(tmp_path, ["R2Rec-sft"], ["d1"], [1])
    assert "R2Rec-sft-d1-seed1" in str(err.value) and "models ['R2Rec-sft']" in str(err.value)
    assert lb.exit_reason(3) == "exit code 3"


def test_compare_pairs_two_rows_by_seed_and_user_and_says_when_nothing_pairs(board, capsys):
    # The fixture's R2Rec vs SASRec, by hand: R2Rec hits 5 of the 8 (seed, user) pairs, SASRec 3; only
    # R2Rec s1u3, s2u1, s2u3, only SASRec s2u2: exact McNemar 2 * P(Bin(4, 1/2) <= 1) = 10/16.
    table = main(["--compare=R2Rec,SASRec", f"--leaderboard_dir={board}", "--datasets=ml-100k", "--seeds=1,2"])
    row = table.iloc[0]
    assert (row["pairs"], row["only R2Rec"], row["only SASRec"], row["seeds"]) == (8, 3, 1, "1,2")
    assert row["hit@1 R2Rec"] == pytest.approx(0.625) and row["hit@1 SASRec"] == pytest.approx(0.375)
    assert row["relative_gain"] == pytest.approx(2 / 3) and row["p_value"] == pytest.approx(10 / 16)
    assert "+66.7%" in capsys.readouterr().out
    # one seed only: s1 has R2Rec-only u3 and nothing SASRec-only
    one = lb.compare(board, "R2Rec", "SASRec", ["ml-100k"], [1]).iloc[0]
    assert (one["pairs"], one["only R2Rec"], one["only SASRec"]) == (4, 1, 0)
    with pytest.raises(SystemExit) as err:
        main(["--compare=R2Rec,BERT4Rec", f"--leaderboard_dir={board}", "--datasets=ml-100k", "--seeds=1,2"])
    assert "no (seed, user) pair that both R2Rec and BERT4Rec evaluated" in str(err.value)
    assert "GRU4Rec, R2Rec, R2Rec-zs, SASRec" not in str(err.value)  # only the two asked rows are loaded
    assert "R2Rec" in str(err.value).split("rows with finished cells there:")[1]
    with pytest.raises(SystemExit, match="two rows"):
        main(["--compare=R2Rec", f"--leaderboard_dir={board}"])
