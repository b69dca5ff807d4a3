"""Your own catalogue as two tables (`data.source = "tables"`): items and interactions.

    [data]
    source = "tables"
    path = "data/shop"                      # the folder of both files (or give absolute files)
    items_file = "items.parquet"
    interactions_file = "events.csv.gz"
    columns = { user = "customer", item = "sku", timestamp = "ts", title = "name" }
    rating_threshold = 4                    # optional: keep ratings >= 4

Formats, by extension: .csv, .tsv (header row; .gz too), .parquet / .pq, .jsonl / .json
(JSON lines, one object a line; .gz too). Both tables name the item by the same column.

items:         item (required), title (required; empty titles are kept here and dropped,
               counted, by prep's data.min_title_chars filter), description, brand,
               categories, features (optional: empty when the column is absent). Categories and
               features are list columns (parquet, JSON) or one string split on
               data.categories_sep ("Books|Fiction"). Other columns go to `extra` as JSON.
interactions:  user, item, timestamp (required), rating (optional). Timestamps are epoch
               seconds, epoch milliseconds (any value >= 1e11, i.e. ms after 1973, is divided by
               1000: no real time in seconds is that large) or date strings (ISO 8601, "2024-05-01",
               "2024-05-01T10:00:00Z"); they become int64 epoch seconds, the schema's dtype.

Why this shape: a shop or a log export is already a table, so the loader reads it with
pandas/pyarrow column by column (millions of rows in seconds) instead of parsing lines. A
misspelt column, a timestamp column holding other text, two different titles for one item id
are mistakes in the mapping, not bad rows: they raise a DataError naming the file, the column
or row and what was found. Rows are numbered from 1 over the data rows (the header excluded).
Rows that are only incomplete (no user, item id or time; an item without a metadata row; a
rating under the threshold) are counted in `skipped` (SkipLog), as the other loaders do.
"""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sidlib.config import DataConfig
from sidlib.data import UNKNOWN_ITEM, _count, _id_column, _is_missing, check_interactions
from sidlib.data.schema import ITEM_COLUMNS, DataError, RawData, SkipLog, require_path

log = logging.getLogger("sidlib.data")

# our name -> default column name in the user's files (data.columns overrides any of them)
DEFAULT_COLUMNS = {
    "user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating",
    "title": "title", "description": "description", "brand": "brand",
    "categories": "categories", "features": "features",
}
ITEM_REQUIRED = ("item", "title")
ITEM_OPTIONAL = ("description", "brand", "categories", "features")
INTER_REQUIRED = ("user", "item", "timestamp")
INTER_OPTIONAL = ("rating",)
FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".json": "jsonl"}
MS_FROM = 1e11  # epoch values at least this large are milliseconds (1e11 s is the year 5138)


def load_tables(cfg: DataConfig, folder: Path | None) -> RawData:
    """Items and interactions of `cfg.items_file` / `cfg.interactions_file` (see module doc)."""
    cols = column_map(cfg.columns)
    item_file = _file(cfg.items_file, folder, "items_file")
    inter_file = _file(cfg.interactions_file, folder, "interactions_file")
    skips = SkipLog(strict=cfg.strict)
    items = read_items(item_file, cols, cfg.categories_sep, skips)
    inter = read_interactions(inter_file, cols, cfg.rating_threshold, skips)
    inter = drop_unknown(inter, items, inter_file, skips)
    return RawData(items=items, interactions=check_interactions(inter), skipped=dict(skips.counts),
                   source="tables", files=[str(item_file), str(inter_file)])


def column_map(columns: dict[str, Any]) -> dict[str, str]:
    """data.columns over the defaults; an unknown key of ours is a typo worth an error."""
    unknown = sorted(set(columns) - set(DEFAULT_COLUMNS))
    if unknown:
        raise DataError(f"data.columns: unknown keys {unknown}; known: {', '.join(DEFAULT_COLUMNS)}")
    return {**DEFAULT_COLUMNS, **{k: str(v) for k, v in columns.items()}}


def _file(name: str, folder: Path | None, key: str) -> Path:
    if not name:
        raise DataError(f"data.{key} is empty; source 'tables' needs data.items_file and "
                        "data.interactions_file (relative to data.path, or absolute)")
    path = Path(name).expanduser()
    if not path.is_absolute():
        if folder is None:
            raise DataError(f"data.{key} = {name!r} is relative but data.path is empty; "
                            "set data.path or give an absolute path")
        path = folder / path
    return require_path(path, f"the table of data.{key} ({', '.join(FORMATS)}, optionally .gz)")


# ---------------------------------------------------------------- reading


def file_format(path: Path) -> str:
    """csv | tsv | parquet | jsonl from the extension (.gz allowed on the text formats)."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    ext = suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes and not gz else "")
    fmt = FORMATS.get(ext)
    if fmt is None or (gz and fmt == "parquet"):
        raise DataError(f"{path}: unknown table type {''.join(path.suffixes) or '(no extension)'!r}; "
                        "expected .csv, .tsv, .csv.gz, .tsv.gz, .parquet, .pq, .jsonl, .json or .jsonl.gz")
    return fmt


def read_table(path: Path, id_cols: list[str]) -> pd.DataFrame:
    """The whole table; `id_cols` of text tables are read as text (keeps "007" and "1e5" as ids)."""
    fmt = file_format(path)
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        elif fmt == "jsonl":
            if _blank(path):
                raise DataError(f"{path}: the file is empty; expected JSON lines with a row per record")
            df = pd.read_json(path, lines=True, dtype=False, compression="infer")  # dtype=False: ids stay as written
        else:
            df = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype={c: str for c in id_cols},
                             keep_default_na=True, compression="infer")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header row and a row per record") from None
    except (ValueError, OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot be read as {fmt}: {str(e)[:200]}") from None
    if df.empty:
        raise DataError(f"{path}: no rows (columns found: {list(df.columns)})")
    df.columns = [str(c) for c in df.columns]
    return df


def _blank(path: Path) -> bool:
    """True when a (gz) text file holds only whitespace: pandas' JSON reader fails obscurely there."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return not f.read(1 << 16).strip()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read: {e}") from None


def _require(df: pd.DataFrame, path: Path, cols: dict[str, str], required: tuple[str, ...],
             optional: tuple[str, ...], explicit: set[str]) -> dict[str, str]:
    """our name -> column present in `df`: required ones and explicitly mapped optional ones must
    be there (a misspelling raises, listing the columns found); default-named optional ones may be absent."""
    missing = [f"{k} ({cols[k]!r})" for k in required + tuple(k for k in optional if k in explicit)
               if cols[k] not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}; columns found: {list(df.columns)} "
                        "— map yours with data.columns = { user = \"...\", item = \"...\", ... }")
    return {k: cols[k] for k in required + optional if cols[k] in df.columns}


def _row(path: Path, i: int) -> str:
    return f"{path}: row {i + 1}"


# ---------------------------------------------------------------- items


def read_items(path: Path, cols: dict[str, str], sep: str, skips: SkipLog,
               explicit: set[str] | None = None) -> pd.DataFrame:
    """Items frame in the schema's columns; duplicate ids with different titles raise."""
    return items_frame(read_table(path, [cols["item"]]), path, cols, sep, skips, explicit)


def items_frame(df: pd.DataFrame, path: Path, cols: dict[str, str], sep: str, skips: SkipLog,
                explicit: set[str] | None = None) -> pd.DataFrame:
    """`read_items` of a table already read (`path` names it in messages); the RecBole loader uses it too."""
    have = _require(df, path, cols, ITEM_REQUIRED, ITEM_OPTIONAL, _explicit(cols, explicit))
    ids = _id_column(df[have["item"]])
    no_id = ids.isna().to_numpy()
    for i in np.flatnonzero(no_id):
        skips.skip(path, int(i) + 1, "missing item id (row number, header excluded)")
    title = _text(df[have["title"]], path, have["title"])
    keep = ~no_id
    _check_duplicates(ids[keep], title[keep], path)
    first = keep & ~ids.duplicated(keep="first").to_numpy()
    n_dup = int(keep.sum() - first.sum())
    if n_dup:
        _count(skips, path, "duplicate item id, same title (first kept)", n_dup)
    out = pd.DataFrame({
        "item_id": ids[first].astype(str).to_numpy(),
        "title": title[first].to_numpy(),
        "description": _optional_text(df, have, "description", path)[first],
        "features": _lists(df, have, "features", sep, path)[first],
        "categories": _lists(df, have, "categories", sep, path)[first],
        "brand": _optional_text(df, have, "brand", path)[first],
        "extra": _extra(df[[c for c in df.columns if c not in have.values()]])[first],
    }, columns=ITEM_COLUMNS)
    for col in ("item_id", "title", "description", "brand", "extra"):
        out[col] = out[col].astype(str)
    return out


def _explicit(cols: dict[str, str], explicit: set[str] | None) -> set[str]:
    """Our names the user mapped (a mapped optional column must exist; a default one may not)."""
    if explicit is not None:
        return explicit
    return {k for k, v in cols.items() if v != DEFAULT_COLUMNS[k]}


def _text(s: pd.Series, path: Path, col: str) -> pd.Series:
    """A text column as str ("" for missing); lists/dicts in it are a wrong mapping."""
    if pd.api.types.is_object_dtype(s):
        nested = s.map(lambda v: isinstance(v, (list, dict, np.ndarray)))
        if nested.any():
            i = int(np.flatnonzero(nested.to_numpy())[0])
            raise DataError(f"{_row(path, i)}: column {col!r} holds {type(s.iloc[i]).__name__} "
                            f"{str(s.iloc[i])[:80]!r}; expected text")
    missing = _is_missing(s).to_numpy()
    out = s.astype(str).str.strip()
    return out.where(~missing, "").reset_index(drop=True)


def _optional_text(df: pd.DataFrame, have: dict[str, str], key: str, path: Path) -> np.ndarray:
    if key not in have:
        return np.full(len(df), "", dtype=object)
    return _text(df[have[key]], path, have[key]).to_numpy(dtype=object)


def _lists(df: pd.DataFrame, have: dict[str, str], key: str, sep: str, path: Path) -> np.ndarray:
    """A list column (parquet/JSON lists) or one string split on `sep`, as list[str] per row."""
    out = np.empty(len(df), dtype=object)
    if key not in have:
        out[:] = [[] for _ in range(len(df))]
        return out
    col = have[key]

    def one(v: Any) -> list[str]:
        if isinstance(v, (list, tuple, np.ndarray)):
            return [str(x).strip() for x in v if x is not None and str(x).strip()]
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return []
        if isinstance(v, dict):
            raise DataError(f"{path}: column {col!r} holds a JSON object {str(v)[:80]!r}; "
                            f"expected a list or a {sep!r}-separated string")
        text = str(v).strip()
        return [p.strip() for p in text.split(sep) if p.strip()] if sep else ([text] if text else [])

    out[:] = [one(v) for v in df[col].tolist()]  # per item, not per interaction: items are few
    return out


def _extra(rest: pd.DataFrame) -> np.ndarray:
    """The unmapped item columns as one JSON object per row (kept for later stages, like price)."""
    if rest.shape[1] == 0:
        return np.full(len(rest), "{}", dtype=object)
    text = rest.to_json(orient="records", lines=True, force_ascii=False, date_format="iso")
    rows = [r for r in text.split("\n") if r]  # JSON escapes newlines inside strings
    return np.asarray(rows if len(rows) == len(rest) else
                      [json.dumps(r, ensure_ascii=False, default=str) for r in rest.to_dict("records")],
                      dtype=object)


def _check_duplicates(ids: pd.Series, title: pd.Series, path: Path) -> None:
    """One id with two different titles is two items under one id: raise, naming both rows."""
    frame = pd.DataFrame({"id": ids.to_numpy(), "title": title.to_numpy()})
    frame["row"] = ids.index.to_numpy()  # the table's positions (the caller dropped rows without id)
    dup = frame[frame["id"].duplicated(keep=False)]
    if dup.empty:
        return
    first = dup.groupby("id", sort=False)["title"].transform("first")
    clash = dup[dup["title"] != first]
    if clash.empty:
        return
    bad = clash.iloc[0]
    orig = dup[(dup["id"] == bad["id"])].iloc[0]
    raise DataError(
        f"{path}: item id {bad['id']!r} has two titles: row {int(orig['row']) + 1} {orig['title'][:80]!r} "
        f"and row {int(bad['row']) + 1} {bad['title'][:80]!r} ({len(clash)} such rows); "
        "give each item one id, or drop the repeated rows"
    )


# ---------------------------------------------------------------- interactions


def read_interactions(path: Path, cols: dict[str, str], threshold: float, skips: SkipLog,
                      explicit: set[str] | None = None) -> pd.DataFrame:
    """user_id, item_id, timestamp (int64 epoch s), rating (float64, NaN when absent); file order."""
    return interactions_frame(read_table(path, [cols["user"], cols["item"]]), path, cols, threshold, skips, explicit)


def interactions_frame(df: pd.DataFrame, path: Path, cols: dict[str, str], threshold: float, skips: SkipLog,
                       explicit: set[str] | None = None, skipped: np.ndarray | None = None) -> pd.DataFrame:
    """`read_interactions` of a table already read (`path` names it in messages). `skipped`: rows
    the caller has already counted as skips (a typed file's unparsable numbers); they are dropped too."""
    have = _require(df, path, cols, INTER_REQUIRED, INTER_OPTIONAL, _explicit(cols, explicit))
    user = _id_column(df[have["user"]])
    item = _id_column(df[have["item"]])
    ts_col = df[have["timestamp"]]
    ts_missing = (_is_missing(ts_col) | ts_col.isna()).to_numpy()  # isna: NaT of datetime columns
    ts = epoch_seconds(ts_col, path, have["timestamp"], ts_missing)
    rating = _rating(df, have, path)
    if threshold > 0 and "rating" not in have:
        raise DataError(f"{path}: data.rating_threshold = {threshold} needs a rating column "
                        f"({cols['rating']!r} not found; columns found: {list(df.columns)})")
    bad = np.zeros(len(df), dtype=bool) if skipped is None else skipped.copy()
    for mask, reason in ((user.isna().to_numpy(), "missing user id"),
                         (item.isna().to_numpy(), "missing item id"),
                         (ts_missing, "missing timestamp")):
        new = mask & ~bad
        for i in np.flatnonzero(new):  # only the bad rows, so a clean table costs nothing here
            skips.skip(path, int(i) + 1, f"{reason} (row number, header excluded)")
        bad |= new
    if threshold > 0:
        low = ~bad & ~(rating >= threshold)
        if low.any():
            _count(skips, path, f"rating below data.rating_threshold={threshold:g} (or missing)", int(low.sum()))
        bad |= low
    out = pd.DataFrame({"user_id": user.reset_index(drop=True), "item_id": item.reset_index(drop=True),
                        "timestamp": ts, "rating": rating})
    if bad.any():  # masks copy every column: only when there is something to drop
        out = out[~bad].reset_index(drop=True)
    # ids stay in the column type they have (Arrow strings): a round trip through numpy objects
    # would cost more than the reading
    return out.astype({"user_id": str, "item_id": str, "timestamp": "int64", "rating": "float64"})


def epoch_seconds(s: pd.Series, path: Path, col: str, missing: np.ndarray) -> np.ndarray:
    """int64 epoch seconds from numbers (s or ms, per value) or date strings; missing -> 0
    (those rows are skipped by the caller). Text that is neither raises, naming the first row."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return _datetime_seconds(s, missing)
    if pd.api.types.is_bool_dtype(s):
        raise DataError(f"{path}: column {col!r} holds true/false; expected epoch seconds, "
                        "epoch milliseconds or dates")
    if pd.api.types.is_numeric_dtype(s):
        num = s.to_numpy(dtype="float64", na_value=np.nan)
    else:
        num = np.array(pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan))  # writable
        text = np.isnan(num) & ~missing
        if text.any():  # date strings: parsed once, vectorised
            idx = np.flatnonzero(text)
            parsed = pd.to_datetime(s.iloc[idx].astype(str).str.strip(), errors="coerce",
                                    utc=True, format="ISO8601")
            failed = parsed.isna().to_numpy()
            if failed.any():
                i = int(idx[np.flatnonzero(failed)[0]])
                raise DataError(
                    f"{_row(path, i)}: column {col!r} value {str(s.iloc[i])[:60]!r} is not a time "
                    f"({int(failed.sum())} such rows); expected epoch seconds, epoch milliseconds "
                    "or an ISO date such as 2024-05-01 or 2024-05-01T10:00:00Z"
                )
            num[idx] = _datetime_seconds(parsed, np.zeros(len(idx), dtype=bool))
            return _to_int(num, missing)
    return _to_int(num, missing)


def _to_int(num: np.ndarray, missing: np.ndarray) -> np.ndarray:
    num = np.where(missing | np.isnan(num), 0.0, num)
    ms = np.abs(num) >= MS_FROM
    num = np.where(ms, num / 1000.0, num)
    return np.round(num).astype(np.int64)


def _datetime_seconds(s: pd.Series, missing: np.ndarray) -> np.ndarray:
    """Datetimes (naive = UTC) to epoch seconds."""
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    sec = s.astype("datetime64[s]").to_numpy().astype("int64")
    return np.where(missing | s.isna().to_numpy(), 0, sec)


def _rating(df: pd.DataFrame, have: dict[str, str], path: Path) -> np.ndarray:
    """float64 ratings (NaN when absent); text that is not a number raises, naming the row."""
    if "rating" not in have:
        return np.full(len(df), np.nan)
    s = df[have["rating"]]
    if pd.api.types.is_bool_dtype(s):
        raise DataError(f"{path}: column {have['rating']!r} holds true/false; expected numbers")
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isnan(num) & ~_is_missing(s).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{_row(path, i)}: column {have['rating']!r} value {str(s.iloc[i])[:60]!r} "
                        f"is not a number ({int(bad.sum())} such rows)")
    return num


def drop_unknown(inter: pd.DataFrame, items: pd.DataFrame, file: Path, skips: SkipLog) -> pd.DataFrame:
    """`drop_unknown_items` of sidlib.data with Arrow's hash lookup: pandas' `isin` on Arrow
    strings builds a Python scalar per item (seconds for 50k items), this is one C call."""
    ids = pa.array(inter["item_id"], from_pandas=True)
    catalogue = pa.array(items["item_id"], from_pandas=True).cast(ids.type)
    known = pc.is_in(ids, value_set=catalogue).to_numpy(zero_copy_only=False)
    n = int((~known).sum())
    if n:
        _count(skips, file, UNKNOWN_ITEM, n)
        log.warning("%s: dropped %d interactions whose item has no metadata (%d distinct items)",
                    file.name, n, inter.loc[~known, "item_id"].nunique())
        inter = inter[known].reset_index(drop=True)
    return inter
