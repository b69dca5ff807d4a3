"""Raw-data loaders of stage 01-prep: every source becomes one `RawData` (see schema.py).

`load_raw(cfg)` picks the loader from `cfg.source`. The helpers below are shared by the
loaders (building the frames with the schema's dtypes, reading gz/JSON lines, validating
interaction rows); the loader modules import these helpers, so `load_raw` imports them lazily.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from sidlib import paths
from sidlib.config import DataConfig
from sidlib.data.schema import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    PAIR_COLUMNS,
    DataError,
    RawData,
    SkipLog,
    require_path,
)

__all__ = ["DataError", "RawData", "SOURCES", "load_raw"]

log = logging.getLogger("sidlib.data")

SOURCES = ("movielens", "recbole", "lcrec", "amazon2018", "amazon2023", "amazon2023_benchmark", "tables")
UNKNOWN_ITEM = "interaction with unknown item"


def load_raw(cfg: DataConfig) -> RawData:
    """Load `cfg.source` from `cfg.path` (a `DataConfig`); unknown sources are a DataError."""
    if cfg.source not in SOURCES:
        raise DataError(f"unknown data.source {cfg.source!r}; valid sources: {', '.join(SOURCES)}")
    folder = _folder(cfg)
    # lazy: every loader module imports sidlib.data (these helpers) itself, a cycle at the top
    if cfg.source == "movielens":
        from sidlib.data.movielens import load_movielens

        return load_movielens(folder, cfg.name or "ml-100k", strict=cfg.strict)
    if cfg.source == "tables":
        from sidlib.data.tables import load_tables

        return load_tables(cfg, folder)
    if cfg.source == "recbole":
        from sidlib.data.recbole import load_recbole

        return load_recbole(cfg, folder)
    name = _require_name(cfg)
    if cfg.source == "lcrec":
        from sidlib.data.lcrec import load_lcrec

        return load_lcrec(folder, name, strict=cfg.strict)
    if cfg.source == "amazon2018":
        from sidlib.data.amazon2018 import load_amazon2018

        return load_amazon2018(folder, name, strict=cfg.strict, metadata_pairs=cfg.metadata_pairs)
    if cfg.source == "amazon2023":
        from sidlib.data.amazon2023 import load_amazon2023

        return load_amazon2023(
            folder, name, hf_repo=cfg.hf_repo, strict=cfg.strict,
            num_proc=cfg.num_proc, metadata_pairs=cfg.metadata_pairs,
        )
    from sidlib.data.amazon2023 import load_amazon2023_benchmark

    return load_amazon2023_benchmark(
        folder, name, benchmark=cfg.benchmark, kcore_subset=cfg.kcore_subset,
        strict=cfg.strict, metadata_pairs=cfg.metadata_pairs,
    )


def _folder(cfg: DataConfig) -> Path | None:
    """Resolve data.path; "" is only valid where the source has a default (movielens, hub)."""
    if cfg.path:
        folder = paths.resolve_data_path(cfg.path)
        if not folder.exists():  # before any file in it is looked for: the setting is what is wrong
            raise DataError(f"data.path = {cfg.path!r}: no such folder {folder}; expected the folder of the "
                            f"{cfg.source!r} files (a relative path in a profile file is relative to that file, "
                            "elsewhere to the repository)")
        return folder
    if cfg.source in ("movielens", "recbole") or (cfg.source == "amazon2023" and cfg.hf_repo):
        return None  # the recbole wheel's dataset_example folder / the hub
    if cfg.source == "tables":  # absolute items_file / interactions_file need no folder
        return None
    hint = " or data.hf_repo" if cfg.source == "amazon2023" else ""
    raise DataError(f"data.path is empty; source {cfg.source!r} needs a folder{hint} (set data.path)")


def _require_name(cfg: DataConfig) -> str:
    if not cfg.name:
        raise DataError(f"data.name is empty; source {cfg.source!r} needs the dataset/category name")
    return cfg.name


# ---------------------------------------------------------------- files


def open_text(path: Path) -> io.TextIOBase:
    """Text stream of a plain or .gz file (utf-8)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")  # type: ignore[return-value]
    return open(path, encoding="utf-8")


def find_file(folder: Path, names: list[str], what: str) -> Path:
    """The first of `names` present in `folder`; else a DataError naming all candidates."""
    require_path(folder, f"a folder holding {what} ({' or '.join(names)})")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {what}; expected one of {', '.join(names)}")


def iter_records(
    path: Path, skips: SkipLog, parse: Callable[[str], Any] = json.loads
) -> Iterator[tuple[int, dict]]:
    """(line number, object) of a one-object-a-line file; bad lines go to `skips`."""
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = parse(line)
                except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
                    skips.skip(path, lineno, f"malformed line: {type(e).__name__}: {str(e)[:80]}")
                    continue
                if not isinstance(rec, dict):
                    skips.skip(path, lineno, f"malformed line: not an object ({type(rec).__name__})")
                    continue
                yield lineno, rec
    except (OSError, EOFError, UnicodeDecodeError) as e:  # truncated gz, not gz, bad bytes
        raise DataError(f"{path}: cannot be read: {e}") from None


# ---------------------------------------------------------------- frames


def make_items(rows: list[dict]) -> pd.DataFrame:
    """Items frame with the schema's columns; `extra` dicts become JSON strings."""
    df = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    for col in ("item_id", "title", "description", "brand"):
        df[col] = df[col].fillna("").astype(str)
    df["extra"] = [e if isinstance(e, str) else json.dumps(e or {}, ensure_ascii=False, default=str)
                   for e in df["extra"]]
    df["extra"] = df["extra"].astype(str)
    return df


def dedupe_items(rows: list[dict], file: Path | str, skips: SkipLog) -> list[dict]:
    """Keep the first row of a repeated item id (the 2018 meta files repeat some), counted."""
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["item_id"] in seen:
            _count(skips, file, "duplicate item id (first kept)")
            continue
        seen.add(r["item_id"])
        out.append(r)
    return out


def make_pairs(pairs: Iterable[tuple[str, str, str]], items: set[str]) -> pd.DataFrame:
    """Pairs among `items`, without self-loops or repeats, in first-seen order."""
    keep = dict.fromkeys((s, d, k) for s, d, k in pairs if s != d and s in items and d in items)
    return pd.DataFrame(list(keep), columns=PAIR_COLUMNS, dtype=str)


def empty_interactions() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series([], dtype=str), "item_id": pd.Series([], dtype=str),
                         "timestamp": pd.Series([], dtype="int64"),
                         "rating": pd.Series([], dtype="float64")})


def validate_interactions(
    raw: pd.DataFrame, file: Path | str, skips: SkipLog, lines: np.ndarray
) -> pd.DataFrame:
    """Typed interactions from raw columns; rows without user/item/timestamp or with an
    unparsable number are skipped (counted, warned with file:line, DataError when strict).

    `raw` has user_id, item_id, timestamp and optionally rating; `lines[i]` is row i's line.
    """
    n = len(raw)
    user = _id_column(raw["user_id"])
    item = _id_column(raw["item_id"])
    ts = pd.to_numeric(raw["timestamp"], errors="coerce")
    rating_raw = raw["rating"] if "rating" in raw else pd.Series([np.nan] * n, index=raw.index)
    rating = pd.to_numeric(rating_raw, errors="coerce").astype("float64")
    bad_rating = rating.isna() & ~_is_missing(rating_raw)  # present but not a number
    reasons = [
        (user.isna(), "missing user id"),
        (item.isna(), "missing item id"),
        (_is_missing(raw["timestamp"]), "missing timestamp"),
        (ts.isna() & ~_is_missing(raw["timestamp"]), "unparsable timestamp"),
        (bad_rating, "unparsable rating"),
    ]
    bad = np.zeros(n, dtype=bool)
    for mask, reason in reasons:
        mask = mask.to_numpy(dtype=bool) & ~bad
        for i in np.flatnonzero(mask):
            skips.skip(file, int(lines[i]), f"{reason}: {_row_text(raw, i)}")
        bad |= mask
    keep = ~bad
    return pd.DataFrame({
        "user_id": user[keep].astype(str).to_numpy(),
        "item_id": item[keep].astype(str).to_numpy(),
        "timestamp": ts[keep].round().astype("int64").to_numpy(),
        "rating": rating[keep].to_numpy(),
    }).astype({"user_id": str, "item_id": str})


def drop_unknown_items(
    inter: pd.DataFrame, items: pd.DataFrame, file: Path | str, skips: SkipLog
) -> pd.DataFrame:
    """Interactions of items without a metadata row are dropped and counted (never silently)."""
    known = inter["item_id"].isin(items["item_id"])
    n = int((~known).sum())
    if n:
        _count(skips, file, UNKNOWN_ITEM, n)
        log.warning("%s: dropped %d interactions whose item has no metadata (%d distinct items)",
                    Path(file).name, n, inter.loc[~known, "item_id"].nunique())
        inter = inter[known].reset_index(drop=True)
    return inter


def _count(skips: SkipLog, file: Path | str, reason: str, n: int = 1) -> None:
    """Count rows dropped for a reason that is not malformed input (never raises when strict)."""
    key = f"{Path(file).name}: {reason}"
    skips.counts[key] = skips.counts.get(key, 0) + n


def _is_missing(s: pd.Series) -> pd.Series:
    """NA or blank text (vectorised for string and numeric columns; object columns map)."""
    if pd.api.types.is_numeric_dtype(s):
        return s.isna()
    if pd.api.types.is_string_dtype(s) and not pd.api.types.is_object_dtype(s):
        return s.isna() | (s.str.strip() == "").fillna(True)
    return s.map(_missing_scalar).astype(bool)


def _missing_scalar(v: Any) -> bool:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return True
    return isinstance(v, str) and not v.strip()


def _id_column(s: pd.Series) -> pd.Series:
    """Ids as str, missing/blank as NA; numeric ids (LC-Rec, JSON numbers) without ".0"."""
    if pd.api.types.is_string_dtype(s) and not pd.api.types.is_object_dtype(s):
        out = s.str.strip()  # the Arrow path: already strings, stay vectorised
    else:
        out = s.map(_id_text, na_action="ignore")
    return out.where(~_is_missing(s))


def _id_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _row_text(raw: pd.DataFrame, i: int) -> str:
    return str({k: raw[k].iloc[i] for k in raw.columns})[:160]


def frame_columns(rows: dict[str, list]) -> pd.DataFrame:
    """Raw column lists to a frame (object dtype, so nothing is coerced before validation)."""
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in rows.items()})


def check_interactions(df: pd.DataFrame, with_split: bool = False) -> pd.DataFrame:
    """Final column order and dtypes of an interactions frame."""
    cols = INTERACTION_COLUMNS + (["split"] if with_split else [])
    return df[cols].reset_index(drop=True)
