"""One run of one model on one dataset under the shared protocol, written to a result JSON.

Deliberately not `recbole.quick_start.run_recbole`: that imports ray and runs `get_flops`, which
deep-copies the model and calls `predict` (ruinous for an LLM).
"""
from __future__ import annotations

import argparse
import json
import os
import logging
import time
from pathlib import Path

from recbole.data import create_dataset
from recbole.utils import init_logger, init_seed

from recbole_r2rec.config import (
    build_config,
    check_dataset_on_disk,
    config_as_dict,
    parse_value,
)
from recbole_r2rec.protocol import FixedCandidateEvalDataLoader, prepare_data
from recbole_r2rec.registry import get_model, get_trainer

DEFAULT_MODEL = "R2Rec"
DEFAULT_RESULT_DIR = Path("saved") / "results"
CHECKPOINT_NAME = "{model}-{dataset}-seed{seed}.pth"  # in checkpoint_dir; ScoreBlend reads its components by it


def default_result_file(model: str, dataset: str, seed) -> Path:
    return DEFAULT_RESULT_DIR / f"{model}-{dataset}-seed{seed}.json"


def _floats(result) -> dict:
    return {k: float(v) for k, v in (result or {}).items()}


def run(model: str = DEFAULT_MODEL, dataset: str = "ml-100k", config_files=(), overrides=None,
        result_file=None) -> dict:
    """Train `model` on `dataset`, evaluate on valid and test, write and return the result dict."""
    timings = {}
    start = time.perf_counter()
    config = build_config(model, dataset, config_files, overrides)
    model_class = get_model(model)
    if hasattr(model_class, "check_config"):
        model_class.check_config(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    check_dataset_on_disk(config)
    data = create_dataset(config)
    train_data, valid_data, test_data = prepare_data(config, data)
    timings["load"] = time.perf_counter() - start

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = model_class(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    out_dir = Path(config["checkpoint_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.saved_model_file = str(out_dir / CHECKPOINT_NAME.format(model=model, dataset=dataset, seed=config["seed"]))

    t = time.perf_counter()
    _, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=config["show_progress"])
    timings["test"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start

    result = {
        "model": model,
        "dataset": dataset,
        "seed": config["seed"],
        "best_valid_result": _floats(best_valid_result),
        "test_result": _floats(test_result),
        "eval_users": {"valid": len(valid_data.uid_list), "test": len(test_data.uid_list)},
        "candidates_sha256": {
            phase: loader.digest() for phase, loader in (("valid", valid_data), ("test", test_data))
            if isinstance(loader, FixedCandidateEvalDataLoader)
        },
        "timings_s": timings,
        "peak_memory_mb": peak_memory_mb(),
        "processes": _world_size(),
        "config": config_as_dict(config),
    }
    if getattr(trainer, "user_ranks", None):  # per-user outcomes, for paired significance tests
        result["test_user_ranks"] = trainer.user_ranks_json()
    if getattr(trainer, "stage_results", None):
        result["stages"] = trainer.stage_results
    path = Path(result_file) if result_file else default_result_file(model, dataset, config["seed"])
    if config["explain"]:
        result["explain"] = explain(config, net, test_data, result, path, getattr(trainer, "user_ranks", {}))
    if int(os.environ.get("RANK", 0)) == 0:  # under `accelerate launch`, one process writes
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    logger.info(f"valid: {result['best_valid_result']}")
    logger.info(f"test: {result['test_result']}")
    logger.info(f"result written to {path}")
    return result


def explain(config, net, test_data, result: dict, result_path: Path, ranks: dict) -> dict:
    """--explain=N: the reasoning of N sampled test users as HTML and Markdown beside the result."""
    from recbole_r2rec.explain import write_explanations

    if not getattr(net, "answers", None):
        logging.getLogger().warning("--explain applies to LLM models (R2Rec): nothing to explain here")
        return {}
    inter = test_data._dataset.inter_feat
    truth = dict(zip(inter[net.USER_ID].tolist(), inter[net.ITEM_ID].tolist()))
    folder = Path(config["explain_dir"] or result_path.with_name(result_path.stem + "-explain"))
    summary = (f"{config['model']} with stages={config['stages']} on {config['dataset']} (seed {config['seed']}, "
               f"backbone {config['llm_path']}): {config['explain']} of {len(truth)} test users, sampled with the "
               f"seed. Test Hit@1 of the run: {result['test_result'].get('hit@1')}; ValidRatio: "
               f"{result['test_result'].get('valid_ratio')}.")
    paths = write_explanations(folder, config["dataset"], net.answers, truth, net.titles, int(config["explain"]),
                               config["seed"], summary, ranks)
    logging.getLogger().info(f"explanations written to {paths}")
    return paths


def _world_size() -> int:
    """Processes that ran together (`accelerate launch` sets WORLD_SIZE; the trainers may already have
    torn their process group down by the time the result is written)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and, on GPUs, peak allocated device memory) in MiB."""
    import resource

    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if torch.cuda.is_available():
        peak += torch.cuda.max_memory_allocated() / 2**20
    return round(peak, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_recbole_r2rec.py",
        # No abbreviations: argparse would read the config override --seed=2021 as --seeds (the
        # leaderboard's flag) and silently run the default seed.
        allow_abbrev=False,
        description="Train and evaluate a model (R2Rec or any RecBole model) under the shared protocol.",
        epilog=(
            "Any other --key=value is a RecBole/R2Rec config override (highest priority), e.g. "
            "--seed=2021 --epochs=5 --eval_users=100 --stages=none --data_path=DIR. "
            "Config layers: properties/overall.yaml < properties/dataset/<d>.yaml < "
            "properties/model/<M>.yaml < --config_files < --key=value."
        ),
    )
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model name (default: R2Rec)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: ml-100k)")
    parser.add_argument("--config_files", default="", help="extra YAML files, comma or space separated")
    parser.add_argument("--result_file", default=None,
                        help=f"result JSON path (default: {DEFAULT_RESULT_DIR}/<model>-<dataset>-seed<seed>.json)")
    board = parser.add_argument_group(
        "leaderboard", "Run a grid of models x datasets x seeds, one process and one result JSON per cell; a "
        "rerun skips finished cells; other --key=value overrides apply to every cell (e.g. --eval_users=200, "
        "the same users for every model). Rows may be variants from properties/leaderboard.yaml "
        "(R2Rec-zs, R2Rec-sft, R2Rec).")
    board.add_argument("--leaderboard", action="store_true", help="run the grid, then write the report")
    board.add_argument("--models", default="Pop,ItemKNN,ItemKNN-history,SASRec,GRU4Rec,Caser,BERT4Rec,BPR,LightGCN,"
                       "LightGCN-history,ScoreBlend,R2Rec-zs,R2Rec-sft,R2Rec",
                       help="comma-separated rows (default: %(default)s)")
    board.add_argument("--datasets", default="ml-100k,lastfm,steam", help="(default: %(default)s)")
    board.add_argument("--seeds", default="2020,2021,2022", help="(default: %(default)s)")
    board.add_argument("--leaderboard_dir", default="saved/leaderboard",
                       help="cells/ and the report go here (default: %(default)s)")
    board.add_argument("--report_only", action="store_true", help="only aggregate the finished cells")
    board.add_argument("--compare", metavar="ROW_A,ROW_B", default=None,
                       help="paired test of two rows' finished cells under --leaderboard_dir (per dataset of "
                            "--datasets, seeds of --seeds): Hit@1 on the (seed, user) pairs both evaluated, "
                            "relative gain, discordant users, exact McNemar p; runs nothing")
    return parser


def parse_overrides(tokens) -> dict:
    """`--key=value` / `--key value` tokens as a config dict (values parsed as YAML)."""
    overrides, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise SystemExit(f"unexpected argument {token!r}: overrides are written --key=value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise SystemExit(f"option --{key} needs a value: --{key}=VALUE")
            i += 1
            value = tokens[i]
        overrides[key] = parse_value(value)
        i += 1
    return overrides


def _csv(text: str) -> list:
    """A comma-separated flag value (`--models`, `--datasets`, `--seeds`, `--compare`) as a list."""
    return [s for s in text.replace(" ", "").split(",") if s]


def run_leaderboard(args, rest) -> dict:
    from recbole_r2rec import leaderboard

    rows, datasets, seeds = _csv(args.models), _csv(args.datasets), [int(s) for s in _csv(args.seeds)]
    folder = Path(args.leaderboard_dir)
    parse_overrides(rest)  # malformed overrides fail here, before any cell runs
    if not args.report_only:
        status = leaderboard.run_grid(rows, datasets, seeds, folder, rest)
        logging.getLogger().info(json.dumps(status, indent=1))
    try:
        out = leaderboard.report(folder, rows, datasets, seeds)
    except leaderboard.NoFinishedCellError as err:  # e.g. every asked cell failed: say which, no traceback
        raise SystemExit(f"error: {err}") from None
    print((folder / "leaderboard.md").read_text())
    return out


def run_compare(args):
    """`--compare=A,B`: print the paired comparison table of two rows (nothing runs)."""
    from recbole_r2rec import leaderboard

    pair = _csv(args.compare)
    if len(pair) != 2:
        raise SystemExit(f"error: --compare takes two rows, ROW_A,ROW_B (got {args.compare!r})")
    try:
        table = leaderboard.compare(Path(args.leaderboard_dir), *pair, _csv(args.datasets),
                                    [int(s) for s in _csv(args.seeds)])
    except leaderboard.NoFinishedCellError as err:
        raise SystemExit(f"error: {err}") from None
    shown = table.assign(relative_gain=table.relative_gain.map("{:+.1%}".format))
    print(shown.to_markdown(index=False, floatfmt=".4g"))
    return table


def main(argv=None) -> dict:
    args, rest = build_parser().parse_known_args(argv)
    if args.compare:
        return run_compare(args)
    if args.leaderboard or args.report_only:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        return run_leaderboard(args, rest)
    overrides = parse_overrides(rest)
    files = [f for f in args.config_files.replace(",", " ").split() if f]
    return run(args.model, args.dataset, files, overrides, args.result_file)
