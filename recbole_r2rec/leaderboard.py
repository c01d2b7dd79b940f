"""Leaderboard: a grid of models x datasets x seeds under the shared protocol, resumable, aggregated.

Each cell is one `run_recbole_r2rec.py` process writing its own result JSON under `<dir>/cells/`;
a rerun skips cells whose JSON exists, so an interrupted grid resumes, and a failing cell is recorded
(`<cell>.error.txt`) and reported without stopping the others. Cells are independent: on several
machines, run disjoint `--models/--datasets/--seeds` into the same folder (or copy the JSONs
together) and run `--leaderboard --report_only` once to merge them.

Outputs: leaderboard.md (per dataset: mean ± std over seeds, best per column in bold, ValidRatio for LLM
rows, time and peak memory, gains of R2Rec with a paired McNemar test over users), leaderboard.csv and
leaderboard.json (long format: model, dataset, seed, metric, value) and hit1.png.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import binomtest

from recbole_r2rec.config import PROJECT_ROOT, ConfigError

logger = logging.getLogger(__name__)

METRICS = ["hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10"]
LLM_MODELS = {"R2Rec"}
# Ensembles of classical models (recbole_r2rec/blend.py): compared with on their own line, not counted as
# "the best classical" model, which #7's targets mean as a single model (SASRec and company).
ENSEMBLE_MODELS = {"ScoreBlend"}


def variants() -> dict:
    """Leaderboard row name -> (RecBole model, overrides), from properties/leaderboard.yaml. Rows
    not listed there are model names run with their own defaults."""
    path = PROJECT_ROOT / "properties" / "leaderboard.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    rows = {name: (spec.pop("model"), spec) for name, spec in (data.get("variants") or {}).items()}
    for name, (_, spec) in rows.items():
        per_dataset = spec.get("per_dataset", {})
        if not isinstance(per_dataset, dict) or not all(isinstance(v, dict) for v in per_dataset.values()):
            raise ConfigError(f"{path}: row {name}: per_dataset must map a dataset to its keys, "
                              f"e.g. per_dataset: {{lastfm: {{sequential_weight: 1.5}}}}; got {per_dataset!r}")
    return rows


def row_settings(row: str, dataset: str) -> tuple:
    """(RecBole model, overrides) of a leaderboard row on one dataset: the row's own keys, then those of
    its `per_dataset: {<dataset>: {...}}` (a setting chosen on each dataset's own validation users)."""
    model, spec = variants().get(row, (row, {}))
    spec = dict(spec)
    per_dataset = spec.pop("per_dataset", {})
    return model, {**spec, **per_dataset.get(dataset, {})}


class NoFinishedCellError(FileNotFoundError):
    """Nothing to report for the asked models x datasets x seeds (none ran yet, or every one failed)."""


@dataclass(frozen=True)
class Cell:
    row: str  # leaderboard row (a model or a variant such as R2Rec-sft)
    dataset: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.row}-{self.dataset}-seed{self.seed}"


def cell_command(cell: Cell, result_file: Path, overrides: list) -> list:
    model, extra = row_settings(cell.row, cell.dataset)
    args = [f"--{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in extra.items()]
    return [sys.executable, str(PROJECT_ROOT / "run_recbole_r2rec.py"), f"--model={model}",
            f"--dataset={cell.dataset}", f"--seed={cell.seed}", f"--result_file={result_file}",
            *args, *overrides]


def run_cell(cell: Cell, folder: Path, overrides: list) -> None:
    """One cell in its own process (isolated memory and state; its peak memory is its own)."""
    result = folder / "cells" / f"{cell.name}.json"
    error = result.with_suffix(".error.txt")
    proc = subprocess.run(cell_command(cell, result, overrides), capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        reason = exit_reason(proc.returncode)
        error.write_text(f"{reason}\n\n" + (proc.stderr[-20000:] or proc.stdout[-20000:]))
        raise RuntimeError(reason)
    error.unlink(missing_ok=True)


def exit_reason(returncode: int) -> str:
    """Why a cell's process ended, in words: a process killed by a signal has no traceback of its own
    (SIGKILL is what the kernel's out-of-memory killer sends, e.g. two LLM trainings side by side)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = (": the process was killed from outside, most often by the out-of-memory killer; compare the "
            "free memory with the peak_memory_mb of finished cells and run fewer cells at once"
            if -returncode == signal.SIGKILL else "")
    return f"killed by {name}{hint}"


def run_grid(rows: list, datasets: list, seeds: list, folder: Path, overrides: list = (), runner=run_cell) -> dict:
    """Run every unfinished cell (in order: dataset, seed, row); returns {cell name: status}."""
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    status = {}
    for dataset in datasets:
        for seed in seeds:
            for row in rows:
                cell = Cell(row, dataset, int(seed))
                if (folder / "cells" / f"{cell.name}.json").is_file():
                    status[cell.name] = "done (skipped)"
                    continue
                logger.info(f"leaderboard cell {cell.name}")
                try:
                    runner(cell, folder, list(overrides))
                    status[cell.name] = "ran"
                except Exception as err:  # a failing cell must not stop the grid
                    error = folder / "cells" / f"{cell.name}.error.txt"
                    if not error.is_file():
                        error.write_text(repr(err))
                    status[cell.name] = f"failed: {err}"
                    logger.warning(f"cell {cell.name} failed: {err} (details in cells/{cell.name}.error.txt)")
    return status


# -- aggregation -------------------------------------------------------------------------------------
def load_cells(folder: Path, rows=None, datasets=None, seeds=None) -> tuple:
    """(results, failures): result dicts tagged with their row, and the names of failed cells."""
    results, failures = [], []
    for path in sorted((folder / "cells").glob("*.json")):
        data = json.loads(path.read_text())
        data["row"] = path.stem.rsplit("-seed", 1)[0][: -len(data["dataset"]) - 1]
        if _wanted(data["row"], data["dataset"], data["seed"], rows, datasets, seeds):
            results.append(data)
    for path in sorted((folder / "cells").glob("*.error.txt")):
        stem = path.name[: -len(".error.txt")]
        if not (folder / "cells" / f"{stem}.json").is_file():
            failures.append(stem)
    return results, failures


def _wanted(row, dataset, seed, rows, datasets, seeds) -> bool:
    return (rows is None or row in rows) and (datasets is None or dataset in datasets) and \
        (seeds is None or int(seed) in [int(s) for s in seeds])


def long_table(results: list) -> pd.DataFrame:
    """One row per model x dataset x seed x metric (test metrics, ValidRatio, time, memory)."""
    records = []
    for r in results:
        values = dict(r["test_result"])
        values["time_s"] = r.get("timings_s", {}).get("total")
        values["peak_memory_mb"] = r.get("peak_memory_mb")
        for metric, value in values.items():
            if value is not None:
                records.append({"model": r["row"], "dataset": r["dataset"], "seed": int(r["seed"]),
                                "metric": metric, "value": float(value)})
    return pd.DataFrame.from_records(records, columns=["model", "dataset", "seed", "metric", "value"])


def summary(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (sample, ddof=1; 0 with one seed) and seed count per model x dataset x metric."""
    grouped = long.groupby(["dataset", "model", "metric"])["value"]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def mcnemar(hits_a: list, hits_b: list) -> dict:
    """Exact McNemar test on paired binary outcomes (per-user Hit@1 of two models on the same
    candidates): a two-sided binomial test on the discordant pairs."""
    a, b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a": only_a, "only_b": only_b, "pairs": len(a), "p_value": float(p)}


def user_ranks(results: list, dataset: str) -> dict:
    """row -> {(seed, user): test rank} of the cells of `dataset` that recorded per-user ranks."""
    ranks: dict = {}
    for r in results:
        if r["dataset"] == dataset and "test_user_ranks" in r:
            ranks.setdefault(r["row"], {}).update({(int(r["seed"]), u): k for u, k in r["test_user_ranks"].items()})
    return ranks


def paired_hits(results: list, row_a: str, row_b: str, dataset: str) -> tuple:
    """Per-user Hit@1 of two rows on one dataset, paired by (seed, user) where both have the user."""
    ranks = user_ranks(results, dataset)
    a, b = ranks.get(row_a, {}), ranks.get(row_b, {})
    pairs = [p for p in a if p in b]
    return [a[p] == 1 for p in pairs], [b[p] == 1 for p in pairs]


def shared_user_hit1(results: list, dataset: str) -> tuple:
    """(pairs, {row: Hit@1}) over the (seed, user) pairs that *every* row of `dataset` evaluated: the
    like-for-like column when sampled LLM cells (`--eval_users`) sit next to all-user cells."""
    ranks = user_ranks(results, dataset)
    common = set.intersection(*(set(v) for v in ranks.values())) if ranks else set()
    if not common:
        return 0, {}
    return len(common), {row: float(np.mean([v[p] == 1 for p in common])) for row, v in ranks.items()}


def _gain(value: float, base: float) -> float:
    return float((value - base) / base) if base else float("inf")


def comparisons(results: list, summ: pd.DataFrame, dataset: str, llm_row: str = "R2Rec",
                zero_shot_row: str = "R2Rec-zs", no_llm_row: str = "R2Rec-evidence_only") -> list:
    """Relative Hit@1 gain of `llm_row` over the best classical row, over the best ensemble of classical
    models (where one ran), over the zero-shot row and over the chains without the LLM (what the LLM adds
    to its evidence), each with the paired McNemar test."""
    hit = summ[(summ.dataset == dataset) & (summ.metric == "hit@1")].set_index("model")["mean"]
    if llm_row not in hit:
        return []
    family = {m: m.split("-")[0] for m in hit.index}
    classical = [m for m in hit.index if family[m] not in LLM_MODELS | ENSEMBLE_MODELS]
    ensembles = [m for m in hit.index if family[m] in ENSEMBLE_MODELS]
    out = []
    for label, other in (("best classical", max(classical, key=hit.get) if classical else None),
                         ("classical ensemble", max(ensembles, key=hit.get) if ensembles else None),
                         ("zero-shot LLM", zero_shot_row if zero_shot_row in hit else None),
                         ("chains without the LLM", no_llm_row if no_llm_row in hit and llm_row != no_llm_row
                          else None)):
        if other is None:
            continue
        a, b = paired_hits(results, llm_row, other, dataset)
        comp = {"dataset": dataset, "row": llm_row, "versus": label, "other": other,
                "hit@1": float(hit[llm_row]), "other_hit@1": float(hit[other]),
                "relative_gain": _gain(hit[llm_row], hit[other])}
        if a:  # the same (seed, user) pairs for both: what a sampled LLM cell is fairly compared on
            pa, pb = float(np.mean(a)), float(np.mean(b))
            comp.update(paired={"hit@1": pa, "other_hit@1": pb, "relative_gain": _gain(pa, pb)}, test=mcnemar(a, b))
        out.append(comp)
    return out


def compare(folder: Path, row_a: str, row_b: str, datasets=None, seeds=None) -> pd.DataFrame:
    """Row A against row B on each dataset, on the (seed, user) pairs both evaluated (identical
    candidates): Hit@1 of each, A's relative gain, the discordant users and the exact McNemar p. The
    like-for-like test for any two rows, e.g. an ablation against its parent or a sampled LLM cell
    against an all-user baseline."""
    results, _ = load_cells(folder, [row_a, row_b], datasets, seeds)
    records = []
    for dataset in sorted({r["dataset"] for r in results}):
        a, b = paired_hits(results, row_a, row_b, dataset)
        if not a:
            continue
        test = mcnemar(a, b)
        seeds_of = [{int(r["seed"]) for r in results if (r["dataset"], r["row"]) == (dataset, row)}
                    for row in (row_a, row_b)]
        both = sorted(set.intersection(*seeds_of))
        records.append({"dataset": dataset, "seeds": ",".join(map(str, both)), "pairs": test["pairs"],
                        f"hit@1 {row_a}": float(np.mean(a)), f"hit@1 {row_b}": float(np.mean(b)),
                        "relative_gain": _gain(np.mean(a), np.mean(b)), f"only {row_a}": test["only_a"],
                        f"only {row_b}": test["only_b"], "p_value": test["p_value"]})
    if not records:
        found = sorted({r["row"] for r in results})
        raise NoFinishedCellError(
            f"no (seed, user) pair that both {row_a} and {row_b} evaluated under {folder / 'cells'}"
            + "".join(f" for {name} {values}" for name, values in (("datasets", datasets), ("seeds", seeds)) if values)
            + f" (rows with finished cells there: {', '.join(found) or 'none'}; a cell written before per-user "
              "ranks were recorded cannot be paired)")
    return pd.DataFrame.from_records(records)


# -- outputs ------------------------------------------------------------------------------------------
def _fmt(mean, std, count, digits=4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if count > 1 else f"{mean:.{digits}f}"


def markdown(results: list, summ: pd.DataFrame, failures: list, comps: list) -> str:
    lines = ["# Leaderboard", "",
             "Test metrics, mean ± sample std over seeds (n = seeds), under the shared protocol "
             "(leave-one-out by time, 1 positive + 19 uniform negatives, identical for every model). "
             "**Bold**: best per column. Time: wall seconds per cell; memory: peak MiB per cell.", ""]
    for dataset in sorted(summ.dataset.unique()):
        part = summ[summ.dataset == dataset]
        users = sorted({json.dumps(r.get("eval_users", {}).get("test")) for r in results if r["dataset"] == dataset})
        seeds = sorted({int(r["seed"]) for r in results if r["dataset"] == dataset})
        lines += [f"## {dataset}", "", f"Test users per seed: {', '.join(users)}; seeds: {seeds}.", ""]
        metrics = [m for m in METRICS + ["valid_ratio", "time_s", "peak_memory_mb"] if m in set(part.metric)]
        n_shared, shared = shared_user_hit1(results, dataset) if len(users) > 1 else (0, {})
        shared_col = f"hit@1 on the {n_shared} shared users"
        table = []
        for model in sorted(part.model.unique(), key=lambda m: (m.split("-")[0] in LLM_MODELS, m)):
            row = {"model": model, "seeds": int(part[(part.model == model) & (part.metric == "hit@1")]["count"].max())}
            for metric in metrics:
                cell = part[(part.model == model) & (part.metric == metric)]
                if cell.empty:
                    row[metric] = ""
                    continue
                mean, std, count = cell.iloc[0][["mean", "std", "count"]]
                digits = 0 if metric in ("time_s", "peak_memory_mb") else 4
                text = _fmt(mean, std, count, digits)
                best = part[part.metric == metric]["mean"].max()
                row[metric] = f"**{text}**" if metric in METRICS and mean == best else text
            if shared:
                value = shared.get(model)
                row[shared_col] = "" if value is None else (
                    f"**{value:.4f}**" if value == max(shared.values()) else f"{value:.4f}")
            table.append(row)
        if shared:
            lines += [f"Rows evaluated on different users (sampled LLM cells): the last column is Hit@1 on the "
                      f"{n_shared} (seed, user) pairs that every row evaluated, the like-for-like comparison.", ""]
        lines += [pd.DataFrame(table).to_markdown(index=False), ""]
        for c in (c for c in comps if c["dataset"] == dataset):
            test = c.get("test")
            paired = c.get("paired")
            sig = (f"; on the {test['pairs']} paired (seed, user) pairs: Hit@1 {paired['hit@1']:.4f} vs "
                   f"{paired['other_hit@1']:.4f} ({paired['relative_gain']:+.1%}), McNemar: {test['only_a']} "
                   f"hit only by {c['row']}, {test['only_b']} only by {c['other']}, p = {test['p_value']:.3g}"
                   ) if test else ""
            lines.append(f"- {c['row']} vs {c['versus']} ({c['other']}): Hit@1 {c['hit@1']:.4f} vs "
                         f"{c['other_hit@1']:.4f}, relative gain {c['relative_gain']:+.1%}{sig}")
        lines.append("")
    if failures:
        lines += ["## Failed cells", "", *[f"- {name} (see cells/{name}.error.txt)" for name in failures], ""]
    return "\n".join(lines)


def chart(summ: pd.DataFrame, path: Path) -> None:
    """Hit@1 per model per dataset, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hit = summ[summ.metric == "hit@1"]
    datasets, models = sorted(hit.dataset.unique()), sorted(hit.model.unique())
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(models) * len(datasets) / 2), 4))
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        part = hit[hit.model == model].set_index("dataset").reindex(datasets)
        ax.bar(np.arange(len(datasets)) + k * width, part["mean"], width, yerr=part["std"], capsize=3, label=model)
    ax.set_xticks(np.arange(len(datasets)) + width * (len(models) - 1) / 2, datasets)
    ax.set_ylabel("test Hit@1")
    ax.axhline(0.05, color="grey", linestyle=":", linewidth=1, label="chance (1/20)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(folder: Path, rows=None, datasets=None, seeds=None) -> dict:
    """Aggregate the cells in `folder` into leaderboard.md/.csv/.json and hit1.png."""
    results, failures = load_cells(folder, rows, datasets, seeds)
    if not results:
        wanted = ", ".join(f"{name} {values}" for name, values in
                           (("models", rows), ("datasets", datasets), ("seeds", seeds)) if values is not None)
        asked = {Cell(r, d, int(s)).name for r in rows or [] for d in datasets or [] for s in seeds or []}
        failed = "".join(f"\n  failed: {name} (see {folder / 'cells' / name}.error.txt)" for name in failures
                         if not asked or name in asked)
        raise NoFinishedCellError(f"no finished cell under {folder / 'cells'}"
                                + (f" for {wanted}" if wanted else "") + failed)
    long = long_table(results)
    summ = summary(long)
    trained = [m for m in sorted(summ.model.unique()) if m.split("-")[0] in LLM_MODELS and m != "R2Rec-zs"]
    comps = [c for d in sorted(summ.dataset.unique()) for row in trained for c in comparisons(results, summ, d, row)]
    long.to_csv(folder / "leaderboard.csv", index=False)
    (folder / "leaderboard.json").write_text(json.dumps(
        {"rows": long.to_dict(orient="records"), "comparisons": comps, "failed_cells": failures}, indent=1))
    (folder / "leaderboard.md").write_text(markdown(results, summ, failures, comps))
    chart(summ, folder / "hit1.png")
    return {"summary": summ, "comparisons": comps, "failures": failures}
