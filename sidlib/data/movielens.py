"""MovieLens from RecBole atomic files (`<name>.item` + `<name>.inter`, tab separated).

The files ship inside the recbole wheel; recbole itself is never imported (it pulls in a
training stack). Two known bad rows of ML-100K are repaired here, see `_fix_item`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from sidlib import paths
from sidlib.data import (
    check_interactions,
    drop_unknown_items,
    frame_columns,
    make_items,
    open_text,
    validate_interactions,
)
from sidlib.data.schema import DataError, RawData, SkipLog, require_path

log = logging.getLogger("sidlib.data")

ITEM_FIELDS = ("item_id", "movie_title", "release_year", "class")
INTER_FIELDS = ("user_id", "item_id", "rating", "timestamp")
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")
_UNKNOWN = {"unknown", "unkonwn"}  # ML-100K item 267 spells it "unkonwn"


def load_movielens(folder: Path | None = None, name: str = "ml-100k", *, strict: bool = False) -> RawData:
    """Items and ratings of `<folder>/<name>.item|.inter`; default folder: the recbole wheel."""
    folder = paths.movielens_100k_dir() if folder is None else folder
    expected = f"RecBole atomic files {name}.item and {name}.inter"
    require_path(folder, expected)
    item_file = require_path(folder / f"{name}.item", expected)
    inter_file = require_path(folder / f"{name}.inter", expected)
    skips = SkipLog(strict=strict)
    items = make_items(_read_items(item_file, skips))
    inter = _read_inter(inter_file, skips)
    inter = drop_unknown_items(inter, items, inter_file, skips)
    return RawData(items=items, interactions=check_interactions(inter), skipped=dict(skips.counts),
                   source="movielens", files=[str(item_file), str(inter_file)])


def _header(line: str, file: Path, needed: tuple[str, ...]) -> dict[str, int]:
    """Column positions from a RecBole header (`name:type` fields)."""
    names = [f.split(":")[0].strip() for f in line.rstrip("\n").split("\t")]
    missing = [n for n in needed if n not in names]
    if missing:
        raise DataError(f"{file}:1: header {names} lacks {missing}; expected RecBole fields {list(needed)}")
    return {n: names.index(n) for n in needed}


def _rows(file: Path, needed: tuple[str, ...], skips: SkipLog):
    """(line number, {field: text}) of a RecBole atomic file; short lines are skipped."""
    with open_text(file) as f:
        pos = _header(next(f, ""), file, needed)
        width = max(pos.values()) + 1
        for lineno, line in enumerate(f, 2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < width:
                skips.skip(file, lineno, f"malformed line: {len(parts)} fields, expected {len(pos)}")
                continue
            yield lineno, {n: parts[i].strip() for n, i in pos.items()}


def _read_items(file: Path, skips: SkipLog) -> list[dict]:
    rows = []
    for lineno, r in _rows(file, ITEM_FIELDS, skips):
        if not r["item_id"]:
            skips.skip(file, lineno, "missing item id")
            continue
        rows.append(_fix_item(r))
    return rows


def _fix_item(r: dict[str, str]) -> dict:
    """One item row; repairs the two known bad ML-100K rows without naming their ids.

    - item 267: title, year and genre are all "unkonwn"/"unknown" -> empty title and no
      categories, so prep's title filter drops it (and counts it).
    - item 1412: year "V", the year sits in the title "(1995)" -> take it from there.
    The genre "unknown" (items 267 and 1373) is dropped: it says nothing about the movie.
    """
    title, year = r["movie_title"], r["release_year"]
    if title.lower() in _UNKNOWN:
        title = ""
    if not re.fullmatch(r"\d{4}", year):
        m = _YEAR_IN_TITLE.search(title)
        year = m.group(1) if m else ""
        if m:
            title = title[: m.start()]
    categories = [g for g in r["class"].split() if g.lower() not in _UNKNOWN]
    return {
        "item_id": r["item_id"], "title": title.strip(), "description": "", "features": [],
        "categories": categories, "brand": "",
        "extra": {"release_year": int(year) if year else None},
    }


def _read_inter(file: Path, skips: SkipLog):
    cols: dict[str, list] = {"user_id": [], "item_id": [], "timestamp": [], "rating": []}
    lines: list[int] = []
    for lineno, r in _rows(file, INTER_FIELDS, skips):
        for k in cols:
            cols[k].append(r[k])
        lines.append(lineno)
    # file order is kept: ML timestamps tie often and prep sorts stably
    return validate_interactions(frame_columns(cols), file, skips, np.asarray(lines))
