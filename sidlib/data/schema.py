"""The one schema every loader produces and prep consumes.

Loaders return `RawData` with *source* ids (strings) in file order; prep assigns dense ints.

items (one row per item):
    item_id: str        source id (asin, parent_asin, LC-Rec id, MovieLens id)
    title: str          "" when missing
    description: str    "" when missing (lists of paragraphs joined with "\n")
    features: list[str]
    categories: list[str]   most general first
    brand: str
    extra: str          JSON object with the source fields kept for later stages (price, details, year...)
interactions (one row per event, in file order; prep sorts stably by timestamp):
    user_id: str
    item_id: str
    timestamp: int64    seconds or ms as the source gives; LC-Rec (no times): position in the sequence
    rating: float64     NaN when the source has none
    split: str          optional column, "train" | "valid" | "test", only for sources with an official split
metadata pairs (optional): src: str, dst: str, kind: "also_buy" | "bought_together"
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger("sidlib.data")

ITEM_COLUMNS = ["item_id", "title", "description", "features", "categories", "brand", "extra"]
INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]
PAIR_COLUMNS = ["src", "dst", "kind"]


class DataError(ValueError):
    """Input that cannot be used: names the file, the row and the expected format."""


def require_path(path: Path, expected: str) -> Path:
    """A missing input is a one-line error naming the path and what should be there."""
    if not path.exists():
        raise DataError(f"{path}: not found; expected {expected}")
    return path


@dataclass
class SkipLog:
    """Counts malformed rows, warns with file:line for the first few, raises when strict."""

    strict: bool = False
    max_warnings: int = 5
    counts: dict[str, int] = field(default_factory=dict)

    def skip(self, file: Path | str, line: int, reason: str) -> None:
        msg = f"{file}:{line}: {reason}"
        if self.strict:
            raise DataError(msg + " (strict mode; set data.strict=false to skip such rows)")
        key = f"{Path(file).name}: {reason.split(':')[0]}"
        self.counts[key] = self.counts.get(key, 0) + 1
        n = sum(self.counts.values())
        if n <= self.max_warnings:
            log.warning("skipped %s", msg)
        elif n == self.max_warnings + 1:
            log.warning("more malformed rows are skipped; the counts are in the prep report")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class RawData:
    items: pd.DataFrame
    interactions: pd.DataFrame
    pairs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIR_COLUMNS))
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, from SkipLog
    source: str = ""
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in ITEM_COLUMNS if c not in self.items.columns]
        if missing:
            raise DataError(f"loader for {self.source!r} produced items without columns {missing}")
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise DataError(f"loader for {self.source!r} produced interactions without columns {missing}")
