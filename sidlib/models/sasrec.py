"""SASRec (Kang & McAuley 2018) on item IDs, and the training / evaluation plumbing that
SID-SASRec shares.

Model: item embedding (scaled by sqrt(d)) + learned positions → dropout → `blocks` pre-LN
causal self-attention blocks (`nn.TransformerEncoderLayer`, point-wise FFN of width d as in
the paper) → LayerNorm. Item i is token i + 1; 0 is padding. Histories are left-padded to
`max_len` (longer ones keep their most recent `max_len` items), so the last position is always
the newest item. An item's score is the dot product of the last hidden state with its
(input-tied) embedding.

Training is sequence-to-sequence on the training prefixes (`split.training_sequences`):
position t predicts item t + 1, for every position at once; a prefix longer than
max_len + 1 contributes its most recent max_len + 1 items. Losses:

* `ce`  — softmax cross-entropy over all items (Klenitskiy & Vasilev 2023, "SASRec+"),
* `bce` — the original: binary cross-entropy of the positive against `negatives` items drawn
  uniformly from the other items per position.

`fit()` early-stops on valid NDCG@10 measured with `sidlib.metrics` (the protocol settings of
`BaselineConfig`), saves a checkpoint every epoch and resumes from it with `resume=True`.
`run()` = fit + valid + test report, with `cold_unseen`: eval targets that never occur in the
training prefixes — their ID embeddings are untrained, so an ID model cannot rank them
meaningfully (SID models share codes across items and can).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sidlib import metrics
from sidlib import split as S
from sidlib.config import BaselineConfig
from sidlib.models.train import (
    Checkpointer, FitResult, epoch_rng, fit_loop, is_main_process, loss_fn, pick_device, set_seed, shard,
)

LOSSES = ("ce", "bce")


# --------------------------------------------------------------------------- sequences


def pad_left(histories: Sequence[Sequence[int]], max_len: int, n_items: int | None = None) -> torch.Tensor:
    """Histories (item ids) → LongTensor [B, W] of tokens (item + 1), left-padded with 0.

    W = min(max_len, longest history) (the encoder numbers positions from the right edge, so
    a narrower batch is the same computation). Longer histories keep their last max_len
    items. An empty history is an error: a sequential model has nothing to condition on
    (score such users with a popularity fallback outside the model).
    """
    width = min(max_len, max((len(h) for h in histories), default=1))
    out = np.zeros((len(histories), width), dtype=np.int64)
    for i, h in enumerate(histories):
        if len(h) == 0:
            raise ValueError(f"history {i} is empty: sequential models need at least one item")
        tail = np.asarray(h[-width:], dtype=np.int64)
        out[i, width - len(tail) :] = tail + 1
    if len(histories) and n_items is not None:
        lo, hi = int(out[out > 0].min()) - 1, int(out.max()) - 1
        if lo < 0 or hi >= n_items:
            raise ValueError(f"history item ids must lie in [0, {n_items}), got [{lo}, {hi}]")
    return torch.from_numpy(out)


def training_arrays(sequences: Sequence[Sequence[int]], max_len: int, stride: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seq-to-seq pairs: inputs [N, max_len], targets [N, max_len] as tokens (item + 1, 0 = none).

    A sequence longer than max_len + 1 is cut, from its end, into windows of max_len + 1 items,
    one every `stride` items (0 = max_len: windows overlapping by one), and every transition
    a -> b of the sequence is a training target exactly once (keeping only the last window
    would throw away most of a long history, e.g. the ~100-item MovieLens users). Each window
    gives inputs w[:-1] and targets w[1:], right-aligned; with stride < max_len a window keeps
    only its last `stride` targets (the earlier ones are the next window's), so every target
    but a sequence's first max_len sees >= max_len - stride items of history, as a prefix
    sample of RecBole's does, at max_len / stride times the windows.
    """
    stride = int(stride) or max_len
    if not 1 <= stride <= max_len:
        raise ValueError(f"window stride must be in 1..max_len ({max_len}), got {stride}")
    windows: list[tuple[np.ndarray, int]] = []  # (window, index in it of its first kept target)
    for s in sequences:
        s = np.asarray(s, dtype=np.int64) + 1
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            windows.append((s[start:end], 1 if start == 0 else end - stride - start))
            if start == 0:
                break
            end -= stride
    inp = np.zeros((len(windows), max_len), dtype=np.int64)
    tgt = np.zeros((len(windows), max_len), dtype=np.int64)
    for i, (w, first) in enumerate(windows):
        n = len(w) - 1
        inp[i, max_len - n:] = w[:-1]
        tgt[i, max_len - n:] = w[1:]
        tgt[i, max_len - n: max_len - n + first - 1] = 0  # targets w[1:first] belong to an earlier window
    return inp, tgt


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 16) -> list[np.ndarray]:
    """Shuffled batches of row indices, each drawn from rows of similar length.

    Rows are shuffled, cut into pools of `pool` batches, sorted by length inside a pool, cut
    into batches, and the batches shuffled: every row once per epoch, little padding.
    """
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    for a in range(0, len(order), batch_size * pool):
        part = order[a : a + batch_size * pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# --------------------------------------------------------------------------- model


class CausalEncoder(nn.Module):
    """Learned positions + pre-LN causal transformer blocks + final LayerNorm over [B, L, d].

    Attention is causal, never looks at padding keys (a pad query attends to itself only,
    so no softmax row is empty), and padded positions are zeroed after every block.
    """

    def __init__(self, hidden: int, blocks: int, heads: int, dropout: float, max_len: int, ffn: int | None = None):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.max_len, self.heads = max_len, heads
        self.pos = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                hidden, heads, dim_feedforward=ffn or hidden, dropout=dropout, activation="relu",
                batch_first=True, norm_first=True,
            )
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(hidden, eps=1e-8)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: [B, L, d] input embeddings; keep: bool [B, L], False at padding."""
        b, length, _ = x.shape
        if length > self.max_len:
            raise ValueError(f"sequence length {length} > max_len {self.max_len}")
        pos = torch.arange(self.max_len - length, self.max_len, device=x.device)
        x = self.drop(x + self.pos(pos)[None]) * keep[..., None]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        mask = causal[None] | ~keep[:, None, :]
        mask = mask & ~torch.eye(length, dtype=torch.bool, device=x.device)[None]
        mask = mask.repeat_interleave(self.heads, dim=0)  # [B * heads, L, L], True = blocked
        for layer in self.layers:
            x = layer(x, src_mask=mask) * keep[..., None]
        return self.norm(x)


class SequentialModel(Protocol):
    """What `fit` / `evaluate_split` need from a model (SASRec and SIDSASRec)."""

    n_items: int
    max_len: int

    def loss(self, inp: torch.Tensor, tgt: torch.Tensor, kind: str, negatives: int) -> torch.Tensor: ...

    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor: ...


class SASRec(nn.Module):
    """SASRec over item IDs. `score(histories)` → [B, n_items] scores of every item."""

    name = "sasrec"

    def __init__(self, n_items: int, max_len: int = 50, hidden: int = 64, blocks: int = 2, heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.n_items, self.max_len, self.hidden = int(n_items), int(max_len), int(hidden)
        self.config = dict(n_items=n_items, max_len=max_len, hidden=hidden, blocks=blocks, heads=heads, dropout=dropout)
        self.item = nn.Embedding(self.n_items + 1, hidden, padding_idx=0)
        self.encoder = CausalEncoder(hidden, blocks, heads, dropout, max_len)
        nn.init.normal_(self.item.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    @classmethod
    def from_config(cls, n_items: int, cfg: BaselineConfig) -> "SASRec":
        return cls(n_items, cfg.max_len, cfg.sasrec.hidden, cfg.sasrec.blocks, cfg.sasrec.heads, cfg.dropout)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: tokens [B, L] (item + 1, 0 = pad) → hidden states [B, L, d]."""
        return self.encoder(self.item(seq) * math.sqrt(self.hidden), seq > 0)

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[1:].T

    def loss(self, inp: torch.Tensor, tgt: torch.Tensor, kind: str = "ce", negatives: int = 1) -> torch.Tensor:
        h = self(inp)
        at = tgt > 0
        h, pos = h[at], tgt[at] - 1  # [T, d], [T] item ids
        if kind == "ce":
            return F.cross_entropy(self.item_logits(h), pos)
        if kind == "bce":
            # uniform over the other items: pos + U{1..n-1} mod n is never the positive
            neg = (pos[:, None] + torch.randint(1, self.n_items, (len(pos), negatives), device=pos.device)) % self.n_items
            pos_logit = (h * self.item.weight[pos + 1]).sum(-1)
            neg_logit = (h[:, None, :] * self.item.weight[neg + 1]).sum(-1)
            return F.softplus(-pos_logit).mean() + F.softplus(neg_logit).sum(-1).mean()
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        seq = pad_left(histories, self.max_len, self.n_items).to(self.item.weight.device)
        return self.item_logits(self(seq)[:, -1])


# --------------------------------------------------------------------------- fit / evaluate


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_split(
    model: SequentialModel, split: pd.DataFrame, which: str, cfg: BaselineConfig, train_counts: np.ndarray | None = None,
    seed: int = 0, return_ranks: bool = False,
) -> dict[str, Any]:
    """sidlib.metrics report of `model` on split `which` ("valid" | "test") under cfg's protocol.

    Samples with an empty history (possible with official splits: a user with no train row)
    cannot be scored by a sequential model; they are left out and counted in
    "skipped_empty_history" (the same users SID-GR leaves out).
    """
    if train_counts is None:
        train_counts = S.item_train_counts(split, model.n_items)
    samples = S.samples(split, which)
    empty = samples["history"].map(len).to_numpy() == 0
    samples = samples[~empty].reset_index(drop=True)
    was_training = model.training
    model.eval()
    try:
        res = metrics.evaluate_model(
            model.score, samples, model.n_items, cfg.eval_batch_size,
            exclude_history=cfg.exclude_history, sampled=cfg.sampled_negatives, seed=seed,
            train_counts=train_counts, cold_threshold=cfg.cold_threshold, return_ranks=return_ranks,
        )
    finally:
        model.train(was_training)
    res["skipped_empty_history"] = int(empty.sum())
    return res


def fit(
    model: SequentialModel, split: pd.DataFrame, cfg: BaselineConfig, *, ckpt_dir: str | Path | None = None,
    resume: bool = False, seed: int = 42, epochs: int | None = None, log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `model` (already on its device) on the split's training prefixes.

    Early stopping on valid NDCG@10 (patience counts evaluations), a checkpoint every epoch in
    ckpt_dir, `resume=True` continues from its last one; the best weights are loaded at the end.
    `epochs` overrides cfg.epochs. Under `accelerate launch` each process trains on its share of
    every epoch's batches (cfg.batch_size per process) and DDP averages the gradients.
    """
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    set_seed(seed)
    device = _device(model)
    seqs = S.training_sequences(split)["item_ids"].tolist()
    inp_all, tgt_all = training_arrays(seqs, model.max_len, cfg.window_stride)
    if len(inp_all) == 0:
        raise ValueError("no training prefix has 2 or more items: nothing to train on")
    lengths = (inp_all > 0).sum(1)
    counts = S.item_train_counts(split, model.n_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    step_loss = loss_fn(model)  # model.loss, through DDP when several processes train

    def train_epoch(epoch: int) -> float:
        total, n = 0.0, 0
        for idx in shard(length_batches(lengths, cfg.batch_size, epoch_rng(seed, epoch))):
            width = int(lengths[idx].max())  # crop the all-padding columns on the left
            inp = torch.from_numpy(inp_all[idx, -width:]).to(device)
            tgt = torch.from_numpy(tgt_all[idx, -width:]).to(device)
            loss = step_loss(inp, tgt, cfg.loss, cfg.negatives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        return total / n

    vsplit = S.sample_users(split, "valid", cfg.valid_users, seed)

    def evaluate(epoch: int) -> dict[str, float]:
        res = evaluate_split(model, vsplit, "valid", cfg, counts, seed=seed)
        cold = {f"cold_{k}": v for k, v in res["cold"].items()}
        return {**res["all"], **cold, "n_cold": res["n_cold"], "cold_unseen": res.get("cold_unseen", 0)}

    return fit_loop(
        model, optimizer, train_epoch, evaluate, epochs=cfg.epochs if epochs is None else epochs,
        patience=cfg.patience, eval_every=cfg.eval_every, monitor="ndcg@10",
        checkpointer=Checkpointer(ckpt_dir) if ckpt_dir is not None else None, resume=resume, seed=seed, log=log,
    )


def report(model: SequentialModel, split: pd.DataFrame, cfg: BaselineConfig, fit_result: FitResult | None = None, seed: int = 42) -> dict[str, Any]:
    """{"model", "valid", "test", "cold_unseen", "n_params", "fit"}: one entry of the baselines table."""
    counts = S.item_train_counts(split, model.n_items)
    out: dict[str, Any] = {"model": getattr(model, "name", type(model).__name__)}
    for which in ("valid", "test"):
        t0 = time.perf_counter()
        # test ranks per user: 09 measures every model on the LLM's users (sidlib.metrics.on_users)
        out[which] = evaluate_split(model, split, which, cfg, counts, seed=seed, return_ranks=which == "test")
        out[which]["seconds"] = time.perf_counter() - t0
    out["cold_unseen"] = {w: out[w].get("cold_unseen", 0) for w in ("valid", "test")}
    out["n_params"] = int(sum(p.numel() for p in model.parameters()))  # type: ignore[attr-defined]
    out["fit"] = fit_result.to_dict() if fit_result is not None else None
    out["config"] = asdict(cfg)
    return out


def run(
    split: pd.DataFrame, cfg: BaselineConfig, *, n_items: int | None = None, ckpt_dir: str | Path | None = None,
    resume: bool = False, seed: int = 42, log: Callable[[str], None] | None = None,
) -> tuple[SASRec, dict[str, Any]]:
    """Build, fit and report SASRec on a split: (model with the best weights, report dict)."""
    n_items = n_items or len(S.item_train_counts(split))
    set_seed(seed)
    model = SASRec.from_config(n_items, cfg).to(pick_device(cfg.device))
    result = fit(model, split, cfg, ckpt_dir=ckpt_dir, resume=resume, seed=seed, log=log)
    if not is_main_process():  # the other processes only helped train: evaluating is the main one's job
        return model, {"fit": result.to_dict()}
    return model, report(model, split, cfg, result, seed=seed)
