"""The default profile's fine-tune on the real SmolLM2 on a GPU, one full epoch: the far end of
the LLM's learning curve (issue #15), measured with 09's own code.

Run on the lent GPU machine by bench/gpu_finetune.sh (which brings the GGUF weights, the 01-07
artifacts and the wheels there); it also runs on a CPU with small numbers (`--quick`), which is
how it is checked before device time is spent. Two parts, each writing its JSON as soon as it
ends, so a part cut short by the time limit still leaves the other:

1. bench/llm_curve.py (the learning curve) with `--keep`: base model, after stage 1, every
   `--every` stage-2 steps, the end; training tokens/s of both stages and the MFU of stage 2;
2. 09's `eval.run` on the final model: every task, and the recommender on `--users` test users
   beside popularity, SASRec, SID-SASRec and SID-GR on the same users.

    python bench/gpu_finetune.py [--every 500] [--users 0] [--set finetune.batch_size=16 ...]
    python bench/gpu_finetune.py --quick      # CPU: a few steps and users, checks the path

One call of at most 600 s holds it only just: on 2026-12-04 a 560-s call (points every 700 steps,
each ~16 s) was stopped at step 2,080 of 2,083 and 09 ran on that checkpoint in a second call
(docs/benchmarks.md); give it --every 1000 and --skip-eval-after, or a larger batch.

Writes $OUT (or artifacts/bench/) gpu_finetune.json, llm_curve_<profile>_gpu.json, and 09's
eval_report.json / tasks.csv / comparison.csv.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import torch  # noqa: E402

import gpu_path  # noqa: E402  (its transformers < 5.23 shims: the GPU machine has 5.17)
import llm_curve  # noqa: E402
from sidlib import config, paths  # noqa: E402
from sidlib.llm import base  # noqa: E402
from sidlib.llm import eval as llm_eval  # noqa: E402

# bf16 dense peak of one H100/H200 SXM (no sparsity), for the model-FLOPs utilisation
PEAK_BF16 = 989e12
# the GPU run of the ml100k recipe: stage 2 for a whole epoch of 06 instead of 80 steps, 16
# conversations a step (LR scaled by sqrt(2) from 8 at 1e-4). Measured on an H200: ~180 ms a step,
# 7.4k tokens/s: the step's fixed costs dominate at ~1.3k tokens (the synthetic 64-conversation
# steps of bench/gpu_path.py ran 62k tokens/s); --set finetune.batch_size=64 for throughput
GPU_SET = ["finetune.stage2_max_steps=0", "finetune.stage2_epochs=1", "finetune.batch_size=16",
           "finetune.lr=1.4e-4", "eval.batch_size=32"]
QUICK_SET = ["finetune.stage2_max_steps=4", "finetune.stage1_samples=24", "finetune.stage1_epochs=2",
             "finetune.batch_size=2", "eval.max_new_tokens=8", "eval.per_task=1", "eval.catalog_items=2",
             "eval.floor=false"]


def write(out: Path, name: str, data: dict) -> None:
    (out / name).write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {out / name}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--every", type=int, default=700, help="stage-2 steps between curve points")
    ap.add_argument("--users", type=int, default=0, help="09's test users (0 = all)")
    ap.add_argument("--per-task", type=int, default=50, help="09's conversations per task")
    ap.add_argument("--curve-users", type=int, default=100)
    ap.add_argument("--keep", default="", help="08 folder to train into (default: a temp folder under artifacts)")
    ap.add_argument("--quick", action="store_true", help="tiny numbers: checks the path on a CPU")
    ap.add_argument("--skip-eval-after", type=float, default=1e9, help="skip 09 when this many seconds have passed")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else paths.artifacts_root() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    sets = [*GPU_SET, *(QUICK_SET if args.quick else []), *args.set]
    name = config.load(args.profile).profile  # a profile file's name, not its path
    keep = Path(args.keep or paths.artifacts_root() / "bench" / f"gpu_finetune_{name}")
    shims = gpu_path.compat()
    dev = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "transformers": gpu_path.transformers.__version__, "compat": shims, "set": sets}
    print(dev, flush=True)

    # 1. the learning curve, training into `keep`
    suffix = "_gpu" if torch.cuda.is_available() else "_quick"
    argv = ["llm_curve", "--profile", args.profile, "--every", str(args.every), "--keep", str(keep),
            "--suffix", suffix, "--users", str(2 if args.quick else args.curve_users),
            "--items", str(2 if args.quick else 100), "--per-task", "1" if args.quick else "2"]
    sys.argv = argv + [a for s in sets for a in ("--set", s)]
    llm_curve.main()
    src = paths.artifacts_root() / "bench" / f"llm_curve_{name}{suffix}.json"
    curve = json.loads(src.read_text())
    if src.parent != out:
        shutil.copy(src, out / src.name)
    train_m = curve.get("train") or {}
    cfg = config.load(args.profile, sets)
    n_params = sum(p.numel() for p in base.load_model(cfg.llm, source=keep / "model").parameters())
    tps = train_m.get("stage2_tokens_per_second") or 0.0
    result = {**dev, "seconds_curve": round(time.perf_counter() - t0, 1), "params": n_params,
              # 6 N per trained token (forward + backward) over the bf16 peak: an upper-bound style
              # estimate (the frozen lower layers need no weight gradients, labels-only logits skip most of the head)
              "stage2_mfu": round(6 * n_params * tps / PEAK_BF16, 4) if torch.cuda.is_available() else None,
              "train": train_m, "curve": curve["points"]}
    write(out, "gpu_finetune.json", result)

    # 2. 09 on the final model, all its tasks and the comparison on the same users
    if time.perf_counter() - t0 > args.skip_eval_after:
        print("09 skipped: out of time", flush=True)
        return
    users = 3 if args.quick else args.users
    per_task = 1 if args.quick else args.per_task
    cfg = config.load(args.profile, [*sets, f"eval.model_dir={keep / 'model'}", f"eval.users={users}",
                                     f"eval.per_task={per_task}", "eval.floor=false"])
    t = time.perf_counter()
    res = llm_eval.run(cfg, progress=False)
    result["seconds_eval"] = round(time.perf_counter() - t, 1)
    result["eval"] = res.metrics
    write(out, "gpu_finetune.json", result)
    for f in ("eval_report.json", "tasks.csv", "comparison.csv"):
        if (res.out / f).exists() and res.out != out:
            shutil.copy(res.out / f, out / f)
    print(res.comparison.round(4).to_string(), flush=True)
    print(res.tasks.round(3).to_string(), flush=True)


if __name__ == "__main__":
    main()
