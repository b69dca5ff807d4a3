"""sidlib's SASRec beside RecBole 1.2.1's SASRec: same split, same hyper-parameters, one run.

    .venv/bin/python bench/recbole_sasrec.py [--profile ml100k] [--threads 2] [--set baselines.epochs=5 ...]
                                             [--seeds 0,1,2] [--ours-only] [--recbole-batch-size 256] [--out F]

Needs the RecBole venv (`.venv-recbole`, see `bench/setup_recbole_venv.sh`). The script, in the
main venv:

1. loads the profile's 01-prep split (running stage 01 when it is missing or stale);
2. writes it as a RecBole atomic file `<dataset>.inter` (user_id, item_id = sidlib's dense ids
   as tokens; timestamp = the item's position in the user's sequence train + [valid] + [test],
   so RecBole's time-ordered leave-one-out, `{split: {LS: valid_and_test}, order: TO}`,
   reproduces sidlib's split exactly);
3. trains sidlib's SASRec (`sidlib.models.sasrec.run`), timed;
4. runs `bench/recbole_sasrec_runner.py` with `.venv-recbole/bin/python` on the same thread
   count: RecBole's SASRec with the profile's hyper-parameters, timed the same way;
5. checks that both sides scored the same valid / test users with the same targets and the
   same (last max_len) history items, then prints a table and writes
   `artifacts/bench/recbole_sasrec.json`.

RecBole 1.2.1 switches autograd anomaly detection on for the whole process when its sequential
models are imported (a module-level call in its SINE model); the runner switches it off, so the
times are RecBole's without that debugging overhead (`--recbole-anomaly-detection` keeps it).

Protocol: full ranking over all items with the user's history masked (sidlib's
`exclude_history = true` on ml100k). RecBole 1.2.1 masks history only for general models, not
for sequential ones, so the runner applies the same mask to RecBole's full-sort scores; both
sides also report the unmasked figures (RecBole's stock protocol). Early stopping: valid
NDCG@10 of that protocol on both sides. Times: "train" = the training epochs only, "fit" =
training + the per-epoch validations, i.e. the wall time to the early-stopped model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sidlib import config, paths, runner, stages, summary
from sidlib import split as S
from sidlib.config import BaselineConfig
from sidlib.data.prep import Prepared
from sidlib.models import sasrec
from sidlib.models.train import set_seed

RECBOLE_PYTHON = paths.REPO / ".venv-recbole" / "bin" / "python"
RUNNER = Path(__file__).resolve().parent / "recbole_sasrec_runner.py"


# --------------------------------------------------------------------------- data


def write_atomic(split: pd.DataFrame, folder: Path, dataset: str) -> Path:
    """The split as `<folder>/<dataset>/<dataset>.inter`; returns the file.

    Timestamps are positions 0..n-1 in train + [valid] + [test], unique within a user, so
    RecBole's stable sort by (user, timestamp) gives back exactly sidlib's order.
    """
    if ((split["valid"] == S.NONE) | (split["test"] == S.NONE)).any():
        raise ValueError("RecBole's leave-one-out needs a valid and a test item for every user (use a leave-one-out split)")
    path = folder / dataset / f"{dataset}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, train, valid, test in split[["user_id", "train", "valid", "test"]].itertuples(index=False):
            for pos, item in enumerate([*train, valid, test]):
                f.write(f"{int(user)}\t{int(item)}\t{pos}\n")
    return path


def recbole_params(cfg: BaselineConfig, seed: int, batch_size: int = 0) -> dict[str, Any]:
    """RecBole config dict with the profile's SASRec hyper-parameters (batch_size > 0: RecBole's own batch).

    Mapping notes: sidlib's FFN is `hidden` wide with ReLU and one dropout rate for both the
    hidden states and the attention weights (nn.TransformerEncoderLayer), hence inner_size =
    hidden, hidden_act = relu, both RecBole dropouts = dropout. sidlib's patience P stops after
    P evaluations without a new best; RecBole stops when `cur_step > stopping_step`, i.e. after
    stopping_step + 1 of them, hence stopping_step = P - 1.
    """
    if cfg.loss != "ce":
        raise ValueError(f"the comparison is set up for loss 'ce' (RecBole's CE); the profile has {cfg.loss!r}")
    if cfg.sampled_negatives:
        raise ValueError("the comparison uses full ranking; set baselines.sampled_negatives = 0")
    return {
        "seed": seed, "reproducibility": True, "use_gpu": False, "gpu_id": "", "worker": 0, "state": "WARNING",
        "show_progress": False, "checkpoint_dir": "saved",
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": cfg.max_len,
        "hidden_size": cfg.sasrec.hidden, "inner_size": cfg.sasrec.hidden, "n_layers": cfg.sasrec.blocks, "n_heads": cfg.sasrec.heads,
        "hidden_dropout_prob": cfg.dropout, "attn_dropout_prob": cfg.dropout, "hidden_act": "relu",
        "loss_type": "CE", "train_neg_sample_args": None,
        "learner": "adam", "learning_rate": cfg.lr, "weight_decay": cfg.weight_decay,
        "train_batch_size": batch_size or cfg.batch_size, "epochs": cfg.epochs, "eval_step": cfg.eval_every,
        "stopping_step": max(cfg.patience - 1, 0),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "eval_batch_size": cfg.eval_batch_size,
    }


# --------------------------------------------------------------------------- the two sides


def run_ours(split: pd.DataFrame, n_items: int, cfg: BaselineConfig, seed: int) -> dict[str, Any]:
    """sidlib's SASRec: fit (early stopping on valid NDCG@10) + valid/test reports, timed."""
    t0 = time.perf_counter()
    model, rep = sasrec.run(split, cfg, n_items=n_items, seed=seed,
                            log=lambda m: print(f"sidlib  {m}", flush=True))
    wall = time.perf_counter() - t0
    fit = rep["fit"]
    unmasked = dataclasses.replace(cfg, exclude_history=False)
    other = {w: sasrec.evaluate_split(model, split, w, unmasked, seed=seed)["all"] for w in ("valid", "test")}
    results = {"masked" if cfg.exclude_history else "unmasked": {w: rep[w]["all"] for w in ("valid", "test")}}
    results.setdefault("unmasked", other)
    return {
        "train_seconds": fit["train_seconds"], "eval_seconds": fit["eval_seconds"],
        "fit_seconds": fit["train_seconds"] + fit["eval_seconds"], "wall_seconds": wall,
        "epochs_run": fit["epochs_run"], "best_epoch": fit["best_epoch"], "best_score": fit["best_score"],
        "stopped_early": fit["stopped_early"],
        "epochs": [{"epoch": e["epoch"], "loss": fit["losses"][e["epoch"] - 1], "score": e["score"]} for e in fit["evals"]],
        "n_params": rep["n_params"], "n_users": {w: rep[w]["n_users"] for w in ("valid", "test")},
        "results": results,
    }


def run_recbole(atomic_dir: Path, dataset: str, params: dict[str, Any], threads: int, mask: bool, work: Path,
                anomaly_detection: bool = False, time_limit_s: float = 0) -> dict[str, Any]:
    """RecBole's side in its own venv; returns the runner's JSON.

    anomaly_detection=True keeps the autograd anomaly detection that importing RecBole 1.2.1's
    sequential models switches on (see the runner's docstring): stock behaviour, many times slower.
    """
    if not RECBOLE_PYTHON.exists():
        raise SystemExit(f"{RECBOLE_PYTHON} not found: create the RecBole venv first (bench/setup_recbole_venv.sh)")
    job = {"data_path": str(atomic_dir), "dataset": dataset, "params": params, "threads": threads,
           "mask_history": mask, "out": str(work / "recbole_result.json"),
           "anomaly_detection": anomaly_detection, "time_limit_s": time_limit_s}
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    # RecBole writes log/, log_tensorboard/ and saved/ into its working directory: keep them in `work`
    proc = subprocess.run([str(RECBOLE_PYTHON), str(RUNNER), str(job_path)], cwd=work, env=env,
                          stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the RecBole runner failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(Path(job["out"]).read_text())
    out["wall_seconds"] = time.perf_counter() - t0  # incl. interpreter start, imports, dataset build
    return out


# --------------------------------------------------------------------------- checks and table


def check_same_samples(split: pd.DataFrame, rb: dict[str, Any], max_len: int) -> dict[str, Any]:
    """Both sides evaluate the same users, targets and (last max_len) history items; raise if not."""
    report: dict[str, Any] = {}
    for which in ("valid", "test"):
        ours = S.samples(split, which)
        want = {str(u): (str(t), [str(x) for x in h[-max_len:]])
                for u, t, h in ours[["user_id", "target", "history"]].itertuples(index=False)}
        got = {s["user"]: (s["target"], s["history"]) for s in rb["samples"][which]}
        if len(got) != len(rb["samples"][which]):
            raise SystemExit(f"RecBole {which}: a user has several samples")
        if set(got) != set(want):
            raise SystemExit(f"{which}: users differ (sidlib {len(want)}, RecBole {len(got)}, "
                             f"common {len(set(got) & set(want))})")
        bad_target = [u for u in want if want[u][0] != got[u][0]]
        bad_history = [u for u in want if want[u][1] != got[u][1]]
        if bad_target or bad_history:
            raise SystemExit(f"{which}: {len(bad_target)} users with other targets (e.g. {bad_target[:3]}), "
                             f"{len(bad_history)} with other histories (e.g. {bad_history[:3]})")
        report[which] = {"users": len(want), "same_targets": len(want), "same_histories": len(want)}
    return report


def rows(run: dict[str, Any], protocol: str) -> pd.DataFrame:
    """One seed's table: sidlib, and RecBole when it ran."""
    table = []
    for name, side in (("sidlib SASRec", "sidlib"), ("RecBole 1.2.1 SASRec", "recbole")):
        if side not in run:
            continue
        r = run[side]
        res = r["results"][protocol]
        table.append({
            "model": name, "valid NDCG@10": res["valid"]["ndcg@10"], "test NDCG@10": res["test"]["ndcg@10"],
            "test Hit@10": res["test"]["hit@10"], "train s": r["train_seconds"], "fit s": r["fit_seconds"],
            "epochs": r["epochs_run"], "best epoch": r["best_epoch"],
            "s/epoch": r["train_seconds"] / max(r["epochs_run"], 1),
        })
    return pd.DataFrame(table).set_index("model")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (as the runner)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides (default 2)")
    ap.add_argument("--recbole-anomaly-detection", action="store_true",
                    help="keep the autograd anomaly detection RecBole 1.2.1 switches on at import (stock, very slow)")
    ap.add_argument("--recbole-time-limit", type=float, default=0, metavar="MIN",
                    help="stop RecBole's training after the first validation past MIN minutes (0 = none; "
                         "the result says so: its figures are then those of a truncated run)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds, each a run of both sides (default: the profile's seed)")
    ap.add_argument("--ours-only", action="store_true", help="train sidlib's SASRec only (no RecBole venv needed)")
    ap.add_argument("--recbole-batch-size", type=int, default=0, metavar="N",
                    help="RecBole's train_batch_size (0 = the profile's batch_size). The units differ: a sidlib "
                         "sample is a window of max_len + 1 items, a RecBole sample one prefix and its target")
    ap.add_argument("--out", default="", help="result JSON (default artifacts/bench/recbole_sasrec.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = config.parse_overrides(args.overrides)
    cfg = config.load(args.profile, overrides)
    bcfg = dataclasses.replace(cfg.baselines, device="cpu")  # the comparison is on CPU, both sides
    params = recbole_params(bcfg, cfg.seed, args.recbole_batch_size)  # fails before any training on an unsupported setting
    if not args.ours_only and not RECBOLE_PYTHON.exists():
        raise SystemExit(f"{RECBOLE_PYTHON} not found: create the RecBole venv first (bench/setup_recbole_venv.sh), "
                         "or pass --ours-only")
    if runner.run(args.profile, "01", overrides) != 0:  # skipped when up to date
        return 1
    prepared = Prepared.load(stages.PREP.dir(cfg.profile))
    split = prepared.split
    n_items = len(prepared.items)

    work = paths.artifacts_root() / "bench" / "recbole_sasrec"
    work.mkdir(parents=True, exist_ok=True)
    dataset = f"sidlib-{cfg.profile}"
    write_atomic(split, work / "data", dataset)

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [cfg.seed]
    protocol = "masked" if bcfg.exclude_history else "unmasked"
    runs = []
    for seed in seeds:
        print(f"== seed {seed}: sidlib SASRec ({args.threads} threads)", flush=True)
        set_seed(seed)
        ours = run_ours(split, n_items, bcfg, seed)
        run: dict[str, Any] = {"seed": seed, "sidlib": ours}
        if not args.ours_only:
            print(f"== seed {seed}: RecBole 1.2.1 SASRec ({args.threads} threads)", flush=True)
            rb = run_recbole(work / "data", dataset, recbole_params(bcfg, seed, args.recbole_batch_size),
                             args.threads, bcfg.exclude_history,
                             work, args.recbole_anomaly_detection, 60 * args.recbole_time_limit)
            run["same_samples"] = check_same_samples(split, rb, bcfg.max_len)
            want_masked = int(sum(len(t) + 1 for t in split["train"]))  # train prefix + valid item, every user
            if bcfg.exclude_history and rb["mask_items"] != want_masked:
                raise SystemExit(f"RecBole's history mask holds {rb['mask_items']} items, expected {want_masked}")
            if rb["n_items"] != n_items:
                raise SystemExit(f"RecBole sees {rb['n_items']} items, sidlib {n_items}")
            if rb.get("stopped_by_time_limit"):
                print(f"NOTE: RecBole's training was cut by --recbole-time-limit after {rb['epochs_run']} epochs "
                      f"(it had not early-stopped): its figures are those of a truncated run")
            run["recbole"] = {k: v for k, v in rb.items() if k != "samples"}
        runs.append(run)

    print(f"\n{cfg.profile}: full ranking over {n_items} items, history {protocol}, "
          f"{int((split['test'] != S.NONE).sum())} test users (same users, targets and histories on both sides), "
          f"{args.threads} torch threads, {platform.machine()} {os.cpu_count()} cores, seeds {seeds}")
    frame = pd.concat([rows(r, protocol).assign(seed=r["seed"]) for r in runs]).reset_index().set_index(["seed", "model"])
    print(frame.round(4).to_string())
    if protocol == "masked":
        print("\nunmasked (RecBole's stock protocol for sequential models):")
        unm = pd.concat([rows(r, "unmasked").assign(seed=r["seed"]) for r in runs]).reset_index().set_index(["seed", "model"])
        print(unm[["valid NDCG@10", "test NDCG@10", "test Hit@10"]].round(4).to_string())
    means = frame.groupby(level="model").agg(["mean", "std"]) if len(seeds) > 1 else None
    if means is not None:
        print(f"\nmean and std over seeds {seeds}:")
        print(means[["test NDCG@10", "test Hit@10", "train s"]].round(4).to_string())
    ratios = None
    if not args.ours_only:
        mean_of = lambda side, f: float(np.mean([f(r[side]) for r in runs]))  # noqa: E731
        test_ndcg = lambda r: r["results"][protocol]["test"]["ndcg@10"]  # noqa: E731
        ratios = {"test_ndcg@10": mean_of("sidlib", test_ndcg) / mean_of("recbole", test_ndcg),
                  "train_seconds": mean_of("sidlib", lambda r: r["train_seconds"]) / mean_of("recbole", lambda r: r["train_seconds"]),
                  "fit_seconds": mean_of("sidlib", lambda r: r["fit_seconds"]) / mean_of("recbole", lambda r: r["fit_seconds"])}
        print(f"\nsidlib / RecBole (means over seeds): test NDCG@10 x{ratios['test_ndcg@10']:.3f}, "
              f"train time x{ratios['train_seconds']:.3f}, fit time x{ratios['fit_seconds']:.3f}"
              f"  (goal: NDCG >= x1.0 at <= x0.5 time)")

    result = {
        "profile": cfg.profile, "overrides": overrides, "protocol": protocol, "n_items": n_items, "seeds": seeds,
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "hyper_parameters": {"sidlib": dataclasses.asdict(bcfg), "recbole": params},
        "ratios": ratios, "table": frame.reset_index().to_dict(orient="records"), "runs": runs,
    }
    path = Path(args.out) if args.out else paths.artifacts_root() / "bench" / "recbole_sasrec.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary.jsonable(result), indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
