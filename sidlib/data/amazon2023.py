"""Amazon Reviews 2023 (McAuley lab): raw reviews + meta, and the official benchmark CSVs.

raw (`load_amazon2023`): `<Cat>.jsonl` reviews (user_id, parent_asin, rating, timestamp in
    ms, ...) + `meta_<Cat>.jsonl` (parent_asin, title, features, description, categories,
    details, store, price, bought_together, ...), plain or .gz, from a folder — or from the
    HF hub (`hf_repo`, configs raw_review_<Cat> / raw_meta_<Cat>, split "full"). Reviews join
    the metadata on parent_asin. Hub and local data go through the same functions after
    `_hub_datasets`, the only call that needs the network.
benchmark (`load_amazon2023_benchmark`): `benchmark/<kcore>/<variant>/<Cat>.csv`
    (rating_only) or `<Cat>.{train,valid,test}.csv` (last_out_w_his, timestamp_w_his: a
    `split` column says which file a row came from), item metadata from a raw
    `meta_<Cat>.jsonl(.gz)` if present, else a derived `meta_items.csv`.
"""
from __future__ import annotations

import ast
import csv
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sidlib.data import (
    check_interactions,
    dedupe_items,
    drop_unknown_items,
    find_file,
    iter_records,
    make_items,
    make_pairs,
    validate_interactions,
)
from sidlib.data.amazon2018 import as_strings, as_text, read_reviews
from sidlib.data.schema import DataError, RawData, SkipLog, require_path

log = logging.getLogger("sidlib.data")

REVIEW_FIELDS = {"user_id": "user_id", "item_id": "parent_asin", "timestamp": "timestamp", "rating": "rating"}
META_FIELDS = ["parent_asin", "title", "description", "features", "categories", "details", "store",
               "price", "main_category", "average_rating", "rating_number", "bought_together"]
# Review files above this size are read through Arrow (datasets' JSON builder, memory-mapped
# cache) instead of line by line; the line reader stays the fallback for malformed files.
LARGE_FILE_BYTES = 256 << 20
BENCHMARKS = ("rating_only", "last_out_w_his", "timestamp_w_his")
SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------- raw reviews + meta


def load_amazon2023(
    folder: Path | None,
    name: str,
    *,
    hf_repo: str = "",
    strict: bool = False,
    num_proc: int = 1,
    metadata_pairs: bool = True,
    large_file_bytes: int = LARGE_FILE_BYTES,
    cache_dir: str | None = None,
) -> RawData:
    """Raw reviews + metadata of category `name`, from `folder` or (folder None) `hf_repo`."""
    skips = SkipLog(strict=strict)
    if folder is None:
        if not hf_repo:
            raise DataError("amazon2023: neither a folder (data.path) nor a hub dataset (data.hf_repo) is set")
        review_ds, meta_ds = _hub_datasets(hf_repo, name, num_proc, cache_dir)
        review_label, meta_label = f"{hf_repo}/raw_review_{name}", f"{hf_repo}/raw_meta_{name}"
        inter = reviews_from_dataset(review_ds, review_label, skips)
        records = meta_records_from_dataset(meta_ds)
        files = [f"hf://datasets/{review_label}", f"hf://datasets/{meta_label}"]
    else:
        review_file = find_file(folder, [f"{name}.jsonl", f"{name}.jsonl.gz"], f"Amazon 2023 reviews of {name}")
        meta_label = find_file(folder, meta_names(name), f"Amazon 2023 metadata of {name}")
        review_label = review_file
        inter = read_review_file(review_file, skips, num_proc, large_file_bytes, cache_dir)
        records = meta_records_from_file(meta_label, skips)
        files = [str(review_file), str(meta_label)]
    items, pairs = items_from_records(records, meta_label, skips)
    inter = drop_unknown_items(inter, items, review_label, skips)
    keep = set(inter["item_id"].unique()) & set(items["item_id"])  # pairs among reviewed items only
    return RawData(items=items, interactions=check_interactions(inter),
                   pairs=make_pairs(pairs if metadata_pairs else [], keep),
                   skipped=dict(skips.counts), source="amazon2023", files=files)


def _hub_datasets(hf_repo: str, name: str, num_proc: int, cache_dir: str | None):
    """The two hub configs as `datasets.Dataset`s (Parquet on the hub; needs the network)."""
    import datasets  # lazy: heavy, and only the hub path and large local files need it

    nproc = num_proc if num_proc > 1 else None
    try:
        reviews = datasets.load_dataset(hf_repo, f"raw_review_{name}", split="full", num_proc=nproc, cache_dir=cache_dir)
        meta = datasets.load_dataset(hf_repo, f"raw_meta_{name}", split="full", num_proc=nproc, cache_dir=cache_dir)
    except Exception as e:  # offline, unknown category, hub changes: one line, not a traceback
        raise DataError(f"hub dataset {hf_repo} (configs raw_review_{name}, raw_meta_{name}): "
                        f"{type(e).__name__}: {e}") from None
    return reviews, meta


def meta_names(name: str) -> list[str]:
    return [f"meta_{name}.jsonl", f"meta_{name}.jsonl.gz"]


def read_review_file(
    file: Path, skips: SkipLog, num_proc: int = 1, large_file_bytes: int = LARGE_FILE_BYTES,
    cache_dir: str | None = None,
) -> pd.DataFrame:
    """Interactions of a local review JSONL: Arrow for large files, else line by line.

    The Arrow reader cannot skip a malformed line; then (unless strict) the file is read
    again line by line, which counts and skips such lines.
    """
    if file.stat().st_size < large_file_bytes:
        return read_reviews(file, REVIEW_FIELDS, skips)
    import datasets  # lazy: heavy, and only the hub path and large local files need it

    try:
        ds = datasets.load_dataset("json", data_files=str(file), split="train",
                                   num_proc=num_proc if num_proc > 1 else None, cache_dir=cache_dir)
    except Exception as e:
        if skips.strict:
            raise DataError(f"{file}: not valid JSON lines ({type(e).__name__}: {e}) (strict mode)") from None
        log.warning("%s: the Arrow JSON reader failed (%s); reading line by line", file.name, type(e).__name__)
        return read_reviews(file, REVIEW_FIELDS, skips)
    return reviews_from_dataset(ds, file, skips)


def reviews_from_dataset(ds: Any, label: Path | str, skips: SkipLog) -> pd.DataFrame:
    """Interactions of a review `datasets.Dataset` (local Arrow or hub): 4 columns to pandas."""
    missing = [c for c in REVIEW_FIELDS.values() if c not in ds.column_names]
    if missing:
        raise DataError(f"{label}: reviews lack fields {missing}; expected {list(REVIEW_FIELDS.values())}")
    raw = ds.select_columns(list(REVIEW_FIELDS.values())).to_pandas()
    raw = raw.rename(columns={v: k for k, v in REVIEW_FIELDS.items()})
    return validate_interactions(raw, label, skips, np.arange(1, len(raw) + 1))  # line = row + 1


def meta_records_from_file(file: Path, skips: SkipLog) -> Iterator[tuple[int, dict]]:
    """(line, record) of a local meta JSONL, streamed: `details` is free-form (thousands of
    keys across a category), which Arrow would turn into a huge sparse struct."""
    yield from iter_records(file, skips)


def meta_records_from_dataset(ds: Any, batch_size: int = 10_000) -> Iterator[tuple[int, dict]]:
    """(row, record) of a hub meta `Dataset` (there `details` is a JSON string)."""
    cols = [c for c in META_FIELDS if c in ds.column_names]
    row = 0
    for batch in ds.select_columns(cols).iter(batch_size=batch_size):
        for i in range(len(batch[cols[0]])):
            row += 1
            yield row, {c: batch[c][i] for c in cols}


def items_from_records(
    records: Iterable[tuple[int, dict]], label: Path | str, skips: SkipLog
) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """Items frame and bought_together pairs of 2023 metadata records."""
    rows, pairs = [], []
    for lineno, rec in records:
        item_id = as_text(rec.get("parent_asin")).strip()
        if not item_id:
            skips.skip(label, lineno, "missing parent_asin")
            continue
        rows.append(meta_item(item_id, rec))
        pairs.extend((item_id, d, "bought_together") for d in as_strings(rec.get("bought_together")))
    return make_items(dedupe_items(rows, label, skips)), pairs


def meta_item(item_id: str, rec: dict) -> dict:
    """One 2023 metadata record -> item row; brand = details["Brand"], else the store."""
    details = parse_details(rec.get("details"))
    extra = {k: rec.get(k) for k in ("main_category", "average_rating", "rating_number", "store")}
    extra["price"] = parse_price(rec.get("price"))
    extra["details"] = details
    return {
        "item_id": item_id,
        "title": as_text(rec.get("title")),
        "description": as_text(rec.get("description")),
        "features": as_strings(rec.get("features")),
        "categories": as_strings(rec.get("categories")),
        "brand": as_text(details.get("Brand") or rec.get("store")).strip(),
        "extra": {k: v for k, v in extra.items() if v not in (None, "", "None", {}, [])},
    }


def parse_price(v: Any) -> float | str | None:
    """Price as a float: local JSONL has numbers, the hub and meta_items.csv strings ("None",
    "9.99"); a price text that is not a number (a range "5.99 - 9.99") is kept as text."""
    if v is None or isinstance(v, (int, float)):
        return None if v is None or v != v else float(v)
    text = str(v).strip().lstrip("$").replace(",", "")
    if text in ("", "None", "null", "—"):
        return None
    try:
        return float(text)
    except ValueError:
        return str(v).strip()


def parse_details(v: Any) -> dict:
    """`details` as a dict: a dict (local JSONL), a JSON string (hub), a Python-dict string
    (meta_items.csv); anything unreadable -> {}."""
    if isinstance(v, dict):
        return v
    if not isinstance(v, str) or not v.strip():
        return {}
    for parse in (json.loads, ast.literal_eval):
        try:
            out = parse(v)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(out, dict):
            return out
    return {}


# ---------------------------------------------------------------- official benchmark CSVs


def load_amazon2023_benchmark(
    folder: Path,
    name: str,
    *,
    benchmark: str = "last_out_w_his",
    kcore_subset: str = "5core",
    strict: bool = False,
    metadata_pairs: bool = True,
) -> RawData:
    """Benchmark interactions of `name` (+ a `split` column unless rating_only) and metadata."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown data.benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    require_path(folder, f"the Amazon 2023 benchmark folder (benchmark/{kcore_subset}/{benchmark}/...)")
    bdir = folder / "benchmark" / kcore_subset / benchmark
    skips = SkipLog(strict=strict)
    if benchmark == "rating_only":
        inter_files = [require_path(bdir / f"{name}.csv", f"the official benchmark file {name}.csv")]
        inter = read_benchmark_csv(inter_files[0], skips)
    else:
        inter_files = [require_path(bdir / f"{name}.{s}.csv", f"official split files {name}.{{train,valid,test}}.csv")
                       for s in SPLITS]
        parts = [read_benchmark_csv(f, skips).assign(split=s) for f, s in zip(inter_files, SPLITS)]
        inter = pd.concat(parts, ignore_index=True).astype({"split": str})
    items, pairs, meta_file = benchmark_items(folder, name, skips)
    inter = drop_unknown_items(inter, items, inter_files[0], skips)
    keep = set(inter["item_id"].unique()) & set(items["item_id"])
    return RawData(items=items, interactions=check_interactions(inter, with_split=benchmark != "rating_only"),
                   pairs=make_pairs(pairs if metadata_pairs else [], keep), skipped=dict(skips.counts),
                   source="amazon2023_benchmark", files=[str(f) for f in inter_files] + [str(meta_file)])


def read_benchmark_csv(file: Path, skips: SkipLog) -> pd.DataFrame:
    """user_id, parent_asin, rating, timestamp of one benchmark CSV (`history` is not needed:
    prep rebuilds sequences from the rows)."""
    needed = ["user_id", "parent_asin", "rating", "timestamp"]
    try:
        raw = pd.read_csv(file, dtype=str, keep_default_na=False, usecols=lambda c: c in needed)
    except (ValueError, OSError, csv.Error, pd.errors.ParserError) as e:
        raise DataError(f"{file}: not a readable benchmark CSV: {e}") from None
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataError(f"{file}: columns {missing} missing; expected {needed} (+ history)")
    raw = raw.rename(columns={"parent_asin": "item_id"})
    return validate_interactions(raw, file, skips, np.arange(2, len(raw) + 2))  # line 1 = header


def benchmark_items(folder: Path, name: str, skips: SkipLog) -> tuple[pd.DataFrame, list, Path]:
    """Metadata from a raw meta JSONL (folder or raw/meta_categories/), else meta_items.csv."""
    for sub in (folder, folder / "raw" / "meta_categories"):
        for fname in meta_names(name):
            if (sub / fname).is_file():
                items, pairs = items_from_records(meta_records_from_file(sub / fname, skips), sub / fname, skips)
                return items, pairs, sub / fname
    csv_file = folder / "meta_items.csv"
    if not csv_file.is_file():
        expected = " or ".join(meta_names(name) + ["meta_items.csv"])
        raise DataError(f"{folder}: no item metadata; expected {expected}")
    return items_from_meta_csv(csv_file, skips), [], csv_file


def items_from_meta_csv(file: Path, skips: SkipLog) -> pd.DataFrame:
    """Items of the derived meta_items.csv (index, title, description, price, details, parent_asin)."""
    try:
        df = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (ValueError, OSError, csv.Error, pd.errors.ParserError) as e:
        raise DataError(f"{file}: not a readable CSV: {e}") from None
    if "parent_asin" not in df.columns:
        raise DataError(f"{file}: no parent_asin column; expected index,title,description,price,details,parent_asin")
    records = ((i + 2, {c: (v if v != "" else None) for c, v in row.items()})
               for i, row in enumerate(df.to_dict("records")))
    items, _ = items_from_records(records, file, skips)
    return items
