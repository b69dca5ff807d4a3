"""Baselines benchmark: every sequential model of 07 on a profile's split, one table.

    .venv/bin/python bench/baselines.py --profile scientific [--set baselines.epochs=50 ...]

Needs the profile's stages 01-05 (it runs them through the runner if missing). Prints test
metrics (all users and the cold slice), train seconds and inference ms/user per model, and
writes artifacts/bench/baselines_<profile>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from sidlib import baselines, config, paths, runner, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="scientific")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--models", default=",".join(baselines.MODELS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = config.parse_overrides(args.overrides)
    cfg = config.load(args.profile, overrides)
    if runner.run(args.profile, "01-05", overrides) != 0:  # skipped when up to date
        return 1
    split, codes, sizes = baselines.load_inputs(cfg)  # what stage 07 reads
    out_dir = paths.artifacts_root() / "bench" / f"baselines_{cfg.profile}"
    t0 = time.perf_counter()
    reports = baselines.run_all(split, codes, sizes, cfg.baselines, out_dir, seed=cfg.seed,
                                models=tuple(args.models.split(",")), resume=False)
    frame = baselines.table(reports)
    print(frame[["users", "hit@10", "ndcg@10", "hit@20", "ndcg@20", "mrr"]].round(4).to_string())
    rows = baselines.summary_metrics(reports)
    print("\n" + "\n".join(f"{m:11s} train {r['train_seconds']:8.1f} s   inference {r['ms_per_user']:8.3f} ms/user"
                           for m, r in rows.items()))
    result = {"profile": cfg.profile, "overrides": overrides, "seconds": round(time.perf_counter() - t0, 1),
              "machine": {"cpu": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "summary": rows, "reports": reports}
    path = paths.artifacts_root() / "bench" / f"baselines_{cfg.profile}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary.jsonable(result), indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
