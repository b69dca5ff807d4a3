"""LC-Rec format: `<name>.item.json` + `<name>.inter.json` (+ optional `<name>.index.json`).

item.json:  {"<id>": {"title", "description", "brand", "categories": "a,b,c"}}
inter.json: {"<user>": [item ids, chronological]}
LC-Rec keeps no times, so an interaction's timestamp is its position in the user's list.
index.json (the item's semantic-ID tokens) is only reported in `files`; stage 05 reads it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from sidlib.data import (
    check_interactions,
    drop_unknown_items,
    frame_columns,
    make_items,
    open_text,
    validate_interactions,
)
from sidlib.data.schema import DataError, RawData, SkipLog, require_path

# Categories are comma separated, but names may hold ", " themselves
# ("Tapes, Adhesives & Sealants"): split only on commas not followed by a space.
_CATEGORY_SPLIT = re.compile(r",(?! )")


def load_lcrec(folder: Path, name: str, *, strict: bool = False) -> RawData:
    """Items and user sequences of the LC-Rec files `<folder>/<name>.*.json`."""
    expected = f"LC-Rec files {name}.item.json and {name}.inter.json"
    require_path(folder, expected)
    item_file = require_path(folder / f"{name}.item.json", expected)
    inter_file = require_path(folder / f"{name}.inter.json", expected)
    skips = SkipLog(strict=strict)
    items = make_items(_items(item_file, skips))
    inter = _interactions(inter_file, skips)
    inter = drop_unknown_items(inter, items, inter_file, skips)
    files = [str(item_file), str(inter_file)]
    index_file = folder / f"{name}.index.json"
    if index_file.is_file():
        files.append(str(index_file))
    return RawData(items=items, interactions=check_interactions(inter), skipped=dict(skips.counts),
                   source="lcrec", files=files)


def split_categories(text: str) -> list[str]:
    """"A,B, C,D" -> ["A", "B, C", "D"] (see _CATEGORY_SPLIT)."""
    return [c.strip() for c in _CATEGORY_SPLIT.split(text or "") if c.strip()]


def _load_object(file: Path) -> dict:
    """The file's top-level JSON object; anything else is a DataError naming the file."""
    try:
        with open_text(file) as f:
            data = json.load(f)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{file}: not a JSON file: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected a JSON object {{id: ...}}, got {type(data).__name__}")
    return data


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):  # some LC-Rec dumps keep description paragraphs as a list
        return "\n".join(str(x) for x in v if x is not None)
    return str(v)


def _items(file: Path, skips: SkipLog) -> list[dict]:
    rows = []
    for n, (item_id, rec) in enumerate(_load_object(file).items(), 1):
        if not isinstance(rec, dict):
            skips.skip(file, n, f"malformed item {item_id!r}: not an object")  # n = entry, not line
            continue
        cats = rec.get("categories")
        rows.append({
            "item_id": str(item_id).strip(),
            "title": _text(rec.get("title")),
            "description": _text(rec.get("description")),
            "features": [],
            "categories": [str(c) for c in cats] if isinstance(cats, list) else split_categories(_text(cats)),
            "brand": _text(rec.get("brand")),
            "extra": {},
        })
    return rows


def _interactions(file: Path, skips: SkipLog):
    cols: dict[str, list] = {"user_id": [], "item_id": [], "timestamp": []}
    entries: list[int] = []
    for n, (user, seq) in enumerate(_load_object(file).items(), 1):
        if not isinstance(seq, list):
            skips.skip(file, n, f"malformed user {user!r}: expected a list of item ids")
            continue
        cols["user_id"].extend([user] * len(seq))
        cols["item_id"].extend(seq)
        cols["timestamp"].extend(range(len(seq)))  # position: LC-Rec lists are chronological
        entries.extend([n] * len(seq))
    return validate_interactions(frame_columns(cols), file, skips, np.asarray(entries, dtype=np.int64))
