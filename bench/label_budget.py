"""How many next-item labels does a model need before it beats popularity?

The LLM of the CPU default run reads a few thousand next-item answers (06's sequential tasks in
120 stage-2 steps); one epoch of its whole mix on an H200 reads ~50k; SID-GR, on the same SIDs,
reads ~96k training transitions an epoch for 14 epochs. This bench trains SID-GR (the profile's
settings: `baselines.sid_gr`) on a budget of N next-item labels (N below one epoch: a random
sample of its training windows, one pass; above: whole epochs) and scores each on the test
users, beside popularity, on all of them and on 09's seeded sample (`eval.users`): the number of
labels at which a sequence model over these SIDs starts to earn its place, i.e. what an LLM on
the same task has to read at the least.

    python bench/label_budget.py --profile ml100k [--budgets 6000,12000,25000,50000,100000,200000,400000,1300000]

Prints a table and writes artifacts/bench/label_budget_<profile>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np
import pandas as pd
import torch

from sidlib import baselines, config, metrics, paths
from sidlib import split as S
from sidlib.llm import eval as ev
from sidlib.models import sid_gr
from sidlib.models import train as train_utils


def windows(sequences: list[list[int]], cfg: sid_gr.SidGRConfig) -> list[list[int]]:
    """SID-GR's own training windows (`sid_gr.training_samples`, loss on every item): every
    transition is a label exactly once, so a sample of windows is a budget of labels."""
    return [sequences[i][max(0, e - cfg.max_items): e + 1] for i, e in sid_gr.training_samples(sequences, cfg)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--budgets", default="6000,12000,25000,50000,100000,200000,400000,1300000",
                    help="next-item labels per model (comma-separated)")
    args = ap.parse_args()
    cfg = config.load(args.profile, args.set)
    split, codes, sizes = baselines.load_inputs(cfg)
    gcfg = sid_gr.SidGRConfig.from_baseline(cfg.baselines, cfg.seed)
    seqs = [list(map(int, s)) for s in S.training_sequences(split, "valid")["item_ids"]]
    wins = windows(seqs, gcfg)
    per_epoch = sum(len(w) - 1 for w in wins)
    counts = S.item_train_counts(split, len(codes))
    test = S.samples(split, "test")
    test = test[test["history"].map(len) > 0].reset_index(drop=True)
    llm_users = ev.test_samples(split, cfg)  # 09's seeded sample (eval.users)
    ban = cfg.baselines.exclude_history

    def pop(samples: pd.DataFrame) -> float:
        return float(ev.popularity_on(samples, counts, cfg)["ndcg@10"])

    rows = [{"labels": 0, "model": "popularity", "epochs": 0.0, "ndcg@10": pop(test), "hit@10": np.nan,
             "ndcg@10 (09 users)": pop(llm_users), "train_s": 0.0}]
    print(f"{len(wins):,} windows, {per_epoch:,} labels an epoch; popularity {rows[0]['ndcg@10']:.4f} "
          f"(09's {len(llm_users)} users: {rows[0]['ndcg@10 (09 users)']:.4f})", flush=True)
    for budget in [int(b) for b in args.budgets.split(",")]:
        train_utils.set_seed(cfg.seed)
        if budget < per_epoch:  # one pass over a random sample of the windows, `budget` labels in all
            order = np.random.default_rng(cfg.seed).permutation(len(wins))
            n = np.cumsum([len(wins[i]) - 1 for i in order])
            data, epochs = [wins[i] for i in order[: int(np.searchsorted(n, budget)) + 1]], 1
        else:
            data, epochs = wins, max(1, round(budget / per_epoch))
        labels = sum(len(w) - 1 for w in data) * epochs
        run_cfg = dataclasses.replace(gcfg, epochs=epochs)
        model = sid_gr.SidGR(codes, sizes, run_cfg).to(train_utils.pick_device(run_cfg.device))
        t0 = time.perf_counter()
        sid_gr.fit(model, data, valid=None, log=None)
        seconds = time.perf_counter() - t0
        model.eval()
        scores = {}
        for name, samples in (("all", test), ("llm", llm_users)):
            res = metrics.evaluate_topk(model.topk_fn(max(metrics.KS), run_cfg.beam), samples, run_cfg.batch_users,
                                        exclude_history=ban, train_counts=counts,
                                        cold_threshold=cfg.baselines.cold_threshold)
            scores[name] = res["all"]
        rows.append({"labels": labels, "model": "SID-GR", "epochs": round(labels / per_epoch, 3),
                     "ndcg@10": scores["all"]["ndcg@10"], "hit@10": scores["all"]["hit@10"],
                     "ndcg@10 (09 users)": scores["llm"]["ndcg@10"], "train_s": round(seconds, 1)})
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    frame = pd.DataFrame(rows)
    print(frame.round(4).to_string(index=False))
    out = paths.write_bench(f"label_budget_{cfg.profile}", {
        "profile": cfg.profile, "overrides": args.set, "labels_per_epoch": per_epoch, "windows": len(wins),
        "test_users": len(test), "llm_users": len(llm_users), "rows": rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__}})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
