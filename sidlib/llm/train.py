"""Stage 08: fine-tune the base LLM to speak SIDs, in two stages, with the HF Trainer.

    python -m sidlib.llm.train --profile ml100k [--set finetune.stage1_steps=50 ...]
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m sidlib.llm.train --profile video-games

Stage 1 adds the SID tokens (sidlib.llm.vocab) and trains only the input and output embeddings
at a high LR, so the new rows move towards the meaning the SFT data gives them before stage 2
fine-tunes every weight at a low LR. Both stages are one `transformers.Trainer` run each: it does
the optimizer (8-bit AdamW through bitsandbytes on GPU), the cosine-to-min-LR schedule, clipping,
gradient checkpointing, bf16, checkpoints with resume, and DDP/FSDP under `accelerate launch`.

What we add by hand, and why:
- labels: loss on assistant tokens only (sidlib.llm.chat.encode);
- packing: `DataCollatorWithFlattening` concatenates a batch's conversations into one row with
  position ids restarting at 0 for each; transformers then builds a block-diagonal causal mask
  from the position ids (sdpa/eager, CPU) or uses flash-attention's varlen kernel (GPU), so no
  token attends across conversations and no padding is computed (tests/test_finetune.py checks
  packed loss == padded loss on a real batch);
- stage 1 updates only the new rows: a gradient hook zeroes the rows of the old vocabulary, so
  the model keeps its English while the SID rows learn (the seed trains whole matrices; with
  tied-then-untied embeddings at LR 1e-3 that drifts the text tokens for no gain).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .. import config as config_mod
from .. import stages
from ..config import Config, FinetuneConfig, LLMConfig
from ..device import resolve_device
from ..models.train import set_seed
from ..sids import SidTable
from . import base, chat, head, sft_data, vocab

log = logging.getLogger("sidlib.llm.train")

MODEL_DIR = "model"  # the final HF folder inside the stage folder


# --------------------------------------------------------------------------- data


def encode_frame(df: pd.DataFrame, tokenizer: Any, cfg: LLMConfig, max_samples: int = 0, seed: int = 0):
    """SFT conversations -> a `datasets.Dataset` of input_ids / labels / length. 06 already
    truncated to llm.max_length; anything still longer is dropped here, counted and logged."""
    if max_samples and len(df) > max_samples:
        df = df.sample(n=max_samples, random_state=seed)
    rows: dict[str, list[Any]] = {"input_ids": [], "labels": [], "length": [], "task": []}
    too_long = 0
    tasks = df["task"].astype(str).tolist() if "task" in df.columns else [""] * len(df)
    for messages, task in zip(df["messages"], tasks):
        enc = chat.encode(tokenizer, messages, cfg)
        if len(enc["input_ids"]) > cfg.max_length:
            too_long += 1
            continue
        rows["input_ids"].append(enc["input_ids"])
        rows["labels"].append(enc["labels"])
        rows["length"].append(len(enc["input_ids"]))
        rows["task"].append(task)
    if too_long:
        log.warning("dropped %d of %d conversations longer than llm.max_length=%d", too_long, len(df), cfg.max_length)
    if not rows["length"]:
        raise ValueError("no SFT conversation fits llm.max_length; rerun 06-sft-data with this max_length")
    return Dataset.from_dict(rows)


class PaddedCollator:
    """The unpacked baseline: right-pad each batch to its longest conversation."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), n), chat.IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"])
            labels[i, :k] = torch.as_tensor(f["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class Counting:
    """Wraps a collator and counts the real (non-padding) tokens it hands to the model.

    With `labelled_only` the batch also carries `logits_to_keep`: a [B, T] mask of the positions
    whose next token has a label. The model then projects only those hidden states onto the
    vocabulary (transformers' `logits_to_keep`), and `labelled_loss` scores them. In 06's data
    ~12% of the tokens are answer tokens, and the output projection over SmolLM2's 49k rows is
    ~20% of a step's compute: skipping it for the prompt tokens is 1.2x tokens/s (measured,
    docs/benchmarks.md) for exactly the same loss."""

    def __init__(self, inner: Any, labelled_only: bool = False):
        self.inner = inner
        self.labelled_only = labelled_only
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        feats = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        self.tokens += sum(len(f["input_ids"]) for f in feats)
        batch = self.inner(feats)
        if self.labelled_only:
            batch["logits_to_keep"] = keep_mask(batch["labels"])
        return batch


def keep_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] True where position t predicts a labelled token t+1."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != chat.IGNORE
    return keep


def labelled_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Causal-LM cross-entropy from the logits of the kept positions only ([kept, vocab], in the
    row-major order of `keep_mask`): the same value as the model's own loss on the full logits."""
    targets = labels[:, 1:][labels[:, 1:] != chat.IGNORE]
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets.to(logits.device), reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else max(len(targets), 1)
    return loss / n


def make_collator(tokenizer: Any, packing: bool, attn: str, labelled_only: bool = False) -> Counting:
    if packing:
        # cu_seq_lens for flash-attention's varlen kernel; sdpa/eager read the position ids
        return Counting(DataCollatorWithFlattening(return_flash_attn_kwargs=attn == "flash_attention_2"), labelled_only)
    return Counting(PaddedCollator(tokenizer.pad_token_id), labelled_only)


# --------------------------------------------------------------------------- settings


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def resolve_attn(cfg: FinetuneConfig, device: str) -> str:
    """auto: flash-attention 2 on CUDA when installed; else PyTorch's flex attention on CUDA, which
    runs packed rows block-sparse from their position ids (the varlen path without a flash-attn
    wheel: 3.2x sdpa's tokens/s on an H200, SmolLM2's shape, bench/gpu_path.py); sdpa on the CPU
    (flex attention has no CPU backward)."""
    if cfg.attn != "auto":
        return cfg.attn
    if device.startswith("cuda"):
        if importable("flash_attn"):
            return "flash_attention_2"
        if importable("torch.nn.attention.flex_attention"):
            return "flex_attention"
    return "sdpa"


def resolve_optim(cfg: FinetuneConfig, device: str) -> str:
    if cfg.optim != "auto":
        return cfg.optim
    if device.startswith("cuda"):
        try:
            # lazy: bitsandbytes is the optional `gpu` extra and this import is the probe for it
            import bitsandbytes  # noqa: F401

            return "adamw_bnb_8bit"
        except ImportError:
            log.warning("bitsandbytes is not installed: full-precision AdamW (pip install -e .[gpu] for 8-bit)")
    # the fused kernel: on a 2-core CPU one AdamW step over SmolLM2's 135M weights takes ~0.3 s
    # fused against ~1.3 s foreach and ~2.3 s per-tensor (measured, docs/benchmarks.md)
    return "adamw_torch_fused"


def resolve_bf16(cfg: FinetuneConfig, device: str) -> bool:
    """finetune.bf16: "on" | "off" | "auto" (a CUDA GPU with bf16, or a CPU with AMX tiles: there
    oneDNN runs bf16 matmuls natively; without AMX the CPU emulates them, slower than fp32)."""
    if cfg.bf16 not in ("auto", "on", "off"):
        raise config_mod.ConfigError(f"finetune.bf16 = {cfg.bf16!r}: expected auto, on or off")
    if cfg.bf16 != "auto":
        return cfg.bf16 == "on"
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device == "cpu" and torch.cpu._is_amx_tile_supported()


@dataclass
class StagePlan:
    name: str  # stage1 | stage2
    lr: float
    max_steps: int  # -1 = by epochs
    epochs: float
    weight_decay: float
    warmup: float


def plans(cfg: FinetuneConfig) -> list[StagePlan]:
    return [
        # no weight decay in stage 1: it would shrink the frozen-by-hook old rows' neighbours
        # (the new rows) towards zero for nothing
        StagePlan("stage1", cfg.stage1_lr, cfg.stage1_steps, 1.0, 0.0, cfg.warmup_ratio),
        StagePlan("stage2", cfg.lr, cfg.stage2_max_steps or -1, cfg.stage2_epochs, cfg.weight_decay, cfg.warmup_ratio),
    ]


def warmup_steps(plan: StagePlan, cfg: FinetuneConfig, n_samples: int, world: int = 1) -> int:
    """Warmup in whole steps. Linear warmup runs its first step at LR 0, so a warmup of one step
    only wastes that step (as 20 steps x 0.03 did): shorter than 2 steps means none."""
    per_step = max(cfg.batch_size * cfg.grad_accum * world, 1)
    steps = plan.max_steps if plan.max_steps > 0 else math.ceil(plan.epochs * math.ceil(n_samples / per_step))
    n = round(plan.warmup * steps) if plan.warmup < 1 else int(plan.warmup)
    return n if n >= 2 else 0


def stage_order(n: int, seed: int, stage: str, tasks: list[str] | None = None,
                first: list[str] | tuple[str, ...] = ()) -> list[int]:
    """The order a stage reads the conversations in: a permutation seeded by (seed, stage), so
    the two stages see different conversations first (with one seed they replayed the same
    batches) and a capped stage trains on a random sample of every task. Conversations of the
    `first` tasks (per row `tasks`) come before all others, task by task in the listed order:
    stage 1's curriculum puts the whole catalogue (title -> SID, every item once) ahead of the
    sessions, and those ahead of the rest."""
    salt = {"stage1": 1, "stage2": 2}.get(stage, 3)
    order = np.random.default_rng([seed, salt]).permutation(n).tolist()
    if first and tasks is not None:
        head_ = [i for t in first for i in order if tasks[i] == t]
        order = head_ + [i for i in order if tasks[i] not in first]
    return order


def training_args(plan: StagePlan, cfg: FinetuneConfig, out: Path, device: str, seed: int, warmup: int) -> Any:
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=plan.lr,
        max_steps=plan.max_steps,
        num_train_epochs=plan.epochs,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=warmup,
        weight_decay=plan.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=resolve_optim(cfg, device),
        bf16=resolve_bf16(cfg, device),
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=device == "cpu",
        seed=seed,
        # the dataset is already in the stage's own seeded order (stage_order)
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
    )


# --------------------------------------------------------------------------- trainer pieces


class Throughput(TrainerCallback):
    """Adds tokens/s (real tokens, from the counting collator) to every log line and keeps the
    loss history for the curves."""

    def __init__(self, counter: Counting) -> None:
        self.counter = counter
        self.t0, self.tokens0 = time.perf_counter(), counter.tokens
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        self.t0, self.tokens0 = time.perf_counter(), self.counter.tokens

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        if logs is None:
            return
        dt = time.perf_counter() - self.t0
        logs["tokens_per_second"] = round((self.counter.tokens - self.tokens0) / max(dt, 1e-9), 1)
        if "loss" in logs:
            self.history.append({"step": state.global_step, "loss": float(logs["loss"]),
                                 "tokens_per_second": logs["tokens_per_second"]})


def last_checkpoint(folder: Path) -> str | None:
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def data_key(sft_train: pd.DataFrame, table: SidTable) -> str:
    """What the checkpoints learned from: every item's codes and every conversation. Settings
    alone are not enough: a new SID table of the same shape (another dedup order, another RQ-VAE
    run) with as many conversations would otherwise resume, or take as finished, a model of other SIDs."""
    h = hashlib.sha256(np.ascontiguousarray(table.codes).tobytes())
    for messages in sft_train["messages"]:  # lists of dicts (numpy arrays of them when read from parquet)
        h.update(json.dumps(list(messages), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def fresh(folder: Path, fingerprint: dict[str, Any]) -> None:
    """Checkpoints of other settings cannot be resumed: clear the folder when they differ."""
    stamp = folder / "fingerprint.json"
    blob = json.dumps(fingerprint, sort_keys=True, default=str)
    if folder.exists() and (not stamp.exists() or stamp.read_text() != blob):
        log.info("settings changed: clearing %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(blob)


def mask_old_rows(model: Any, new_ids: list[int]) -> list[Any]:
    """Gradient hooks that zero every row of both embedding matrices but the new tokens' (the old
    vocabulary, and any spare rows a model keeps beyond its tokenizer)."""
    hooks = []
    for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        keep = torch.zeros(w.shape[0], 1, dtype=w.dtype)
        keep[torch.as_tensor(new_ids, dtype=torch.long)] = 1

        def zero_old(g: torch.Tensor, keep: torch.Tensor = keep) -> torch.Tensor:
            return g * keep.to(g.device, g.dtype)

        hooks.append(w.register_hook(zero_old))
    return hooks


@dataclass
class StageResult:
    steps: int
    seconds: float
    tokens: int
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # stage 1 cached: the fit's report

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def train_stage(model: Any, tokenizer: Any, dataset: Any, plan: StagePlan, cfg: FinetuneConfig, out: Path,
                device: str, attn: str, seed: int, resume: bool = True, save_to: Path | None = None,
                callbacks: list[Any] | None = None) -> StageResult:
    """One Trainer run over `dataset` in its order; checkpoints in `out` (optimizer state
    included), resumed from the last one. The trained model is saved to `save_to` by the Trainer
    (main process only; FSDP shards gathered)."""
    labelled = cfg.labelled_logits_only and cfg.packing  # padded rows: the model's own loss
    collator = make_collator(tokenizer, cfg.packing, attn, labelled_only=labelled)
    # transformers reads packed position ids as conversation boundaries only without a KV cache
    # (with one it silently attends across conversations): training never uses the cache
    model.config.use_cache = False
    cb = Throughput(collator)
    warmup = warmup_steps(plan, cfg, len(dataset), PartialState().num_processes)
    trainer = Trainer(model=model, args=training_args(plan, cfg, out, device, seed, warmup), train_dataset=dataset,
                      data_collator=collator, callbacks=[cb, *(callbacks or [])],
                      compute_loss_func=labelled_loss if labelled else None)
    ckpt = last_checkpoint(out) if resume else None
    if ckpt:
        log.info("%s: resuming from %s", plan.name, ckpt)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=ckpt)
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in cb.history]
    tokens = collator.tokens
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every process counted its own share of the batches: the run's tokens are the sum
        t = torch.tensor([tokens], dtype=torch.long, device=trainer.args.device)
        torch.distributed.all_reduce(t)
        tokens = int(t.item())
    if save_to is not None:
        model.config.use_cache = True  # the saved model generates
        trainer.save_model(str(save_to))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(save_to)
        model.config.use_cache = False
    return StageResult(steps=int(trainer.state.global_step), seconds=seconds, tokens=tokens,
                       final_loss=float(losses[-1] if losses else result.training_loss), history=cb.history)


def freeze_lower(model: Any, n_layers: int) -> int:
    """Stage 2 with finetune.freeze_layers: input embeddings and the lowest n decoder layers stay
    as they are (no gradient, so no backward pass below layer n). Returns trainable params."""
    layers = model.get_decoder().layers
    if n_layers >= len(layers):
        raise ValueError(f"finetune.freeze_layers={n_layers}: the model has {len(layers)} layers; keep at least one training")
    for p in model.parameters():
        p.requires_grad_(True)
    if n_layers > 0:
        model.get_input_embeddings().weight.requires_grad_(False)
        for layer in layers[:n_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stage1_cached(cfg: Config, model: Any, tok: Any, table: SidTable, data: Any, done: Path,
                  main_proc: bool) -> StageResult:
    """Stage 1 on cached hidden states (sidlib.llm.head), run by the main process alone (it is
    deterministic and cheap to share: the other processes load the saved folder for stage 2)."""
    ft = cfg.finetune
    if not main_proc:
        return StageResult(steps=0, seconds=0.0, tokens=0, final_loss=math.nan)
    model.to(resolve_device(cfg.llm.device))  # the forward passes on the GPU when there is one
    # the SID rows, and the end-of-turn row: after <|sid_end|> (a token the trunk has never read)
    # the frozen trunk does not predict the end of the turn, and only that row can learn it here
    rows = list(dict.fromkeys(vocab.sid_token_ids(tok, table.scheme) + chat.end_token_ids(tok, model)))
    # 256 tokens a conversation of the batch: 2,048 on the CPU profiles (batch_size 8), more on a GPU
    rep = head.stage1_cached(model, data, rows, ft.stage1_epochs, ft.stage1_lr, 256 * ft.batch_size, cfg.seed)
    done.mkdir(parents=True, exist_ok=True)
    model.to("cpu")
    model.config.use_cache = True
    model.save_pretrained(done)
    tok.save_pretrained(done)
    model.config.use_cache = False
    history = [{"step": r["epoch"], "loss": r.get("valid_loss", r["train_loss"]), "train_loss": r["train_loss"]}
               for r in rep["curve"]]
    seconds = rep["collect_seconds"] + rep["fit_seconds"]
    return StageResult(steps=rep["best_epoch"], seconds=seconds, tokens=rep["tokens"],
                       final_loss=float(rep["after"].get("loss", math.nan)), history=history,
                       extra={k: v for k, v in rep.items() if k != "curve"})


# --------------------------------------------------------------------------- the stage


def prepare_model(cfg: Config, table: SidTable, device: str, attn: str) -> tuple[Any, Any, dict[str, Any]]:
    """Base model + tokenizer with the SID tokens added and initialised (cfg.finetune.init)."""
    tok = base.load_tokenizer(cfg.llm)
    n_before = len(tok)
    vocab.add_sid_tokens(tok, table.scheme)
    vocab.check_sid_tokenization(tok, table.scheme, table.df["sid"].head(50).tolist())
    if cfg.llm.model == "tiny":
        model = base.tiny_model(cfg.llm, n_before)
    else:
        model = base.load_model(cfg.llm, device="cpu", attn=attn)
    info = vocab.resize_and_init(model, tok, table.scheme, cfg.finetune.init, table.codes, table.df["title"].tolist(),
                                 structure=cfg.finetune.structure)
    model.config.use_cache = False  # training; generation turns it back on
    return model, tok, info


def finetune(cfg: Config, sft_train: pd.DataFrame, table: SidTable, out: Path | None = None,
             resume: bool = True, which: tuple[str, ...] = ("stage1", "stage2"),
             callbacks: list[Any] | None = None, on_stage1: Any = None) -> dict[str, Any]:
    """Both stages; returns the metrics of summary.json's `finetune` entry plus the loss curves.

    Stage 1 saves to <out>/stage1/final, stage 2 starts from there and saves the final model to
    <out>/model: a normal HF folder (tokenizer included) with the SID table beside the weights,
    so the model never travels without the meaning of its tokens. A finished stage is not rerun
    when resuming; an interrupted one resumes from its last checkpoint. `callbacks` go to the
    stage-2 Trainer and `on_stage1(model, tok)` runs after stage 1 (bench/llm_curve.py measures
    the model along the way)."""
    out = Path(out or stages.FINETUNE.dir(cfg.profile, create=True))
    ft = cfg.finetune
    device = resolve_device(cfg.llm.device)
    attn = resolve_attn(ft, device)
    main_proc = PartialState().is_main_process
    set_seed(cfg.seed)
    if main_proc:
        fresh(out, {"finetune": cfg.to_dict()["finetune"], "llm": cfg.to_dict()["llm"], "seed": cfg.seed,
                    "n_train": len(sft_train), "sids": table.scheme.to_dict(), "data": data_key(sft_train, table)})
    PartialState().wait_for_everyone()
    results: dict[str, StageResult] = {}
    vocab_info: dict[str, Any] = {}
    source: Path | None = None  # the folder the next stage starts from
    data = None
    for plan in plans(ft):
        done = out / (MODEL_DIR if plan.name == "stage2" else f"{plan.name}/final")
        if plan.name not in which:
            continue
        if resume and (done / "result.json").exists():
            log.info("%s already finished (%s)", plan.name, done)
            saved = json.loads((done / "result.json").read_text())
            vocab_info = saved.pop("vocab", vocab_info)
            results[plan.name] = StageResult(**saved)
            source = done
            continue
        if source is None:
            model, tok, vocab_info = prepare_model(cfg, table, device, attn)
        else:
            tok = base.load_tokenizer(cfg.llm, source=source)
            model = base.load_model(cfg.llm, source=source, device="cpu", attn=attn)
            model.config.use_cache = False
        if data is None:
            data = encode_frame(sft_train, tok, cfg.llm, ft.max_train_samples, cfg.seed)
        first = ft.stage1_first if plan.name == "stage1" else ()
        order = stage_order(len(data), cfg.seed, plan.name, data["task"], first)
        if plan.name == "stage1" and ft.stage1_mode == "cached":
            res = stage1_cached(cfg, model, tok, table, data.select(order[: ft.stage1_samples or len(order)]), done,
                                main_proc)
        else:
            hooks = []
            if plan.name == "stage1":
                trainable = vocab.freeze_all_but_embeddings(model)
                hooks = mask_old_rows(model, vocab.sid_token_ids(tok, table.scheme))
            else:
                trainable = freeze_lower(model, ft.freeze_layers)
            log.info("%s: %d trainable parameters, lr %g", plan.name, trainable, plan.lr)
            res = train_stage(model, tok, data.select(order), plan, ft, out / plan.name, device, attn, cfg.seed,
                              resume, save_to=done, callbacks=callbacks if plan.name == "stage2" else None)
            for h in hooks:
                h.remove()
        results[plan.name] = res
        if plan.name == "stage1" and on_stage1 is not None:
            on_stage1(model, tok)
        if main_proc:
            (done / "result.json").write_text(json.dumps({**res.__dict__, "vocab": vocab_info}))
        # only the main process writes `done`; the others read it next (stage 2 starts from it), so
        # they wait until it is whole: without this, a rerun over an old folder can read half a file
        PartialState().wait_for_everyone()
        source = done
    s1, s2 = results.get("stage1"), results.get("stage2")
    last = s2 or s1
    metrics = {
        "stage1_steps": s1.steps if s1 else 0,
        "stage2_steps": s2.steps if s2 else 0,
        "train_tokens": sum(r.tokens for r in results.values()),
        "tokens_per_second": round(last.tokens_per_second, 1) if last else 0.0,
        "final_loss": round(last.final_loss, 4) if last else math.nan,
        "stage1_loss": round(s1.final_loss, 4) if s1 else None,
        "stage1_tokens_per_second": round(s1.tokens_per_second, 1) if s1 else None,
        "stage1_mode": ft.stage1_mode,
        "stage1_fit": (s1.extra or None) if s1 else None,
        "stage2_tokens_per_second": round(s2.tokens_per_second, 1) if s2 else None,
        "freeze_layers": ft.freeze_layers,
        "train_samples": len(sft_train) if not ft.max_train_samples else min(len(sft_train), ft.max_train_samples),
        "packing": ft.packing,
        "attn": attn,
        "device": device,
        "bf16": resolve_bf16(ft, device),
        "processes": PartialState().num_processes,
        "init": ft.init,
        "vocab": vocab_info,
        "seconds": round(sum(r.seconds for r in results.values()), 1),
    }
    if main_proc and source is not None:
        table.save(source, extra={"finetune": {k: v for k, v in metrics.items() if k != "vocab"}})
        curves = {name: r.history for name, r in results.items()}
        (out / "finetune_report.json").write_text(json.dumps({"metrics": metrics, "curves": curves}, indent=2, default=str))
    return {"metrics": metrics, "curves": {name: r.history for name, r in results.items()},
            "model_dir": str(source) if source else None}


# --------------------------------------------------------------------------- entry point


def run(cfg: Config, resume: bool = True) -> dict[str, Any]:
    """What notebook 08 and the CLI both do: read 06 and 05, fine-tune, write the stage folder."""
    train, _valid = sft_data.load(stages.SFT_DATA.dir(cfg.profile))
    table = SidTable.load(stages.SIDS.dir(cfg.profile))
    return finetune(cfg, train, table, resume=resume)


def main(argv: list[str] | None = None) -> int:
    ap = config_mod.cli_parser("python -m sidlib.llm.train", __doc__.split("\n")[0])
    ap.add_argument("--no-resume", action="store_true", help="start over instead of resuming from checkpoints")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_mod.from_cli(args)
    out = run(cfg, resume=not args.no_resume)
    print(json.dumps(out["metrics"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
