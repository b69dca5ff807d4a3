"""Amazon 2014 / 2018 raw files (McAuley lab), plain or .gz.

reviews: `<Cat>_5.json` (2018) or `reviews_<Cat>_5.json` (2014), one JSON object a line:
    reviewerID, asin, overall, unixReviewTime (seconds), ...
meta:    `meta_<Cat>.json`, one object a line: JSON in 2018 (title, description: list,
    feature: list, category: list, brand, also_buy, price, details, ...); Python dict
    literals in 2014 (categories: list of lists, related: {also_bought, bought_together}).
Text is kept raw (HTML and all): cleaning is stage 02's job.
"""
from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sidlib.data import (
    check_interactions,
    dedupe_items,
    drop_unknown_items,
    empty_interactions,
    find_file,
    frame_columns,
    iter_records,
    make_items,
    make_pairs,
    validate_interactions,
)
from sidlib.data.schema import RawData, SkipLog

log = logging.getLogger("sidlib.data")

REVIEW_FIELDS = {"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime", "rating": "overall"}
CHUNK_ROWS = 500_000  # raw review values are turned into a frame every CHUNK_ROWS lines (bounded memory)


def load_amazon2018(folder: Path, name: str, *, strict: bool = False, metadata_pairs: bool = True) -> RawData:
    """Reviews + metadata of category `name` (e.g. Gift_Cards) from `folder`."""
    review_file = find_file(folder, review_names(name), f"Amazon 2014/2018 reviews of {name}")
    meta_file = find_file(folder, [f"meta_{name}.json", f"meta_{name}.json.gz"], f"Amazon metadata of {name}")
    skips = SkipLog(strict=strict)
    inter = read_reviews(review_file, REVIEW_FIELDS, skips, parse=parse_json_or_literal)
    reviewed = set(inter["item_id"].unique())
    rows, pairs = [], []
    for rec in iter_meta(meta_file, skips):
        item, item_pairs = meta_item(rec)
        rows.append(item)
        pairs.extend(item_pairs)
    items = make_items(dedupe_items(rows, meta_file, skips))
    inter = drop_unknown_items(inter, items, review_file, skips)
    # Pairs only among items that have metadata and reviews: prep drops the others anyway and
    # the full also_buy graph of a big category does not fit in memory.
    keep = reviewed & set(items["item_id"])
    pair_df = make_pairs(pairs if metadata_pairs else [], keep)
    return RawData(items=items, interactions=check_interactions(inter), pairs=pair_df,
                   skipped=dict(skips.counts), source="amazon2018", files=[str(review_file), str(meta_file)])


def review_names(name: str) -> list[str]:
    return [f"{name}_5.json", f"{name}_5.json.gz", f"reviews_{name}_5.json", f"reviews_{name}_5.json.gz"]


def read_reviews(
    file: Path, fields: dict[str, str], skips: SkipLog, chunk_rows: int = CHUNK_ROWS,
    parse: Callable[[str], Any] = json.loads,
) -> pd.DataFrame:
    """Interactions of a one-object-a-line review file; `fields` maps schema column -> source field.

    Each line is parsed and only the four needed values are kept; every `chunk_rows` lines
    they are validated into a typed frame, so the review texts never pile up in memory.
    """
    chunks: list[pd.DataFrame] = []
    cols: dict[str, list] = {k: [] for k in fields}
    lines: list[int] = []

    def flush() -> None:
        if lines:
            chunks.append(validate_interactions(frame_columns(cols), file, skips, np.asarray(lines)))
            for v in cols.values():
                v.clear()
            lines.clear()

    for lineno, rec in iter_records(file, skips, parse=parse):
        for k, src in fields.items():
            cols[k].append(rec.get(src))
        lines.append(lineno)
        if len(lines) >= chunk_rows:
            flush()
    flush()
    return pd.concat(chunks, ignore_index=True) if chunks else empty_interactions()


def parse_json_or_literal(line: str) -> Any:
    """2018 lines are JSON; 2014 meta lines are Python literals (single quotes) and the 2014
    page reads every file with eval: try JSON, then a safe literal_eval."""
    try:
        return json.loads(line)
    except ValueError:
        return ast.literal_eval(line.strip())


def iter_meta(file: Path, skips: SkipLog) -> Iterator[dict]:
    """Metadata records that name their asin; others are skipped (counted)."""
    for lineno, rec in iter_records(file, skips, parse=parse_json_or_literal):
        if not as_text(rec.get("asin")):
            skips.skip(file, lineno, "missing asin")
            continue
        yield rec


def meta_item(rec: dict) -> tuple[dict, list[tuple[str, str, str]]]:
    """One 2014/2018 metadata record -> (item row, its also_buy / bought_together pairs)."""
    asin = as_text(rec.get("asin")).strip()
    if "categories" in rec:  # 2014: list of category paths, each most general first
        categories = _unique(c for path in _list(rec.get("categories")) for c in _list(path))
    else:
        categories = as_strings(rec.get("category"))
    related = rec.get("related") if isinstance(rec.get("related"), dict) else {}
    also_buy = as_strings(rec.get("also_buy")) + as_strings(related.get("also_bought"))
    together = as_strings(rec.get("bought_together")) + as_strings(related.get("bought_together"))
    extra = {k: rec[k] for k in ("price", "main_cat", "date", "rank", "salesRank", "details") if rec.get(k)}
    item = {
        "item_id": asin,
        "title": as_text(rec.get("title")),
        "description": as_text(rec.get("description")),
        "features": as_strings(rec.get("feature")),
        "categories": categories,
        "brand": as_text(rec.get("brand")),
        "extra": extra,
    }
    pairs = [(asin, d, "also_buy") for d in also_buy] + [(asin, d, "bought_together") for d in together]
    return item, pairs


def as_text(v: Any) -> str:
    """Strings as they are, lists of paragraphs joined with newlines, None -> ""."""
    if v is None:
        return ""
    if isinstance(v, list):
        return "\n".join(str(x) for x in v if x is not None and str(x) != "")
    return str(v)


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def as_strings(v: Any) -> list[str]:
    return [str(x) for x in _list(v) if x is not None and str(x).strip()]


def _unique(values) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values if v is not None and str(v).strip()))
