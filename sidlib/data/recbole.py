"""Any RecBole atomic dataset (`data.source = "recbole"`): `<name>.inter` + `<name>.item`.

    [data]
    source = "recbole"
    path = "data/recbole"          # the folder of the files, or its parent (RecBole's data_path/<name>/)
    name = "ml-1m"
    columns = { title = "movie_title", categories = "genre" }   # our name -> your field name

Atomic files (RecBole's "atomic files": dozens of public datasets ship in them): tab-separated
UTF-8 text, a header of `field:type` (token, token_seq, float, float_seq), one record a line.
Fields are mapped as in the tables loader (sidlib/data/tables.py: user, item, timestamp, rating,
title, description, brand, categories, features; defaults user_id, item_id, timestamp, rating,
title, ...), and each mapping must point at a field of a fitting type: ids are tokens, rating is
a float, text is token or token_seq, categories/features split token_seq on data.seq_separator
(RecBole's default, " "). Unmapped item fields (price, release_year, ...) go to `extra`.

Why pandas over RecBole itself: importing recbole pulls in a training stack and rewrites ids; its
files are plain TSV, read here with the same column-wise code as the tables loader (so the same
checks and the same speed). A float field holding text in one row is a bad row (counted, or an
error with data.strict); a mapping onto a field of the wrong type or a header without types is a
mistake in the profile or the file, and raises naming both.

MovieLens (`data.source = "movielens"`, sidlib/data/movielens.py) is this loader with ml-100k's
field names and two repairs of known bad rows.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from sidlib import paths
from sidlib.config import DataConfig
from sidlib.data import check_interactions
from sidlib.data.schema import DataError, RawData, SkipLog, require_path
from sidlib.data.tables import _explicit, column_map, drop_unknown, interactions_frame, items_frame

log = logging.getLogger("sidlib.data")

TYPES = ("token", "token_seq", "float", "float_seq")
# our name -> the RecBole field types it may map to
ALLOWED = {
    "user": ("token",), "item": ("token",), "timestamp": ("float", "token"), "rating": ("float",),
    "title": ("token", "token_seq"), "description": ("token", "token_seq"), "brand": ("token", "token_seq"),
    "categories": ("token_seq", "token"), "features": ("token_seq", "token"),
}
ITEM_KEYS = ("item", "title", "description", "brand", "categories", "features")
INTER_KEYS = ("user", "item", "timestamp", "rating")


def load_recbole(cfg: DataConfig, folder: Path | None) -> RawData:
    """`cfg.name`'s atomic files under `folder` (or `folder/<name>/`); "" path = the recbole wheel's examples."""
    if not cfg.name:
        raise DataError("data.name is empty; source 'recbole' needs the dataset name (files <name>.inter, <name>.item)")
    return load_atomic(dataset_folder(folder, cfg.name), cfg.name, cfg.columns, strict=cfg.strict,
                       threshold=cfg.rating_threshold, seq_sep=cfg.seq_separator)


def dataset_folder(folder: Path | None, name: str) -> Path:
    """The folder holding `<name>.inter`: `folder` itself or RecBole's layout `folder/<name>/`."""
    if folder is None:
        folder = paths.package_dir("recbole") / "dataset_example"
    require_path(folder, f"a folder holding RecBole atomic files {name}.inter and {name}.item")
    for cand in (folder, folder / name):
        if (cand / f"{name}.inter").is_file():
            return cand
    found = sorted(p.name for p in folder.glob("*.inter")) + sorted(p.name + "/" for p in folder.iterdir() if p.is_dir())
    raise DataError(f"{folder}: no {name}.inter here or in {name}/; expected RecBole atomic files "
                    f"{name}.inter and {name}.item (found: {found[:10] or 'nothing'}); data.name names the dataset")


def load_atomic(folder: Path, name: str, columns: dict, *, strict: bool = False, threshold: float = 0.0,
                seq_sep: str = " ", source: str = "recbole") -> RawData:
    """Items and interactions of `folder/<name>.item|.inter` with `columns` mapped (see module doc)."""
    cols = column_map(columns)
    explicit = _explicit(cols, None)
    expected = f"RecBole atomic files {name}.item and {name}.inter"
    item_file = require_path(folder / f"{name}.item", expected + " (the .item file holds the titles)")
    inter_file = require_path(folder / f"{name}.inter", expected)
    skips = SkipLog(strict=strict)

    df, types = read_atomic(item_file)
    _check_types(item_file, types, cols, ITEM_KEYS)
    for key in ("categories", "features"):  # token_seq -> lists; a plain token is one category
        field = cols[key]
        if types.get(field) == "token_seq":
            df[field] = [[t for t in v.split(seq_sep) if t] for v in df[field].fillna("").tolist()]
    items = items_frame(df, item_file, cols, "", skips, explicit)

    df, types = read_atomic(inter_file)
    _check_types(inter_file, types, cols, INTER_KEYS)
    bad = np.zeros(len(df), dtype=bool)
    for key in ("timestamp", "rating"):  # typed numbers: text in one row is a bad row, not a bad mapping
        field = cols[key]
        if types.get(field) == "float":
            df[field], bad = _floats(df[field], inter_file, key, skips, bad)
    inter = interactions_frame(df, inter_file, cols, threshold, skips, explicit, skipped=bad)
    inter = drop_unknown(inter, items, inter_file, skips)
    return RawData(items=items, interactions=check_interactions(inter), skipped=dict(skips.counts),
                   source=source, files=[str(item_file), str(inter_file)])


def read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A whole atomic file as text columns named by field, and each field's type."""
    types = parse_header(path)
    try:
        df = pd.read_csv(path, sep="\t", header=None, skiprows=1, names=list(types), dtype=str,
                         keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8", engine="c")
    except pd.errors.ParserError as e:  # "Expected 4 fields in line 7, saw 5": the line counts the header
        raise DataError(f"{path}: {str(e).replace('Error tokenizing data. C error: ', '').strip()[:200]}; "
                        f"RecBole atomic files hold one tab-separated value per header field "
                        f"({len(types)}: {', '.join(types)})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if df.empty:
        raise DataError(f"{path}: a header and no records; expected a record per line")
    return df, types


def parse_header(path: Path) -> dict[str, str]:
    """`field:type` names of the first line, in order."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not first.strip():
        raise DataError(f"{path}: the file is empty; expected a header of field:type names (tab-separated)")
    types: dict[str, str] = {}
    for raw in first.split("\t"):
        field, _, kind = raw.strip().partition(":")
        if kind not in TYPES:
            raise DataError(f"{path}:1: header field {raw.strip()!r} has "
                            f"{'no type' if not kind else f'the unknown type {kind!r}'}; RecBole headers "
                            f"name each field as field:type with type one of {', '.join(TYPES)}")
        if field in types:
            raise DataError(f"{path}:1: field {field!r} appears twice in the header")
        types[field] = kind
    return types


def _check_types(path: Path, types: dict[str, str], cols: dict[str, str], keys: tuple[str, ...]) -> None:
    """Every mapped field that is present has a type its role can use (missing ones: the frame reports)."""
    for key in keys:
        kind = types.get(cols[key])
        if kind is not None and kind not in ALLOWED[key]:
            header = ", ".join(f"{f}:{t}" for f, t in types.items())
            raise DataError(f"{path}: {key} maps to field {cols[key]!r} of type {kind}; {key} needs a "
                            f"{' or '.join(ALLOWED[key])} field (header: {header}) — map it with data.columns")


def _floats(s: pd.Series, path: Path, key: str, skips: SkipLog,
            bad: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """A float field as numbers; rows holding other text are skipped (counted), blanks stay missing."""
    num = pd.to_numeric(s, errors="coerce")
    wrong = (num.isna() & (s.str.strip() != "")).to_numpy() & ~bad
    for i in np.flatnonzero(wrong):
        skips.skip(path, int(i) + 1, f"unparsable {key}: {s.iat[i][:40]!r} (row number, header excluded)")
    return num, bad | wrong
