"""Constrained beam search for SID generative retrieval (TIGER / NVIDIA SID-GR style).

The prefix trie of the existing items' code tuples is `sidlib.sids.CodeTrie` (dense per-level
transition tables: a batch of beams' masks is one gather). Here:

* `Exclusion`: per-user banned items (e.g. each user's history) for the search.
* `beam_search`: exactly L+1 steps (one per code level), beam width B, accumulated
  log-probs, batched over users, constrained by the trie. When B exceeds the number of
  valid continuations all of them are kept (the beam is trimmed to the largest number of
  prefixes that can exist at that level, the remaining slots are dead: score -inf).

Three decoding modes (`cache=`):

* "none":   recompute the whole sequence (history + decoded codes) for every beam at every
  step. The reference; O(steps x beams x history) work.
* "expand": the usual LLM-style KV cache: prefill the history once, copy its cache to every
  beam, feed one new token per beam per step, reindex the whole cache by the surviving
  beams' parents after each step.
* "shared" (default): prefill once and keep ONE history cache per user that all its beams
  attend to (batched matmul, beams act like the query heads of grouped-query attention);
  only the <= L decoded tokens get a per-beam cache, and only that small cache is
  reindexed. Same numbers as "expand" without copying B x history keys/values per user.

The model side is a small protocol (see `sidlib.models.sid_gr.SidGR`): `n_levels`,
`build_prompt`, `prefill`, `level_logprobs`, `forward_decoded` (no cache), `decode_step` +
`reindex_beam_cache` (shared), `decode_flat` + `reindex_flat_cache` (expand).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from sidlib.sids import CodeTrie, SidError

CACHE_MODES = ("shared", "expand", "none")


class Exclusion:
    """Items banned per user during a constrained search, without [users x prefixes] tables.

    A prefix stays open for user u while some item under it is not banned for u:
    `under[l][p] - banned(u, l, p) > 0`. banned(u, l, p) is looked up in a sorted array of
    keys u * P_l + p (one per level, built from the unique (user, item) pairs), so memory is
    O(banned items x levels) whatever the catalogue size, and a lookup for a whole batch of
    candidates is one `searchsorted`. Without it a beam wastes its slots on banned items (a
    MovieLens user's ~100 watched movies crowd the top 20), and the ranking that is left after
    removing them afterwards is short."""

    def __init__(self, trie: CodeTrie, exclude: Sequence[Sequence[int]]):
        self.trie = trie
        dev = trie.device
        users = np.concatenate([np.full(len(e), u, dtype=np.int64) for u, e in enumerate(exclude)] + [np.zeros(0, np.int64)])
        items = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude] + [np.zeros(0, np.int64)])
        if len(items) and (items.min() < 0 or items.max() >= trie.n_items):
            bad = items[(items < 0) | (items >= trie.n_items)][0]
            raise SidError(f"excluded item id {int(bad)} is not in the trie (ids 0..{trie.n_items - 1})")
        pair = np.unique(users * trie.n_items + items)  # a user's item counts once
        u = torch.from_numpy(pair // trie.n_items).to(dev)
        pre = trie.item_prefix[torch.from_numpy(pair % trie.n_items).to(dev)]  # [n, d]
        self.keys, self.counts = [], []
        for l in range(trie.n_levels):  # level l+1 prefixes
            k, c = torch.unique(u * trie.n_prefixes[l + 1] + pre[:, l], return_counts=True)
            self.keys.append(k)
            self.counts.append(c)

    def open(self, level: int, users: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        """bool, shape of `prefixes` (level-`level` prefix ids, -1 = none; `users` broadcasts):
        the prefix exists and holds at least one item not banned for its user."""
        keys, counts = self.keys[level - 1], self.counts[level - 1]
        p = prefixes.clamp(min=0).long()
        left = self.trie.under[level][p]
        if len(keys):
            q = users.long() * self.trie.n_prefixes[level] + p
            idx = torch.searchsorted(keys, q.reshape(-1)).reshape(q.shape).clamp(max=len(keys) - 1)
            left = left - torch.where(keys[idx] == q, counts[idx], torch.zeros_like(left))
        return (prefixes >= 0) & (left > 0)


@dataclass
class BeamResult:
    """items[u, j]: the j-th best item for user u (-1 = fewer valid items than asked);
    scores[u, j]: its accumulated log-prob (-inf for padding), descending along j."""

    items: torch.Tensor
    scores: torch.Tensor


@torch.no_grad()
def beam_search(
    model: Any,
    histories: Sequence[Sequence[int]],
    trie: CodeTrie,
    beam: int = 20,
    topk: int | None = None,
    cache: str = "shared",
    batch_users: int = 256,
    exclude: Sequence[Sequence[int]] | None = None,
) -> BeamResult:
    """Top-`topk` (default: `beam`) existing items per history, by constrained beam search.

    histories: item-id lists (chronological). The model truncates them from the left to its
    history length and raises on an empty one. Users are processed `batch_users` at a time.
    exclude: per user, items that must not come out (e.g. the whole history, for catalogues
    without repeat consumption); the search never spends a beam on a prefix whose items are
    all excluded, so the K results are the best K allowed items the beams can find.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if beam < 1:
        raise ValueError(f"beam width must be >= 1, got {beam}")
    if trie.n_levels != model.n_levels:
        raise ValueError(f"trie has {trie.n_levels} levels, the model {model.n_levels}")
    topk = beam if topk is None else int(topk)
    if exclude is not None and len(exclude) != len(histories):
        raise ValueError(f"exclude has {len(exclude)} rows for {len(histories)} histories")
    items_out, scores_out = [], []
    for start in range(0, len(histories), batch_users):
        stop = start + batch_users
        trie.to(next(model.parameters()).device)
        bans = Exclusion(trie, exclude[start:stop]) if exclude is not None else None
        r = _beam_batch(model, histories[start:stop], trie, beam, cache, bans)
        items, scores = r.items, r.scores
        if items.shape[1] < topk:  # fewer beams than asked: pad
            pad = topk - items.shape[1]
            items = torch.cat([items, items.new_full((items.shape[0], pad), -1)], 1)
            scores = torch.cat([scores, scores.new_full((scores.shape[0], pad), float("-inf"))], 1)
        items_out.append(items[:, :topk])
        scores_out.append(scores[:, :topk])
    if not items_out:
        raise ValueError("beam_search: no histories given")
    return BeamResult(torch.cat(items_out), torch.cat(scores_out))


def _beam_batch(model: Any, histories: Sequence[Sequence[int]], trie: CodeTrie, beam: int, cache: str,
                bans: Exclusion | None = None) -> BeamResult:
    device = next(model.parameters()).device
    trie.to(device)
    d = model.n_levels
    prompt = model.build_prompt(histories)
    n_users = prompt.tokens.shape[0]
    hidden, pcache = model.prefill(prompt)  # hidden at the final <BOS>: [U, H]
    hidden = hidden.unsqueeze(1)  # [U, 1 beam, H]
    scores = hidden.new_zeros(n_users, 1)
    prefix = torch.zeros(n_users, 1, dtype=torch.long, device=device)  # level-0 prefix: the root
    decoded = torch.zeros(n_users, 1, 0, dtype=torch.long, device=device)  # codes so far per beam
    bcache = None  # per-beam cache ("shared": decoded tokens only; "expand": everything)
    for level in range(d):
        if level > 0:
            last = decoded[:, :, -1]  # [U, nb]: the code chosen at level-1, fed now
            if cache == "none":
                hidden = model.forward_decoded(prompt, decoded)
            elif cache == "shared":
                hidden, bcache = model.decode_step(last, level - 1, pcache, bcache)
            else:  # expand: flat batch of U*nb sequences, each with its own full cache
                nb = last.shape[1]
                h, bcache = model.decode_flat(last.reshape(-1), level - 1, bcache)
                hidden = h.reshape(n_users, nb, -1)
        logp = model.level_logprobs(hidden, level)  # [U, nb, K]
        k_l = logp.shape[-1]
        mask = trie.allowed_mask(level, prefix)  # [U, nb, K]
        if bans is not None:  # only children that still hold an allowed item
            nxt = trie.child[level][prefix.clamp(min=0)]  # [U, nb, K]
            users = torch.arange(n_users, device=device)[:, None, None]
            mask = mask & bans.open(level + 1, users, torch.where(mask, nxt, torch.full_like(nxt, -1)))
        cand = (scores.unsqueeze(-1) + logp).masked_fill(~mask, float("-inf"))
        nb_old = cand.shape[1]
        # keep at most: the beam, the candidates, the number of prefixes that exist at level+1
        nb_new = min(beam, nb_old * k_l, trie.n_prefixes[level + 1])
        scores, flat = cand.reshape(n_users, -1).topk(nb_new, dim=1)
        parent, code = flat // k_l, flat % k_l
        prefix = trie.step(level, prefix.gather(1, parent), code)
        prefix = torch.where(torch.isfinite(scores), prefix, torch.full_like(prefix, -1))
        decoded = torch.cat([decoded.gather(1, parent.unsqueeze(-1).expand(-1, -1, decoded.shape[2])), code.unsqueeze(-1)], 2)
        if level < d - 1:
            if cache == "shared" and bcache is not None:
                bcache = model.reindex_beam_cache(bcache, parent)
            elif cache == "expand":
                base = pcache if bcache is None else bcache
                nb_base = 1 if bcache is None else nb_old
                flat_parent = (torch.arange(n_users, device=device).unsqueeze(1) * nb_base + parent).reshape(-1)
                bcache = model.reindex_flat_cache(base, flat_parent)
    items = torch.where(torch.isfinite(scores), prefix, torch.full_like(prefix, -1))
    return BeamResult(items, scores)
