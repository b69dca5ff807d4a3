"""MovieLens from RecBole atomic files (`<name>.item` + `<name>.inter`, tab separated).

The RecBole loader (sidlib/data/recbole.py) with MovieLens' field names, plus repairs of two
known bad rows of ML-100K (`fix_items`). The files ship inside the recbole wheel; recbole itself
is never imported (it pulls in a training stack).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from sidlib import paths
from sidlib.data.recbole import load_atomic
from sidlib.data.schema import RawData

# our name -> MovieLens' RecBole field (user_id, item_id, rating, timestamp are the defaults)
COLUMNS = {"title": "movie_title", "categories": "class"}
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")
_UNKNOWN = {"unknown", "unkonwn"}  # ML-100K item 267 spells it "unkonwn"


def load_movielens(folder: Path | None = None, name: str = "ml-100k", *, strict: bool = False) -> RawData:
    """Items and ratings of `<folder>/<name>.item|.inter`; default folder: the recbole wheel."""
    folder = paths.movielens_100k_dir() if folder is None else folder
    raw = load_atomic(folder, name, COLUMNS, strict=strict, source="movielens")
    raw.items = fix_items(raw.items)
    return raw


def fix_items(items: pd.DataFrame) -> pd.DataFrame:
    """Repairs the two known bad ML-100K rows without naming their ids; `extra` keeps the year as a number.

    - item 267: title, year and genre are all "unkonwn"/"unknown" -> empty title and no
      categories, so prep's title filter drops it (and counts it).
    - item 1412: year "V", the year sits in the title "(1995)" -> take it from there.
    The genre "unknown" (items 267 and 1373) is dropped: it says nothing about the movie.
    """
    items = items.copy()
    titles, extras = [], []
    for title, extra in zip(items["title"].tolist(), items["extra"].tolist()):
        year = str(json.loads(extra).get("release_year") or "").strip()
        if title.lower() in _UNKNOWN:
            title = ""
        if not re.fullmatch(r"\d{4}", year):
            m = _YEAR_IN_TITLE.search(title)
            year = m.group(1) if m else ""
            if m:
                title = title[: m.start()]
        titles.append(title.strip())
        extras.append(json.dumps({"release_year": int(year) if year else None}))
    items["title"] = pd.Series(titles, index=items.index, dtype=items["title"].dtype)
    items["extra"] = pd.Series(extras, index=items.index, dtype=items["extra"].dtype)
    items["categories"] = [[g for g in cats if g.lower() not in _UNKNOWN] for cats in items["categories"]]
    return items
