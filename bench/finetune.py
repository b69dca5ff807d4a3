"""Fine-tuning benchmarks on the real SFT mix of a profile (06-sft-data must exist):

1. packing: training tokens/s packed vs padded, same model, same conversations in the same order,
   same number of steps; and the loss of one real batch packed vs padded (must agree: no
   attention across conversations).
2. stage-1 initialisation: `text` vs `mean` rows for the new tokens, the same short stage-1 run
   from each; loss after N steps and SID -> title accuracy on held-out valid conversations
   (10-way choice by mean token log-likelihood of the true title vs 9 other titles, which moves
   long before greedy generation gets titles right).

    python bench/finetune.py --profile ml100k [--steps 10] [--init-steps 30] [--parts packing,init] [--title-n 50]

Prints a table and writes artifacts/bench/finetune_<profile>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sidlib import config, paths, stages
from sidlib.llm import chat, sft_data, train, vocab
from sidlib.models.train import set_seed
from sidlib.sids import SidTable


def load_inputs(cfg: config.Config) -> tuple[pd.DataFrame, pd.DataFrame, SidTable]:
    tr, va = sft_data.load(stages.SFT_DATA.dir(cfg.profile))
    return tr, va, SidTable.load(stages.SIDS.dir(cfg.profile))


def packing(cfg: config.Config, sft: pd.DataFrame, table: SidTable, steps: int) -> dict:
    model, tok, _ = train.prepare_model(cfg, table, "cpu", "sdpa")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = train.encode_frame(sft, tok, cfg.llm, steps * cfg.finetune.batch_size * 4, cfg.seed)
    # one real batch: packed and padded losses with the real weights
    feats = [data[i] for i in range(cfg.finetune.batch_size)]
    with torch.no_grad():
        model.eval()
        l_pack = model(**train.make_collator(tok, True, "sdpa")(feats), use_cache=False).loss.item()
        l_pad = model(**train.make_collator(tok, False, "sdpa")(feats), use_cache=False).loss.item()
    rows = {}
    for packed in (False, True):
        model.load_state_dict(state)
        ft = dataclasses.replace(cfg.finetune, packing=packed, save_steps=10**9)
        plan = train.StagePlan("stage2", ft.lr, steps, 1.0, ft.weight_decay, ft.warmup_ratio)
        with tempfile.TemporaryDirectory() as d:
            set_seed(cfg.seed)
            res = train.train_stage(model, tok, data, plan, ft, Path(d), "cpu", "sdpa", cfg.seed, resume=False)
        rows["packed" if packed else "padded"] = {
            "steps": res.steps, "seconds": round(res.seconds, 1), "real_tokens": res.tokens,
            "tokens_per_second": round(res.tokens_per_second, 1), "final_loss": round(res.final_loss, 4)}
    rows["speedup"] = round(rows["packed"]["tokens_per_second"] / rows["padded"]["tokens_per_second"], 2)
    rows["batch_loss"] = {"packed": l_pack, "padded": l_pad, "abs_diff": abs(l_pack - l_pad)}
    lengths = np.asarray(data["length"])
    rows["mix"] = {"conversations": len(data), "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max())}
    return rows


@torch.no_grad()
def title_choice_accuracy(model, tok, cfg: config.Config, valid: pd.DataFrame, n: int = 100, choices: int = 10,
                          seed: int = 0) -> float:
    """SID -> title as a 10-way choice by mean log-likelihood of each candidate title."""
    rows = valid[valid["task"] == "sid_to_title"]
    if rows.empty:
        raise SystemExit("the valid split has no sid_to_title conversations")
    rng = np.random.default_rng(seed)
    rows = rows.sample(n=min(n, len(rows)), random_state=seed)
    titles = valid.loc[valid["task"] == "sid_to_title", "messages"].map(lambda m: m[-1]["content"]).unique()
    model.eval()
    hits = 0
    for messages in rows["messages"]:
        truth = messages[-1]["content"]
        others = [t for t in rng.choice(titles, size=choices * 2, replace=False) if t != truth][: choices - 1]
        scores = []
        for cand in [truth, *others]:
            enc = chat.encode(tok, [*messages[:-1], {"role": "assistant", "content": cand}], cfg.llm)
            ids = torch.tensor([enc["input_ids"]])
            labels = torch.tensor([enc["labels"]])
            scores.append(-model(input_ids=ids, labels=labels, use_cache=False).loss.item())
        hits += int(np.argmax(scores) == 0)
    return hits / len(rows)


def init_compare(cfg: config.Config, sft: pd.DataFrame, valid: pd.DataFrame, table: SidTable, steps: int,
                 title_n: int = 50) -> dict:
    out = {}
    for init in ("mean", "text"):
        cfg.finetune.init = init
        set_seed(cfg.seed)
        model, tok, info = train.prepare_model(cfg, table, "cpu", "sdpa")
        data = train.encode_frame(sft, tok, cfg.llm, steps * cfg.finetune.batch_size * 4, cfg.seed)
        acc0 = title_choice_accuracy(model, tok, cfg, valid, n=title_n)
        vocab.freeze_all_but_embeddings(model)
        hooks = train.mask_old_rows(model, vocab.sid_token_ids(tok, table.scheme))
        plan = train.StagePlan("stage1", cfg.finetune.stage1_lr, steps, 1.0, 0.0, cfg.finetune.warmup_ratio)
        ft = dataclasses.replace(cfg.finetune, save_steps=10**9, logging_steps=max(1, steps // 10))
        with tempfile.TemporaryDirectory() as d:
            res = train.train_stage(model, tok, data, plan, ft, Path(d), "cpu", "sdpa", cfg.seed, resume=False)
        for h in hooks:
            h.remove()
        out[init] = {"steps": res.steps, "first_loss": res.history[0]["loss"] if res.history else None,
                     "final_loss": round(res.final_loss, 4), "title_acc_before": acc0,
                     "title_acc_after": title_choice_accuracy(model, tok, cfg, valid, n=title_n),
                     "seconds": round(res.seconds, 1), "tokens_per_second": round(res.tokens_per_second, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--steps", type=int, default=10, help="training steps per packing run")
    ap.add_argument("--init-steps", type=int, default=30, help="stage-1 steps per initialisation")
    ap.add_argument("--parts", default="packing,init")
    ap.add_argument("--title-n", type=int, default=50, help="valid sid_to_title conversations for the 10-way title choice")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config.load(args.profile, args.set)
    sft, valid, table = load_inputs(cfg)
    result: dict = {"profile": cfg.profile, "model": cfg.llm.model, "batch_size": cfg.finetune.batch_size,
                    "threads": torch.get_num_threads(), "torch": torch.__version__}
    t0 = time.perf_counter()
    if "packing" in args.parts:
        result["packing"] = packing(cfg, sft, table, args.steps)
        p = result["packing"]
        print(pd.DataFrame({k: p[k] for k in ("padded", "packed")}).T.to_string())
        print(f"speedup {p['speedup']}x; one real batch: packed loss {p['batch_loss']['packed']:.6f} "
              f"vs padded {p['batch_loss']['padded']:.6f}")
    if "init" in args.parts:
        result["init"] = init_compare(cfg, sft, valid, table, args.init_steps, args.title_n)
        print(pd.DataFrame(result["init"]).T.to_string())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = paths.write_bench(f"finetune_{cfg.profile}", result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
