"""The per-item SID table: item_id, codes, sid, title; its files."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .scheme import SidError, SidScheme, as_codes, check_range, first_duplicate
from .trie import CodeTrie


# --------------------------------------------------------------------------- table


@dataclass
class SidTable:
    """One row per item, sorted by item_id: item_id (int), codes (list[int]), sid (str), title."""

    df: pd.DataFrame
    scheme: SidScheme
    _trie: CodeTrie | None = field(default=None, repr=False)

    FILES = {"table": "sids.parquet", "mapping": "sid_mapping.pt", "manifest": "sid_manifest.json"}

    @classmethod
    def build(
        cls,
        codes: np.ndarray,
        scheme: SidScheme,
        titles: Sequence[str] | None = None,
        item_ids: Sequence[int] | np.ndarray | None = None,
    ) -> SidTable:
        """Validated: shape matches the scheme, codes in range, tuples unique."""
        codes = as_codes(codes)
        n = len(codes)
        if codes.shape[1] != scheme.levels:
            raise SidError(f"codes have {codes.shape[1]} levels, the scheme {scheme.levels}")
        ids = np.arange(n, dtype=np.int64) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
        if len(ids) != n:
            raise SidError(f"item_ids has {len(ids)} entries for {n} code rows")
        if len(np.unique(ids)) != n:
            raise SidError("item_ids are not unique")
        check_range(codes, scheme.codebook_sizes, ids.tolist())
        dup = first_duplicate(codes)
        if dup is not None:
            raise SidError(
                f"items {int(ids[dup[0]])} and {int(ids[dup[1]])} have the same codes {codes[dup[0]].tolist()}; "
                "add the dedup level (add_dedup_level) first"
            )
        titles_l = [""] * n if titles is None else ["" if t is None or t is pd.NA else str(t) for t in titles]
        if len(titles_l) != n:
            raise SidError(f"{len(titles_l)} titles for {n} items")
        order = np.argsort(ids, kind="stable")
        df = pd.DataFrame(
            {
                "item_id": ids[order],
                "codes": pd.Series([r for r in codes[order].tolist()], dtype=object),
                "sid": pd.array(scheme.format_many(codes[order]) if n else [], dtype="string"),
                "title": pd.array([titles_l[i] for i in order], dtype="string"),
            }
        )
        return cls(df, scheme)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def codes(self) -> np.ndarray:
        """[N, levels] int64, row order = df order (item_id ascending)."""
        if not len(self.df):
            return np.zeros((0, self.scheme.levels), dtype=np.int64)
        return np.asarray(self.df["codes"].tolist(), dtype=np.int64)

    @property
    def item_ids(self) -> np.ndarray:
        return self.df["item_id"].to_numpy(dtype=np.int64)

    def trie(self) -> CodeTrie:
        if self._trie is None:
            self._trie = CodeTrie(self.codes, self.scheme.codebook_sizes, self.item_ids)
        return self._trie

    def sid_of(self, item_id: int) -> str:
        row = np.searchsorted(self.item_ids, item_id)
        if row >= len(self.df) or self.item_ids[row] != item_id:
            raise KeyError(f"item {item_id} has no SID")
        return str(self.df["sid"].iat[row])

    def item_of(self, sid: str | Sequence[int]) -> int | None:
        """Item id of a SID string or code tuple; None when no item has it."""
        codes = self.scheme.parse(sid) if isinstance(sid, str) else sid
        return self.trie().item_of(codes)

    def mapping_tensor(self) -> torch.Tensor:
        """LongTensor [levels, items], column i = codes of item i (needs item ids 0..N-1)."""
        ids = self.item_ids
        if not np.array_equal(ids, np.arange(len(ids))):
            raise SidError("the mapping tensor needs dense item ids 0..N-1 (column i = item i)")
        return torch.from_numpy(np.ascontiguousarray(self.codes.T)).long()

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Path]:
        """Write sids.parquet, sid_mapping.pt and sid_manifest.json (scheme + num_items +
        `extra`, e.g. collision stats); returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {k: folder / v for k, v in self.FILES.items()}
        df = self.df.copy()
        df["codes"] = df["codes"].map(lambda r: [int(c) for c in r])
        df.to_parquet(paths["table"], index=False)
        torch.save(self.mapping_tensor(), paths["mapping"])
        manifest = {
            **self.scheme.to_dict(),
            "num_items": len(self),
            "mapping": {"file": self.FILES["mapping"], "shape": [self.scheme.levels, len(self)], "layout": "[levels, items], column i = item i"},
            **(extra or {}),
        }
        paths["manifest"].write_text(json.dumps(manifest, indent=2))
        return paths

    @classmethod
    def load(cls, folder: str | Path) -> SidTable:
        folder = Path(folder)
        for name in cls.FILES.values():
            if not (folder / name).exists():
                raise SidError(f"{folder / name}: not found; expected the output of SidTable.save (05-sids)")
        scheme = SidScheme.from_json(folder / cls.FILES["manifest"])
        df = pd.read_parquet(folder / cls.FILES["table"])
        table = cls.build(np.asarray([list(r) for r in df["codes"]], dtype=np.int64).reshape(len(df), scheme.levels),
                          scheme, df["title"].tolist(), df["item_id"].to_numpy())
        if not table.df["sid"].astype(str).equals(df["sid"].astype(str)):
            raise SidError(f"{folder}: the sid column does not match the codes under the manifest's scheme")
        return table
