"""Constrained decoding benchmark: what the SidConstraint costs, and what it buys.

    .venv/bin/python bench/decode.py --profile ml100k [--prompts 32] [--new-tokens 16] [--threads 2]

The fine-tuned model of the profile (08's folder, or `--model-dir`) answers 06's valid prompts of
the SID tasks (reference answer holds a SID) through transformers' `generate`, the path the demo
takes, in three modes: greedy, sampling and beam search (`--beams`), batched. Each mode runs the
same prompts twice, without and with `SidConstraint` (wrapped in `ReplyOnly`, as the demo and 09
use it), with exactly `--new-tokens` new tokens (`min_new_tokens = max_new_tokens`), so both runs
do the same number of forward passes and the ratio is the constraint's own cost. Goal: ≤ 1.2×.

It also reports the share of generated (closed) SID blocks that name an existing item,
unconstrained and constrained (must be 100%; a block the token budget cut open is counted apart),
and the processor alone in µs per call for a batch of rows.

Prints a table and writes artifacts/bench/decode_<profile>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from sidlib import config, paths, stages
from sidlib.llm import finetuned, generate
from sidlib.llm import sft_data
from sidlib.llm.decode import ReplyOnly
from sidlib.sids import SID_END, SID_START


def sid_prompts(cfg: config.Config, dec: generate.Decoder, n: int) -> list[list[int]]:
    """Prompt ids of up to n 06 valid conversations whose answer is a SID, over every SID task."""
    _train, valid = sft_data.load(stages.SFT_DATA.dir(cfg.profile))
    sid_rows = valid[valid["messages"].map(lambda m: SID_START in m[-1]["content"])]
    if sid_rows.empty:
        raise SystemExit("06's valid data has no SID-answer conversations")
    per_task = max(1, -(-n // sid_rows["task"].nunique()))
    picked = sid_rows.groupby("task", sort=False).head(per_task).head(n)
    return [dec.prompt(m[:-1]) for m in picked["messages"]]


def batches(prompts: list[list[int]], size: int) -> list[list[list[int]]]:
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths: less padding
    return [[prompts[i] for i in order[a: a + size]] for a in range(0, len(order), size)]


MODES: dict[str, dict[str, Any]] = {
    "greedy": dict(do_sample=False, temperature=None, top_p=None, top_k=None),
    "sample": dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0),
    "beam": dict(do_sample=False, temperature=None, top_p=None, top_k=None),
}


@torch.no_grad()
def run_mode(dec: generate.Decoder, groups: list[list[list[int]]], mode: str, constrained: bool, new_tokens: int,
             beams: int, seed: int) -> dict[str, Any]:
    kw = dict(MODES[mode])
    if mode == "beam":
        kw.update(num_beams=beams, num_return_sequences=beams, early_stopping=False)
    torch.manual_seed(seed)
    blocks = valid_blocks = cut = 0
    seconds = 0.0
    sequences = 0
    for batch in groups:
        ids, mask = generate.left_pad(batch, dec.pad_id)
        procs = [ReplyOnly(dec.constraint, ids.shape[1])] if constrained else None
        t0 = time.perf_counter()
        out = dec.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 logits_processor=procs, pad_token_id=dec.pad_id, eos_token_id=dec.ends, **kw)
        seconds += time.perf_counter() - t0
        for row in out[:, ids.shape[1]:]:
            sequences += 1
            # the reply up to its first end of turn (min_new_tokens only keeps it from ending early);
            # a block still open when the token budget ran out is cut, not wrong: counted apart
            text = dec.reply_text(row.tolist())
            closed = text[: text.rfind(SID_END) + len(SID_END)] if SID_END in text else ""
            for codes in dec.codes_in(closed):
                blocks += 1
                valid_blocks += int(codes is not None and dec.trie.is_item(codes))
            cut += text.count(SID_START) - closed.count(SID_START)
    return {"seconds": seconds, "sequences": sequences, "sid_blocks": blocks, "cut_blocks": cut,
            "valid_sid_rate": valid_blocks / blocks if blocks else float("nan")}


def processor_us(dec: generate.Decoder, rows: int, reps: int = 200) -> dict[str, float]:
    """The processor alone on `rows` rows that sit inside a SID block at each depth."""
    start = dec.start_id
    codes = dec.table.codes[:rows]
    out = {}
    vocab_size = dec.model.get_output_embeddings().weight.shape[0]
    for depth in range(dec.table.scheme.levels + 1):
        ids = [[start] + [int(dec.level_ids[lvl][codes[i % len(codes), lvl]]) for lvl in range(depth)]
               for i in range(rows)]
        x = torch.tensor(ids, dtype=torch.long)
        scores = torch.randn(rows, vocab_size)
        dec.constraint(x, scores)  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            dec.constraint(x, scores)
        out[f"depth{depth}"] = (time.perf_counter() - t0) / reps * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--model-dir", default="", help="an HF folder (default: the profile's 08 model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--modes", default="greedy,sample,beam")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config.load(args.profile, config.parse_overrides(args.overrides))
    model, tok, table, where = finetuned.load_finetuned(cfg, args.model_dir)
    dec = generate.Decoder(model, tok, table, cfg.llm)
    prompts = sid_prompts(cfg, dec, args.prompts)
    groups = batches(prompts, args.batch_size)
    run_mode(dec, groups[:1], "greedy", True, 2, args.beams, cfg.seed)  # warm-up (allocations, trie to device)

    rows = []
    for mode in args.modes.split(","):
        free = run_mode(dec, groups, mode, False, args.new_tokens, args.beams, cfg.seed)
        con = run_mode(dec, groups, mode, True, args.new_tokens, args.beams, cfg.seed)
        rows.append({"mode": mode, "prompts": len(prompts), "new_tokens": args.new_tokens,
                     "sequences": con["sequences"],
                     "unconstrained_s": round(free["seconds"], 2), "constrained_s": round(con["seconds"], 2),
                     "overhead_x": round(con["seconds"] / free["seconds"], 3),
                     "valid_sid_rate_unconstrained": round(free["valid_sid_rate"], 3),
                     "valid_sid_rate_constrained": round(con["valid_sid_rate"], 3),
                     "sid_blocks_constrained": con["sid_blocks"], "cut_blocks_constrained": con["cut_blocks"]})
        print(pd.DataFrame([rows[-1]]).set_index("mode").to_string(), flush=True)
    frame = pd.DataFrame(rows).set_index("mode")
    proc = processor_us(dec, args.batch_size * args.beams)
    print(f"\n{cfg.profile}: {where}, {len(table)} items, {len(prompts)} SID prompts, batch {args.batch_size}, "
          f"{args.new_tokens} new tokens, beams {args.beams}, {torch.get_num_threads()} threads")
    print(frame.to_string())
    print(f"\nSidConstraint alone, {args.batch_size * args.beams} rows: "
          + ", ".join(f"{k} {v:.0f} µs" for k, v in proc.items()))
    result = {"profile": cfg.profile, "model": where, "items": len(table), "batch_size": args.batch_size,
              "machine": {"cpu": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "table": rows, "processor_us": proc}
    out = paths.artifacts_root() / "bench" / f"decode_{cfg.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
