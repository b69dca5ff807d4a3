"""What every task builder works on: the inputs (01, 02, 05), the catalog view of them, the
drafts a builder returns (a conversation before its length is fitted), the per-task tally, the
seeded generators, and the context that holds it all."""
from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ... import split as splitlib
from ...config import SftDataConfig
from ...data.schema import DataError
from ...sids import REC, SidTable
from ...text import is_missing, to_text
from .templates import Words, templates_of, words_for


# ------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """What 06 reads: cleaned items (02), the split and pairs (01), the SID table (05)."""

    items: pd.DataFrame  # item_id (0..n-1), title, description, features, categories, brand
    split: pd.DataFrame  # sidlib.split layout
    pairs: pd.DataFrame  # src, dst, kind, count
    table: SidTable
    source: str  # data.source: picks the catalog words and how categories read


ITEM_COLUMNS = ("item_id", "title", "description", "features", "categories", "brand")


def _as_list(x: Any) -> list[str]:
    """A list cell -> its non-blank entries as str ([] when missing). Not text.to_list: that one
    also parses JSON-list strings and flattens nested lists, and keeps blank entries."""
    if is_missing(x):
        return []
    if isinstance(x, str):
        return [x] if x.strip() else []
    return [str(v) for v in x if v is not None and str(v).strip()]


def check_inputs(inputs: Inputs, where: str = "inputs") -> None:
    """Items, SIDs and split must describe the same dense item ids; errors name what differs."""
    items = inputs.items
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise DataError(f"{where}: the cleaned items lack column(s) {missing} (columns: {list(items.columns)})")
    ids = items["item_id"].to_numpy(dtype=np.int64)
    if not np.array_equal(ids, np.arange(len(ids))):
        bad = int(np.flatnonzero(ids != np.arange(len(ids)))[0])
        raise DataError(f"{where}: items must have dense ids 0..n-1 in order; row {bad} has item_id {ids[bad]}")
    if not np.array_equal(inputs.table.item_ids, ids):
        raise DataError(f"{where}: the SID table has {len(inputs.table)} items, the cleaned items {len(ids)}; "
                        "05-sids was built from another item table (rerun 05-sids)")
    n = len(ids)
    for col in ("valid", "test"):
        v = inputs.split[col].to_numpy(dtype=np.int64)
        bad = np.flatnonzero((v != splitlib.NONE) & ((v < 0) | (v >= n)))
        if bad.size:
            raise DataError(f"{where}: split row {int(bad[0])} has {col} item {int(v[bad[0]])}, outside 0..{n - 1}")
    for r, t in enumerate(inputs.split["train"]):
        if len(t) and (min(t) < 0 or max(t) >= n):
            raise DataError(f"{where}: split row {r} (user {inputs.split['user_id'].iat[r]}) has a training item "
                            f"outside 0..{n - 1}")


# ------------------------------------------------------------------------------- the catalog


def norm_word(w: str) -> str:
    return re.sub(r"^\W+|\W+$", "", w.lower())


STOPWORDS = {"the", "a", "an", "of", "and", "or", "in", "on", "for", "to", "with", "at", "by", "from", "de",
             "la", "le", "il", "el", "&", "-", "is", "it", "its", "my", "your"}


@dataclass
class Catalog:
    """Per-item text, SIDs and training popularity, list index = dense item id."""

    titles: list[str]
    descriptions: list[str]
    features: list[list[str]]
    categories: list[list[str]]
    brands: list[str]
    labels: list[list[str]]  # short category labels: every genre (MovieLens) or the leaf category
    sids: list[str]
    codes: np.ndarray  # [items, levels]
    popularity: np.ndarray  # training-part occurrences (sidlib.split.item_train_counts)
    words: Words

    def __len__(self) -> int:
        return len(self.titles)

    def category_text(self, i: int) -> str:
        return self.words.category_sep.join(self.categories[i])

    def history_text(self, items: Sequence[int]) -> str:
        return ", ".join(self.sids[i] for i in items)

    def listing(self, items: Sequence[int]) -> str:
        """SIDs back to back (seq_history's answer): each SID block is closed, so no separator."""
        return "".join(self.sids[i] for i in items)


def make_catalog(inputs: Inputs, item_noun: str = "") -> Catalog:
    items = inputs.items
    words = words_for(inputs.source, item_noun)
    cats = [_as_list(c) for c in items["categories"]]
    # MovieLens genres are parallel tags; Amazon categories are a path whose leaf says most
    labels = cats if inputs.source == "movielens" else [c[-1:] for c in cats]
    return Catalog(
        titles=[to_text(t).strip() for t in items["title"]],
        descriptions=[to_text(d).strip() for d in items["description"]],
        features=[_as_list(f) for f in items["features"]],
        categories=cats,
        brands=[to_text(b).strip() for b in items["brand"]],
        labels=labels,
        sids=inputs.table.df["sid"].astype(str).tolist(),
        codes=inputs.table.codes,
        popularity=splitlib.item_train_counts(inputs.split, len(items)),
        words=words,
    )


# ------------------------------------------------------------------------------- drafts


@dataclass
class Draft:
    """One sample before rendering: templates + fields, the droppable history and free text."""

    task: str
    template: int
    fields: dict[str, Any]
    history: list[int] = field(default_factory=list)  # oldest first; dropped from the front when too long
    min_history: int = 0  # fewer history items than this and the sample makes no sense
    text: str = ""  # free text that may be shortened (a description, a feature list)
    context: list[int] = field(default_factory=list)  # other items the prompt names
    answer_items: list[int] = field(default_factory=list)
    user_id: int = -1  # -1 = not one user's sample
    # seq_session: (question, answer) follow-up turns after the first answer; dropped from the end when too long
    follow: list[tuple[str, str]] = field(default_factory=list)

    def messages(self, system: str, catalog: Catalog, history: list[int] | None = None,
                 text: str | None = None, follow: list[tuple[str, str]] | None = None) -> list[dict[str, str]]:
        hist = self.history if history is None else history
        values = {
            "noun": catalog.words.noun, "nouns": catalog.words.nouns, "verb": catalog.words.verb,
            "verb_ing": catalog.words.verb_ing, "people": catalog.words.people,
            "People": catalog.words.people.capitalize(), "rec": REC,
            **self.fields,
            "history": catalog.history_text(hist), "n": len(hist), "listing": catalog.listing(hist),
            "text": self.text if text is None else text,
        }
        user_t, answer_t = templates_of(self.task)[self.template]
        out = [{"role": "system", "content": system}] if system else []
        out.append({"role": "user", "content": user_t.format(**values)})
        out.append({"role": "assistant", "content": answer_t.format(**values)})
        for question, answer in self.follow if follow is None else follow:
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return out

    @property
    def target_item(self) -> int:
        return self.answer_items[0] if len(self.answer_items) == 1 else -1


class Tally:
    """Per (task, part) counters: skipped reasons, truncated, shortened, candidates."""

    def __init__(self) -> None:
        self.skipped: dict[tuple[str, str], Counter] = {}
        self.counts: dict[tuple[str, str], Counter] = {}

    def skip(self, task: str, part: str, reason: str, n: int = 1) -> None:
        if n:
            self.skipped.setdefault((task, part), Counter())[reason] += n

    def add(self, task: str, part: str, what: str, n: int = 1) -> None:
        if n:
            self.counts.setdefault((task, part), Counter())[what] += n

    def get(self, task: str, part: str, what: str) -> int:
        return int(self.counts.get((task, part), Counter())[what])


def task_rng(seed: int, task: str, part: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(part.encode())])


def pick_template(rng: np.random.Generator, task: str, allowed: Sequence[int] | None = None) -> int:
    choices = list(allowed) if allowed is not None else list(range(len(templates_of(task))))
    return int(choices[int(rng.integers(len(choices)))])


def cap_drafts(drafts: list[Draft], cap: int) -> list[Draft]:
    return drafts[:cap] if cap else drafts


# ------------------------------------------------------------------------------- the builders' context
# Each item builder returns a Draft or the reason the item cannot give that task's sample.

ItemBuilder = Callable[["Context", int, np.random.Generator], "Draft | str"]


@dataclass
class Context:
    catalog: Catalog
    inputs: Inputs
    cfg: SftDataConfig
    tally: Tally
    _prefix_index: dict[tuple[str, ...], int] | None = None
    _title_index: Counter | None = None
    _ngram_index: Counter | None = None
    _groups: dict[tuple[int, ...], list[int]] | None = None

    def title_words(self, i: int) -> list[str]:
        return self.catalog.titles[i].split()

    @property
    def prefix_index(self) -> dict[tuple[str, ...], int]:
        """(normalised first k words) -> how many titles start with them."""
        if self._prefix_index is None:
            idx: Counter = Counter()
            for i in range(len(self.catalog)):
                key = [norm_word(w) for w in self.title_words(i)]
                for k in range(1, len(key) + 1):
                    idx[tuple(key[:k])] += 1
            self._prefix_index = idx
        return self._prefix_index

    @property
    def title_index(self) -> Counter:
        """(normalised whole title) -> how many items carry it."""
        if self._title_index is None:
            self._title_index = Counter(tuple(norm_word(w) for w in self.title_words(i)) for i in range(len(self.catalog)))
        return self._title_index

    @property
    def ngram_index(self) -> Counter:
        """(normalised 1-3 word phrase) -> how many titles contain it (once per title)."""
        if self._ngram_index is None:
            idx: Counter = Counter()
            for i in range(len(self.catalog)):
                key = [norm_word(w) for w in self.title_words(i)]
                grams = {tuple(key[a : a + k]) for k in (1, 2, 3) for a in range(len(key) - k + 1)}
                idx.update(grams)
            self._ngram_index = idx
        return self._ngram_index

    @property
    def groups(self) -> dict[tuple[int, ...], list[int]]:
        """SID prefix of sft.similar_prefix codes -> its items, most popular (training) first."""
        if self._groups is None:
            k = self.cfg.similar_prefix
            out: dict[tuple[int, ...], list[int]] = {}
            order = np.lexsort((np.arange(len(self.catalog)), -self.catalog.popularity))
            for i in order.tolist():
                out.setdefault(tuple(self.catalog.codes[i, :k].tolist()), []).append(i)
            self._groups = out
        return self._groups


def join_and(xs: Sequence[str]) -> str:
    xs = list(xs)
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]
