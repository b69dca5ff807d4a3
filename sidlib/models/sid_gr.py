"""SID-GR: a TIGER-style generative retriever over semantic IDs (NVIDIA recsys-examples SID-GR).

Sequence layout. Every item is its tuple of L+1 codes (the last level de-duplicates). A
history h_1..h_n followed by the target t becomes one token sequence

    [c(h_1); c(h_2); ...; c(h_n); <BOS>, c(t)]                       (loss_items = 1)
    [c(h_1); ...; <BOS>, c(h_n); <BOS>, c(t)]                        (loss_items = 2)

and the model is trained by next-token prediction on the codes of the last `loss_items`
items (<BOS> -> code 0, code 0 -> code 1, ...), exactly as in the seed's
"[s1,s2,s3; bos,s4,s5,s6; bos,s7,s8,s9]". At inference the prompt is built the same way with
the target's codes left out (it ends with <BOS>; with loss_items > 1 the last loss_items-1
history items carry a <BOS> too, so the model sees what it was trained on), then a
constrained beam search (`sidlib.models.beam`) decodes exactly L+1 codes.

Token embedding = code embedding (one table over sum_l K_l codes, token id
`offset_l + code` with offset_l = K_0 + ... + K_{l-1}, i.e. `level * K` for equal codebooks,
the project scheme) + level embedding (L+1 levels and one for <BOS>) + item-position
embedding (counted from the end: the target item is 0, the last history item 1, ...; so
training and inference positions agree whatever the history length). Histories are
truncated from the LEFT to `max_items` items; sequences in a batch are left-padded, so every
prompt ends at the same column and the beams' new tokens are appended in lock-step.

Prediction: a shared head over all sum_l K_l code tokens, sliced to the level's range for
the loss and for decoding (`shared_head=True`, the seed's default), or one head per level.

Why a hand-written GPT block instead of `nn.TransformerEncoder`: beam search needs a KV
cache (prefill the history once, then feed one token per beam per step) and our "shared"
cache mode attends the beams of a user to a single copy of that user's history keys; the
stock encoder layer neither returns its keys/values nor accepts cached ones. The block is a
standard pre-LN decoder block (causal self-attention through
`F.scaled_dot_product_attention`, GELU MLP); the cached decode paths compute the same
function (tested: identical beams with and without cache).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sidlib import metrics
from sidlib.config import BaselineConfig
from sidlib.models import train as train_utils
from sidlib.models.beam import CACHE_MODES, BeamResult, beam_search
from sidlib.sids import CodeTrie
from sidlib.split import sample_rows, samples, training_sequences


@dataclass
class SidGRConfig:
    """Architecture, training and retrieval settings (BaselineConfig's gr_* fields map here)."""

    # architecture
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.1
    max_items: int = 20  # history length in items; longer histories keep their LAST max_items
    # next-token loss on the codes of the last N items of a sequence (0 = every item, SASRec-
    # style: <BOS> before every item; the samples are then windows, not prefixes: see
    # training_samples)
    loss_items: int = 1
    shared_head: bool = True  # one head over all code tokens (sliced per level) | one per level
    # training
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    clip: float = 1.0
    augment: bool = True  # every prefix (loss_items=0: every window) is a sample, else only the last
    patience: int = 3  # evaluations without a better valid NDCG before stopping (0 = never stop)
    eval_every: int = 1  # epochs between valid evaluations
    eval_users: int = 0  # evaluate on a fixed random subset of the valid users (0 = all)
    # retrieval
    beam: int = 20
    eval_k: int = 10  # early stopping metric: NDCG@eval_k
    cache: str = "shared"  # shared | expand | none (see sidlib.models.beam)
    # the beams never produce an item of the user's own history (the search prunes prefixes whose
    # items are all in it): for catalogues without repeat consumption, e.g. MovieLens, where the
    # evaluation masks history items too (BaselineConfig.exclude_history)
    exclude_history: bool = False
    batch_users: int = 256  # users per beam-search batch
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | mps


    @classmethod
    def from_baseline(cls, b: BaselineConfig, seed: int | None = None) -> "SidGRConfig":
        """From the profile's [baselines]: SID-GR's own table [baselines.sid_gr] for its size,
        training length and beams; the shared keys for optimisation, device and evaluation."""
        g = b.sid_gr
        return cls(hidden=g.hidden, layers=g.layers, heads=g.heads, dropout=g.dropout, max_items=g.max_items,
                   loss_items=g.loss_items, shared_head=g.shared_head, epochs=g.epochs, batch_size=g.batch_size,
                   patience=g.patience, beam=g.beam,
                   lr=b.lr, weight_decay=b.weight_decay, eval_every=b.eval_every, eval_users=b.valid_users,
                   exclude_history=b.exclude_history, batch_users=b.eval_batch_size, device=b.device,
                   **({} if seed is None else {"seed": seed}))


class SidGRError(ValueError):
    """Bad input to SID-GR (empty history, unknown item id, bad config)."""


@dataclass
class Prompt:
    """Left-padded token batch: [U, S] each; valid = not padding."""

    tokens: torch.Tensor
    levels: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor


@dataclass
class KVCache:
    """Per-layer keys/values [N, heads, T, head_dim] and key validity [N, T]."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    valid: torch.Tensor


@dataclass
class BeamCache:
    """Per-layer keys/values of the decoded tokens only: [U, beams, heads, t, head_dim]."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]


class Block(nn.Module):
    """Pre-LN GPT block: causal self-attention (SDPA) + GELU MLP, with cached decode paths."""

    def __init__(self, hidden: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise SidGRError(f"hidden {hidden} is not divisible by heads {heads}")
        self.heads, self.dh, self.p = heads, hidden // heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.fc1 = nn.Linear(hidden, ffn_mult * hidden)
        self.fc2 = nn.Linear(ffn_mult * hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.ln2(x))))))

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[..., T, H] -> q, k, v each [..., heads, T, dh]."""
        qkv = self.qkv(self.ln1(x)).unflatten(-1, (3, self.heads, self.dh))  # [..., T, 3, h, dh]
        q, k, v = qkv.movedim(-3, 0).transpose(-3, -2).unbind(0)
        return q, k, v

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full sequence. x [B, T, H], mask [B, 1, T, T] (True = may attend) -> x, k, v."""
        q, k, v = self._split(x)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).flatten(2)))
        return self._mlp(x), k, v

    def step_flat(self, x: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, cvalid: torch.Tensor):
        """One new token per sequence with a full per-sequence cache ("expand").
        x [N, 1, H]; ck, cv [N, h, T, dh]; cvalid [N, T] -> x, k, v (appended)."""
        q, k, v = self._split(x)
        k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
        mask = torch.cat([cvalid, cvalid.new_ones(cvalid.shape[0], 1)], 1)[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).flatten(2))
        return self._mlp(x), k, v

    def step_shared(self, x, pk, pv, pvalid, bk, bv):
        """One new token per beam; the user's history cache is shared by all its beams ("shared").
        x [U, nb, H]; pk, pv [U, h, S, dh]; pvalid [U, S]; bk, bv [U, nb, h, t, dh] or None.
        The beams play the part of grouped-query heads: one batched matmul per user against its
        single history copy, plus a tiny per-beam attention over the <= L decoded tokens."""
        q, k, v = self._split(x.unsqueeze(2))  # [U, nb, h, 1, dh]
        bk = k if bk is None else torch.cat([bk, k], 3)
        bv = v if bv is None else torch.cat([bv, v], 3)
        q = q.squeeze(3)  # [U, nb, h, dh]
        scale = 1.0 / math.sqrt(self.dh)
        s_pre = torch.matmul(q.transpose(1, 2), pk.transpose(-1, -2)) * scale  # [U, h, nb, S]
        s_pre = s_pre.masked_fill(~pvalid[:, None, None, :], float("-inf"))
        s_dec = torch.einsum("unhd,unhtd->uhnt", q, bk) * scale  # [U, h, nb, t]
        p = torch.softmax(torch.cat([s_pre, s_dec], -1), -1)
        S = pk.shape[2]
        out = torch.matmul(p[..., :S], pv) + torch.einsum("uhnt,unhtd->uhnd", p[..., S:], bv)  # [U, h, nb, dh]
        x = x + self.proj(out.transpose(1, 2).flatten(2))
        return self._mlp(x), bk, bv


class SidGR(nn.Module):
    """Decoder-only transformer over SID tokens. codes: [n_items, L+1] (row = item id)."""

    def __init__(self, codes: np.ndarray | torch.Tensor, sizes: Sequence[int] | None = None, cfg: SidGRConfig | None = None):
        super().__init__()
        cfg = cfg or SidGRConfig()
        codes_t = torch.as_tensor(np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes), dtype=torch.long)
        if codes_t.ndim != 2 or codes_t.shape[0] == 0:
            raise SidGRError(f"codes must be a non-empty [n_items, n_levels] array, got {tuple(codes_t.shape)}")
        if sizes is None:
            sizes = (codes_t.max(0).values + 1).tolist()
        self.sizes = [int(k) for k in sizes]
        self.cfg = cfg
        self.n_items, self.n_levels = codes_t.shape
        if len(self.sizes) != self.n_levels:
            raise SidGRError(f"{self.n_levels} code levels but {len(self.sizes)} codebook sizes")
        if cfg.max_items < 1 or cfg.loss_items < 0:
            raise SidGRError("max_items must be >= 1 and loss_items >= 0 (0 = every item)")
        self.n_loss_items = cfg.loss_items or cfg.max_items + 1
        offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.offsets = [int(o) for o in offsets]
        self.vocab = int(sum(self.sizes))
        self.bos, self.pad = self.vocab, self.vocab + 1
        self.register_buffer("item_codes", codes_t.clone())
        self._item_tokens = (codes_t.numpy() + offsets[None, :]).astype(np.int64)  # numpy, for batching
        H = cfg.hidden
        self.tok = nn.Embedding(self.vocab + 2, H, padding_idx=self.pad)
        self.lvl = nn.Embedding(self.n_levels + 1, H)  # level n_levels = <BOS>
        self.pos = nn.Embedding(cfg.max_items + 1, H)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(H, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(H)
        if cfg.shared_head:
            self.head = nn.Linear(H, self.vocab)
        else:
            self.heads = nn.ModuleList(nn.Linear(H, k) for k in self.sizes)
        self.apply(self._init)
        self._trie: CodeTrie | None = None

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return self.item_codes.device

    @property
    def trie(self) -> CodeTrie:
        """Prefix trie of all items (built once from the codes)."""
        if self._trie is None:
            self._trie = CodeTrie(self.item_codes.cpu(), self.sizes)
        return self._trie

    # ---- sequences -----------------------------------------------------------------------
    def _sequence(self, items: np.ndarray, n_loss: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens, levels, positions of items (the last n_loss items get a <BOS> first)."""
        m, d = len(items), self.n_levels
        toks = self._item_tokens[items]  # [m, d]
        pos = np.repeat((m - 1 - np.arange(m))[:, None], d + 1, 1)
        lv = np.broadcast_to(np.arange(-1, d), (m, d + 1)).copy()
        lv[:, 0] = d
        tk = np.concatenate([np.full((m, 1), self.bos), toks], 1)
        keep = np.ones((m, d + 1), dtype=bool)
        keep[: m - n_loss, 0] = False
        return tk[keep], lv[keep], pos[keep]

    def _check_items(self, items: np.ndarray, what: str) -> None:
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            bad = items[(items < 0) | (items >= self.n_items)][0]
            raise SidGRError(f"{what}: item id {int(bad)} has no codes (known ids: 0..{self.n_items - 1})")

    def _pad(self, seqs: list[tuple[np.ndarray, ...]]) -> Prompt:
        T = max(len(s[0]) for s in seqs)
        n = len(seqs)
        tok = np.full((n, T), self.pad, dtype=np.int64)
        lv = np.zeros((n, T), dtype=np.int64)
        pos = np.zeros((n, T), dtype=np.int64)
        valid = np.zeros((n, T), dtype=bool)
        for i, (t, l, p) in enumerate(seqs):  # left padding
            tok[i, T - len(t) :], lv[i, T - len(t) :], pos[i, T - len(t) :], valid[i, T - len(t) :] = t, l, p, True
        dev = self.device
        return Prompt(*(torch.from_numpy(a).to(dev) for a in (tok, lv, pos, valid)))

    def build_prompt(self, histories: Sequence[Sequence[int]]) -> Prompt:
        """Histories (item ids, chronological) -> left-padded prompts ending with <BOS>."""
        seqs = []
        for i, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64).reshape(-1)
            if len(h) == 0:
                raise SidGRError(f"history {i} is empty: SID-GR needs at least one item to condition on")
            h = h[-self.cfg.max_items :]  # left truncation
            self._check_items(h, f"history {i}")
            items = np.append(h, 0)  # placeholder target, its codes are cut off below
            t, l, p = self._sequence(items, min(self.n_loss_items, len(items) - 1))
            cut = len(t) - self.n_levels
            seqs.append((t[:cut], l[:cut], p[:cut]))
        if not seqs:
            raise SidGRError("no histories given")
        return self._pad(seqs)

    def build_batch(self, sequences: Sequence[Sequence[int]]) -> tuple[Prompt, torch.Tensor, torch.Tensor]:
        """Training sequences (history + target, item ids) -> (inputs, label levels, label codes).

        Labels are [B, T] aligned with the inputs (next token); -1 where there is no loss."""
        seqs, n_loss, d = [], [], self.n_levels
        for i, s in enumerate(sequences):
            s = np.asarray(s, dtype=np.int64).reshape(-1)[-(self.cfg.max_items + 1) :]
            if len(s) < 2:
                raise SidGRError(f"training sequence {i} has {len(s)} item(s); it needs a history and a target")
            self._check_items(s, f"training sequence {i}")
            n_loss.append(min(self.n_loss_items, len(s) - 1))
            seqs.append(self._sequence(s, n_loss[-1]))
        full = self._pad(seqs)
        inputs = Prompt(full.tokens[:, :-1], full.levels[:, :-1], full.positions[:, :-1], full.valid[:, :-1])
        nxt_tok, nxt_lv, nxt_pos = full.tokens[:, 1:], full.levels[:, 1:], full.positions[:, 1:]
        n_loss_t = torch.tensor(n_loss, device=self.device)[:, None]
        has = full.valid[:, 1:] & (nxt_lv < d) & (nxt_pos < n_loss_t)
        offs = torch.tensor(self.offsets + [0], device=self.device)[nxt_lv.clamp(max=d)]
        lab_lv = torch.where(has, nxt_lv, torch.full_like(nxt_lv, -1))
        lab_code = torch.where(has, nxt_tok - offs, torch.full_like(nxt_tok, -1))
        return inputs, lab_lv, lab_code

    # ---- forward -------------------------------------------------------------------------
    def _embed(self, tokens, levels, positions) -> torch.Tensor:
        return self.drop(self.tok(tokens) + self.lvl(levels) + self.pos(positions))

    @staticmethod
    def _mask(valid: torch.Tensor) -> torch.Tensor:
        """Causal + key padding; a padding query attends to itself (no all-masked rows)."""
        T = valid.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=valid.device)
        return (causal & (valid[:, None, :] | eye))[:, None]

    def forward(self, p: Prompt, keep_kv: bool = False):
        """Hidden states [B, T, H] (after the final LayerNorm); with keep_kv also the KVCache."""
        x = self._embed(p.tokens, p.levels, p.positions)
        mask = self._mask(p.valid)
        ks, vs = [], []
        for blk in self.blocks:
            x, k, v = blk(x, mask)
            if keep_kv:
                ks.append(k)
                vs.append(v)
        x = self.ln_f(x)
        return (x, KVCache(ks, vs, p.valid)) if keep_kv else x

    def _level_logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        if self.cfg.shared_head:
            o, k = self.offsets[level], self.sizes[level]
            return F.linear(h, self.head.weight[o : o + k], self.head.bias[o : o + k])
        return self.heads[level](h)

    def level_logprobs(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """[..., H] -> [..., K_level] log-probs over the level's codes."""
        logits = self._level_logits(h, level)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return logits.log_softmax(-1)

    def loss(self, inputs: Prompt, lab_lv: torch.Tensor, lab_code: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the loss items' codes (each level its own range)."""
        h = self.forward(inputs)
        sel = lab_lv >= 0
        hs, lv, code = h[sel], lab_lv[sel], lab_code[sel]
        total = h.new_zeros((), dtype=torch.float32)
        for level in range(self.n_levels):
            m = lv == level
            if m.any():
                total = total + F.cross_entropy(self._level_logits(hs[m], level).float(), code[m], reduction="sum")
        return total / sel.sum().clamp(min=1)

    # ---- decoding (the protocol sidlib.models.beam uses) ----------------------------------
    def prefill(self, p: Prompt) -> tuple[torch.Tensor, KVCache]:
        h, cache = self.forward(p, keep_kv=True)
        return h[:, -1], cache

    def _code_embed(self, codes: torch.Tensor, level: int) -> torch.Tensor:
        tok = codes + self.offsets[level]
        return self._embed(tok, torch.full_like(codes, level), torch.zeros_like(codes))

    def forward_decoded(self, p: Prompt, decoded: torch.Tensor) -> torch.Tensor:
        """No cache: the whole prompt + decoded codes [U, nb, t] for every beam -> last hidden [U, nb, H]."""
        U, nb, t = decoded.shape
        rep = lambda a: a.repeat_interleave(nb, 0)  # noqa: E731
        lv = torch.arange(t, device=decoded.device).expand(U * nb, t)
        full = Prompt(
            torch.cat([rep(p.tokens), decoded.reshape(U * nb, t) + torch.tensor(self.offsets[:t], dtype=torch.long, device=decoded.device)], 1),
            torch.cat([rep(p.levels), lv], 1),
            torch.cat([rep(p.positions), torch.zeros_like(lv)], 1),
            torch.cat([rep(p.valid), torch.ones_like(lv, dtype=torch.bool)], 1),
        )
        return self.forward(full)[:, -1].reshape(U, nb, -1)

    def decode_step(self, codes: torch.Tensor, level: int, pcache: KVCache, bcache: BeamCache | None):
        """Shared-history cache: feed codes [U, nb] (of `level`) -> hidden [U, nb, H], BeamCache."""
        x = self._code_embed(codes, level)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            bk = None if bcache is None else bcache.k[i]
            bv = None if bcache is None else bcache.v[i]
            x, k, v = blk.step_shared(x, pcache.k[i], pcache.v[i], pcache.valid, bk, bv)
            ks.append(k)
            vs.append(v)
        return self.ln_f(x), BeamCache(ks, vs)

    @staticmethod
    def reindex_beam_cache(bcache: BeamCache, parent: torch.Tensor) -> BeamCache:
        rows = torch.arange(parent.shape[0], device=parent.device)[:, None]
        return BeamCache([k[rows, parent] for k in bcache.k], [v[rows, parent] for v in bcache.v])

    def decode_flat(self, codes: torch.Tensor, level: int, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Per-sequence cache: feed codes [N] -> hidden [N, H], the cache with the token appended."""
        x = self._code_embed(codes[:, None], level)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            x, k, v = blk.step_flat(x, cache.k[i], cache.v[i], cache.valid)
            ks.append(k)
            vs.append(v)
        valid = torch.cat([cache.valid, cache.valid.new_ones(cache.valid.shape[0], 1)], 1)
        return self.ln_f(x)[:, 0], KVCache(ks, vs, valid)

    @staticmethod
    def reindex_flat_cache(cache: KVCache, idx: torch.Tensor) -> KVCache:
        return KVCache([k.index_select(0, idx) for k in cache.k], [v.index_select(0, idx) for v in cache.v], cache.valid.index_select(0, idx))

    # ---- retrieval -----------------------------------------------------------------------
    @torch.no_grad()
    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        beam: int | None = None,
        cache: str | None = None,
        batch_users: int | None = None,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> BeamResult:
        """Top-k existing items per history by constrained beam search (width >= k).
        exclude: per history, items that must not come out (`beam.beam_search`)."""
        beam = max(beam or self.cfg.beam, k)
        was = self.training
        self.eval()
        try:
            return beam_search(self, histories, self.trie, beam=beam, topk=k, cache=cache or self.cfg.cache,
                               batch_users=batch_users or self.cfg.batch_users, exclude=exclude)
        finally:
            self.train(was)

    def topk_fn(self, k: int = 20, beam: int | None = None, cache: str | None = None,
                exclude_history: bool | None = None) -> Callable[[list[list[int]]], np.ndarray]:
        """histories -> [B, k] ranked item ids (-1 padding): the `metrics.evaluate_topk` driver.
        exclude_history (default cfg.exclude_history): the whole history (not only the
        max_items the model reads) is banned from each user's beams."""
        ban = self.cfg.exclude_history if exclude_history is None else exclude_history
        return lambda histories: self.recommend(histories, k=k, beam=beam, cache=cache,
                                                exclude=histories if ban else None).items.cpu().numpy()

    @classmethod
    def from_table(cls, table: Any, cfg: SidGRConfig | None = None) -> "SidGR":
        """From a `sidlib.sids.SidTable` (dense item ids 0..N-1, its scheme's codebook sizes)."""
        return cls(table.mapping_tensor().T, table.scheme.codebook_sizes, cfg)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        torch.save({"config": dataclasses.asdict(self.cfg), "sizes": self.sizes, "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "SidGR":
        blob = torch.load(path, map_location=map_location, weights_only=False)
        model = cls(blob["state"]["item_codes"], blob["sizes"], SidGRConfig(**blob["config"]))
        model.load_state_dict(blob["state"])
        return model.to(map_location)


# ---- evaluation ----------------------------------------------------------------------------

def evaluate(model: SidGR, histories: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int] = (5, 10),
             beam: int | None = None, cache: str | None = None, exclude_history: bool | None = None) -> dict[str, float]:
    """hit@K (= recall@K), ndcg@K, mrr (MRR@max(ks)) of constrained beam-search retrieval,
    through the project's `sidlib.metrics` (from_topk + metrics_from_ranks); exclude_history
    (default cfg.exclude_history) bans each history's items from its beams."""
    lists = model.topk_fn(max(ks), beam, cache, exclude_history)(list(histories))
    return metrics.metrics_from_ranks(metrics.from_topk(lists, np.asarray(targets)), ks)


# ---- training ------------------------------------------------------------------------------

def training_samples(sequences: Sequence[Sequence[int]], cfg: SidGRConfig) -> list[tuple[int, int]]:
    """(sequence index, end position) pairs; a sample is the sequence up to and including `end`.

    loss_items >= 1: every end >= 1 (augment, TIGER-style: one sample per prefix) or the last.
    loss_items = 0 (loss on every item): a prefix sample would repeat the loss of the shorter
    prefixes, so the samples are the windows of max_items + 1 items cut from the end of the
    sequence and overlapping by one, as SASRec's (`sasrec.training_arrays`): every transition
    is a target exactly once, in ~max_items x fewer samples than the prefixes (augment: all
    windows; else only the last)."""
    out = []
    for i, s in enumerate(sequences):
        n = len(s)
        if n < 2:
            continue
        if cfg.loss_items == 0:
            ends = range(n - 1, 0, -cfg.max_items) if cfg.augment else [n - 1]
        else:
            ends = range(1, n) if cfg.augment else [n - 1]
        out.extend((i, e) for e in ends)
    return out


def _epoch_batches(samples: list[tuple[int, int]], cfg: SidGRConfig, epoch: int) -> list[list[tuple[int, int]]]:
    """Shuffled batches with length bucketing: samples are shuffled, sorted by length inside
    windows of 50 batches, cut into batches, and the batch order is shuffled again. Most
    sequences are short, so this removes most of the padding (several x faster on CPU).
    Deterministic in (seed, epoch) (`train.epoch_rng`), so a resumed run sees the same batches."""
    rng = train_utils.epoch_rng(cfg.seed, epoch)
    order = rng.permutation(len(samples))
    length = np.array([min(samples[j][1], cfg.max_items) for j in order])
    bs, window = cfg.batch_size, cfg.batch_size * 50
    batches = []
    for w in range(0, len(order), window):
        chunk = order[w : w + window][np.argsort(length[w : w + window], kind="stable")]
        batches.extend(chunk[b : b + bs] for b in range(0, len(chunk), bs))
    return [[samples[j] for j in batches[i]] for i in rng.permutation(len(batches))]


def _lr_lambda(cfg: SidGRConfig, total: int) -> Callable[[int], float]:
    """Linear warmup over warmup_steps (at most half the run), then cosine to min_lr_ratio."""
    # hand-written: transformers' cosine-with-min-lr warms up from 0 (not (step+1)/warm), lets the LR rise past `total`
    warm = max(0, min(cfg.warmup_steps, total // 2))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        prog = min(1.0, (step - warm) / max(1, total - warm))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))

    return f


def fit(
    model: SidGR,
    sequences: Sequence[Sequence[int]],
    valid: tuple[Sequence[Sequence[int]], Sequence[int]] | None = None,
    ckpt_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train `model` in place on chronological item sequences (each: history + target).

    AdamW, linear warmup + cosine decay (per step), gradient clipping, bf16 autocast on CUDA.
    valid = (histories, targets): early stopping on valid NDCG@eval_k of constrained beam
    search (width cfg.beam), best weights restored at the end; None: all epochs, last weights.
    ckpt_dir: `last.pt` every epoch and `best.pt` through `train.Checkpointer`; resume=True goes
    on from `last.pt` (same batches and dropout as an uninterrupted run: `train.fit_loop`).
    Under `accelerate launch` each process trains on its share of every epoch's batches (DDP).
    Returns `train.FitResult.to_dict()` plus `step_losses` (this call's per-step losses).
    """
    cfg = model.cfg
    if cfg.cache not in CACHE_MODES:
        raise SidGRError(f"cache must be one of {CACHE_MODES}, got {cfg.cache!r}")
    device = model.device
    samples = training_samples(sequences, cfg)
    if not samples:
        raise SidGRError("no training sample: every sequence needs >= 2 items")
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    total = len(train_utils.shard(_epoch_batches(samples, cfg, 1))) * cfg.epochs  # this process's steps
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    amp = device.type == "cuda"
    step_losses: list[float] = []
    step_loss = train_utils.loss_fn(model)  # model.loss, through DDP when several processes train

    def train_epoch(epoch: int) -> float:
        losses = []
        for batch in train_utils.shard(_epoch_batches(samples, cfg, epoch)):
            inputs, lab_lv, lab_code = model.build_batch([seqs[i][: e + 1] for i, e in batch])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = step_loss(inputs, lab_lv, lab_code)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        step_losses.extend(losses)
        return float(np.mean(losses))

    monitor = f"ndcg@{cfg.eval_k}"
    if valid is not None:
        v_hist, v_tgt = list(valid[0]), np.asarray(valid[1])
        keep = sample_rows(len(v_hist), cfg.eval_users, cfg.seed)  # the same users as SASRec's at one seed
        if keep is not None:
            v_hist, v_tgt = [v_hist[i] for i in keep], v_tgt[keep]
        ks = sorted({5, cfg.eval_k})

        def evaluate_fn(epoch: int) -> dict[str, float]:
            return evaluate(model, v_hist, v_tgt, ks=ks, beam=cfg.beam)

        patience = cfg.patience
    else:  # no validation: keep the last epoch
        monitor, patience = "epoch", 0

        def evaluate_fn(epoch: int) -> dict[str, float]:
            return {"epoch": float(epoch)}

    res = train_utils.fit_loop(
        model, opt, train_epoch, evaluate_fn, epochs=cfg.epochs, patience=patience, eval_every=cfg.eval_every,
        monitor=monitor, mode="max", checkpointer=train_utils.Checkpointer(ckpt_dir) if ckpt_dir else None,
        resume=resume, seed=cfg.seed, scheduler=sched, log=log,
    )
    return {**res.to_dict(), "monitor": monitor, "step_losses": step_losses}


def fit_split(split, codes: np.ndarray, sizes: Sequence[int] | None = None, cfg: SidGRConfig | None = None,
              ckpt_dir: str | Path | None = None, resume: bool = False, log: Callable[[str], None] | None = print
              ) -> tuple[SidGR, dict[str, Any]]:
    """Build, train (on the split's train prefixes, early stopping on its valid samples) and
    return the model and its training record. The model is on cfg.device."""
    cfg = cfg or SidGRConfig()
    train_utils.set_seed(cfg.seed)
    model = SidGR(codes, sizes, cfg).to(train_utils.pick_device(cfg.device))
    seqs = training_sequences(split, "valid")["item_ids"].tolist()
    v = samples(split, "valid")
    v = v[v["history"].map(len) > 0]
    rec = fit(model, seqs, (v["history"].tolist(), v["target"].to_numpy()), ckpt_dir=ckpt_dir, resume=resume, log=log)
    return model, rec
