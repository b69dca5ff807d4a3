"""06-sft-data: multi-task chat conversations that teach the LLM to read and write SIDs.

Every sample is a conversation [system, user, assistant] rendered later by the base model's own
chat template (sidlib.llm.chat; Qwen3 with thinking off). The task families follow the seed
(eugeneyan/semantic-ids-llm) and LC-Rec:

- text -> SID: `title_to_sid`, `description_to_sid`, `features_to_sid`, `title_prefix_to_sid`
  (the first words of a title, the shortest prefix of at least half the words that names one
  item), `title_contains_to_sid` (a 1-3 word phrase from inside the title that no other title has);
- SID -> text: `sid_to_title`, `sid_to_description`, `sid_to_category`;
- catalog structure: `category_to_sid` ("suggest a Comedy movie" -> an item of that category),
  `prefix_to_category` (a SID prefix -> the categories its items mostly have), `similar_items`
  (items sharing the first `sft.similar_prefix` codes, most popular in training first);
- sequential: `seq_last_N` for N in `sft.seq_lengths` ("the last N items -> the next one");
  `seq_session`: the `seq_last_N` question (N = the longest length), answered, then up to
  `sft.session_turns` follow-up turns ("Next?") each answered with the item after: one
  conversation teaches 1 + session_turns next-item predictions for ~25 tokens each, where a
  `seq_last_5` sample pays ~75 tokens for one (the all-positions loss of SASRec and SID-GR, in chat form);
- co-purchase: `copurchase_forward` ("who bought X also bought Y") and `copurchase_backward`
  ("before buying Y users bought X"), from prep's co-occurrence pairs;
- `rec_steering`: a natural-language preference built from the categories (and the brand, when
  the catalog has brands) of the user's earlier items, optionally the recent history, then
  `<|rec|>`; the answer is the next item.

Several phrasings (templates) per task; the template index is kept in the `template` column.
Everything is drawn from numpy generators seeded by (seed, task, part): the same settings give
the same data, and adding a task does not change the others.

No leakage (sidlib.split is THE split, leave-one-out: test = last, valid = second to last):
- sequential, rec and co-purchase *training* samples use only each user's training part
  (`split.train`): targets and histories never contain a user's valid or test item (for the
  dataset's official split the training part may repeat an item bought again later: a real
  earlier purchase, kept);
- co-purchase edges: consecutive items of the training parts (prep's "sequence" pairs, which are
  built from the training parts only; the direction comes from the same training parts) plus the
  catalog's also_buy / bought_together pairs when `sft.metadata_pairs` (catalog facts, not user
  events);
- the valid split's user samples target each user's valid item with the training part as
  history; the test item is never used. Item-level valid samples reuse catalog items that also
  appear in training: they measure fit, not generalization. Valid stays small
  (`sft.valid_per_task` per task).

Sequential sample count: every (user, position) window of the training part is a candidate;
each user's last window (the seed's "last N of each training prefix") comes first, the rest in
random order, and `sft.max_per_task` caps the total. The same rule picks rec_steering positions.

Length: each sample is encoded with `chat.encode` (what 08 trains on). One longer than
`llm.max_length` loses history items from the oldest side (re-rendered, so a SID is never cut)
and is counted `truncated`; if it still does not fit, its free text (a description, a feature
list) is cut on a word boundary (`shortened`); a sample that cannot fit at all is skipped with a
counted, logged reason.
"""
from __future__ import annotations

import json
import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import plots, stages
from .. import split as splitlib
from ..config import Config, SftDataConfig
from ..data.prep import SEQUENCE_KIND, Prepared
from ..data.schema import DataError
from ..sids import REC, SID_START, SidTable
from ..text import is_missing, to_text
from . import chat, vocab
from .base import load_tokenizer

log = logging.getLogger("sidlib.llm.sft_data")

# ------------------------------------------------------------------------------- tasks

TEXT_TO_SID = ("title_to_sid", "description_to_sid", "features_to_sid", "title_prefix_to_sid",
               "title_contains_to_sid")
SID_TO_TEXT = ("sid_to_title", "sid_to_description", "sid_to_category")
CATALOG = ("category_to_sid", "prefix_to_category", "similar_items")
COPURCHASE = ("copurchase_forward", "copurchase_backward")
# the default sequential tasks (sft.seq_lengths = [2, 3, 5]); other lengths give seq_last_N
SEQUENTIAL = ("seq_last_2", "seq_last_3", "seq_last_5")
# answers in sentences about items the prompt names: they keep the model answering in words when
# words are asked for (a model fine-tuned on SID answers alone answers everything with a SID)
EXPLAIN = ("pair_in_common", "bundle_name")
SESSION = "seq_session"  # the last N items -> the next, then "Next?" turns (sft.session_turns)
TASKS = TEXT_TO_SID + SID_TO_TEXT + CATALOG + SEQUENTIAL + (SESSION,) + COPURCHASE + ("rec_steering",) + EXPLAIN
# tasks whose samples come from users' sequences (the leakage rules apply to them)
USER_TASK_PREFIXES = ("seq_last_", SESSION, "copurchase_", "rec_steering")
# the follow-up questions of a seq_session conversation (one, drawn per turn)
FOLLOW_UPS = ("Next?", "And after that?", "What comes next?")

FAMILIES = {"text -> SID": TEXT_TO_SID, "SID -> text": SID_TO_TEXT, "catalog": CATALOG, "explain": EXPLAIN,
            "co-purchase": COPURCHASE, "rec steering": ("rec_steering",)}

SIMILAR_ANSWER_ITEMS = 3  # items listed by a similar_items answer
MAX_PREFIX_LABELS = 3  # categories listed by a prefix_to_category answer
OUTPUT_FILES = {"train": "train.parquet", "valid": "valid.parquet", "report": "sft_report.json",
                "plot": "token_lengths.png"}


def seq_task(n: int) -> str:
    return f"seq_last_{n}"


def all_tasks(cfg: SftDataConfig) -> list[str]:
    """Every task these settings can build, in report order."""
    seq = [seq_task(n) for n in cfg.seq_lengths] + ([SESSION] if cfg.session_turns > 0 else [])
    return list(TEXT_TO_SID + SID_TO_TEXT + CATALOG) + seq + list(COPURCHASE) + ["rec_steering"] + list(EXPLAIN)


def selected_tasks(cfg: SftDataConfig) -> list[str]:
    """sft.tasks ([] = all), checked: an unknown name is an error that lists the known ones."""
    known = all_tasks(cfg)
    if any(int(n) < 1 for n in cfg.seq_lengths):
        raise ValueError(f"sft.seq_lengths must be >= 1, got {cfg.seq_lengths}")
    if not cfg.tasks:
        return known
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        raise ValueError(f"sft.tasks: unknown task(s) {unknown}; known: {', '.join(known)} "
                         "(seq_last_N needs N in sft.seq_lengths)")
    return [t for t in known if t in cfg.tasks]


def is_user_task(task: str) -> bool:
    return task.startswith(USER_TASK_PREFIXES)


def family(task: str) -> str:
    if task.startswith("seq_last_") or task == SESSION:
        return "sequential"
    return next((f for f, tasks in FAMILIES.items() if task in tasks), "other")


# Phrasings. Fields: {noun} {nouns} {verb} {verb_ing} {people} {People} (catalog words), {sid} {title} {text}
# {history} {n} {prefix} {span} {label} {prefs} {rec}, and in answers {sids} {category} {labels}.
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "title_to_sid": [
        ('What is the semantic ID of the {noun} "{title}"?', "{sid}"),
        ('Give me the SID of "{title}".', "{sid}"),
        ('Find the {noun} titled "{title}".', "{sid}"),
        ("{title}\nWhich item is this?", "{sid}"),
    ],
    "description_to_sid": [
        ("Which {noun} matches this description?\n{text}", "{sid}"),
        ("Find the item described below.\n{text}", "{sid}"),
        ("Description: {text}\nWhat is its semantic ID?", "{sid}"),
    ],
    "features_to_sid": [
        ("Which {noun} has these features?\n{text}", "{sid}"),
        ("Find the {noun} with the following features:\n{text}", "{sid}"),
        ("Features:\n{text}\nWhich item is it?", "{sid}"),
    ],
    "title_prefix_to_sid": [
        ('Which {noun} has a title starting with "{prefix}"?', "{sid}"),
        ('Find the {noun} whose title begins with "{prefix}".', "{sid}"),
        ('Complete the title and give the item: "{prefix} ..."', "{sid}"),
    ],
    "title_contains_to_sid": [
        ('Which {noun} has "{span}" in its title?', "{sid}"),
        ('Find the {noun} whose title contains "{span}".', "{sid}"),
        ('I remember the words "{span}" from the title. Which {noun} is it?', "{sid}"),
    ],
    "sid_to_title": [
        ("What is the title of {sid}?", "{title}"),
        ("Name the {noun} {sid}.", "{title}"),
        ("{sid}\nWhat is this item called?", "{title}"),
    ],
    "sid_to_description": [
        ("Describe {sid}.", "{text}"),
        ("What is {sid} about?", "{text}"),
        ("Give me a short description of the {noun} {sid}.", "{text}"),
    ],
    "sid_to_category": [
        ("What category is {sid} in?", "{category}"),
        ("Which categories does the {noun} {sid} belong to?", "{category}"),
        ("Classify {sid}.", "{category}"),
    ],
    "category_to_sid": [
        ("Suggest a {label} {noun}.", "{sid}"),
        ('Name one {noun} from the category "{label}".', "{sid}"),
        ("I want something in {label}. Which {noun}?", "{sid}"),
    ],
    "prefix_to_category": [
        ("What kind of {nouns} have semantic IDs starting with {prefix}?", "Mostly {labels}."),
        ("Items under the SID prefix {prefix} are mainly in which categories?", "{labels}"),
        ("Describe the group of {nouns} whose IDs begin with {prefix}.", "Mostly {labels}."),
    ],
    "similar_items": [
        ("Which {nouns} are similar to {sid}?", "{sids}"),
        ('Recommend {nouns} like "{title}" ({sid}).', "{sids}"),
        ("Find {nouns} close to {sid}.", "{sids}"),
    ],
    "seq_last": [
        ("A user's last {n} {nouns} were: {history}. What comes next?", "{sid}"),
        ("Here is what I {verb} recently, oldest first: {history}. Predict my next {noun}.", "{sid}"),
        ("History: {history}\nNext item:", "{sid}"),
    ],
    "copurchase_forward": [
        ("{People} who {verb} {sid} also {verb} which {noun}?", "{answer}"),
        ("I {verb} {sid}. What else might I like?", "{answer}"),
        ('{People} who {verb} "{title}" ({sid}) might also want which {noun}?', "{answer}"),
    ],
    "copurchase_backward": [
        ("Before {verb_ing} {sid}, what did {people} usually pick?", "{answer}"),
        ("Which {noun} do {people} choose right before {sid}?", "{answer}"),
        ('What often leads up to "{title}" ({sid})?', "{answer}"),
    ],
    # rec prompts always end with <|rec|>; templates 1 and 2 show the history, 0 does not
    "rec_steering": [
        ("{prefs} {rec}", "{sid}"),
        ("{prefs} Recently I {verb}: {history}. {rec}", "{sid}"),
        ("I {verb} {history}. {prefs} What should I try next? {rec}", "{sid}"),
    ],
}
TEMPLATES["pair_in_common"] = [
    ('Why do people who liked "{title}" ({sid}) also like "{title_b}" ({sid_b})?', "{answer}"),
    ("What do {sid} and {sid_b} have in common?", "{answer}"),
    ('How are "{title}" and "{title_b}" alike?', "{answer}"),
]
TEMPLATES["bundle_name"] = [
    ("Give a short, catchy name for a bundle of these {nouns}: {history}.", "{answer}"),
    ("Name a collection made of {history}.", "{answer}"),
    ("What would you call a set of these {nouns}: {history}?", "{answer}"),
]
REC_WITH_HISTORY = {1, 2}
PREFERENCES = [
    "I like {labels} {nouns}{brand}.",
    "I'm in the mood for {labels} {nouns}{brand}.",
    "Looking for {labels} {nouns}{brand}.",
    "My favourite {nouns} are {labels} ones{brand}.",
]


def templates_of(task: str) -> list[tuple[str, str]]:
    return TEMPLATES["seq_last" if task.startswith("seq_last_") or task == SESSION else task]


@dataclass(frozen=True)
class Words:
    """Catalog words for the phrasings: "movie" / "watched" for MovieLens, else products."""

    noun: str
    nouns: str
    verb: str
    verb_ing: str
    people: str
    category_sep: str  # MovieLens genres are a set ("Comedy, Drama"); Amazon categories a path


def words_for(source: str, item_noun: str = "") -> Words:
    if source == "movielens":
        w = Words("movie", "movies", "watched", "watching", "viewers", ", ")
    else:
        w = Words("product", "products", "bought", "buying", "customers", " > ")
    if item_noun:
        w = Words(item_noun, item_noun + "s", w.verb, w.verb_ing, w.people, w.category_sep)
    return w


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


def load_inputs(cfg: Config) -> Inputs:
    """Read 01-prep, 02-clean and 05-sids of the profile (errors name the file to rebuild)."""
    prep_dir = stages.PREP.dir(cfg.profile)
    clean_path = stages.CLEAN.dir(cfg.profile) / "items.parquet"
    sid_dir = stages.SIDS.dir(cfg.profile)
    prepared = Prepared.load(prep_dir)
    if not clean_path.exists():
        raise DataError(f"{clean_path}: not found; run 02-clean first")
    items = pd.read_parquet(clean_path)
    inputs = Inputs(items=items, split=prepared.split, pairs=prepared.pairs, table=SidTable.load(sid_dir),
                    source=cfg.data.source)
    check_inputs(inputs, where=f"{clean_path} / {prep_dir} / {sid_dir}")
    return inputs


# ------------------------------------------------------------------------------- the catalog


def _norm_word(w: str) -> str:
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
            "history": catalog.history_text(hist), "n": len(hist),
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


def _rng(seed: int, task: str, part: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(part.encode())])


def _pick_template(rng: np.random.Generator, task: str, allowed: Sequence[int] | None = None) -> int:
    choices = list(allowed) if allowed is not None else list(range(len(templates_of(task))))
    return int(choices[int(rng.integers(len(choices)))])


def _cap(drafts: list[Draft], cap: int) -> list[Draft]:
    return drafts[:cap] if cap else drafts


# ------------------------------------------------------------------------------- item tasks
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
                key = [_norm_word(w) for w in self.title_words(i)]
                for k in range(1, len(key) + 1):
                    idx[tuple(key[:k])] += 1
            self._prefix_index = idx
        return self._prefix_index

    @property
    def title_index(self) -> Counter:
        """(normalised whole title) -> how many items carry it."""
        if self._title_index is None:
            self._title_index = Counter(tuple(_norm_word(w) for w in self.title_words(i)) for i in range(len(self.catalog)))
        return self._title_index

    @property
    def ngram_index(self) -> Counter:
        """(normalised 1-3 word phrase) -> how many titles contain it (once per title)."""
        if self._ngram_index is None:
            idx: Counter = Counter()
            for i in range(len(self.catalog)):
                key = [_norm_word(w) for w in self.title_words(i)]
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


def _title_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    title = ctx.catalog.titles[i]
    if not title:
        return "no title"
    if ctx.title_index[tuple(_norm_word(w) for w in title.split())] > 1:
        return "title shared with another item"
    return Draft("title_to_sid", _pick_template(rng, "title_to_sid"), {"title": title, "sid": ctx.catalog.sids[i]},
                 answer_items=[i])


def _description_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    desc = ctx.catalog.descriptions[i]
    if not desc:
        return "no description"
    return Draft("description_to_sid", _pick_template(rng, "description_to_sid"), {"sid": ctx.catalog.sids[i]},
                 text=desc, answer_items=[i])


def _features_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    feats = ctx.catalog.features[i]
    if not feats:
        return "no features"
    return Draft("features_to_sid", _pick_template(rng, "features_to_sid"), {"sid": ctx.catalog.sids[i]},
                 text="\n".join(f"- {f}" for f in feats), answer_items=[i])


def _title_prefix_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    words = ctx.title_words(i)
    if len(words) < 2:
        return "title has fewer than 2 words"
    key = [_norm_word(w) for w in words]
    # at least half the words, then as many more as needed for the prefix to name one item
    for k in range(max(1, math.ceil(len(words) / 2)), len(words)):
        if ctx.prefix_index[tuple(key[:k])] == 1:
            return Draft("title_prefix_to_sid", _pick_template(rng, "title_prefix_to_sid"),
                         {"prefix": " ".join(words[:k]), "sid": ctx.catalog.sids[i]}, answer_items=[i])
    return "no title prefix shorter than the title names only this item"


def _title_contains_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    words = ctx.title_words(i)
    if len(words) < 2:
        return "title has fewer than 2 words"
    key = [_norm_word(w) for w in words]
    # phrases from inside the title (not its start: that is title_prefix_to_sid), in random order
    spans = [(a, k) for k in (1, 2, 3) for a in range(1, len(words) - k + 1)]
    for j in rng.permutation(len(spans)).tolist():
        a, k = spans[j]
        gram = tuple(key[a : a + k])
        if all(w in STOPWORDS or not w for w in gram) or len(" ".join(gram)) < 4:
            continue
        if ctx.ngram_index[gram] == 1:
            return Draft("title_contains_to_sid", _pick_template(rng, "title_contains_to_sid"),
                         {"span": " ".join(words[a : a + k]), "sid": ctx.catalog.sids[i]}, answer_items=[i])
    return "no phrase inside the title names only this item"


def _sid_to_title(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    if not ctx.catalog.titles[i]:
        return "no title"
    return Draft("sid_to_title", _pick_template(rng, "sid_to_title"),
                 {"sid": ctx.catalog.sids[i], "title": ctx.catalog.titles[i]}, context=[i])


def _sid_to_description(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    if not ctx.catalog.descriptions[i]:
        return "no description"
    return Draft("sid_to_description", _pick_template(rng, "sid_to_description"), {"sid": ctx.catalog.sids[i]},
                 text=ctx.catalog.descriptions[i], context=[i])


def _sid_to_category(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    if not ctx.catalog.categories[i]:
        return "no categories"
    return Draft("sid_to_category", _pick_template(rng, "sid_to_category"),
                 {"sid": ctx.catalog.sids[i], "category": ctx.catalog.category_text(i)}, context=[i])


def _category_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    labels = ctx.catalog.labels[i]
    if not labels:
        return "no categories"
    label = labels[int(rng.integers(len(labels)))]
    return Draft("category_to_sid", _pick_template(rng, "category_to_sid"), {"label": label, "sid": ctx.catalog.sids[i]},
                 answer_items=[i])


def _similar_items(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    k = ctx.cfg.similar_prefix
    group = ctx.groups[tuple(ctx.catalog.codes[i, :k].tolist())]
    others = [j for j in group if j != i][:SIMILAR_ANSWER_ITEMS]
    if not others:
        return f"no other item shares the first {k} codes"
    return Draft("similar_items", _pick_template(rng, "similar_items"),
                 {"sid": ctx.catalog.sids[i], "title": ctx.catalog.titles[i] or ctx.catalog.sids[i],
                  "sids": ctx.catalog.history_text(others)}, context=[i], answer_items=others)


ITEM_BUILDERS: dict[str, ItemBuilder] = {
    "title_to_sid": _title_to_sid, "description_to_sid": _description_to_sid, "features_to_sid": _features_to_sid,
    "title_prefix_to_sid": _title_prefix_to_sid, "title_contains_to_sid": _title_contains_to_sid,
    "sid_to_title": _sid_to_title, "sid_to_description": _sid_to_description, "sid_to_category": _sid_to_category,
    "category_to_sid": _category_to_sid, "similar_items": _similar_items,
}


def item_drafts(ctx: Context, task: str, part: str, seed: int) -> list[Draft]:
    """Train: every item tried (skips counted over the whole catalog), random order, capped.
    Valid: valid_per_task random catalog items. They also appear in training: item-level valid
    samples measure fit, not generalization."""
    rng = _rng(seed, task, part)
    build = ITEM_BUILDERS[task]
    out: list[Draft] = []
    for i in rng.permutation(len(ctx.catalog)).tolist():
        d = build(ctx, int(i), rng)
        if isinstance(d, str):
            if part == "train":
                ctx.tally.skip(task, part, d)
            continue
        out.append(d)
        if part == "valid" and len(out) >= ctx.cfg.valid_per_task:
            break
    ctx.tally.add(task, part, "candidates", len(out))
    return _cap(out, ctx.cfg.max_per_task if part == "train" else ctx.cfg.valid_per_task)


def _prefix_groups(catalog: Catalog) -> list[tuple[tuple[int, ...], list[int]]]:
    """Every prefix of 1..L-1 codes (L = SID levels; the last, dedup level names one item) with
    at least two items, and its items."""
    out: list[tuple[tuple[int, ...], list[int]]] = []
    levels = catalog.codes.shape[1]
    for k in range(1, levels):
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(catalog.codes[:, :k].tolist()):
            groups.setdefault(tuple(row), []).append(i)
        out.extend(sorted((p, g) for p, g in groups.items() if len(g) >= 2))
    return out


def prefix_text(table_scheme: Any, prefix: Sequence[int]) -> str:
    """An open SID prefix as the model would see it mid-generation: <|sid_start|> + code tokens."""
    return SID_START + "".join(table_scheme.token(l, c) for l, c in enumerate(prefix))


def prefix_drafts(ctx: Context, part: str, seed: int) -> list[Draft]:
    task = "prefix_to_category"
    rng = _rng(seed, task, part)
    groups = _prefix_groups(ctx.catalog)
    out: list[Draft] = []
    for j in rng.permutation(len(groups)).tolist():
        prefix, members = groups[j]
        counts = Counter(lab for i in members for lab in ctx.catalog.labels[i])
        if not counts:
            if part == "train":
                ctx.tally.skip(task, part, "no item under the prefix has categories")
            continue
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        best = top[0][1]
        # the categories that matter: at least a quarter of the most common one's count
        labels = [lab for lab, c in top[:MAX_PREFIX_LABELS] if c * 4 >= best]
        out.append(Draft(task, _pick_template(rng, task),
                         {"prefix": prefix_text(ctx.inputs.table.scheme, prefix), "labels": _join_and(labels)}))
        if part == "valid" and len(out) >= ctx.cfg.valid_per_task:
            break
    ctx.tally.add(task, part, "candidates", len(out))
    return _cap(out, ctx.cfg.max_per_task if part == "train" else ctx.cfg.valid_per_task)


def _join_and(xs: Sequence[str]) -> str:
    xs = list(xs)
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


# ------------------------------------------------------------------------------- user tasks


def _windows(train: Sequence[Sequence[int]], min_pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (user row, target position t >= min_pos) of the training parts, and whether t is
    the user's last position."""
    lengths = np.fromiter((len(t) for t in train), dtype=np.int64, count=len(train))
    n_pos = np.clip(lengths - min_pos, 0, None)
    rows = np.repeat(np.arange(len(train)), n_pos)
    starts = np.cumsum(n_pos) - n_pos
    pos = np.arange(int(n_pos.sum())) - np.repeat(starts, n_pos) + min_pos
    last = pos == lengths[rows] - 1
    return rows, pos, last


def _window_order(last: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each user's last window first (the seed's "last N of each training prefix"), then the
    other windows, each group in random order: the cap keeps the most recent behaviour."""
    first = rng.permutation(np.flatnonzero(last))
    rest = rng.permutation(np.flatnonzero(~last))
    return np.concatenate([first, rest]).astype(np.int64)


def seq_drafts(ctx: Context, n: int, part: str, seed: int) -> list[Draft]:
    task = seq_task(n)
    rng = _rng(seed, task, part)
    split = ctx.inputs.split
    users = split["user_id"].to_numpy(dtype=np.int64)
    out: list[Draft] = []
    if part == "train":
        train = split["train"].tolist()
        rows, pos, last = _windows(train, n)
        ctx.tally.skip(task, part, f"training part shorter than {n + 1} items (users)",
                       int(sum(len(t) <= n for t in train)))
        order = _window_order(last, rng)
        if ctx.cfg.max_per_task:
            order = order[: ctx.cfg.max_per_task]
        for j in order.tolist():
            seq, t = train[rows[j]], int(pos[j])
            out.append(Draft(task, _pick_template(rng, task), {"sid": ctx.catalog.sids[seq[t]]},
                             history=list(seq[t - n : t]), min_history=1, answer_items=[int(seq[t])],
                             user_id=int(users[rows[j]])))
        ctx.tally.add(task, part, "candidates", len(rows))
        return out
    return valid_next_drafts(ctx, task, n, rng)


def valid_next_drafts(ctx: Context, task: str, n: int, rng: np.random.Generator) -> list[Draft]:
    """The valid samples of the sequential tasks: a user's last n training items -> the valid item."""
    split = ctx.inputs.split
    users = split["user_id"].to_numpy(dtype=np.int64)
    out: list[Draft] = []
    for r in _valid_rows(split, rng, min_train=n, cap=ctx.cfg.valid_per_task):
        seq, target = split["train"].iat[r], int(split["valid"].iat[r])
        out.append(Draft(task, _pick_template(rng, task), {"sid": ctx.catalog.sids[target]},
                         history=list(seq[-n:]), min_history=1, answer_items=[target], user_id=int(users[r])))
    return out


def session_drafts(ctx: Context, part: str, seed: int) -> list[Draft]:
    """seq_session: the user's training part cut into consecutive sessions of n history items
    (n = the longest sft.seq_lengths) and 1 + sft.session_turns answers, so every training
    transition is an answer of at most one conversation; each user's last session first, then
    the rest at random, capped by sft.max_per_task. The valid sample is seq_last_n's: the whole
    training part's last n items -> the valid item, one turn (what 09's recommender asks)."""
    n, turns = max(ctx.cfg.seq_lengths), ctx.cfg.session_turns
    rng = _rng(seed, SESSION, part)
    split = ctx.inputs.split
    users = split["user_id"].to_numpy(dtype=np.int64)
    if part != "train":
        return valid_next_drafts(ctx, SESSION, n, rng)
    train = split["train"].tolist()
    # (user row, first answer position, end position, is the user's last session); sessions are
    # cut from the end of the sequence, so its most recent transitions are always in one, and
    # the oldest ones make a shorter session
    starts: list[tuple[int, int, int, bool]] = []
    for row, seq in enumerate(train):
        end = len(seq)
        while end > n:
            t = max(n, end - turns - 1)
            starts.append((row, t, end, end == len(seq)))
            end = t
    ctx.tally.skip(SESSION, part, f"training part shorter than {n + 1} items (users)", int(sum(len(t) <= n for t in train)))
    ctx.tally.add(SESSION, part, "candidates", len(starts))
    order = _window_order(np.array([s[3] for s in starts], dtype=bool), rng)
    if ctx.cfg.max_per_task:
        order = order[: ctx.cfg.max_per_task]
    out: list[Draft] = []
    for j in order.tolist():
        row, t, end, _last = starts[j]
        seq = train[row]
        answers = [int(i) for i in seq[t:end]]
        follow = [(FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))], ctx.catalog.sids[i]) for i in answers[1:]]
        out.append(Draft(SESSION, _pick_template(rng, SESSION), {"sid": ctx.catalog.sids[answers[0]]},
                         history=list(seq[t - n : t]), min_history=1, answer_items=answers,
                         user_id=int(users[row]), follow=follow))
    return out


def _valid_rows(split: pd.DataFrame, rng: np.random.Generator, min_train: int, cap: int) -> list[int]:
    """Random users with a valid item and at least min_train training items."""
    ok = (split["valid"].to_numpy() != splitlib.NONE) & (split["train"].map(len).to_numpy() >= min_train)
    rows = rng.permutation(np.flatnonzero(ok))
    return rows[:cap].tolist()


def directed_pairs(split: pd.DataFrame) -> pd.DataFrame:
    """Consecutive (a, b) of the training parts, a before b: DataFrame[src, dst, count]. The
    undirected version is prep's "sequence" pairs (sidlib.data.prep.sequence_pairs)."""
    lengths = split["train"].map(len).to_numpy()
    flat = np.fromiter((i for t in split["train"] for i in t), dtype=np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(lengths)), lengths)
    same = owner[:-1] == owner[1:]
    a, b = flat[:-1][same], flat[1:][same]
    keep = a != b
    df = pd.DataFrame({"src": a[keep], "dst": b[keep]})
    return df.groupby(["src", "dst"], sort=True).size().rename("count").reset_index()


def copurchase_edges(inputs: Inputs, metadata: bool = True) -> pd.DataFrame:
    """Directed edges [src, dst, count, kind]: "sequence" (src then dst in a training part) and,
    when `metadata`, the catalog pairs (also_buy, ...) as directed in the metadata.

    prep's sequence pairs must be exactly the training parts' consecutive pairs in both
    directions; anything else means 01-prep and the split disagree (rerun 01-prep)."""
    directed = directed_pairs(inputs.split)
    seq = inputs.pairs[inputs.pairs["kind"] == SEQUENCE_KIND]
    both = pd.concat([directed[["src", "dst"]], directed.rename(columns={"src": "dst", "dst": "src"})[["src", "dst"]]])
    want = set(zip(both["src"].tolist(), both["dst"].tolist()))
    have = set(zip(seq["src"].astype(int).tolist(), seq["dst"].astype(int).tolist()))
    if want != have:
        extra = sorted(have - want)[:3]
        lacking = sorted(want - have)[:3]
        raise DataError(
            f"01-prep pairs.parquet: the 'sequence' pairs do not match the split's training parts "
            f"({len(have - want)} pairs not in any training part, e.g. {extra}; {len(want - have)} missing, "
            f"e.g. {lacking}); rerun 01-prep"
        )
    edges = directed.assign(kind=SEQUENCE_KIND)
    if metadata:
        meta = inputs.pairs[inputs.pairs["kind"] != SEQUENCE_KIND][["src", "dst", "count", "kind"]]
        edges = pd.concat([edges, meta], ignore_index=True)
    return edges.astype({"src": np.int64, "dst": np.int64, "count": np.int64})


def copurchase_drafts(ctx: Context, task: str, part: str, seed: int) -> list[Draft]:
    """forward: asked about src, answer dst; backward (sequence edges only: metadata pairs have
    no "before"): asked about dst, answer src. Per asked item its `copurchase_per_item`
    strongest partners, one sample each. Valid: each sampled user's last training item and
    valid item as the pair."""
    rng = _rng(seed, task, part)
    forward = task == "copurchase_forward"
    cat = ctx.catalog
    out: list[Draft] = []

    def draft(given: int, answer: int, user: int = -1) -> Draft:
        return Draft(task, _pick_template(rng, task),
                     {"sid": cat.sids[given], "title": cat.titles[given] or cat.sids[given], "answer": cat.sids[answer]},
                     context=[given], answer_items=[answer], user_id=user)

    if part == "valid":
        split = ctx.inputs.split
        for r in _valid_rows(split, rng, min_train=1, cap=ctx.cfg.valid_per_task):
            last, target = int(split["train"].iat[r][-1]), int(split["valid"].iat[r])
            user = int(split["user_id"].iat[r])
            out.append(draft(last, target, user) if forward else draft(target, last, user))
        return out
    edges = copurchase_edges(ctx.inputs, ctx.cfg.metadata_pairs)
    if not forward:
        edges = edges[edges["kind"] == SEQUENCE_KIND].rename(columns={"src": "dst", "dst": "src"})
    # strongest partners first; equal counts by item id, so the choice is stable
    edges = edges.groupby(["src", "dst"], as_index=False)["count"].sum()
    edges = edges.sort_values(["src", "count", "dst"], ascending=[True, False, True])
    top = edges.groupby("src").head(ctx.cfg.copurchase_per_item)
    ctx.tally.add(task, part, "candidates", len(top))
    ctx.tally.skip(task, part, "item without a co-purchase partner", len(cat) - top["src"].nunique())
    order = rng.permutation(len(top))
    if ctx.cfg.max_per_task:
        order = order[: ctx.cfg.max_per_task]
    src, dst = top["src"].to_numpy(), top["dst"].to_numpy()
    for j in order.tolist():
        out.append(draft(int(src[j]), int(dst[j])))
    return out


def preference(cat: Catalog, history: Sequence[int], rng: np.random.Generator) -> str | None:
    """A sentence from the most frequent categories (1 or 2) of the items so far, plus the most
    frequent brand when at least two of them share it. None when no item has a category."""
    counts = Counter(lab for i in history for lab in cat.labels[i])
    if not counts:
        return None
    top = [lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    labels = top[: 1 + int(rng.integers(2))]
    brands = Counter(cat.brands[i] for i in history if cat.brands[i])
    brand = ""
    if brands:
        name, c = sorted(brands.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if c >= 2:
            brand = f" from {name}"
    tmpl = PREFERENCES[int(rng.integers(len(PREFERENCES)))]
    return tmpl.format(labels=" and ".join(labels), nouns=cat.words.nouns, brand=brand)


def rec_drafts(ctx: Context, part: str, seed: int) -> list[Draft]:
    """<|rec|> steering. Train: positions t >= 1 of the training parts (last one of each user
    first, as in seq_drafts); preference from train[:t], history = up to sft.max_history items
    before t (only in the templates that show it), answer = train[t]. Valid: preference and
    history from the whole training part, answer = the valid item."""
    task = "rec_steering"
    rng = _rng(seed, task, part)
    split, cat = ctx.inputs.split, ctx.catalog
    users = split["user_id"].to_numpy(dtype=np.int64)
    train = split["train"].tolist()
    if part == "train":
        rows, pos, last = _windows(train, 1)
        order = _window_order(last, rng)
        ctx.tally.add(task, part, "candidates", len(rows))
        picks = [(int(rows[j]), int(pos[j])) for j in order.tolist()]
    else:
        picks = [(r, len(train[r])) for r in _valid_rows(split, rng, min_train=1, cap=len(split))]
    cap = ctx.cfg.max_per_task if part == "train" else ctx.cfg.valid_per_task
    out: list[Draft] = []
    for r, t in picks:
        if cap and len(out) >= cap:
            break
        seq = train[r]
        target = int(seq[t]) if part == "train" else int(split["valid"].iat[r])
        prefs = preference(cat, seq[:t], rng)
        if prefs is None:
            ctx.tally.skip(task, part, "no earlier item has a category")
            continue
        tmpl = _pick_template(rng, task)
        shown = list(seq[max(0, t - ctx.cfg.max_history) : t]) if tmpl in REC_WITH_HISTORY else []
        out.append(Draft(task, tmpl, {"prefs": prefs, "sid": cat.sids[target]}, history=shown,
                         min_history=1 if shown else 0, answer_items=[target], user_id=int(users[r])))
    return out


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def pair_answer(cat: Catalog, a: int, b: int) -> str:
    """Why two items go together, from their categories: what they share, else what each is."""
    shared = [lab for lab in cat.labels[a] if lab in cat.labels[b]]
    if shared:
        return f"Both are {_join_and(shared[:2])} {cat.words.nouns}."
    la, lb = (_join_and(cat.labels[i][:2]) if cat.labels[i] else "popular" for i in (a, b))
    return (f'"{cat.titles[a]}" is {_a(la)} {cat.words.noun} and "{cat.titles[b]}" is {_a(lb)} {cat.words.noun}; '
            f"{cat.words.people} often {cat.words.verb} them together.")


def bundle_answer(cat: Catalog, items: Sequence[int]) -> str | None:
    """A name for a bundle from its most shared categories: "Comedy & Drama Night"."""
    counts = Counter(lab for i in items for lab in cat.labels[i])
    if not counts:
        return None
    top = [lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]]
    return f'"{" & ".join(top)} Night"'


def explain_drafts(ctx: Context, task: str, part: str, seed: int) -> list[Draft]:
    """pair_in_common: each item's strongest training-sequence partner, the answer from their
    categories. bundle_name: three consecutive items of a training part, named after their most
    shared categories. Valid samples are drawn the same way with another generator (catalog
    facts: they measure fit)."""
    rng = _rng(seed, task, part)
    cat = ctx.catalog
    cap = ctx.cfg.max_per_task if part == "train" else ctx.cfg.valid_per_task
    out: list[Draft] = []
    if task == "pair_in_common":
        edges = copurchase_edges(ctx.inputs, metadata=False)
        edges = edges.sort_values(["src", "count", "dst"], ascending=[True, False, True]).groupby("src").head(1)
        ctx.tally.add(task, part, "candidates", len(edges))
        src, dst = edges["src"].to_numpy(), edges["dst"].to_numpy()
        for j in rng.permutation(len(edges)).tolist():
            a, b = int(src[j]), int(dst[j])
            if not cat.titles[a] or not cat.titles[b]:
                ctx.tally.skip(task, part, "an item without a title")
                continue
            out.append(Draft(task, _pick_template(rng, task),
                             {"sid": cat.sids[a], "title": cat.titles[a], "sid_b": cat.sids[b], "title_b": cat.titles[b],
                              "answer": pair_answer(cat, a, b)}, context=[a, b]))
            if cap and len(out) >= cap:
                break
        return out
    train = ctx.inputs.split["train"].tolist()
    rows, pos, _last = _windows(train, 2)
    ctx.tally.add(task, part, "candidates", len(rows))
    for j in rng.permutation(len(rows)).tolist():
        items = [int(i) for i in train[int(rows[j])][int(pos[j]) - 2: int(pos[j]) + 1]]
        answer = bundle_answer(cat, items)
        if answer is None:
            ctx.tally.skip(task, part, "no item of the bundle has a category")
            continue
        out.append(Draft(task, _pick_template(rng, task), {"answer": answer}, history=items, min_history=3,
                         context=items))
        if cap and len(out) >= cap:
            break
    return out


def drafts_for(ctx: Context, task: str, part: str, seed: int) -> list[Draft]:
    if task in ITEM_BUILDERS:
        return item_drafts(ctx, task, part, seed)
    if task == "prefix_to_category":
        return prefix_drafts(ctx, part, seed)
    if task.startswith("seq_last_"):
        return seq_drafts(ctx, int(task.removeprefix("seq_last_")), part, seed)
    if task == SESSION:
        return session_drafts(ctx, part, seed)
    if task in COPURCHASE:
        return copurchase_drafts(ctx, task, part, seed)
    if task == "rec_steering":
        return rec_drafts(ctx, part, seed)
    if task in EXPLAIN:
        return explain_drafts(ctx, task, part, seed)
    raise ValueError(f"no builder for task {task!r}")


# ------------------------------------------------------------------------------- length


@dataclass
class Fitted:
    messages: list[dict[str, str]]
    n_tokens: int
    history: list[int]
    truncated: bool
    shortened: bool
    turns: int = 1  # assistant turns kept (a seq_session may lose its last ones)


def _n_tokens(tokenizer: Any, messages: list[dict[str, str]], cfg: Config) -> int:
    return len(chat.encode(tokenizer, messages, cfg.llm)["input_ids"])


def fit(draft: Draft, tokenizer: Any, catalog: Catalog, cfg: Config, tokens_per_item: int) -> Fitted | str:
    """Encode with chat.encode; too long -> drop history items from the oldest side (whole SIDs:
    the prompt is re-rendered), then cut the free text on a word boundary; still too long ->
    the reason it is skipped."""
    limit, system = cfg.llm.max_length, cfg.sft.system_prompt
    hist, text, follow = list(draft.history), draft.text, list(draft.follow)
    msgs = draft.messages(system, catalog, hist, text)
    n = _n_tokens(tokenizer, msgs, cfg)
    truncated = shortened = False
    while n > limit and follow:  # a session loses its last turns first: the history is the question
        follow = follow[: max(0, len(follow) - max(1, math.ceil((n - limit) / (tokens_per_item + 10))))]
        msgs = draft.messages(system, catalog, hist, text, follow)
        n = _n_tokens(tokenizer, msgs, cfg)
        truncated = True
    while n > limit and len(hist) > draft.min_history:
        # drop as many items as the excess needs at once (each item is its SID plus ", "), then re-check
        drop = min(len(hist) - draft.min_history, max(1, math.ceil((n - limit) / tokens_per_item)))
        hist = hist[drop:]
        msgs = draft.messages(system, catalog, hist, text, follow)
        n = _n_tokens(tokenizer, msgs, cfg)
        truncated = True
    if n > limit and text:
        words = text.split(" ")
        lo, hi = 0, len(words)  # largest word count that fits: binary search over prefixes
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _n_tokens(tokenizer, draft.messages(system, catalog, hist, " ".join(words[:mid]), follow), cfg) <= limit:
                lo = mid
            else:
                hi = mid - 1
        if lo > 0:
            text = " ".join(words[:lo])
            msgs = draft.messages(system, catalog, hist, text, follow)
            n = _n_tokens(tokenizer, msgs, cfg)
            shortened = True
    if n > limit:
        return f"longer than llm.max_length={limit} even with the shortest history and text"
    return Fitted(msgs, n, hist, truncated, shortened, 1 + len(follow))


# ------------------------------------------------------------------------------- build


@dataclass
class SftData:
    train: pd.DataFrame
    valid: pd.DataFrame
    report: dict[str, Any]

    def counts(self) -> pd.DataFrame:
        """One row per task: samples, skips, truncations, phrasings, token stats."""
        rows = []
        for task, r in self.report["tasks"].items():
            rows.append({"task": task, "family": family(task), "train": r["train"], "valid": r["valid"],
                         "candidates": r["candidates"], "skipped": sum(r["skipped"].values()),
                         "truncated": r["truncated"], "shortened": r["shortened"], "phrasings": r["phrasings"],
                         "tokens_mean": r["tokens_mean"], "tokens_max": r["tokens_max"]})
        return pd.DataFrame(rows).set_index("task")

    def metrics(self) -> dict[str, Any]:
        tasks = self.report["tasks"]
        tok = self.report["tokens"]
        return {
            "samples": {t: r["train"] for t, r in tasks.items()},
            "valid_samples": {t: r["valid"] for t, r in tasks.items()},
            "tokens_mean": tok["mean"], "tokens_p95": tok["p95"], "tokens_max": tok["max"],
            "train": int(len(self.train)), "valid": int(len(self.valid)),
            "truncated": int(sum(r["truncated"] for r in tasks.values())),
            "shortened": int(sum(r["shortened"] for r in tasks.values())),
            "too_long": int(sum(r["too_long"] for r in tasks.values())),
            "max_length": self.report["max_length"],
        }

    def save(self, folder: Path | str) -> dict[str, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {k: folder / v for k, v in OUTPUT_FILES.items()}
        _write_frame(self.train, out["train"])
        _write_frame(self.valid, out["valid"])
        out["report"].write_text(json.dumps(self.report, indent=2) + "\n")
        plot_token_lengths(self.train, out["plot"], self.report["max_length"])
        return out


def tokenizer_for(cfg: Config, table: SidTable, check: int = 32) -> Any:
    """The base model's tokenizer with the SID tokens added (as 08 adds them), checked on `check`
    SIDs spread over the table: every SID must encode to exactly its own tokens."""
    tok = load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(tok, table.scheme)
    sids = table.df["sid"].astype(str).tolist()
    step = max(1, len(sids) // max(1, check))
    vocab.check_sid_tokenization(tok, table.scheme, sids[::step][:check])
    return tok


def build(inputs: Inputs, tokenizer: Any, cfg: Config, progress: bool = True) -> SftData:
    """Every selected task's train and valid samples, fitted to llm.max_length.

    `tokenizer` must already hold the SID tokens (tokenizer_for). Returns DataFrames with
    columns task, template, messages, target_item, answer_items, context_items, user_id,
    n_tokens, truncated, shortened; train rows shuffled with the seed (08 samples from them)."""
    from tqdm import tqdm

    check_inputs(inputs)
    sft = cfg.sft
    tasks = selected_tasks(sft)
    levels = inputs.table.scheme.levels
    if not 1 <= sft.similar_prefix < levels:
        raise ValueError(f"sft.similar_prefix={sft.similar_prefix}: expected 1..{levels - 1} (SIDs have {levels} codes)")
    if sft.copurchase_per_item < 1:
        raise ValueError(f"sft.copurchase_per_item={sft.copurchase_per_item}: expected >= 1")
    catalog = make_catalog(inputs, sft.item_noun)
    ctx = Context(catalog, inputs, sft, Tally())
    # a history item costs its SID's tokens plus the ", " between items
    tokens_per_item = levels + 2 + 2
    frames: dict[str, list[dict[str, Any]]] = {"train": [], "valid": []}
    for part in ("train", "valid"):
        drafts = [d for task in tasks for d in drafts_for(ctx, task, part, cfg.seed)]
        for d in tqdm(drafts, desc=f"06 encode {part}", disable=not progress, mininterval=5.0):
            f = fit(d, tokenizer, catalog, cfg, tokens_per_item)
            if isinstance(f, str):
                ctx.tally.skip(d.task, part, f)
                ctx.tally.add(d.task, part, "too_long")
                continue
            ctx.tally.add(d.task, part, "truncated", int(f.truncated))
            ctx.tally.add(d.task, part, "shortened", int(f.shortened))
            frames[part].append({
                "task": d.task, "template": d.template, "messages": f.messages, "target_item": d.target_item,
                "answer_items": list(map(int, d.answer_items[: f.turns] if d.follow else d.answer_items)), "context_items": list(map(int, d.context + f.history)),
                "user_id": d.user_id, "n_tokens": f.n_tokens, "truncated": f.truncated, "shortened": f.shortened,
            })
    for (task, part), reasons in ctx.tally.skipped.items():
        for reason, c in reasons.items():
            if reason.startswith("longer"):
                log.warning("06: %d %s sample(s) of %s skipped: %s", c, part, task, reason)
    train = _frame(frames["train"]).sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True)
    valid = _frame(frames["valid"])
    return SftData(train, valid, _report(tasks, train, valid, ctx.tally, cfg))


COLUMNS = ["task", "template", "messages", "target_item", "answer_items", "context_items", "user_id", "n_tokens",
           "truncated", "shortened"]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"template": np.int64, "target_item": np.int64, "user_id": np.int64, "n_tokens": np.int64,
                      "truncated": bool, "shortened": bool})


def _stats(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    return {"mean": round(float(x.mean()), 1), "p50": float(np.percentile(x, 50)),
            "p95": float(np.percentile(x, 95)), "max": int(x.max())}


def _report(tasks: list[str], train: pd.DataFrame, valid: pd.DataFrame, tally: Tally, cfg: Config) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for task in tasks:
        tr, va = train[train["task"] == task], valid[valid["task"] == task]
        n = tr["n_tokens"].to_numpy()
        per[task] = {
            "family": family(task), "train": int(len(tr)), "valid": int(len(va)),
            "candidates": tally.get(task, "train", "candidates"),
            "skipped": dict(tally.skipped.get((task, "train"), Counter())),
            "valid_skipped": dict(tally.skipped.get((task, "valid"), Counter())),
            "truncated": tally.get(task, "train", "truncated") + tally.get(task, "valid", "truncated"),
            "shortened": tally.get(task, "train", "shortened") + tally.get(task, "valid", "shortened"),
            "too_long": tally.get(task, "train", "too_long") + tally.get(task, "valid", "too_long"),
            "phrasings": int(tr["template"].nunique()) if len(tr) else 0,
            "tokens_mean": round(float(n.mean()), 1) if len(n) else 0.0,
            "tokens_max": int(n.max()) if len(n) else 0,
        }
        if not len(tr):
            log.warning("06: task %s has no training samples (%s)", task, per[task]["skipped"] or "no candidates")
    return {"tasks": per, "tokens": _stats(train["n_tokens"].to_numpy()),
            "valid_tokens": _stats(valid["n_tokens"].to_numpy()), "train": int(len(train)), "valid": int(len(valid)),
            "max_length": cfg.llm.max_length, "model": cfg.llm.model, "seed": cfg.seed,
            "settings": {k: v for k, v in vars(cfg.sft).items()}}


# ------------------------------------------------------------------------------- files

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema([
    ("task", pa.string()), ("template", pa.int64()), ("messages", MESSAGE_TYPE), ("target_item", pa.int64()),
    ("answer_items", pa.list_(pa.int64())), ("context_items", pa.list_(pa.int64())), ("user_id", pa.int64()),
    ("n_tokens", pa.int64()), ("truncated", pa.bool_()), ("shortened", pa.bool_()),
])


def _write_frame(df: pd.DataFrame, path: Path) -> None:
    arrays = [pa.array([list(v) if f.name in ("messages", "answer_items", "context_items") else v
                        for v in df[f.name].tolist()], type=f.type) for f in SCHEMA]
    pq.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA), path)


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: not found; run 06-sft-data first")
    table = pq.read_table(path)
    missing = [n for n in ("task", "messages") if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: not an SFT data file, no column(s) {missing} (columns: {table.column_names})")
    # to_pylist keeps messages as python lists of {"role", "content"} dicts
    return pd.DataFrame({name: table.column(name).to_pylist() for name in table.column_names})


def load(folder: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) of a 06 folder; `messages` are python lists of {"role", "content"}."""
    folder = Path(folder)
    return _read_frame(folder / OUTPUT_FILES["train"]), _read_frame(folder / OUTPUT_FILES["valid"])


# ------------------------------------------------------------------------------- looking at it


def examples(df: pd.DataFrame) -> dict[str, list[dict[str, str]]]:
    """The first conversation of each task (rows are shuffled: a random one), in task order."""
    first = df.drop_duplicates("task")
    order = {t: i for i, t in enumerate(TASKS)}
    rows = sorted(first.itertuples(), key=lambda r: (order.get(r.task, len(order)), r.task))
    return {r.task: list(r.messages) for r in rows}


def plot_token_lengths(df: pd.DataFrame, path: Path | str, max_length: int) -> Path:
    """Token-length histogram per task family, with the llm.max_length line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    fam = df["task"].map(family)
    hi = max(int(df["n_tokens"].max()) if len(df) else 1, 1)
    edges = np.linspace(0, hi + 1, 51)
    for name in sorted(fam.unique()):
        v = df.loc[fam == name, "n_tokens"].to_numpy()
        ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (n={len(v):,}, median {np.median(v):.0f})")
    if max_length <= hi * 1.5:
        ax.axvline(max_length, color="k", linestyle="--", linewidth=1, label=f"llm.max_length = {max_length}")
    ax.set_xlabel("tokens per conversation (chat template included)")
    ax.set_ylabel("training samples")
    ax.legend(fontsize=7)
    return plots.save(fig, path)


def sids_in(text: str, scheme: Any) -> list[list[int] | None]:
    """Codes of every SID block in a message (None for a malformed or open one)."""
    return [codes for _span, codes in scheme.find_all(text)]


# --------------------------------------------------------------------------- stage 06


@dataclass
class SftOutputs:
    """What stage 06 read and wrote (artifacts/<profile>/06-sft-data/)."""

    out: Path
    inputs: Inputs
    tokenizer: Any  # the base tokenizer + the SID tokens
    data: SftData
    files: dict[str, Path]  # train, valid, report, plot
    metrics: dict[str, Any]


def run(cfg: Config, progress: bool = True) -> SftOutputs:
    """Stage 06 (notebook 06): 01, 02 and 05 -> every selected task's train and valid conversations."""
    inputs = load_inputs(cfg)
    tok = tokenizer_for(cfg, inputs.table)  # + the SID tokens, checked on a spread of SIDs
    data = build(inputs, tok, cfg, progress=progress)
    out = stages.SFT_DATA.dir(cfg.profile, create=True)
    return SftOutputs(out, inputs, tok, data, data.save(out), data.metrics())

