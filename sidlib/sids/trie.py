"""The one prefix trie of the items' codes (every constrained decoder's: beam search, the LLM's
SidConstraint, rendering SIDs that name no item)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .scheme import SidError, as_codes


# --------------------------------------------------------------------------- trie


class CodeTrie:
    """Prefix trie over the items' code tuples, as dense per-level transition tables.

    `child[l][p, c]` is the index of the level-(l+1) prefix reached from level-l prefix `p` by
    code `c` (-1: no item has that prefix); on the last level it is the item's row. Masks for a
    whole batch of beams are one gather (`child[l][p] >= 0`), no Python loop over the vocabulary
    (`allowed_mask`, `step`: the constrained decoding of `sidlib.models.beam` and
    `sidlib.llm.decode`). The tables are int32 and dense: sum_l P_l * K_l entries (P_l = number
    of distinct prefixes of length l), e.g. 4,344 items x (16,16,16,K_dedup) -> a few hundred
    KB; 1M items x 3 x 256 (+ a dedup level) -> a few hundred MB at worst.

    codes: [n_items, n_levels] ints, row i = the code tuple of item i.
    sizes: codebook size per level (default: max code + 1 per level).
    item_ids: what the Python lookups (`item_of`, `longest_known_prefix`) return for each row
    (default: the row index). The tensor side (`step`, `item_prefix`, `beam_search`) always
    speaks row indices.
    """

    def __init__(self, codes: np.ndarray | torch.Tensor, sizes: Sequence[int] | None = None,
                 item_ids: Sequence[int] | np.ndarray | None = None):
        codes = as_codes(codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else codes)
        if codes.shape[1] == 0:
            raise SidError(f"codes must be an [n_items, n_levels] array with n_levels >= 1, got shape {codes.shape}")
        n, d = codes.shape
        ids = np.arange(n, dtype=np.int64) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
        if len(ids) != n:
            raise SidError(f"item_ids has {len(ids)} entries for {n} code rows")
        if sizes is None:
            sizes = (codes.max(axis=0) + 1).tolist() if n else [0] * d
        sizes = [int(k) for k in sizes]
        if len(sizes) != d:
            raise SidError(f"{d} code levels but {len(sizes)} codebook sizes")
        if (codes < 0).any() or (codes >= np.asarray(sizes)[None, :]).any():
            bad = np.argwhere((codes < 0) | (codes >= np.asarray(sizes)[None, :]))[0]
            raise SidError(f"code out of range: item {ids[bad[0]]} level {bad[1]} = {codes[bad[0], bad[1]]} "
                           f"(size {sizes[bad[1]]})")
        self.n_items, self.n_levels, self.sizes = n, d, sizes
        # prefix ids per level: pid[l][i] = index of codes[i, :l] among the distinct length-l prefixes
        pids = [np.zeros(n, dtype=np.int64)]
        for l in range(1, d + 1):
            _, inv = np.unique(codes[:, :l], axis=0, return_inverse=True)
            pids.append(inv.reshape(-1))
        n_full = int(pids[d].max()) + 1 if n else 0
        if n_full != n:
            _, first, counts = np.unique(pids[d], return_index=True, return_counts=True)
            dup = int(first[counts > 1][0])
            raise SidError(f"{n - n_full} items share their full code tuple with another item "
                           f"(e.g. item {ids[dup]}: {codes[dup].tolist()})")
        self.n_prefixes = [1] + [int(p.max()) + 1 if n else 0 for p in pids[1:]]  # P_0 = 1, ..., P_d = n_items
        tables = []
        for l in range(d):
            table = np.full((self.n_prefixes[l], sizes[l]), -1, dtype=np.int32)
            table[pids[l], codes[:, l]] = np.arange(n) if l == d - 1 else pids[l + 1]
            tables.append(table)
        self.child: list[torch.Tensor] = [torch.from_numpy(t) for t in tables]
        self.codes = torch.from_numpy(codes)
        # for excluding items (a user's history) during the search: each item's prefix index at
        # every level 1..d, as `step` numbers them (on the last level the item's row), and
        # how many items lie under each prefix (`under[d]` is all ones)
        rows = pids[1:d] + [np.arange(n)]
        under = [np.array([n], dtype=np.int64)] + [
            np.bincount(p, minlength=self.n_prefixes[l + 1]).astype(np.int64) for l, p in enumerate(rows)]
        self.item_prefix = torch.from_numpy(np.stack(rows, 1))  # [n_items, d]
        self.under = [torch.from_numpy(u) for u in under]
        # the Python lookups stay on the CPU (numpy views of the tables), wherever `to` moves them
        self._tables, self._under, self._ids = tables, under, ids
        # smallest item id under each prefix of levels 1..d-1 (longest_known_prefix's example)
        self._first = [np.zeros(1, dtype=np.int64)]
        for l in range(1, d):
            first = np.full(self.n_prefixes[l], np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(first, pids[l], ids)
            self._first.append(first)

    # ---- device -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.child[0].device

    def to(self, device: torch.device | str) -> CodeTrie:
        device = torch.device(device)
        if self.device != device:
            self.child = [t.to(device) for t in self.child]
            self.codes = self.codes.to(device)
            self.item_prefix = self.item_prefix.to(device)
            self.under = [t.to(device) for t in self.under]
        return self

    # ---- vectorised lookups ---------------------------------------------------------------
    def allowed_mask(self, level: int, prefix_ids: torch.Tensor) -> torch.Tensor:
        """[...] prefix indices at `level` (-1 = dead) -> [..., K_level] bool: valid next codes."""
        nxt = self.child[level][prefix_ids.clamp(min=0)]
        return (nxt >= 0) & (prefix_ids >= 0).unsqueeze(-1)

    def step(self, level: int, prefix_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next prefix index (item row on the last level) for each (prefix, code); -1 if none."""
        nxt = self.child[level][prefix_ids.clamp(min=0), codes].long()
        return torch.where(prefix_ids >= 0, nxt, torch.full_like(nxt, -1))

    # ---- Python lookups (one prefix at a time) ---------------------------------------------
    def _walk(self, prefix: Sequence[int] | np.ndarray) -> int:
        """Prefix index of `prefix` at level len(prefix) (the item row for a full tuple); -1: none."""
        p = 0
        for l, c in enumerate(prefix):
            if l >= self.n_levels or not 0 <= int(c) < self.sizes[l]:
                return -1
            p = int(self._tables[l][p, int(c)])
            if p < 0:
                return -1
        return p

    def allowed(self, prefix: Sequence[int] | np.ndarray = ()) -> np.ndarray:
        """Sorted codes that extend `prefix` towards an existing item (empty for a complete or
        unknown prefix)."""
        p = self._walk(prefix) if len(prefix) < self.n_levels else -1
        if p < 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._tables[len(prefix)][p] >= 0).astype(np.int64)

    def count(self, prefix: Sequence[int] | np.ndarray = ()) -> int:
        """Items whose codes start with `prefix`."""
        p = self._walk(prefix)
        return int(self._under[len(prefix)][p]) if p >= 0 else 0

    def is_prefix(self, prefix: Sequence[int] | np.ndarray) -> bool:
        return self.count(prefix) > 0

    def is_item(self, codes: Sequence[int] | np.ndarray) -> bool:
        return len(codes) == self.n_levels and self._walk(codes) >= 0

    def item_of(self, codes: Sequence[int] | np.ndarray) -> int | None:
        """The item id whose codes are exactly `codes`; None when no item has them."""
        return int(self._ids[self._walk(codes)]) if self.is_item(codes) else None

    def longest_known_prefix(self, codes: Sequence[int] | np.ndarray) -> tuple[int, int | None]:
        """(depth, example item): the most leading codes some item shares, and the smallest
        item id with that prefix; (0, None) when even the first code matches no item."""
        p, k = 0, 0
        for l, c in enumerate(list(codes)[: self.n_levels]):
            if not 0 <= int(c) < self.sizes[l] or self._tables[l][p, int(c)] < 0:
                break
            p, k = int(self._tables[l][p, int(c)]), l + 1
        if k == 0:
            return 0, None
        return k, int(self._ids[p] if k == self.n_levels else self._first[k][p])
