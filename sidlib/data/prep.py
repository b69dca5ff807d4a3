"""01-prep: RawData (source ids, file order) -> the prep artifacts every later stage reads.

Steps, in this order (each one's drops are counted in the report, with the reason):

1. `filter_items`: duplicate item rows (the first is kept), titles / descriptions shorter
   (after strip) than data.min_title_chars / data.min_description_chars. An item failing
   several rules is counted once, under the first (duplicate, title, description).
2. `drop_unknown_items`: interactions without a user/item id, of an item the filters removed,
   or of an item absent from the item table.
3. `chronological`: users in order of first appearance in the file, each user's events sorted
   by timestamp with a STABLE sort, so equal timestamps keep their file order.
4. `dedupe` (data.dedupe): a repeated (user, item) keeps its chronologically first event.
   With the official split, duplicates are only removed within the same split part, so the
   dataset's own valid/test rows are never deleted.
5. `sample_users` (data.max_users > 0): a seeded sample of users, before the k-core.
6. `kcore` (data.kcore > 0): iterative; every user and item keeps >= k interactions.
7. `truncate` (data.max_seq_len > 0): the last N events of each user. It runs after the
   k-core, so a truncated sequence may hold items with fewer than k events overall.
8. `drop_short_users` (data.min_seq_len): users with fewer events are dropped (this can also
   leave items under k; the k-core is not re-run, the report shows the final counts).
9. Dense ids: item_id 0..n-1 in the order of the loader's item table (its file order; for the
   LC-Rec format "0".."n-1" this is the identity), user_id 0..m-1 in order of first appearance
   in the interaction file. Items without any kept interaction are dropped. `source_id`
   columns keep the original ids.
10. The split (`sidlib.split`: leave-one-out, or the dataset's official one), then pairs:
    "sequence" co-occurrence pairs from the train prefixes only (consecutive items a, b give
    a->b and b->a; `count` = how often), plus the metadata pairs (also_buy / bought_together,
    as directed in the metadata) between kept items when data.metadata_pairs.

Any step that leaves nothing raises DataError naming that step and the setting to change.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sidlib import split as splitlib
from sidlib import stages
from sidlib.config import Config, DataConfig
from sidlib.data import load_raw
from sidlib.data.schema import ITEM_COLUMNS, DataError, RawData

log = logging.getLogger("sidlib.data")

SEQUENCE_KIND = "sequence"

# parquet layouts (list columns are typed explicitly so that empty lists round-trip)
SCHEMAS: dict[str, pa.Schema] = {
    "items": pa.schema(
        [
            ("item_id", pa.int64()),
            ("source_id", pa.string()),
            ("title", pa.string()),
            ("description", pa.string()),
            ("features", pa.list_(pa.string())),
            ("categories", pa.list_(pa.string())),
            ("brand", pa.string()),
            ("extra", pa.string()),
        ]
    ),
    "users": pa.schema([("user_id", pa.int64()), ("source_id", pa.string())]),
    "interactions": pa.schema(
        [("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64()), ("rating", pa.float64())]
    ),
    "sequences": pa.schema(
        [("user_id", pa.int64()), ("item_ids", pa.list_(pa.int64())), ("timestamps", pa.list_(pa.int64()))]
    ),
    "split": pa.schema(
        [("user_id", pa.int64()), ("train", pa.list_(pa.int64())), ("valid", pa.int64()), ("test", pa.int64())]
    ),
    "pairs": pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("kind", pa.string()), ("count", pa.int64())]),
}
REPORT_FILE = "prep_report.json"


def _n(x: int) -> str:
    return f"{x:,}"


# ---------------------------------------------------------------- items


def filter_items(items: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop duplicate item ids and items with too short a title / description.

    Returns the kept items (loader order, fresh index) and {reason: count}.
    """
    dropped: dict[str, int] = {}
    ids = items["item_id"].astype(str)
    dup = ids.duplicated(keep="first").to_numpy()
    title_len = items["title"].fillna("").astype(str).str.strip().str.len().to_numpy()
    desc_len = items["description"].fillna("").astype(str).str.strip().str.len().to_numpy()
    rules = [
        ("duplicate item id (the first row is kept)", dup),
        (f"title shorter than {cfg.min_title_chars} chars", title_len < cfg.min_title_chars),
        (f"description shorter than {cfg.min_description_chars} chars", desc_len < cfg.min_description_chars),
    ]
    gone = np.zeros(len(items), dtype=bool)
    for reason, mask in rules:
        new = mask & ~gone
        if new.any():
            dropped[reason] = int(new.sum())
        gone |= new
    kept = items.loc[~gone].reset_index(drop=True)
    if len(items) and kept.empty:
        worst = max(dropped, key=dropped.get)
        setting = "data.min_title_chars" if worst.startswith("title") else "data.min_description_chars"
        raise DataError(
            f"item filter left no items (before: {_n(len(items))} items; {worst}: {_n(dropped[worst])}) "
            f"— lower {setting}"
        )
    return kept, dropped


# ---------------------------------------------------------------- interactions


def drop_unknown_items(
    interactions: pd.DataFrame, kept_items: pd.Series, all_items: pd.Series
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Remove interactions without ids, of items the filters removed, or of unknown items."""
    dropped: dict[str, int] = {}
    u = interactions["user_id"]
    i = interactions["item_id"]
    missing = (u.isna() | i.isna() | (u.astype(str).str.strip() == "") | (i.astype(str).str.strip() == "")).to_numpy()
    ids = i.astype(str)
    in_kept = ids.isin(kept_items.astype(str)).to_numpy()
    in_all = ids.isin(all_items.astype(str)).to_numpy()
    rules = [
        ("missing user or item id", missing),
        ("item not in the item table", ~in_all),
        ("item removed by the item filters", ~in_kept),
    ]
    gone = np.zeros(len(interactions), dtype=bool)
    for reason, mask in rules:
        new = mask & ~gone
        if new.any():
            dropped[reason] = int(new.sum())
        gone |= new
    kept = interactions.loc[~gone].reset_index(drop=True)
    if len(interactions) and kept.empty:
        raise DataError(
            f"no interaction refers to a kept item (before: {_n(len(interactions))} interactions; "
            + ", ".join(f"{r}: {_n(c)}" for r, c in dropped.items())
            + ") — check that the interaction and item files belong together, or relax the item filters"
        )
    return kept, dropped


def chronological(interactions: pd.DataFrame) -> pd.DataFrame:
    """Users in order of first appearance, events by timestamp; a STABLE sort (ties keep file order).

    Adds `_user_order` (the user's first-appearance rank) used for grouping and dense ids.
    """
    df = interactions.copy()
    if "_user_order" not in df.columns:
        df["_user_order"] = pd.factorize(df["user_id"].astype(str))[0].astype(np.int64)
    order = np.lexsort((df["timestamp"].to_numpy(dtype=np.int64), df["_user_order"].to_numpy()))  # stable
    return df.iloc[order].reset_index(drop=True)


def dedupe(interactions: pd.DataFrame, by_split: bool = False) -> tuple[pd.DataFrame, int]:
    """Keep the first row of each repeated (user, item) — the first chronologically when the
    frame is `chronological`. by_split: only within the same split part."""
    key = ["user_id", "item_id"] + (["split"] if by_split else [])
    dup = interactions.duplicated(subset=key, keep="first").to_numpy()
    return interactions.loc[~dup].reset_index(drop=True), int(dup.sum())


def repeat_share(split: pd.DataFrame) -> float:
    """Share of test targets already in their user's earlier history (training part or valid
    item): repeat consumption. At 0, a ranking should leave the history out of its candidates
    (baselines.exclude_history), as no target is ever among them."""
    test = split["test"].to_numpy()
    has = test != splitlib.NONE
    if not has.any():
        return 0.0
    seen = [t in set(tr) or t == v for t, tr, v in zip(test[has], split["train"][has], split["valid"].to_numpy()[has])]
    return round(float(np.mean(seen)), 4)


def sample_users(interactions: pd.DataFrame, max_users: int, seed: int) -> pd.DataFrame:
    """A deterministic sample of max_users users (all of them when max_users <= 0 or >= #users).

    Users are listed in first-appearance order and drawn with numpy's default_rng(seed), so
    the same file and seed always give the same users; row order is kept.
    """
    users = pd.unique(interactions["user_id"])
    rows = splitlib.sample_rows(len(users), max_users, seed)
    if rows is None:
        return interactions
    chosen = users[rows]
    return interactions.loc[interactions["user_id"].isin(chosen).to_numpy()].reset_index(drop=True)


def kcore(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iterative k-core: drop users and items with < k interactions until none is left (k <= 0: off).

    Vectorised: each round counts users and items (np.bincount over factorized ids, i.e. value
    counts) and removes every short user and item at once; rounds repeat until stable. Row
    order is kept.
    """
    if k <= 0:
        return interactions
    users = pd.factorize(interactions["user_id"])[0]
    items = pd.factorize(interactions["item_id"])[0]
    keep = np.ones(len(interactions), dtype=bool)
    while keep.any():
        u, i = users[keep], items[keep]
        ok = (np.bincount(u)[u] >= k) & (np.bincount(i)[i] >= k)  # value counts of the rows left
        if ok.all():
            break
        keep[np.flatnonzero(keep)[~ok]] = False
    return interactions.loc[keep].reset_index(drop=True)


def truncate(interactions: pd.DataFrame, max_seq_len: int) -> tuple[pd.DataFrame, int]:
    """Keep the last max_seq_len events of each user (frame must be `chronological`; 0 = all)."""
    if max_seq_len <= 0:
        return interactions, 0
    from_end = interactions.groupby("_user_order", sort=False).cumcount(ascending=False).to_numpy()
    keep = from_end < max_seq_len
    return interactions.loc[keep].reset_index(drop=True), int((~keep).sum())


def drop_short_users(interactions: pd.DataFrame, min_seq_len: int) -> tuple[pd.DataFrame, int]:
    """Drop users with fewer than min_seq_len events; returns (frame, users dropped)."""
    counts = interactions["_user_order"].map(interactions["_user_order"].value_counts()).to_numpy()
    keep = counts >= min_seq_len
    n_users = interactions.loc[~keep, "_user_order"].nunique()
    return interactions.loc[keep].reset_index(drop=True), int(n_users)


def build_sequences(interactions: pd.DataFrame) -> pd.DataFrame:
    """Dense, chronological interactions -> DataFrame[user_id, item_ids, timestamps] (by user_id)."""
    users = interactions["user_id"].to_numpy(dtype=np.int64)
    order = np.argsort(users, kind="stable")
    users = users[order]
    items = interactions["item_id"].to_numpy(dtype=np.int64)[order]
    ts = interactions["timestamp"].to_numpy(dtype=np.int64)[order]
    uniq, start = np.unique(users, return_index=True)
    bounds = list(start[1:])
    return pd.DataFrame(
        {
            "user_id": uniq,
            "item_ids": [a.tolist() for a in np.split(items, bounds)] if len(uniq) else [],
            "timestamps": [a.tolist() for a in np.split(ts, bounds)] if len(uniq) else [],
        }
    )


# ---------------------------------------------------------------- pairs


def sequence_pairs(split: pd.DataFrame) -> pd.DataFrame:
    """Co-occurrence pairs from the train prefixes only: consecutive (a, b) counts a->b and b->a.

    Valid/test items never appear in a pair unless they also occur in some train prefix.
    Self pairs (a, a) are skipped. DataFrame[src, dst, kind="sequence", count].
    """
    lengths = split["train"].map(len).to_numpy()
    flat = np.fromiter((i for t in split["train"] for i in t), dtype=np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(lengths)), lengths)
    same = owner[:-1] == owner[1:]
    a, b = flat[:-1][same], flat[1:][same]
    ne = a != b
    a, b = a[ne], b[ne]
    both = pd.DataFrame({"src": np.concatenate([a, b]), "dst": np.concatenate([b, a])})
    out = both.groupby(["src", "dst"], sort=True).size().rename("count").reset_index()
    out.insert(2, "kind", SEQUENCE_KIND)
    return out.astype({"src": np.int64, "dst": np.int64, "count": np.int64})


def metadata_pairs(pairs: pd.DataFrame, item_index: pd.Index) -> pd.DataFrame:
    """RawData.pairs (source ids) -> dense pairs between kept items: [src, dst, kind, count].

    item_index: source ids in dense-id order. Pairs with an unknown / dropped end and self
    pairs are left out; repeated (src, dst, kind) are counted.
    """
    if pairs is None or pairs.empty:
        return _empty_pairs()
    src = item_index.get_indexer(pairs["src"].astype(str))
    dst = item_index.get_indexer(pairs["dst"].astype(str))
    ok = (src >= 0) & (dst >= 0) & (src != dst)
    df = pd.DataFrame({"src": src[ok], "dst": dst[ok], "kind": pairs["kind"].astype(str).to_numpy()[ok]})
    if df.empty:
        return _empty_pairs()
    out = df.groupby(["src", "dst", "kind"], sort=True).size().rename("count").reset_index()
    return out.astype({"src": np.int64, "dst": np.int64, "count": np.int64})


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame(
        {"src": np.array([], np.int64), "dst": np.array([], np.int64), "kind": pd.Series([], dtype=str),
         "count": np.array([], np.int64)}
    )


# ---------------------------------------------------------------- the result


@dataclass
class Prepared:
    """The prep artifacts. All ids are dense ints; `source_id` columns keep the originals."""

    items: pd.DataFrame  # item_id, source_id, title, description, features, categories, brand, extra
    users: pd.DataFrame  # user_id, source_id
    interactions: pd.DataFrame  # user_id, item_id, timestamp, rating (+ split when official); chronological
    sequences: pd.DataFrame  # user_id, item_ids, timestamps
    split: pd.DataFrame  # user_id, train, valid, test (sidlib.split layout)
    pairs: pd.DataFrame  # src, dst, kind, count
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def metrics(self) -> dict[str, Any]:
        lengths = self.sequences["item_ids"].map(len)
        return {
            "users": int(len(self.users)),
            "items": int(len(self.items)),
            "interactions": int(len(self.interactions)),
            "mean_seq_len": round(float(lengths.mean()), 3) if len(lengths) else 0.0,
            "test_users": int((self.split["test"].to_numpy() != splitlib.NONE).sum()),
            "repeat_test_share": repeat_share(self.split),
        }

    def save(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, schema in SCHEMAS.items():
            df = getattr(self, name)
            if name == "interactions" and "split" in df.columns:
                schema = schema.append(pa.field("split", pa.string()))
            _write(df, schema, folder / f"{name}.parquet")
        (folder / REPORT_FILE).write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> "Prepared":
        folder = Path(folder)
        frames = {}
        for name in SCHEMAS:
            path = folder / f"{name}.parquet"
            if not path.exists():
                raise DataError(f"{path}: not found; expected the 01-prep artifacts (run 01-prep first)")
            frames[name] = _read(path)
        report_path = folder / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        return cls(report=report, **frames)


def _write(df: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    arrays = []
    for f in schema:
        col = df[f.name]
        if pa.types.is_list(f.type):
            values = [list(v) for v in col]
        elif pa.types.is_string(f.type):
            values = col.astype(object).where(col.notna(), None).tolist()
        else:
            values = col.to_numpy()
        arrays.append(pa.array(values, type=f.type))
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def _read(path: Path) -> pd.DataFrame:
    table = pq.read_table(path)
    data = {}
    for f in table.schema:
        col = table.column(f.name)
        data[f.name] = col.to_pylist() if pa.types.is_list(f.type) else col.to_pandas()
    return pd.DataFrame(data)


# ---------------------------------------------------------------- the pipeline


class _Funnel:
    """Counts after each step, and who each step dropped."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.dropped: dict[str, dict[str, int]] = {"items": {}, "users": {}, "interactions": {}}

    def add(self, what: str, reason: str, count: int) -> None:
        if count:
            self.dropped[what][reason] = self.dropped[what].get(reason, 0) + int(count)

    def step(self, name: str, df: pd.DataFrame, items: int | None = None) -> None:
        """Record the counts after step `name`; users (and items, when counted from the
        interactions) that disappeared since the previous step are dropped by this one."""
        row = {
            "step": name,
            "users": int(df["user_id"].nunique()),
            "items": int(df["item_id"].nunique()) if items is None else int(items),
            "interactions": int(len(df)),
        }
        if self.rows:
            prev = self.rows[-1]
            self.add("users", name, prev["users"] - row["users"])
            if items is None and prev.get("items_from_interactions"):
                self.add("items", name, prev["items"] - row["items"])
        row["items_from_interactions"] = items is None
        self.rows.append(row)

    def table(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "items_from_interactions"} for r in self.rows]


def prepare(raw: RawData, cfg: DataConfig, seed: int = 42) -> Prepared:
    """RawData -> Prepared (see the module docstring for the steps and their order)."""
    if cfg.split not in ("loo", "official"):
        raise DataError(f"data.split must be 'loo' or 'official', got {cfg.split!r}")
    official = cfg.split == "official"
    if official and "split" not in raw.interactions.columns:
        raise DataError(
            f"data.split='official' but the {raw.source or 'loaded'} data has no official split "
            "(no 'split' column) — use data.split='loo'"
        )
    if raw.items.empty:
        raise DataError(f"the {raw.source or 'loaded'} data has no items (files: {raw.files})")
    if raw.interactions.empty:
        raise DataError(f"the {raw.source or 'loaded'} data has no interactions (files: {raw.files})")

    f = _Funnel()
    cols = ["user_id", "item_id", "timestamp", "rating"] + (["split"] if official else [])
    inter = raw.interactions[cols].copy()
    try:
        inter["timestamp"] = pd.to_numeric(inter["timestamp"], errors="raise").astype(np.int64)
    except (ValueError, TypeError) as e:
        raise DataError(f"interactions: timestamp must be integers ({e})") from None
    inter["rating"] = pd.to_numeric(inter["rating"], errors="coerce").astype(np.float64)
    if official:
        inter["split"] = inter["split"].astype(str)
    f.step("loaded", inter, items=len(raw.items))

    # 1-2 items and interactions of dropped / unknown items
    items, item_drops = filter_items(raw.items, cfg)
    for reason, n in item_drops.items():
        f.add("items", reason, n)
    inter, drops = drop_unknown_items(inter, items["item_id"], raw.items["item_id"])
    for reason, n in drops.items():
        f.add("interactions", reason, n)
    inter["user_id"] = inter["user_id"].astype(str)
    inter["item_id"] = inter["item_id"].astype(str)
    n_with = inter["item_id"].nunique()
    f.add("items", "no interactions in the source", len(items) - n_with)
    f.step("unknown items removed", inter)

    # 3-4 chronological order, duplicates
    inter = chronological(inter)
    if cfg.dedupe:
        inter, n = dedupe(inter, by_split=official)
        f.add("interactions", "duplicate (user, item): the first is kept", n)
        f.step("dedupe", inter)

    # 5-6 sample, k-core
    if cfg.max_users > 0:
        before = len(inter)
        inter = sample_users(inter, cfg.max_users, seed)
        f.add("interactions", f"user not in the max_users={cfg.max_users} sample", before - len(inter))
        f.step(f"max_users={cfg.max_users} sample", inter)
    if cfg.kcore > 0:
        before, n_users, n_items = len(inter), inter["user_id"].nunique(), inter["item_id"].nunique()
        inter = kcore(inter, cfg.kcore)
        if inter.empty:
            raise DataError(
                f"k-core with k={cfg.kcore} left no interactions (before: {_n(before)} interactions, "
                f"{_n(n_users)} users, {_n(n_items)} items) — lower data.kcore"
            )
        f.add("interactions", f"k-core (k={cfg.kcore})", before - len(inter))
        f.step(f"k-core (k={cfg.kcore})", inter)

    # 7-8 sequence length
    if cfg.max_seq_len > 0:
        inter, n = truncate(inter, cfg.max_seq_len)
        f.add("interactions", f"older than the last max_seq_len={cfg.max_seq_len} events", n)
        f.step(f"max_seq_len={cfg.max_seq_len}", inter)
    before, n_users = len(inter), inter["user_id"].nunique()
    longest = int(inter["_user_order"].value_counts().max()) if before else 0
    inter, _ = drop_short_users(inter, cfg.min_seq_len)
    if inter.empty:
        raise DataError(
            f"min_seq_len={cfg.min_seq_len} left no users (before: {_n(n_users)} users, {_n(before)} "
            f"interactions, longest sequence {longest}) — lower data.min_seq_len"
        )
    f.add("interactions", f"user with fewer than min_seq_len={cfg.min_seq_len} events", before - len(inter))
    f.step(f"min_seq_len={cfg.min_seq_len}", inter)

    # 9 dense ids
    used = set(inter["item_id"].unique())
    items = items[items["item_id"].astype(str).isin(used).to_numpy()].reset_index(drop=True)
    item_index = pd.Index(items["item_id"].astype(str))
    items = items[ITEM_COLUMNS].rename(columns={"item_id": "source_id"})
    items.insert(0, "item_id", np.arange(len(items), dtype=np.int64))
    for c in ("features", "categories"):
        items[c] = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] for v in items[c]]
    for c in ("title", "description", "brand", "extra"):
        items[c] = items[c].fillna("").astype(str)

    user_orders = np.unique(inter["_user_order"].to_numpy())  # first-appearance order
    first_row = inter.drop_duplicates("_user_order").set_index("_user_order")["user_id"]
    users = pd.DataFrame(
        {"user_id": np.arange(len(user_orders), dtype=np.int64), "source_id": first_row.loc[user_orders].to_numpy()}
    )
    dense = pd.DataFrame(
        {
            "user_id": np.searchsorted(user_orders, inter["_user_order"].to_numpy()).astype(np.int64),
            "item_id": item_index.get_indexer(inter["item_id"]).astype(np.int64),
            "timestamp": inter["timestamp"].to_numpy(dtype=np.int64),
            "rating": inter["rating"].to_numpy(dtype=np.float64),
        }
    )
    if official:
        dense["split"] = inter["split"].to_numpy()
    sequences = build_sequences(dense)

    # 10 split, pairs
    if official:
        split = splitlib.official_split(dense)
        extra_targets = int((dense["split"] != "train").sum()) - int(
            (split["valid"] != splitlib.NONE).sum() + (split["test"] != splitlib.NONE).sum()
        )
        f.add("interactions", "official valid/test row after the user's first one (not a target)", extra_targets)
    else:
        split = splitlib.leave_one_out(sequences)
    pairs = sequence_pairs(split)
    if cfg.metadata_pairs:
        pairs = pd.concat([pairs, metadata_pairs(raw.pairs, item_index)], ignore_index=True)

    prepared = Prepared(items, users, dense, sequences, split, pairs)
    prepared.report = {
        "source": raw.source,
        "files": list(raw.files),
        "config": dataclasses.asdict(cfg),
        "seed": seed,
        "loader_skipped": dict(raw.skipped),
        "dropped": f.dropped,
        "funnel": f.table(),
        "pairs": {
            str(k): {"pairs": int(len(g)), "count": int(g["count"].sum())} for k, g in pairs.groupby("kind")
        },
        "ids": "item_id: order of the loader's item table; user_id: first appearance in the interactions",
        "metrics": prepared.metrics(),
    }
    log.info("prepared %s: %s", raw.source, prepared.report["metrics"])
    return prepared


# ---------------------------------------------------------------- plots


def plot_distributions(prepared: Prepared, path: Path | str) -> Path:
    """Sequence-length histogram and item popularity (log-log, by rank), saved as a PNG."""
    # lazy: the CLI imports this module (new-profile) and pyplot would double `python -m sidlib --help`'s start
    from sidlib.plots import plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = prepared.sequences["item_ids"].map(len).to_numpy()
    pop = np.sort(np.bincount(prepared.interactions["item_id"].to_numpy(dtype=np.int64),
                              minlength=prepared.n_items))[::-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if len(lengths):
        a.hist(lengths, bins=min(50, int(lengths.max()) - int(lengths.min()) + 1))
    mean = f", mean {lengths.mean():.1f}" if len(lengths) else ""
    a.set(title=f"sequence length ({len(lengths):,} users{mean})", xlabel="items per user", ylabel="users")
    a.set_yscale("log")
    ranks = np.arange(1, len(pop) + 1)
    nz = pop > 0
    b.loglog(ranks[nz], pop[nz], marker=".", linestyle="none", markersize=3)
    b.set(title=f"item popularity ({prepared.n_items:,} items)", xlabel="rank", ylabel="interactions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- stage 01


@dataclass
class PrepOutputs:
    """What stage 01 read and wrote (artifacts/<profile>/01-prep/)."""

    out: Path
    raw: RawData
    prepared: Prepared
    metrics: dict[str, Any]
    plot: Path


def run(cfg: Config) -> PrepOutputs:
    """Stage 01 (notebook 01): the profile's raw data -> items, sequences, split, pairs; its plot."""
    out = stages.PREP.dir(cfg.profile, create=True)
    raw = load_raw(cfg.data)
    prepared = prepare(raw, cfg.data, seed=cfg.seed)
    prepared.save(out)
    if prepared.metrics()["repeat_test_share"] == 0 and not cfg.baselines.exclude_history:
        log.warning("%s: no test target is in its user's history, yet baselines.exclude_history = false keeps "
                    "history items among the candidates; set it to true", cfg.profile)
    return PrepOutputs(out, raw, prepared, prepared.metrics(), plot_distributions(prepared, out / "distributions.png"))
