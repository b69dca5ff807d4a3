"""Stage 07: train every sequential baseline on one split and evaluate them on the same users.

Models: popularity (the floor), SASRec on item IDs, SASRec over SIDs, and SID-GR (generative
retrieval by constrained beam search). Each is reported through `sidlib.metrics` on the test
samples of `sidlib.split` (history = train + valid item, target = last item), both slices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import metrics
from . import split as S
from .config import BaselineConfig

MODELS = ("popularity", "sasrec", "sid_sasrec", "sid_gr")


def _eval_row(res: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"all": res["all"], "cold": res["cold"], "n_users": res["n_users"], "n_cold": res["n_cold"],
            "protocol": res.get("protocol", {}), "seconds": round(seconds, 2),
            "ms_per_user": round(1000 * seconds / max(res["n_users"], 1), 3)}


def run_popularity(split: pd.DataFrame, n_items: int, cfg: BaselineConfig) -> dict[str, Any]:
    counts = S.item_train_counts(split, n_items)
    out: dict[str, Any] = {"fit": None, "train_seconds": 0.0}
    for which in ("valid", "test"):
        t0 = time.perf_counter()
        res = metrics.evaluate_model(
            metrics.popularity_score_fn(counts), S.samples(split, which), n_items, cfg.eval_batch_size,
            exclude_history=cfg.exclude_history, sampled=cfg.sampled_negatives, train_counts=counts,
            cold_threshold=cfg.cold_threshold)
        out[which] = _eval_row(res, time.perf_counter() - t0)
    return out


def run_sasrec(split, n_items, codes, sizes, cfg, out_dir, seed, resume, log, sid: bool) -> dict[str, Any]:
    from .models import sasrec, sid_sasrec

    ckpt = Path(out_dir) / ("ckpt_sid_sasrec" if sid else "ckpt_sasrec")
    if sid:
        _, rep = sid_sasrec.run(split, codes, cfg, ckpt_dir=ckpt, resume=resume, seed=seed, sizes=sizes, log=log)
    else:
        _, rep = sasrec.run(split, cfg, n_items=n_items, ckpt_dir=ckpt, resume=resume, seed=seed, log=log)
    out = {"fit": rep["fit"], "train_seconds": rep["fit"]["train_seconds"], "n_params": rep["n_params"]}
    for which in ("valid", "test"):
        out[which] = _eval_row(rep[which], rep[which]["seconds"])
    return out


def run_sid_gr(split, n_items, codes, sizes, cfg, out_dir, seed, resume, log) -> dict[str, Any]:
    from .models import sid_gr

    gcfg = sid_gr.SidGRConfig.from_baseline(cfg, seed)
    model, rec = sid_gr.fit_split(split, codes, sizes, gcfg, ckpt_dir=Path(out_dir) / "ckpt_sid_gr",
                                  resume=resume, log=log or (lambda *_: None))
    counts = S.item_train_counts(split, n_items)
    model.eval()
    out: dict[str, Any] = {"fit": rec, "train_seconds": rec.get("train_seconds", 0.0), "beam": gcfg.beam,
                           "n_params": int(sum(p.numel() for p in model.parameters()))}
    for which in ("valid", "test"):
        samples = S.samples(split, which)
        samples = samples[samples["history"].map(len) > 0]  # a generative model needs a prompt
        t0 = time.perf_counter()
        res = metrics.evaluate_topk(
            model.topk_fn(max(metrics.KS), gcfg.beam), samples, gcfg.batch_users,
            exclude_history=cfg.exclude_history, train_counts=counts, cold_threshold=cfg.cold_threshold)
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
    """
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; known: {MODELS}")
    n_items = int(np.asarray(codes).shape[0])
    data_key = hashlib.sha256(
        np.ascontiguousarray(np.asarray(codes)).tobytes()
        + json.dumps(split[["train", "valid", "test"]].map(str).to_numpy().tolist()).encode()
    ).hexdigest()[:16]
    reports: dict[str, dict[str, Any]] = {}
    for name in models:
        if name != "popularity":
            _fresh_checkpoints(Path(out_dir) / f"ckpt_{name}",
                               {"cfg": dataclasses.asdict(cfg), "seed": seed, "data": data_key})
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
