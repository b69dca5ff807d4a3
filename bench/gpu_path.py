"""Proves sidlib's GPU fine-tuning path and times it, on random-weight models of real shapes.

What it proves, through sidlib's own code (sidlib.llm.train: train_stage, make_collator,
labelled_loss, keep_mask; sidlib.llm.head.collect), with no download (models built from configs):
- `check-*`: packed rows (DataCollatorWithFlattening, position ids restarting per conversation)
  give the same loss as padded rows, in fp32 and under bf16 autocast, for sdpa and flex
  attention; `labelled_loss` on labelled-only logits equals the model's own loss; and the packed
  hidden states differ from the same row without position resets (no cross-conversation leak);
- `train-*`: a few Trainer steps of stage 2 (bf16, packing, labelled-only logits) per attention
  {sdpa, flex_attention, flash_attention_2 if flash_attn imports} x optimizer {adamw_torch_fused,
  adamw_bnb_8bit if bitsandbytes imports}: tokens/s (CUDA-synchronised, warm-up steps excluded),
  peak GPU memory, loss first -> last. Shapes: SmolLM2-135M (all 30 layers) and Qwen3-8B with
  fewer layers (4 and 8: the difference gives the cost per layer, extrapolated to 36 layers);
- `collect-*`: stage 1's cached forward pass (head.collect) over SmolLM2's shape.
Data: synthetic conversations of 60-300 tokens (Zipf-distributed ids, so the loss can fall),
labels on the last 8-30% of each, like 06's SFT rows. Each variant is isolated: an error is
reported in its row and the rest still run; `--max-seconds` skips what would not fit.

    bash bench/gpu_path.sh [--seconds-per-variant 20] [--max-seconds 420] [--only smol,check]
    python bench/gpu_path.py --cpu-check      # same code on CPU, fp32, tiny shapes: runs anywhere

Results: a table on stdout and JSON in --out (default $OUT/gpu_path.json when OUT is set, else
artifacts/bench/gpu_path.json via sidlib.paths.write_bench), rewritten after every variant.
On transformers < 5.23 (no `activation_checkpointing` argument, no boolean `logits_to_keep`)
two bench-only shims adapt sidlib's calls; the JSON lists them under `compat`.
"""
from __future__ import annotations

import argparse, gc, json, os, sys, tempfile, time, traceback  # noqa: E401
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import transformers.modeling_utils  # noqa: E402
import transformers.trainer  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from sidlib import paths  # noqa: E402
from sidlib.config import FinetuneConfig  # noqa: E402
from sidlib.llm import chat, head, train  # noqa: E402

SHAPES = {"smol": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=1e5,
                                 max_position_embeddings=8192)),
          "qwen3-8b": ("qwen3", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                                     rope_theta=1e6, max_position_embeddings=40960))}
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=2048)
FUSED, BNB = "adamw_torch_fused", "adamw_bnb_8bit"


def compat() -> list[str]:
    """Bench-only shims for transformers older than sidlib's code needs (the GPU machine's 5.17)."""
    done = []
    ta = transformers.TrainingArguments
    if "activation_checkpointing" not in ta.__dataclass_fields__:
        orig = train.training_args

        def make(activation_checkpointing=False, activation_checkpointing_kwargs=None, **kw):
            return ta(gradient_checkpointing=activation_checkpointing, gradient_checkpointing_kwargs=activation_checkpointing_kwargs, **kw)

        def shimmed(*a, **k):
            transformers.TrainingArguments = make
            try:
                return orig(*a, **k)
            finally:
                transformers.TrainingArguments = ta

        train.training_args = shimmed
        done.append("TrainingArguments(activation_checkpointing=) -> gradient_checkpointing=")
    if not hasattr(transformers.modeling_utils, "slice_logits_to_keep"):
        mask = train.keep_mask  # packed batches are one row: its True positions as a 1-D index
        train.keep_mask = lambda labels: torch.nonzero(mask(labels)[0]).flatten() if len(labels) == 1 else mask(labels)
        done.append("logits_to_keep [1,T] bool mask -> 1-D positions")
    return done


def importable(name: str) -> str | None:
    try:
        __import__(name)
        return None
    except Exception as e:  # noqa: BLE001 (a broken install is as unusable as a missing one)
        return f"{name} not importable: {type(e).__name__}: {str(e)[:120]}"


def build(shape: str, layers: int, attn: str, device: str, tiny: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    arch, kw = SHAPES[shape]
    kw = {**kw, "num_hidden_layers": layers, **(TINY if tiny else {})}
    cfg = (LlamaConfig if arch == "llama" else Qwen3Config)(**kw)
    torch.manual_seed(0)
    try:
        with torch.device(device):  # initialised on the GPU: seconds, not a minute of CPU init for 2B weights
            return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    except (RuntimeError, TypeError, ValueError) as e:  # a transformers that refuses: CPU init, then move
        print(f"build on {device} failed ({e}); building on the CPU", flush=True)
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32).to(device)


def conversations(n: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    pool = rng.choice(vocab, size=min(2000, vocab // 2), replace=False)
    p = 1.0 / np.arange(1, len(pool) + 1)
    rows = []
    for _ in range(n):
        n_tok = int(rng.integers(60, 301))
        k = max(4, int(n_tok * rng.uniform(0.08, 0.3)))
        ids = pool[rng.choice(len(pool), size=n_tok, p=p / p.sum())].tolist()
        rows.append({"input_ids": ids, "labels": [chat.IGNORE] * (n_tok - k) + ids[n_tok - k:], "length": n_tok})
    return rows


def as_dataset(rows: list[dict]):
    try:  # what 08 hands train_stage; a list of the same rows works as well where datasets is missing
        from datasets import Dataset

        return Dataset.from_list(rows)
    except ImportError:
        return rows


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Clock(TrainerCallback):
    """Times the steps after `warmup` (synchronised), stops after `budget` s or `max_steps`, keeps losses."""

    def __init__(self, warmup: int, budget: float, max_steps: int, device: str):
        self.warmup, self.budget, self.max_steps, self.device = warmup, budget, max_steps, device
        self.t0 = self.t1 = 0.0
        self.step = 0
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        sync(self.device)
        now, self.step = time.perf_counter(), state.global_step
        if self.step <= self.warmup:
            self.t0 = now
        elif now - self.t0 >= self.budget or self.step - self.warmup >= self.max_steps:
            control.should_training_stop = True
        self.t1 = now
        control.should_save = False

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def run_check(v: dict, a: argparse.Namespace, device: str) -> dict:
    model = build(v["shape"], v["layers"], v["attn"], device, a.cpu_check).eval()
    feats = conversations(6, model.config.vocab_size, seed=1)
    on = lambda b: {k: t.to(device) for k, t in b.items()}  # noqa: E731
    packed = on(train.make_collator(None, True, v["attn"])(feats))
    padded = on(train.make_collator(SimpleNamespace(pad_token_id=0), False, v["attn"])(feats))
    no_reset = {k: t for k, t in packed.items() if k != "position_ids"}
    lens, dec, out = [len(f["input_ids"]) for f in feats], model.get_decoder(), {}
    for mode in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=mode == "bf16"):
            l_pack, l_pad, l_mix = (model(**b, use_cache=False).loss.float().item() for b in (packed, padded, no_reset))
            keep = train.keep_mask(packed["labels"].cpu()).to(device)
            logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], logits_to_keep=keep, use_cache=False)
            l_lab = train.labelled_loss(logits, packed["labels"]).float().item()
            h = lambda **kw: dec(**kw, use_cache=False).last_hidden_state.float()  # noqa: E731
            h_pad = torch.cat([r[:n] for r, n in zip(h(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]), lens)])
            d_pack = (h(input_ids=packed["input_ids"], position_ids=packed["position_ids"])[0] - h_pad).abs().max().item()
            d_mix = (h(input_ids=packed["input_ids"])[0] - h_pad).abs().max().item()
        tol = (1e-4 if mode == "fp32" else 2e-3) * max(1.0, abs(l_pad))  # relative
        ok = abs(l_pack - l_pad) < tol and abs(l_lab - l_pack) < tol and d_pack * 5 < d_mix
        out[mode] = dict(packed=l_pack, padded=l_pad, no_reset=l_mix, labelled_only=l_lab, h_diff_packed=d_pack,
                         h_diff_no_reset=d_mix, tol=tol, ok=ok)
    bad = [m for m, r in out.items() if not r["ok"]]
    note = " ".join(f"{m}:|d|={abs(r['packed'] - r['padded']):.1e}" for m, r in out.items())
    return {"check": out, "loss": f"{out['bf16']['padded']:.3f}", "note": note, "status": "FAIL " + ",".join(bad) if bad else "ok"}


def run_train(v: dict, a: argparse.Namespace, device: str) -> dict:
    model = build(v["shape"], v["layers"], v["attn"], device, a.cpu_check)
    ft = FinetuneConfig()
    ft.batch_size, ft.grad_accum, ft.packing, ft.labelled_logits_only = v["bs"], 1, True, True
    ft.optim, ft.attn, ft.logging_steps, ft.save_steps, ft.warmup_ratio = v["optim"], v["attn"], 1, 10**9, 0.0
    ft.gradient_checkpointing = v.get("ckpt", False)
    max_steps = 6 if a.cpu_check else a.max_steps
    plan = train.StagePlan("stage2", a.lr, a.warmup + max_steps, 1.0, 0.01, 0.0)
    rows = conversations(v["bs"] * 25, model.config.vocab_size)
    clock = Clock(a.warmup, a.seconds_per_variant, max_steps, device)
    with tempfile.TemporaryDirectory() as tmp:
        res = train.train_stage(model, None, as_dataset(rows), plan, ft, Path(tmp), device, v["attn"], seed=0,
                                resume=False, callbacks=[clock])
    lens = [r["length"] for r in rows]  # sequential order, bs rows a step, epochs repeat the rows
    tokens = sum(lens[i % len(lens)] for i in range(a.warmup * v["bs"], clock.step * v["bs"]))
    seconds = clock.t1 - clock.t0
    loss = f"{clock.losses[0]:.3f}->{clock.losses[-1]:.3f}" if clock.losses else ""
    return {"steps_timed": clock.step - a.warmup, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9),
            "loss": loss, "losses": clock.losses, "sidlib_tokens_per_s_all_steps": res.tokens_per_second, "status": "ok"}


def run_collect(v: dict, a: argparse.Namespace, device: str) -> dict:
    model = build(v["shape"], v["layers"], v["attn"], device, a.cpu_check)
    vocab = model.config.vocab_size
    rows, new = conversations(v["n"], vocab), list(range(vocab - 1024 // (16 if a.cpu_check else 1), vocab))
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=v.get("bf16", False)):
        head.collect(model, rows[: 2 * v["bs"]], new, 256 * v["bs"], progress=False)  # warm-up
        st = head.collect(model, as_dataset(rows), new, 256 * v["bs"], progress=False)
    return {"tokens": st.tokens, "seconds": st.seconds, "tokens_per_s": st.tokens / max(st.seconds, 1e-9),
            "note": f"{len(st.label)} labelled positions, {'bf16 autocast' if v.get('bf16') else 'fp32'}", "status": "ok"}


def variants(a: argparse.Namespace, cuda: bool) -> list[dict]:
    no_cuda = None if cuda else "needs CUDA"
    bnb, fa2 = no_cuda or importable("bitsandbytes"), no_cuda or importable("flash_attn")
    s, q = (2, (1, 2)) if a.cpu_check else (30, (4, 8))  # smol layers, two qwen3-8b layer counts
    bs = 8 if a.cpu_check else 64
    t = lambda shape, layers, attn, optim, skip=None, **kw: dict(  # noqa: E731
        name=f"train-{shape}{layers}-{attn.split('_')[0]}-{'bnb8' if optim == BNB else 'fused'}{'-ckpt' if kw.get('ckpt') else ''}",
        kind="train", shape=shape, layers=layers, attn=attn, optim=optim, bs=bs, skip=skip, **kw)
    return [dict(name="check-smol-sdpa", kind="check", shape="smol", layers=s, attn="sdpa", bs=6),
            t("smol", s, "sdpa", FUSED), t("smol", s, "sdpa", BNB, bnb),
            dict(name="collect-smol-fp32-bs8", kind="collect", shape="smol", layers=s, attn="sdpa", bs=8, n=64 if a.cpu_check else 2000),
            t("qwen3-8b", q[0], "sdpa", FUSED), t("qwen3-8b", q[0], "sdpa", BNB, bnb), t("qwen3-8b", q[1], "sdpa", FUSED),
            dict(name="check-smol-flex", kind="check", shape="smol", layers=s, attn="flex_attention", bs=6),
            t("smol", s, "flex_attention", FUSED, no_cuda and "flex backward needs CUDA"),
            t("qwen3-8b", q[0], "flex_attention", FUSED, no_cuda and "flex backward needs CUDA"),
            t("smol", s, "flash_attention_2", FUSED, fa2), t("qwen3-8b", q[0], "flash_attention_2", FUSED, fa2),
            dict(name="collect-smol-bf16-bs64", kind="collect", shape="smol", layers=s, attn="sdpa", bs=64, n=2000, bf16=True, skip=no_cuda),
            t("smol", s, "sdpa", FUSED, ckpt=True)]


def extrapolate(recs: list[dict]) -> dict | None:
    """Qwen3-8B shape, sdpa + fused AdamW at two layer counts -> seconds/token per layer -> 36 layers."""
    ok = {r["layers"]: r for r in recs if r["kind"] == "train" and r["shape"] == "qwen3-8b" and r["attn"] == "sdpa"
          and r["optim"] == FUSED and r.get("status") == "ok" and not r.get("ckpt")}
    if len(ok) < 2:
        return None
    (la, ra), (lb, rb) = sorted(ok.items())[:2]
    per_layer = (1 / rb["tokens_per_s"] - 1 / ra["tokens_per_s"]) / (lb - la)
    mem_layer = (rb["peak_gib"] - ra["peak_gib"]) / (lb - la)
    if per_layer <= 0:
        return {"layers": [la, lb], "note": "no per-layer cost measured (noise)"}
    return {"layers": [la, lb], "ms_per_1k_tokens_per_layer": 1e6 * per_layer,
            "tokens_per_s_36_layers": 1 / (1 / ra["tokens_per_s"] + (36 - la) * per_layer),
            "peak_gib_36_layers_fp32_adamw": ra["peak_gib"] + (36 - la) * mem_layer}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-check", action="store_true", help="CPU, fp32, tiny shapes, every non-CUDA variant")
    ap.add_argument("--seconds-per-variant", type=float, default=20.0, help="timed seconds per training variant")
    ap.add_argument("--max-seconds", type=float, default=420.0, help="no variant starts that would end past this")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per training variant")
    ap.add_argument("--max-steps", type=int, default=500, help="timed steps cap per training variant")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names to run")
    ap.add_argument("--out", default=str(Path(os.environ["OUT"]) / "gpu_path.json") if os.environ.get("OUT") else "")
    a = ap.parse_args(argv)
    if a.cpu_check:
        a.seconds_per_variant, a.max_seconds = min(a.seconds_per_variant, 3.0), min(a.max_seconds, 600.0)
    t_start = time.perf_counter()
    transformers.logging.set_verbosity_error()
    # no per-step log lines (progress bar or printed dicts): the table says it
    transformers.trainer.DEFAULT_PROGRESS_CALLBACK = transformers.trainer.PrinterCallback = TrainerCallback
    cuda = torch.cuda.is_available() and not a.cpu_check
    device = "cuda" if cuda else "cpu"
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
           "device": torch.cuda.get_device_name(0) if cuda else "cpu", "datasets": importable("datasets") or "ok",
           "compat": compat(), "sidlib_auto_attn": train.resolve_attn(FinetuneConfig(), device),
           "sidlib_auto_optim": train.resolve_optim(FinetuneConfig(), device)}
    print(json.dumps(env, indent=1), flush=True)
    recs, runners = [], {"check": run_check, "train": run_train, "collect": run_collect}
    cols = "{:<34} {:>5} {:>9} {:>4} {:>10} {:>7} {:>13} {}"
    print(cols.format("variant", "layer", "optim", "bs", "tokens/s", "peakGiB", "loss", "status"), flush=True)
    for v in variants(a, cuda):
        if a.only and not any(s in v["name"] for s in a.only.split(",")):
            continue
        rec = {**v, "skip": None}
        if v.get("skip"):
            rec["status"] = f"skipped: {v['skip']}"
        elif time.perf_counter() - t_start + a.seconds_per_variant + 15 > a.max_seconds:
            rec["status"] = "skipped: --max-seconds"
        else:
            if cuda:  # what an earlier variant left allocated would show here and in the peak
                torch.cuda.reset_peak_memory_stats()
                rec["mem_before_gib"] = torch.cuda.memory_allocated() / 2**30
            t0 = time.perf_counter()
            try:
                rec.update(runners[v["kind"]](v, a, device))
            except Exception as e:  # noqa: BLE001 (one variant's failure is a result, not the end)
                rec["status"] = f"error: {type(e).__name__}: {str(e)[:240]}"
                print("".join(traceback.format_exc().splitlines(True)[-8:]), flush=True)
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            rec["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        recs.append(rec)
        tps = f"{rec['tokens_per_s']:.0f}" if "tokens_per_s" in rec else ""
        print(cols.format(v["name"], v["layers"], (v.get("optim") or "-").replace("adamw_", ""), v["bs"], tps,
                          f"{rec.get('peak_gib', float('nan')):.1f}", rec.get("loss", ""),
                          rec["status"] + (f" ({rec['note']})" if rec.get("note") else "")), flush=True)
        result = {"env": env, "args": vars(a), "seconds": round(time.perf_counter() - t_start, 1),
                  "variants": recs, "qwen3_8b_36_layers_estimate": extrapolate(recs)}
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(result, indent=1, default=float))
        else:
            a.out = str(paths.write_bench("gpu_path_cpu" if a.cpu_check else "gpu_path", result))
    print("qwen3-8b shape at 36 layers (from two layer counts):", json.dumps(extrapolate(recs)), flush=True)
    print(f"done in {time.perf_counter() - t_start:.0f} s; JSON: {a.out}", flush=True)
    failed = [r["name"] for r in recs if str(r.get("status", "")).startswith(("error", "FAIL"))]
    return 1 if failed and a.cpu_check else 0


if __name__ == "__main__":
    sys.exit(main())
