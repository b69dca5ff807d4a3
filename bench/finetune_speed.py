"""What learns most per CPU second: training variants side by side on the same batches.

Every variant starts from the same weights (the profile's base model with the SID tokens added
and initialised, as 08's stage 2 would see them after stage 1) and trains on the same packed
batches of 06's conversations, in the same order, with the same optimizer (fused AdamW, stage 2's
LR). Two numbers per variant:

- tokens/s over `--steps` steps (the first step is a warm-up and not timed);
- learning per second: train for `--seconds` of wall time, then the loss on `--valid` held-out
  conversations (06's valid split, assistant tokens only). Lower is better at equal time.

Variants: `ckpt` (gradient checkpointing on, full logits: 08 before this benchmark), `plain`
(checkpointing off), `labelled` (+ logits only at labelled positions), `freeze{N}` (+ the input
embeddings and lowest N layers frozen), `lora` (peft LoRA r=16 on every linear layer of the
decoder + the embedding matrices trained, + labelled logits; needs `pip install peft`), `bf16`
(labelled + bf16 autocast; `freeze{N}+bf16` both: ml100k's stage 2 on a CPU with AMX), `forward`
(no gradient: the cost of stage 1's cached hidden states).

    python bench/finetune_speed.py --profile ml100k [--variants ckpt,plain,labelled,freeze12] [--steps 6] [--seconds 0]

Prints a table and writes artifacts/bench/finetune_speed_<profile>.json.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from sidlib import config, paths, stages
from sidlib.llm import sft_data, train
from sidlib.models.train import set_seed
from sidlib.sids import SidTable

VARIANTS = ("ckpt", "plain", "labelled", "freeze12", "freeze20", "lora", "bf16", "forward")


def batches(cfg: config.Config, tok, frame: pd.DataFrame, n: int, seed: int, labelled: bool) -> list[dict]:
    data = train.encode_frame(frame, tok, cfg.llm)
    order = train.stage_order(len(data), seed, "stage2")
    coll = train.make_collator(tok, True, "sdpa", labelled_only=labelled)
    bs = cfg.finetune.batch_size
    return [coll([data[i] for i in order[s * bs:(s + 1) * bs]]) for s in range(n) if (s + 1) * bs <= len(order)]


def setup(variant: str, model, state: dict) -> tuple[object, list]:
    """The model ready for `variant` (weights reset), and its trainable parameters."""
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(True)
    freeze = variant.removesuffix("+bf16")
    if freeze.startswith("freeze"):
        train.freeze_lower(model, int(freeze.removeprefix("freeze")))
    if variant == "ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.config.use_cache = False
    if variant == "lora":
        from peft import LoraConfig, get_peft_model

        peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                              modules_to_save=["embed_tokens", "lm_head"])
        model = get_peft_model(model, peft_cfg)
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad]


def step(variant: str, model, opt, batch: dict) -> float:
    labelled = variant not in ("ckpt", "plain")
    b = dict(batch)
    labels = b.pop("labels")
    if not labelled:
        b.pop("logits_to_keep", None)
    if variant == "forward":
        with torch.no_grad():
            model.get_decoder()(input_ids=b["input_ids"], position_ids=b["position_ids"])
        return float("nan")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.endswith("bf16")):
        if labelled:
            loss = train.labelled_loss(model(**b), labels)
        else:
            loss = model(**b, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


@torch.no_grad()
def valid_loss(model, vbatches: list[dict]) -> float:
    model.eval()
    total, n = 0.0, 0
    for b in vbatches:
        b = dict(b)
        labels = b.pop("labels")
        out = model(**b)
        k = int((labels[:, 1:] != -100).sum())
        total += float(train.labelled_loss(out, labels)) * k
        n += k
    model.train()
    return total / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="ml100k")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--variants", default="ckpt,plain,labelled,freeze12,freeze20,lora,bf16,forward")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (+1 warm-up)")
    ap.add_argument("--seconds", type=float, default=0.0, help="wall time per variant for the learning measure (0: skip)")
    ap.add_argument("--valid", type=int, default=48, help="held-out conversations for the learning measure")
    ap.add_argument("--lr", type=float, default=0.0, help="AdamW LR (0: the profile's finetune.lr)")
    args = ap.parse_args()
    cfg = config.load(args.profile, args.set)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS and not v.startswith("freeze")]  # freeze<N>[+bf16]
    if bad:
        raise SystemExit(f"unknown variants {bad}; known: {VARIANTS} (freeze<N> or freeze<N>+bf16 for any N)")
    tr, va = sft_data.load(stages.SFT_DATA.dir(cfg.profile))
    table = SidTable.load(stages.SIDS.dir(cfg.profile))
    set_seed(cfg.seed)
    model, tok, _info = train.prepare_model(cfg, table, "cpu", "sdpa")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lr = args.lr or cfg.finetune.lr
    n_train = args.steps + 1 + (int(args.seconds) if args.seconds else 0)  # enough batches for the timed run
    train_b = batches(cfg, tok, tr, n_train, cfg.seed, labelled=True)
    valid_b = batches(cfg, tok, va.sample(n=min(args.valid, len(va)), random_state=0), 10**6, cfg.seed, True)
    rows = {}
    for v in variants:
        try:
            m, params = setup(v, model, state)
        except ImportError as e:
            print(f"{v}: skipped ({e}; pip install peft)")
            continue
        opt = torch.optim.AdamW(params, lr=lr, fused=True) if params and v != "forward" else None
        times, toks = [], 0
        for i, b in enumerate(train_b[: args.steps + 1]):
            t0 = time.perf_counter()
            step(v, m, opt, b)
            if i:
                times.append(time.perf_counter() - t0)
                toks += int(b["input_ids"].numel())
        row = {"tokens_per_second": round(toks / sum(times), 1), "seconds_per_step": round(sum(times) / len(times), 2),
               "trainable": sum(p.numel() for p in params) if v != "forward" else 0}
        if args.seconds and v != "forward":
            if v == "lora":  # get_peft_model wrapped the layers in place: unwrap before wrapping again
                model = m.unload()
            m, params = setup(v, model, state)
            opt = torch.optim.AdamW(params, lr=lr, fused=True)
            before = valid_loss(m, valid_b)
            t0, n, seen = time.perf_counter(), 0, 0
            while time.perf_counter() - t0 < args.seconds and n < len(train_b):
                step(v, m, opt, train_b[n])
                seen += int(train_b[n]["input_ids"].numel())
                n += 1
            row.update(valid_before=round(before, 4), valid_after=round(valid_loss(m, valid_b), 4), steps_in_budget=n,
                       tokens_in_budget=seen)
        if v == "lora":
            model = m.unload() if hasattr(m, "unload") else model  # back to the plain model for the next variant
        rows[v] = row
        print(v, row, flush=True)
    frame = pd.DataFrame(rows).T
    if "ckpt" in frame.index:
        frame["speedup_vs_ckpt"] = (frame["tokens_per_second"] / frame.loc["ckpt", "tokens_per_second"]).round(2)
    print(frame.to_string())
    res = {"profile": cfg.profile, "threads": torch.get_num_threads(), "torch": torch.__version__, "lr": lr,
           "batch_size": cfg.finetune.batch_size, "steps": args.steps, "seconds_budget": args.seconds,
           "variants": rows}
    out = paths.write_bench(f"finetune_speed_{cfg.profile}", res)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
