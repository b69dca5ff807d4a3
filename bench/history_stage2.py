"""Does stage 2 on whole histories (06's seq_history) make the LLM recommend? A probe on a finished 08.

Starts from a fine-tuned model (default: the profile's 08 model) and trains `--steps` more
stage-2 steps (the profile's stage 2: frozen lower layers, bf16 where it pays, packing) on
`seq_history` conversations only: each user's training items as lists of `--window` SIDs, every
item a label (sidlib.llm.tasks.history_drafts, each user's latest list first). Every `--every`
steps it scores the recommender on 09's seeded test users, continuing the user's list
(eval.rec_prompt = "history") and with 09's old `seq_last_N` question, beside popularity.

    python bench/history_stage2.py --profile ml100k [--steps 40] [--every 20] [--lr 1e-4] [--window 50]

Prints each point and writes artifacts/bench/history_stage2_<profile>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from sidlib import config, paths, stages
from sidlib import split as splitlib
from sidlib.data.prep import Prepared
from sidlib.llm import base, sft_data, tasks, train
from sidlib.llm import eval as ev
from sidlib.llm.generate import Decoder
from sidlib.models.train import set_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--start", default="", help="model folder (default: the profile's 08 model)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--users", type=int, default=100)
    args = ap.parse_args()
    cfg = config.load(args.profile, {"eval.users": args.users, "sft.history_window": args.window, "sft.max_per_task": 0})
    start = Path(args.start or stages.FINETUNE.dir(cfg.profile) / train.MODEL_DIR)
    inputs = sft_data.load_inputs(cfg)
    table = inputs.table
    split = Prepared.load(stages.PREP.dir(cfg.profile)).split
    set_seed(cfg.seed)
    tok = base.load_tokenizer(cfg.llm, source=start)
    model = base.load_model(cfg.llm, source=start, device="cpu", attn="sdpa")

    ctx = tasks.Context(tasks.make_catalog(inputs, cfg.sft.item_noun), inputs, cfg.sft, tasks.Tally())
    drafts = tasks.history_drafts(ctx, "train", cfg.seed)[: args.steps * cfg.finetune.batch_size]
    convs = [d.messages(cfg.sft.system_prompt, ctx.catalog) for d in drafts]
    data = train.encode_frame(pd.DataFrame({"messages": convs, "task": tasks.HISTORY}), tok, cfg.llm)
    labels = sum(len(d.history) for d in drafts)

    samples = ev.test_samples(split, cfg)
    counts = splitlib.item_train_counts(split, len(table))
    pop = ev.popularity_on(samples, counts, cfg)["ndcg@10"]
    question = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, rec_prompt="question"))
    points: list[dict] = []

    @torch.no_grad()
    def measure(m, step: int) -> None:
        t0 = time.perf_counter()
        was, cache = m.training, m.config.use_cache
        m.eval()
        m.config.use_cache = True
        dec = Decoder(m, tok, table, cfg.llm)
        listed = ev.evaluate_recommender(dec, samples, cfg, counts, progress=False)
        asked = ev.evaluate_recommender(dec, samples, question, counts, progress=False)
        points.append({"step": step, "ndcg@10 list": listed["all"]["ndcg@10"], "hit@10 list": listed["all"]["hit@10"],
                       "ndcg@10 question": asked["all"]["ndcg@10"], "popularity": pop,
                       "eval_s": round(time.perf_counter() - t0, 1)})
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in points[-1].items()}, flush=True)
        m.train(was)
        m.config.use_cache = cache

    class Every(TrainerCallback):
        def on_step_end(self, a, state, control, model=None, **kw):  # noqa: ANN001
            if state.global_step % args.every == 0 and state.global_step < state.max_steps:
                measure(model, state.global_step)

    measure(model, 0)
    ft = dataclasses.replace(cfg.finetune, save_steps=10 ** 9)
    train.freeze_lower(model, ft.freeze_layers)
    plan = train.StagePlan("stage2", args.lr, args.steps, 1.0, ft.weight_decay, ft.warmup_ratio)
    with tempfile.TemporaryDirectory() as d:
        res = train.train_stage(model, tok, data, plan, ft, Path(d), "cpu", "sdpa", cfg.seed, resume=False,
                                callbacks=[Every()])
    measure(model, args.steps)
    row = {"profile": cfg.profile, "start": str(start), "steps": args.steps, "lr": args.lr, "window": args.window,
           "lists": len(drafts), "labels": labels, "tokens": res.tokens, "train_seconds": round(res.seconds, 1),
           "tokens_per_second": round(res.tokens_per_second, 1), "losses": [h["loss"] for h in res.history],
           "users": len(samples), "points": points}
    print(pd.DataFrame(points).round(4).to_string(index=False))
    print(f"{len(drafts)} lists, {labels:,} labels, {res.tokens:,} tokens in {res.seconds:.0f} s")
    print(f"wrote {paths.write_bench(f'history_stage2_{cfg.profile}', row)}")


if __name__ == "__main__":
    main()
