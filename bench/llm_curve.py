"""The LLM's learning curve: what more CPU minutes (or a GPU) buy.

One run of 08 on a profile (06 and 05 must exist; 07 for nothing), measured along the way with
09's own functions on a fixed sample:

- point 0: the base model with the SID tokens added and initialised (no training);
- point 1: after stage 1 (cached hidden states, or the Trainer stage 1);
- points 2..: during stage 2, every `--every` optimizer steps, and at its end.

At each point: NDCG@10 / Hit@10 of the LLM recommender on `--users` seeded test users (popularity
on the same users is printed beside it), title -> SID level-1 and exact accuracy (greedy, after
<|sid_start|>) on `--items` held-out conversations, and the unassisted well-formed / valid-SID
rates of free greedy replies to those and `--per-task` conversations of every other SID task.
The x axis is training tokens (stage-1 tokens are forward-only reads) and wall seconds.

    python bench/llm_curve.py --profile ml100k [--every 20] [--users 100] [--items 100] [--set finetune.stage2_max_steps=200]
    python bench/llm_curve.py --profile ml100k --from artifacts/ml100k/08-finetune

`--from` trains nothing: it measures the models a finished 08 folder kept (stage1/final, the
stage-2 checkpoints the Trainer kept, model/), with stage 2's tokens at a checkpoint taken as
its share of the steps; the curve of the very run 09 and the demo read.

Prints a table and writes artifacts/bench/llm_curve_<profile>.json (and a PNG beside it).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from sidlib import config, paths, plots, stages
from sidlib import split as splitlib
from sidlib.data.prep import Prepared
from sidlib.device import resolve_device
from sidlib.llm import eval as ev
from sidlib.llm import base, generate, sft_data, train
from sidlib.models.train import set_seed
from sidlib.sids import SidTable


class Curve:
    """Measures a model with 09's functions on one fixed sample of prompts and users."""

    def __init__(self, cfg: config.Config, table: SidTable, valid: pd.DataFrame, split: pd.DataFrame,
                 items: int, per_task: int):
        self.cfg, self.table = cfg, table
        self.valid = ev.select_valid(valid[valid["task"] != "sid_to_title"], per_task, items)
        self.samples = ev.test_samples(split, cfg)
        self.counts = splitlib.item_train_counts(split, len(table))
        self.pop = ev.popularity_on(self.samples, self.counts, cfg)["ndcg@10"]
        self.points: list[dict] = []
        self.t0 = time.perf_counter()
        self.eval_seconds = 0.0

    @torch.no_grad()
    def measure(self, model, tok, label: str, tokens: int) -> dict:
        t = time.perf_counter()
        was_training = model.training
        use_cache = model.config.use_cache
        # the decoder's cached steps run on sdpa: a model training on flex attention (CUDA) would
        # compile a block mask for every new decode shape
        attn = model.config._attn_implementation
        if attn != "sdpa":
            model.set_attn_implementation("sdpa")
        dec = generate.Decoder(model, tok, self.table, self.cfg.llm)
        tasks, detail = ev.task_accuracy(model, tok, self.table, self.valid, self.cfg, per_task=0, progress=False,
                                         decoder=dec)
        sid = detail[detail["kind"] == "sid"]
        rec = ev.evaluate_recommender(dec, self.samples, self.cfg, self.counts, progress=False)
        cat = tasks.loc[ev.CATALOG_TASK] if ev.CATALOG_TASK in tasks.index else {}
        point = {"point": label, "train_tokens": int(tokens),
                 "train_seconds": round(time.perf_counter() - self.t0 - self.eval_seconds, 1),
                 "ndcg@10": rec["all"]["ndcg@10"], "hit@10": rec["all"]["hit@10"], "popularity_ndcg@10": self.pop,
                 "title_level1": float(cat.get("level1", np.nan)), "title_exact": float(cat.get("exact", np.nan)),
                 "title_n": int(cat.get("n", 0)),
                 "wellformed_unassisted": float(sid["wellformed_unconstrained"].mean()),
                 "valid_unassisted": float(sid["valid_unconstrained"].mean())}
        model.train(was_training)
        model.config.use_cache = use_cache
        if attn != "sdpa":
            model.set_attn_implementation(attn)
        self.eval_seconds += time.perf_counter() - t
        self.points.append(point)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in point.items()}, flush=True)
        return point


class Every(TrainerCallback):
    """Measures the model in the middle of stage 2 every `n` steps. Its tokens: conversations
    seen so far x the mean conversation length (stage 1's tokens are added at the end)."""

    def __init__(self, curve: Curve, tok, n: int, tokens_per_conversation: float):
        self.curve, self.tok, self.n, self.per_conv = curve, tok, n, tokens_per_conversation

    def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
        if state.global_step % self.n == 0 and state.global_step < state.max_steps:
            seen = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
            self.curve.measure(model, self.tok, f"stage 2, step {state.global_step}", int(seen * self.per_conv))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--every", type=int, default=20, help="stage-2 steps between points")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--items", type=int, default=100, help="title -> SID conversations")
    ap.add_argument("--per-task", type=int, default=4, help="conversations of every other SID task")
    ap.add_argument("--from", dest="source", default="", help="a finished 08 folder: measure its saved models")
    ap.add_argument("--suffix", default="", help="appended to the JSON's name (llm_curve_<profile><suffix>.json)")
    ap.add_argument("--keep", default="", help="train into this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    cfg = config.load(args.profile, [*args.set, f"eval.users={args.users}"])
    tr, va = sft_data.load(stages.SFT_DATA.dir(cfg.profile))
    table = SidTable.load(stages.SIDS.dir(cfg.profile))
    split = Prepared.load(stages.PREP.dir(cfg.profile)).split
    curve = Curve(cfg, table, va, split, args.items, args.per_task)
    set_seed(cfg.seed)
    device = resolve_device(cfg.llm.device)
    model, tok, _ = train.prepare_model(cfg, table, "cpu", "sdpa")
    curve.measure(model.to(device), tok, "base + SID tokens", 0)
    del model
    if args.source:
        saved(curve, Path(args.source), cfg)
        return report(curve, cfg, args)
    lengths = train.encode_frame(tr.head(2000), tok, cfg.llm)["length"]
    every = Every(curve, tok, args.every, float(np.mean(lengths)))
    with tempfile.TemporaryDirectory() as d:
        res = train.finetune(cfg, tr, table, out=Path(args.keep or d), resume=False, callbacks=[every],
                             on_stage1=lambda m_, t_: curve.measure(m_, t_, "after stage 1", 0))
        m = res["metrics"]
        curve.train_metrics = {k: v for k, v in m.items() if k != "vocab"}
        s1 = (m.get("stage1_fit") or {}).get("tokens", 0)  # forward-only reads of stage 1
        for p in curve.points[1:]:
            p["train_tokens"] += s1
        final = base.load_model(cfg.llm, source=res["model_dir"], device=device)
        ftok = base.load_tokenizer(cfg.llm, source=res["model_dir"])
        curve.measure(final, ftok, f"stage 2, step {m['stage2_steps']} (end)", m["train_tokens"])
    report(curve, cfg, args)


def saved(curve: Curve, folder: Path, cfg: config.Config) -> None:
    """Points from a finished 08 folder: after stage 1, every kept stage-2 checkpoint, the end."""
    import json

    while not (folder / "finetune_report.json").exists():  # 08 still running: its models appear at its end
        time.sleep(30)
    m = json.loads((folder / "finetune_report.json").read_text())["metrics"]
    s1 = (m.get("stage1_fit") or {}).get("tokens", 0)
    s2, steps = m["train_tokens"] - s1, max(m["stage2_steps"], 1)
    models = [("after stage 1", folder / "stage1" / "final", s1)]
    ckpts = sorted((folder / "stage2").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for c in ckpts:
        step = int(c.name.split("-")[1])
        if step < steps:
            models.append((f"stage 2, step {step}", c, s1 + int(s2 * step / steps)))
    models.append((f"stage 2, step {steps} (end)", folder / train.MODEL_DIR, m["train_tokens"]))
    for label, where, tokens in models:
        tok = base.load_tokenizer(cfg.llm, source=where if (where / "tokenizer_config.json").exists() else folder / train.MODEL_DIR)
        curve.measure(base.load_model(cfg.llm, source=where, device=resolve_device(cfg.llm.device)), tok, label, tokens)
        curve.points[-1]["train_seconds"] = None  # not measured here: see 08's report
    curve.points[0]["train_seconds"] = 0.0


def report(curve: Curve, cfg: config.Config, args: argparse.Namespace) -> None:
    frame = pd.DataFrame(curve.points).set_index("point")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.round(4).to_string())
    out = paths.write_bench(f"llm_curve_{cfg.profile}{args.suffix}", {
        "profile": cfg.profile, "finetune": cfg.to_dict()["finetune"], "users": args.users, "items": args.items,
        "points": curve.points, "eval_seconds": round(curve.eval_seconds, 1),
        "train": getattr(curve, "train_metrics", None)})
    plots.curves({k: frame[k].tolist() for k in ("ndcg@10", "title_level1", "valid_unassisted", "wellformed_unassisted")},
                 out.with_suffix(".png"), xlabel="point (see the JSON for tokens)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
