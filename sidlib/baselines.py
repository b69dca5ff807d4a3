"""Stage 07: train every sequential baseline on one split and evaluate them on the same users.

Models: popularity (the floor), SASRec on item IDs, SASRec over SIDs, and SID-GR (generative
retrieval by constrained beam search). Each is reported through `sidlib.metrics` on the test
samples of `sidlib.split` (history = train + valid item, target = last item), both slices.

`run_stage(cfg)` is the whole stage (notebook 07 calls it); the same from a shell, in one
process or data-parallel over several (DDP through accelerate):

    python -m sidlib.baselines --profile smoke [--models sasrec,sid_gr] [--set baselines.epochs=50]
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m sidlib.baselines --profile ml100k
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import config as config_mod
from . import metrics, plots, stages, summary
from . import split as S
from .config import BaselineConfig, Config
from .data.prep import Prepared
from .models import sasrec, sid_gr, sid_sasrec, train
from .sids import SidTable

MODELS = ("popularity", "sasrec", "sid_sasrec", "sid_gr")


RANKS_FILE = "test_ranks.parquet"  # model, user_id, rank: 09 compares every model on the LLM's users


def _eval_row(res: dict[str, Any], seconds: float) -> dict[str, Any]:
    row = {"all": res["all"], "cold": res["cold"], "n_users": res["n_users"], "n_cold": res["n_cold"],
           "protocol": res.get("protocol", {}), "seconds": round(seconds, 2),
           "ms_per_user": round(1000 * seconds / max(res["n_users"], 1), 3)}
    if "ranks" in res:
        row["user_ranks"] = pd.DataFrame({"user_id": res["users"], "rank": res["ranks"]})
    return row


def write_ranks(reports: dict[str, dict[str, Any]], path: Path) -> pd.DataFrame:
    """Take the per-user test ranks out of the reports (they stay out of reports.json) into one
    parquet file: DataFrame[model, user_id, rank]."""
    frames = []
    for name, rep in reports.items():
        ranks = (rep.get("test") or {}).pop("user_ranks", None)
        if ranks is not None:
            frames.append(ranks.assign(model=name)[["model", "user_id", "rank"]])
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "user_id", "rank"])
    out.to_parquet(path, index=False)
    return out


def load_ranks(profile: str) -> pd.DataFrame | None:
    """07's per-user test ranks of a profile, None before 07 wrote them."""
    path = stages.BASELINES.dir(profile) / RANKS_FILE
    return pd.read_parquet(path) if path.exists() else None


def run_popularity(split: pd.DataFrame, n_items: int, cfg: BaselineConfig) -> dict[str, Any]:
    counts = S.item_train_counts(split, n_items)
    out: dict[str, Any] = {"fit": None, "train_seconds": 0.0}
    for which in ("valid", "test"):
        t0 = time.perf_counter()
        res = metrics.evaluate_model(
            metrics.popularity_score_fn(counts), S.samples(split, which), n_items, cfg.eval_batch_size,
            exclude_history=cfg.exclude_history, sampled=cfg.sampled_negatives, train_counts=counts,
            cold_threshold=cfg.cold_threshold, return_ranks=which == "test")
        out[which] = _eval_row(res, time.perf_counter() - t0)
    return out


def run_sasrec(split, n_items, codes, sizes, cfg, out_dir, seed, resume, log, sid: bool) -> dict[str, Any]:
    ckpt = Path(out_dir) / ("ckpt_sid_sasrec" if sid else "ckpt_sasrec")
    if sid:
        _, rep = sid_sasrec.run(split, codes, cfg, ckpt_dir=ckpt, resume=resume, seed=seed, sizes=sizes, log=log)
    else:
        _, rep = sasrec.run(split, cfg, n_items=n_items, ckpt_dir=ckpt, resume=resume, seed=seed, log=log)
    if not train.is_main_process():  # it helped train; only the main process evaluates
        return {"fit": rep["fit"]}
    out = {"fit": rep["fit"], "train_seconds": rep["fit"]["train_seconds"], "n_params": rep["n_params"]}
    for which in ("valid", "test"):
        out[which] = _eval_row(rep[which], rep[which]["seconds"])
    return out


def run_sid_gr(split, n_items, codes, sizes, cfg, out_dir, seed, resume, log) -> dict[str, Any]:
    gcfg = sid_gr.SidGRConfig.from_baseline(cfg, seed)
    model, rec = sid_gr.fit_split(split, codes, sizes, gcfg, ckpt_dir=Path(out_dir) / "ckpt_sid_gr",
                                  resume=resume, log=log or (lambda *_: None))
    if not train.is_main_process():  # it helped train; only the main process evaluates
        return {"fit": rec}
    counts = S.item_train_counts(split, n_items)
    model.eval()
    out: dict[str, Any] = {"fit": rec, "train_seconds": rec.get("train_seconds", 0.0), "beam": gcfg.beam,
                           "n_params": int(sum(p.numel() for p in model.parameters()))}
    for which in ("valid", "test"):
        samples = S.samples(split, which)
        samples = samples[samples["history"].map(len) > 0]  # a generative model needs a prompt
        t0 = time.perf_counter()
        res = metrics.evaluate_topk(
            model.topk_fn(max(metrics.KS), gcfg.beam), samples, gcfg.batch_users,  # beams skip the history too
            exclude_history=cfg.exclude_history, train_counts=counts, cold_threshold=cfg.cold_threshold,
            return_ranks=which == "test")
        out[which] = _eval_row(res, time.perf_counter() - t0)
    return out


def _fresh_checkpoints(folder: Path, fingerprint: dict[str, Any]) -> None:
    """Resume only what the same settings and data started: otherwise clear the checkpoints.

    A checkpoint left by a run with other hyper-parameters or another split would otherwise be
    "resumed" (or taken as already finished) and silently report the old model.
    """
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stamp = folder / "fingerprint.txt"
    if folder.exists() and (not stamp.exists() or stamp.read_text() != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)


def run_all(
    split: pd.DataFrame,
    codes: np.ndarray,
    sizes: list[int],
    cfg: BaselineConfig,
    out_dir: str | Path,
    seed: int = 42,
    models: tuple[str, ...] = MODELS,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """{model: {"valid", "test", "fit", "train_seconds", ...}} for every model asked for.

    `codes` [n_items, L+1] are the SIDs of stage 05 (row i = item i). Checkpoints go to
    out_dir/ckpt_<model>; with resume=True an interrupted stage continues where it stopped.
    Under `accelerate launch` every process trains (DDP) and only the main one evaluates: the
    others return {model: {"fit": ...}} for the trained models only.
    """
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; known: {MODELS}")
    n_items = int(np.asarray(codes).shape[0])
    data_key = hashlib.sha256(
        np.ascontiguousarray(np.asarray(codes)).tobytes()
        + json.dumps(split[["train", "valid", "test"]].map(str).to_numpy().tolist()).encode()
    ).hexdigest()[:16]
    fingerprint: dict[str, Any] = {"cfg": dataclasses.asdict(cfg), "seed": seed, "data": data_key}
    if train.world_size() > 1:  # other batches per step: not a run to resume from one of another size
        fingerprint["processes"] = train.world_size()
    main = train.is_main_process()
    reports: dict[str, dict[str, Any]] = {}
    for name in models:
        if name == "popularity" and not main:
            continue  # nothing to train
        if name != "popularity":
            if main:
                _fresh_checkpoints(Path(out_dir) / f"ckpt_{name}", fingerprint)
            train.wait_for_everyone()  # nobody resumes from a folder the main process is clearing
        t0 = time.perf_counter()
        if name == "popularity":
            reports[name] = run_popularity(split, n_items, cfg)
        elif name in ("sasrec", "sid_sasrec"):
            reports[name] = run_sasrec(split, n_items, codes, sizes, cfg, out_dir, seed, resume, log,
                                       sid=name == "sid_sasrec")
        else:
            reports[name] = run_sid_gr(split, n_items, codes, sizes, cfg, out_dir, seed, resume, log)
        reports[name]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return reports


def summary_metrics(reports: dict[str, dict[str, Any]], which: str = "test") -> dict[str, dict[str, Any]]:
    """The summary.json entry: per model ndcg@10, hit@10, mrr, train_seconds (+ beam, ms_per_user)."""
    out = {}
    for name, rep in reports.items():
        r = rep[which]
        row = {"ndcg@10": r["all"]["ndcg@10"], "hit@10": r["all"]["hit@10"], "mrr": r["all"]["mrr"],
               "ndcg@10_cold": r["cold"].get("ndcg@10"), "hit@10_cold": r["cold"].get("hit@10"),
               "train_seconds": round(rep.get("train_seconds") or 0.0, 1), "ms_per_user": r["ms_per_user"],
               "n_users": r["n_users"], "n_cold": r["n_cold"]}
        if rep.get("fit"):
            row["processes"] = rep["fit"].get("processes", 1)  # data-parallel training processes
        if "beam" in rep:
            row["beam"] = rep["beam"]
        out[name] = row
    return out


def table(reports: dict[str, dict[str, Any]], which: str = "test") -> pd.DataFrame:
    """One row per (model, slice): the metrics at K = 5, 10, 20 and MRR."""
    rows = []
    for name, rep in reports.items():
        for slice_ in ("all", "cold"):
            r = rep[which]
            rows.append({"model": name, "slice": slice_,
                         "users": r["n_users"] if slice_ == "all" else r["n_cold"], **r[slice_]})
    return pd.DataFrame(rows).set_index(["model", "slice"])



# --------------------------------------------------------------------------- the stage


def load_inputs(cfg: Config) -> tuple[pd.DataFrame, np.ndarray, list[int]]:
    """(split of 01-prep, SID codes [n_items, L+1] and codebook sizes of 05-sids) of a profile."""
    prep_dir = stages.PREP.dir(cfg.profile)
    sid_dir = stages.SIDS.dir(cfg.profile)
    for d in (prep_dir, sid_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: stage 07 reads 01-prep and 05-sids; run them first with "
                                    f"python -m sidlib run --profile {cfg.profile} --stages 01-05")
    table = SidTable.load(sid_dir)
    sizes = json.loads((sid_dir / "sid_manifest.json").read_text())["codebook_sizes"]
    return Prepared.load(prep_dir).split, table.codes, sizes


@dataclass
class StageOutputs:
    """What `run_stage` wrote: the reports (reports.json), the summary.json entry, the plots."""

    out: Path
    reports: dict[str, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    plots: dict[str, Path]


def run_stage(cfg: Config, models: tuple[str, ...] = MODELS, resume: bool = True,
              log: Callable[[str], None] | None = print) -> StageOutputs | None:
    """Stage 07 of a profile: train + evaluate `models` on its 01/05 outputs and write
    artifacts/<profile>/07-baselines/ (reports.json, baselines.png, valid_curves.png, checkpoints)
    and the "baselines" entry of summary.json.

    The notebook and `python -m sidlib.baselines` both call this. Under `accelerate launch`
    all processes train and only the main one evaluates and writes; the others return None.
    """
    split, codes, sizes = load_inputs(cfg)
    main = train.is_main_process()
    say = log if (log and main) else (lambda *_: None)
    say(f"{len(split):,} users, {len(codes):,} items, SID levels {sizes}"
        + (f"; {train.world_size()} training processes (DDP)" if train.world_size() > 1 else ""))
    out = stages.BASELINES.dir(cfg.profile, create=True)
    reports = run_all(split, codes, sizes, cfg.baselines, out, seed=cfg.seed, models=models, resume=resume, log=log)
    if not main:
        return None
    write_ranks(reports, out / RANKS_FILE)
    (out / "reports.json").write_text(json.dumps(summary.jsonable(reports), indent=1))
    rows = summary_metrics(reports)
    frame = pd.DataFrame(rows).T
    bar = plots.bars(frame[["ndcg@10", "hit@10", "ndcg@10_cold", "hit@10_cold"]], out / "baselines.png",
                     title=f"{cfg.profile}: test users (full ranking)")
    curves = {f"{name} valid ndcg@10": [e["score"] for e in (rep.get("fit") or {}).get("evals", [])]
              for name, rep in reports.items() if (rep.get("fit") or {}).get("evals")}
    curve_plot = plots.curves(curves, out / "valid_curves.png", xlabel="evaluation")
    summary.record(cfg, "baselines", rows, plots=[bar, curve_plot])
    return StageOutputs(out, reports, rows, {"bars": bar, "curves": curve_plot})


def main(argv: list[str] | None = None) -> int:
    """`python -m sidlib.baselines`: the stage from a shell, also under `accelerate launch`."""
    ap = config_mod.cli_parser(
        "python -m sidlib.baselines",
        "Stage 07 (notebooks/07-baselines.ipynb) from a shell. Data-parallel on several "
        "GPUs: accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes N "
        "-m sidlib.baselines --profile P")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--no-resume", action="store_true", help="retrain from scratch instead of resuming checkpoints")
    args = ap.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    try:
        cfg = config_mod.from_cli(args)
        if not models or set(models) - set(MODELS):
            raise config_mod.ConfigError(f"--models {args.models!r}: choose among {','.join(MODELS)}")
    except config_mod.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = run_stage(cfg, models, resume=not args.no_resume, log=lambda m: print(m, flush=True))
    if res is not None:  # the main process: the run's record, as the runner leaves it after the notebook
        summary.set_status(cfg.profile, "baselines", "ok", time.perf_counter() - t0)
        summary.write_report(cfg.profile)
        print(table(res.reports)[["users", "hit@10", "ndcg@10", "mrr"]].round(4).to_string())
        print(f"wrote {res.out}", flush=True)
    train.end_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
