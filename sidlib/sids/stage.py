"""Stage 05: the SID table from 04's codes (or an imported index), written with its plot."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sidlib import paths, plots, split, stages
from sidlib.config import Config
from .codes import (add_dedup_level, collision_stats, export_lcrec_index, import_codes_table, import_lcrec_index,
                    resolve_collisions)
from .scheme import SidError, SidScheme, as_codes
from .table import SidTable


# --------------------------------------------------------------------------- stage 05 entry point


def build_table(
    items: pd.DataFrame,
    codes: np.ndarray | None,
    codebook_size: int,
    import_path: str | Path | None = None,
    dedup_codebook_size: int = 0,
    import_collisions: str = "error",
    dedup_key: np.ndarray | None = None,
) -> tuple[SidTable, dict[str, Any]]:
    """The SID table of stage 05 and its metrics.

    Either the tokenizer's codes [N, L] get a last level that makes every item unique (index
    within its collision group), or an external index (LC-Rec index.json, or a parquet/CSV of
    codes) is imported as is — it must already be unique, unless import_collisions = "next_free"
    moves each item that repeats an earlier one's tuple to the next free last code under its
    prefix (counted in the metrics). Row i of `items` is item i. dedup_key orders the items of a
    collision group (lowest first: last code 0); default the item id.
    """
    moved = 0
    if import_collisions not in ("error", "next_free"):
        raise SidError(f"sids.import_collisions = {import_collisions!r}: expected \"error\" or \"next_free\"")
    if import_path:
        path = Path(import_path)
        allow = import_collisions == "next_free"
        if path.suffix == ".json":
            full, scheme = import_lcrec_index(path, items["source_id"].astype(str).tolist(), duplicates=allow)
        else:
            full, scheme = import_codes_table(path, items["item_id"].tolist(), duplicates=allow)
        before = collision_stats(full)
        if allow:
            full, moved = resolve_collisions(full)
            sizes = list(scheme.codebook_sizes)
            sizes[-1] = max(sizes[-1], int(full[:, -1].max()) + 1) if len(full) else sizes[-1]
            scheme = SidScheme(sizes)
        dedup_max = 0
    else:
        if codes is None:
            raise SidError("no tokenizer codes and no sids.import_path: run 04-rqvae or set an import path")
        codes = as_codes(codes)
        if len(codes) != len(items):
            raise SidError(f"{len(codes)} code rows for {len(items)} items: the codes come from another item table")
        before = collision_stats(codes)
        # 0 = auto: the tokenizer's K, grown to the largest collision group when that is larger
        # (small catalogs with small K); an explicit size is a hard limit.
        k_last = dedup_codebook_size or max(codebook_size, before["max_group"])
        full = add_dedup_level(codes, k_last, item_ids=dedup_key)
        scheme = SidScheme([codebook_size] * codes.shape[1] + [k_last])
        dedup_max = int(full[:, -1].max()) if len(full) else 0
    table = SidTable.build(full, scheme, titles=items["title"].tolist(), item_ids=items["item_id"].tolist())
    unique_after = len(np.unique(table.codes, axis=0))
    if unique_after != len(items):
        raise SidError(f"only {unique_after} unique SIDs for {len(items)} items")
    metrics = {
        "items": len(items),
        "levels": scheme.levels,
        "codebook_sizes": list(scheme.codebook_sizes),
        "unique_after_dedup": unique_after,
        "dedup_level_max": dedup_max,
        "unique_before_dedup": before["unique_ratio"],
        "max_collision_before_dedup": before["max_group"],
        "source": "import" if import_path else "tokenizer",
        "import_moved": moved,  # imported items given the next free last code (import_collisions)
    }
    return table, metrics


def dedup_key(cfg: Config, n_items: int) -> np.ndarray | None:
    """The order of items inside a collision group (sids.dedup_order): None = by item id;
    "popularity" = by training interactions, most first (01's train prefixes only, so neither a
    valid nor a test target counts), ties by item id."""
    if cfg.sids.dedup_order == "item_id":
        return None
    if cfg.sids.dedup_order != "popularity":
        raise SidError(f"sids.dedup_order = {cfg.sids.dedup_order!r}: expected \"item_id\" or \"popularity\"")
    counts = split.item_train_counts(pd.read_parquet(stages.PREP.dir(cfg.profile) / "split.parquet"), n_items)
    if len(counts) != n_items:
        raise SidError(f"01-prep's split names item ids up to {len(counts) - 1} but 02 has {n_items} items: "
                       "rerun the chain from 01")
    rank = np.empty(n_items, dtype=np.int64)
    rank[np.lexsort((np.arange(n_items), -counts))] = np.arange(n_items)
    return rank


@dataclass
class SidOutputs:
    """What stage 05 read and wrote (artifacts/<profile>/05-sids/)."""

    out: Path
    table: SidTable
    metrics: dict[str, Any]
    plot: Path
    source: str  # where the codes came from, for the notebook's first line


def run(cfg: Config) -> SidOutputs:
    """Stage 05 (notebook 05): 04's codes (or sids.import_path) + a uniqueness level -> the SID
    table (sids.parquet, sid_mapping.pt, sid_manifest.json) and a plot of the collision groups."""
    out = stages.SIDS.dir(cfg.profile, create=True)
    items = pd.read_parquet(stages.CLEAN.dir(cfg.profile) / "items.parquet")
    if cfg.sids.import_path:
        codes, k, import_path = None, 0, paths.resolve_data_path(cfg.sids.import_path)
        source = f"external SIDs imported from {import_path}"
    else:
        tok_dir = stages.RQVAE.dir(cfg.profile)
        codes = np.load(tok_dir / "codes.npy")
        k = json.loads((tok_dir / "tokenizer.json").read_text())["codebook_size"]
        import_path = None
        source = f"{codes.shape[1]} tokenizer levels x {k} codes from 04-rqvae"
    key = dedup_key(cfg, len(items))
    table, metrics = build_table(items, codes, k, import_path, cfg.sids.dedup_codebook_size,
                                 cfg.sids.import_collisions, key)
    metrics["dedup_order"] = cfg.sids.dedup_order
    table.save(out, extra={"metrics": metrics})
    # the same SIDs in LC-Rec's format, for LC-Rec / LETTER / MiniOneRec scripts
    export_lcrec_index(table.codes, items["source_id"].astype(str).tolist(), out / "index.json")
    group_sizes = table.df["codes"].map(lambda c: tuple(c[:-1])).value_counts().to_numpy()
    plot = plots.length_histogram({"items per tokenizer tuple": group_sizes}, out / "collision_groups.png",
                                  xlabel="group size", bins=max(5, int(group_sizes.max())))
    return SidOutputs(out, table, metrics, plot, source)
