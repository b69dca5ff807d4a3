"""SID-SASRec: SASRec over semantic IDs (the seed's baseline, eugeneyan/semantic-ids-llm).

Codes: an int array [n_items, levels] (the L tokenizer levels + the dedup level, from the
`sidlib.sids` table), level l taking values 0..K_l-1 (K_l = max + 1 unless given).

* Input: an item is the **sum** of its per-level code embeddings (one table per level, the
  dedup level included, so items sharing the L semantic codes still differ), scaled by
  sqrt(d), plus learned positions; the same causal encoder as SASRec (`CausalEncoder`;
  the seed uses d = 128 and 4 blocks).
* Output: one head per level, conditioned on the earlier levels of the item being scored:
  z_l = GELU(A_l h + Σ_{j<l} P_{l,j}[c_j]),  log p(c_l | h, c_<l) = log_softmax(W_l z_l + b_l).
  Training uses teacher forcing (the target's true codes as c_<l) and the loss
  -Σ_l log p(c_l | h, c_<l) = -log p(item | h) at every position (seq-to-seq, like SASRec).
* Scoring: score(item) = Σ_l log p(c_l | h, c_<l), computed **exactly for every item**: per
  level, the head is evaluated once per distinct code prefix c_<l present in the catalogue
  (chunked so that [batch, prefixes, K_l] stays small) and each item gathers its own entry
  along its code path. So SID-SASRec ranks all items with the same `sidlib.metrics` protocol
  as SASRec, and cold items get scores from codes they share with trained items.

The seed's version conditions linearly on the mean of earlier-level embeddings, adds a term
for one in-batch negative, and evaluates against sampled negatives; here the conditioning
has a non-linearity (the heads are not a product of independent experts), the loss is the
exact item log-likelihood, and ranking is full unless `sampled_negatives` is set.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sidlib import split as S
from sidlib.config import BaselineConfig
from sidlib.models.sasrec import CausalEncoder, fit, pad_left, report
from sidlib.models.train import is_main_process, pick_device, set_seed

_CHUNK_ELEMENTS = 1 << 24  # [batch, prefixes, width] floats per chunk when scoring all items


def check_codes(codes: Any, sizes: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """codes → (int64 [n_items, levels], per-level cardinalities); clear errors for bad input."""
    c = np.asarray(codes)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"codes must be a non-empty [n_items, levels] array, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {c.dtype}")
    c = c.astype(np.int64)
    if c.min() < 0:
        raise ValueError("codes must be >= 0")
    need = (c.max(0) + 1).tolist()
    if sizes is None:
        sizes = need
    sizes = [int(k) for k in sizes]
    if len(sizes) != c.shape[1] or any(k < n for k, n in zip(sizes, need)):
        raise ValueError(f"sizes {sizes} do not cover the codes (need at least {need})")
    dup = len(np.unique(c, axis=0))
    if dup != len(c):
        raise ValueError(f"{len(c) - dup} items share their full code path: add a dedup level")
    return c, sizes


class SIDSASRec(nn.Module):
    """SASRec over semantic IDs; `score(histories)` → exact log p(item) for all items [B, n_items]."""

    name = "sid_sasrec"

    def __init__(
        self, codes: Any, max_len: int = 50, hidden: int = 128, blocks: int = 4, heads: int = 2,
        dropout: float = 0.2, sizes: Sequence[int] | None = None,
    ):
        super().__init__()
        c, sizes = check_codes(codes, sizes)
        self.n_items, self.levels, self.sizes = len(c), c.shape[1], sizes
        self.max_len, self.hidden = int(max_len), int(hidden)
        self.config = dict(max_len=max_len, hidden=hidden, blocks=blocks, heads=heads, dropout=dropout, sizes=sizes)
        # row 0 = padding; item i is row i + 1
        self.register_buffer("codes", torch.from_numpy(np.vstack([np.zeros((1, self.levels), np.int64), c])), persistent=True)
        self.code_emb = nn.ModuleList(nn.Embedding(k, hidden) for k in sizes)
        self.encoder = CausalEncoder(hidden, blocks, heads, dropout, max_len)
        self.head_in = nn.ModuleList(nn.Linear(hidden, hidden) for _ in sizes)
        self.head_prefix = nn.ModuleList(
            nn.ModuleList(nn.Embedding(sizes[j], hidden) for j in range(level)) for level in range(self.levels)
        )
        self.head_out = nn.ModuleList(nn.Linear(hidden, k) for k in sizes)
        for emb in self.code_emb:
            nn.init.normal_(emb.weight, std=(hidden * self.levels) ** -0.5)
        for level in self.head_prefix:
            for emb in level:
                nn.init.normal_(emb.weight, std=0.02)
        # per level: the distinct prefixes c_<l of the catalogue, the items sorted by their
        # prefix index (so a chunk of prefixes is a contiguous run of items), and where each
        # prefix's run starts
        for level in range(self.levels):
            if level == 0:
                uniq, inv = np.zeros((1, 0), np.int64), np.zeros(len(c), np.int64)
            else:
                uniq, inv = np.unique(c[:, :level], axis=0, return_inverse=True)
            inv = inv.reshape(-1).astype(np.int64)
            order = np.argsort(inv, kind="stable")
            starts = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
            for key, arr in (("prefix_codes", np.ascontiguousarray(uniq)), ("prefix_of_item", inv), ("item_order", order)):
                self.register_buffer(f"_{key}_{level}", torch.from_numpy(arr), persistent=False)
            setattr(self, f"_prefix_starts_{level}", starts.tolist())

    @classmethod
    def from_config(cls, codes: Any, cfg: BaselineConfig, sizes: Sequence[int] | None = None) -> "SIDSASRec":
        return cls(codes, cfg.max_len, cfg.sid_sasrec.hidden, cfg.sid_sasrec.blocks, cfg.sid_sasrec.heads, cfg.dropout, sizes)

    # ------------------------------------------------------------------ encoder / heads

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] (item + 1, 0 = pad) → summed code embeddings [B, L, d]."""
        codes = self.codes[seq]  # [B, L, levels]
        x = sum(emb(codes[..., level]) for level, emb in enumerate(self.code_emb))
        return x * math.sqrt(self.hidden)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(seq), seq > 0)

    def _prefix_vec(self, level: int, prefix_codes: torch.Tensor) -> torch.Tensor:
        """Σ_{j<level} P_{level,j}[c_j] for prefix codes [..., level] → [..., d] (0 at level 0)."""
        out = torch.zeros(*prefix_codes.shape[:-1], self.hidden, device=prefix_codes.device)
        for j, emb in enumerate(self.head_prefix[level]):
            out = out + emb(prefix_codes[..., j])
        return out

    def level_logits(self, h: torch.Tensor, prefix_codes: torch.Tensor, level: int) -> torch.Tensor:
        """Logits of level `level` for hidden states [T, d] and teacher-forced prefixes [T, level]."""
        z = F.gelu(self.head_in[level](h) + self._prefix_vec(level, prefix_codes))
        return self.head_out[level](z)

    def loss(self, inp: torch.Tensor, tgt: torch.Tensor, kind: str = "ce", negatives: int = 1) -> torch.Tensor:
        """Mean over positions of -log p(target item | history) (kind/negatives are ignored:
        the per-level softmax is already normalised over every code)."""
        h = self(inp)
        at = tgt > 0
        h, codes = h[at], self.codes[tgt[at]]  # [T, d], [T, levels]
        total = h.new_zeros(())
        for level in range(self.levels):
            total = total + F.cross_entropy(self.level_logits(h, codes[:, :level], level), codes[:, level])
        return total

    # ------------------------------------------------------------------ scoring

    def item_log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """Exact log p(item | h) for every item: h [B, d] → [B, n_items]."""
        b = h.shape[0]
        out = torch.zeros(b, self.n_items, device=h.device)
        item_codes = self.codes[1:]
        for level in range(self.levels):
            prefixes: torch.Tensor = getattr(self, f"_prefix_codes_{level}")
            prefix_of_item: torch.Tensor = getattr(self, f"_prefix_of_item_{level}")
            order: torch.Tensor = getattr(self, f"_item_order_{level}")
            starts: list[int] = getattr(self, f"_prefix_starts_{level}")
            k = self.sizes[level]
            a = self.head_in[level](h)  # [B, d]
            pvec = self._prefix_vec(level, prefixes)  # [P, d]
            step = max(1, _CHUNK_ELEMENTS // max(1, b * max(k, self.hidden)))
            for p0 in range(0, len(prefixes), step):
                p1 = min(len(prefixes), p0 + step)
                z = F.gelu(a[:, None, :] + pvec[None, p0:p1])  # [B, p, d]
                lp = F.log_softmax(self.head_out[level](z), dim=-1).reshape(b, -1)  # [B, p * K]
                items = order[starts[p0] : starts[p1]]  # the items whose prefix is in [p0, p1)
                out[:, items] += lp[:, (prefix_of_item[items] - p0) * k + item_codes[items, level]]
        return out

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        seq = pad_left(histories, self.max_len, self.n_items).to(self.codes.device)
        return self.item_log_probs(self(seq)[:, -1])


def run(
    split: pd.DataFrame, codes: Any, cfg: BaselineConfig, *, ckpt_dir: str | Path | None = None, resume: bool = False,
    seed: int = 42, sizes: Sequence[int] | None = None, log: Callable[[str], None] | None = None,
) -> tuple[SIDSASRec, dict[str, Any]]:
    """Build, fit (the shared `sasrec.fit`) and report SID-SASRec: (model, report dict)."""
    n_split = len(S.item_train_counts(split))
    if np.asarray(codes).shape[0] < n_split:
        raise ValueError(f"codes cover {np.asarray(codes).shape[0]} items but the split uses ids up to {n_split - 1}")
    cfg = dataclasses.replace(cfg, window_stride=cfg.sid_sasrec.window_stride)  # its own windows (config.py)
    set_seed(seed)
    model = SIDSASRec.from_config(codes, cfg, sizes).to(pick_device(cfg.device))
    result = fit(model, split, cfg, ckpt_dir=ckpt_dir, resume=resume, seed=seed, log=log)
    if not is_main_process():  # the other processes only helped train: evaluating is the main one's job
        return model, {"fit": result.to_dict()}
    return model, report(model, split, cfg, result, seed=seed)
