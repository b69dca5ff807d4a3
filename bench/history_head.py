"""Can stage 1 alone (the cached head fit, sidlib.llm.head) learn next-item prediction from whole histories?

Every item of a history as a label ("all-position" loss, as SID-GR trains): conversations whose
answer lists a user's training items, oldest first, as SIDs (windows of `--window` items, the
latest window of each user first, stride window/2). Stage 1 reads them once through the frozen
trunk and fits the SID output rows; the recommender then *continues the list*: the prompt is the
same question with the user's last `--window` history items already written as the answer, and
the constrained beam search (09's, history excluded) writes the next SID.

    python bench/history_head.py --windows 300 [--structure] [--titles] [--users 100]

Prints NDCG@10 / Hit@10 beside popularity on the same test users, the fit's held-out next-token
loss and accuracy, and (with --show) teacher-forced predictions on one training window, which
show whether the head has learned the SID's structure (after <|sid_start|> a level-1 code, ...).
Writes artifacts/bench/history_head_<profile>[_structure].json.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from sidlib import config, metrics, paths, stages
from sidlib import split as splitlib
from sidlib.data.prep import Prepared
from sidlib.llm import chat, head, sft_data, train, vocab
from sidlib.llm import eval as ev
from sidlib.llm.generate import Decoder
from sidlib.models.train import set_seed
from sidlib.sids import SidTable

QUESTION = "Here is a user's history, oldest first. Continue it."


def windows(train_parts: pd.Series, width: int) -> list[list[int]]:
    """Windows of up to `width` items over each training part, the latest first, stride width/2."""
    out = []
    for row in train_parts:
        seq = [int(i) for i in row]
        for end in range(len(seq), 0, -max(width // 2, 1)):
            out.append(seq[max(0, end - width):end])
            if end - width <= 0:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--windows", type=int, default=300, help="history conversations stage 1 reads")
    ap.add_argument("--window", type=int, default=50, help="items a conversation lists")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--structure", action="store_true", help="finetune.structure: input rows that mark SID positions")
    ap.add_argument("--titles", action="store_true", help="also read 06's title -> SID conversations")
    ap.add_argument("--show", action="store_true", help="print teacher-forced predictions on one window")
    args = ap.parse_args()
    cfg = config.load(args.profile, [f"eval.users={args.users}", f"finetune.structure={str(args.structure).lower()}"])
    tr, _ = sft_data.load(stages.SFT_DATA.dir(cfg.profile))
    table = SidTable.load(stages.SIDS.dir(cfg.profile))
    split = Prepared.load(stages.PREP.dir(cfg.profile)).split
    set_seed(cfg.seed)
    model, tok, _ = train.prepare_model(cfg, table, "cpu", "sdpa")
    system = [{"role": "system", "content": cfg.sft.system_prompt}] if cfg.sft.system_prompt else []

    def listing(items: list[int]) -> str:
        return "".join(table.sid_of(i) for i in items)

    wins = windows(split["train"], args.window)
    order = np.random.default_rng(cfg.seed).permutation(len(wins))[: args.windows]
    convs = [system + [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": listing(wins[i])}]
             for i in order]
    frames = [pd.DataFrame({"messages": convs, "task": "seq_history"})]
    if args.titles:
        frames.insert(0, tr[tr["task"] == "title_to_sid"])
    data = train.encode_frame(pd.concat(frames, ignore_index=True), tok, cfg.llm)
    rows = list(dict.fromkeys(vocab.sid_token_ids(tok, table.scheme) + chat.end_token_ids(tok, model)))
    ft = cfg.finetune
    t0 = time.perf_counter()
    fit = head.stage1_cached(model, data, rows, ft.stage1_epochs, ft.stage1_lr, 256 * ft.batch_size, cfg.seed)
    fit_seconds = time.perf_counter() - t0
    model.eval()
    dec = Decoder(model, tok, table, cfg.llm)

    shown = None
    if args.show:
        ids, labels = torch.tensor([data[len(data) - 1]["input_ids"]]), torch.tensor(data[len(data) - 1]["labels"])
        with torch.no_grad():
            pred = model(ids).logits[0, :-1].argmax(-1)
        mask = labels[1:] != chat.IGNORE
        shown = {"accuracy": float((pred[mask] == labels[1:][mask]).float().mean()),
                 "predicted": tok.decode(pred[mask][:30]), "labels": tok.decode(labels[1:][mask][:30])}
        print(shown)

    def continue_lists(histories) -> np.ndarray:
        k = cfg.eval.rec_beam
        out = np.full((len(histories), k), -1, dtype=np.int64)
        for a in range(0, len(histories), cfg.eval.batch_size):
            hs = histories[a:a + cfg.eval.batch_size]
            prompts = [dec.prompt(system + [{"role": "user", "content": QUESTION}])
                       + tok(listing([int(i) for i in h][-args.window:]), add_special_tokens=False)["input_ids"]
                       for h in hs]
            st = dec.prefill(prompts)
            out[a:a + len(hs)] = dec.beam(st, range(len(hs)), k, exclude=[list(h) for h in hs]).items.cpu().numpy()
        return out

    samples = ev.test_samples(split, cfg)
    counts = splitlib.item_train_counts(split, len(table))
    t0 = time.perf_counter()
    with torch.no_grad():
        res = metrics.evaluate_topk(continue_lists, samples, batch_size=len(samples), exclude_history=True,
                                    train_counts=counts, cold_threshold=cfg.baselines.cold_threshold)
    pop = ev.popularity_on(samples, counts, cfg)
    row = {"windows": len(order), "labels": int(sum(len(wins[i]) for i in order)), "titles": args.titles,
           "structure": args.structure, "tokens_read": fit["tokens"], "stage1_seconds": round(fit_seconds, 1),
           "heldout_loss": round(fit["after"]["loss"], 3), "heldout_new_accuracy": round(fit["after"]["new_accuracy"], 3),
           "ndcg@10": res["all"]["ndcg@10"], "hit@10": res["all"]["hit@10"], "popularity_ndcg@10": pop["ndcg@10"],
           "users": len(samples), "eval_seconds": round(time.perf_counter() - t0, 1), "teacher_forced": shown}
    print(pd.Series(row).to_string())
    out = paths.write_bench(f"history_head_{cfg.profile}{'_structure' if args.structure else ''}", row)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
