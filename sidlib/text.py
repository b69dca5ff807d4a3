"""02-clean: rule-based text cleaning, the `item_context` every later stage embeds, and an
optional LLM rewriter of descriptions (off by default, cached on disk).

Rule-based cleaning of one text (`clean_text`), in this order:

1. HTML entities unescaped until stable (so double-escaped `&amp;amp;` becomes `&`).
2. HTML comments / conditional comments removed; real tags stripped (a tag name plus
   well-formed attributes, so "< 1.5 mm" or "<95%" in spec sheets survive); block tags
   (`<br>`, `<p>`, `<li>`, `<div>`, ...) become line breaks; empty `<>` bullets too.
3. ™ ® © ℠ removed (NFKC would turn "Pro™" into "ProTM"); Unicode NFKC; control characters (except newline / tab), zero-width and other format
   characters (U+200B, U+FEFF, soft hyphen, ...) and U+FFFD removed.
4. Boilerplate removed, see `BOILERPLATE_LINES` (whole lines dropped) and
   `BOILERPLATE_SPANS` (the matching span removed wherever it is).
5. Whitespace: runs of spaces/tabs -> one space, lines stripped, empty lines dropped
   (titles and brands: one line).
6. Length caps on a word boundary (`cap_text`), no ellipsis added.

Lists (features, categories) are cleaned element-wise and de-duplicated case- and
space-insensitively, first occurrence kept. Categories also drop entries that are
sentences or long blurbs spilled into the category path by the source (see
`clean_categories`).

Per-source fixes (`source` argument): movielens moves trailing articles to the front
("Usual Suspects, The" -> "The Usual Suspects", "Postino, Il" -> "Il Postino", also
inside a trailing "(alternative title, Le)" group); lcrec drops the "." the LC-Rec
preprocessing appends to every title.

Dense ids: prep has already numbered items 0..n-1 and the sequences refer to those
numbers, so cleaning never drops or renumbers an item. An item whose title is empty after
cleaning is kept and counted (`empty_title_after_cleaning`); its `item_context` is built
from the remaining fields (or "Product ID: <item_id>" when nothing is left).
`items_dropped` therefore stays 0; the key is kept so the report has the same shape as
prep's.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sidlib import paths, plots, stages
from sidlib.cleaners import LLMCleaner, make_llm_cleaner
from sidlib.config import CleanConfig, Config

log = logging.getLogger("sidlib.text")

__all__ = [
    "BOILERPLATE_LINES",
    "BOILERPLATE_SPANS",
    "CONTEXT_LABELS",
    "TAG_RE",
    "cap_text",
    "clean_categories",
    "clean_features",
    "clean_items",
    "clean_text",
    "clean_title",
    "fix_lcrec_title",
    "fix_movielens_title",
    "is_missing",
    "item_context",
    "strip_html",
    "to_list",
    "to_text",
]

# --------------------------------------------------------------------------- patterns

# Whole lines (after tag stripping) that carry no product information. Matched against a
# stripped line with re.fullmatch, case-insensitive.
BOILERPLATE_LINES: list[str] = [
    r"product descriptions?\s*:?",  # bare section heading
    r"(?:product )?details\s*:?",
    r"from the manufacturer\s*:?",
    r"about (?:this|the) (?:item|product)\s*:?",
    r"see more(?: product details)?\.?",
    r"read more\.?",
    r"show (?:more|less)\.?",
    r"visit the .{1,80}? store\.?",  # Amazon 2023 "store" line
    r"scroll to top of page to view video\.?",
    r"\W*",  # punctuation-only leftovers ("-->", "*", "|")
]

# Spans removed wherever they occur (case-insensitive unless marked).
BOILERPLATE_SPANS: list[str] = [
    # FDA supplement disclaimer, in its usual variants, one or two sentences
    r"(?:these )?statements? (?:regarding [^.]{0,60} )?(?:have|has) not been evaluated by the "
    r"(?:FDA|U\.?S\.? )?(?:Food (?:and|&) Drug Administration)?[^.]{0,200}(?:\.|$)"
    r"(?:\s*(?:this|these) products? (?:is|are) not intended to diagnose[^.]{0,120}(?:\.|$))?",
    r"(?:this|these) products? (?:is|are) not intended to diagnose, treat, cure,? or prevent any disease[^.]{0,80}(?:\.|$)",
    r"see more product details\.?",
    r"scroll to top of page to view video\.?",
    # the whole sentence (anchored at a sentence start so long texts stay linear)
    r"(?:(?<=[.!?\n])|^)[^.!?\n]*?\bclick(?:ing)? here\b[^.!?\n]*[.!?]?",
    r"\bvisit the [^\n.]{1,60}? store\b\.?",
    r"^\s*product descriptions?\s*:?",  # leading heading: "Product Description: How pure ..."
    r"(?-i:\bProduct Descriptions?\b)\s*:?",  # capitalised heading inside the text
]

_LINE_RES = [re.compile(p, re.I) for p in BOILERPLATE_LINES]
_SPAN_RES = [re.compile(p, re.I | re.M) for p in BOILERPLATE_SPANS]

_BLOCK_TAGS = (
    "br|p|div|li|ul|ol|dl|dt|dd|tr|td|th|table|tbody|thead|h[1-6]|hr|section|article|"
    "header|footer|blockquote|pre"
)
_ATTR = r"""(?:\s+[A-Za-z_:][-\w:.]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?)"""
_COMMENT_RE = re.compile(r"<!--.*?-->|<!\[[^\]]*\]>|<!--|-->", re.S)
_BLOCK_TAG_RE = re.compile(rf"</?(?:{_BLOCK_TAGS})\b{_ATTR}*\s*/?>", re.I)
_ANY_TAG_RE = re.compile(rf"</?[A-Za-z][A-Za-z0-9]*(?::[A-Za-z0-9]+)?{_ATTR}*\s*/?>")
# broken openers of common tags left by the source ("<li.Fits ...", "</p htpla ...")
_DANGLING_TAG_RE = re.compile(r"</?(?:br|p|li|div|span|ul|ol|b|i|strong|em)(?:[.,;:]|(?=\s)|$)", re.I)
_EMPTY_BULLET_RE = re.compile(r"<>")
# what counts as a leftover tag (used by tests and the report)
TAG_RE = _ANY_TAG_RE

_MARKS_RE = re.compile("[\u2122\u00ae\u00a9\u2120]")  # ™ ® © ℠: NFKC would glue "TM" to the word
_STRAY_DOT_RE = re.compile(r"(?<=[.!?])\s+\.(?=\s|$)")  # "items. ." left by removed spans
_WS_RE = re.compile(r"[ \t\f\v\u00a0]+")
_MULTI_NL_RE = re.compile(r"\s*\n\s*")
_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}


# --------------------------------------------------------------------------- scalars


def is_missing(x: Any) -> bool:
    """A missing cell: None, pd.NA, pd.NaT or a float NaN (an empty string is not missing)."""
    if x is None or x is pd.NA or x is pd.NaT:
        return True
    if isinstance(x, float) and math.isnan(x):
        return True
    return False


def to_text(x: Any) -> str:
    """Any cell (None, NaN, pd.NA, str, list of paragraphs, array) -> str ("" when missing)."""
    if is_missing(x):
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, (list, tuple, np.ndarray, pd.Series)):
        return "\n".join(t for t in (to_text(v) for v in x) if t)
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return str(x)


def to_list(x: Any) -> list[str]:
    """A list cell (list, array, JSON list string, single string, None/NaN) -> list[str]."""
    if is_missing(x):
        return []
    if isinstance(x, str):
        s = x.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                v = json.loads(s)
                if isinstance(v, list):
                    return [to_text(t) for t in v if not is_missing(t)]
            except json.JSONDecodeError:
                pass
        return [x] if s else []
    if isinstance(x, (list, tuple, np.ndarray, pd.Series)):
        out: list[str] = []
        for v in x:
            if isinstance(v, (list, tuple, np.ndarray)):
                out.extend(to_list(v))
            elif not is_missing(v):
                out.append(to_text(v))
        return out
    return [to_text(x)]


# --------------------------------------------------------------------------- text rules


def unescape_html(text: str, rounds: int = 4) -> str:
    """html.unescape until stable: `&amp;amp;#39;` -> `&amp;#39;` -> `&#39;` -> `'`."""
    for _ in range(rounds):
        new = html.unescape(text)
        if new == text:
            break
        text = new
    return text


def strip_html(text: str) -> str:
    """Comments and tags removed, block tags -> newlines. Text that only looks like a tag
    ("< 1.5 mm", "<95%", "<li.Fits") is kept, except broken openers of common tags."""
    text = _COMMENT_RE.sub(" ", text)
    text = _BLOCK_TAG_RE.sub("\n", text)
    text = _ANY_TAG_RE.sub("", text)
    text = _DANGLING_TAG_RE.sub("\n", text)
    text = _EMPTY_BULLET_RE.sub("\n", text)
    return text


def normalize_unicode(text: str) -> str:
    """NFKC, then drop control (except \\n, \\t), format (zero-width), private-use, surrogate
    and unassigned characters and U+FFFD; \\r and unicode line separators -> \\n."""
    text = _MARKS_RE.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    return "".join(
        ch
        for ch in text
        if ch in "\n\t" or (unicodedata.category(ch) not in _DROP_CATEGORIES and ch != "\ufffd")
    )


def remove_boilerplate(text: str) -> str:
    """Drop the spans of BOILERPLATE_SPANS, then the lines matching BOILERPLATE_LINES."""
    for rx in _SPAN_RES:
        text = rx.sub(" ", text)
    lines = [ln.strip() for ln in text.split("\n")]
    return "\n".join(ln for ln in lines if ln and not any(rx.fullmatch(ln) for rx in _LINE_RES))


def normalize_whitespace(text: str, single_line: bool = False) -> str:
    text = _WS_RE.sub(" ", text.replace("\t", " "))
    text = _STRAY_DOT_RE.sub("", text)
    text = _MULTI_NL_RE.sub(" " if single_line else "\n", text)
    return text.strip()


def cap_text(text: str, max_chars: int) -> str:
    """Cut to at most max_chars on a word boundary (no ellipsis). A single word longer than
    the whole budget, or a last space early in the budget (< 60%), is cut mid-word."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space >= int(max_chars * 0.6):
        cut = cut[:space]
    else:
        cut = cut[:max_chars]
    return cut.rstrip(" \n,;:-/([{&").rstrip()


def clean_text(x: Any, max_chars: int = 0, single_line: bool = False, boilerplate: bool = True) -> str:
    """The rule pipeline of the module docstring on one value (str, list, None, NaN)."""
    text = to_text(x)
    if not text:
        return ""
    text = unescape_html(text)
    text = strip_html(text)
    text = normalize_unicode(text)
    if boilerplate:
        text = remove_boilerplate(text)
    text = normalize_whitespace(text, single_line=single_line)
    return cap_text(text, max_chars)


# --------------------------------------------------------------------------- per source

_ARTICLES = ["The", "A", "An", "Les", "La", "Le", "Il", "L'", "Das", "Der", "Die", "El", "Los", "Las"]
_ARTICLE_RE = re.compile(r"^(?P<body>.+?),\s*(?P<art>" + "|".join(re.escape(a) for a in _ARTICLES) + r")\s*$")
_TRAILING_GROUP_RE = re.compile(r"\s*(\([^()]*\))\s*$")


def _move_article(text: str) -> str:
    m = _ARTICLE_RE.match(text.strip())
    if not m:
        return text.strip()
    art, body = m.group("art"), m.group("body").strip()
    return f"{art}{body}" if art.endswith("'") else f"{art} {body}"


def fix_movielens_title(title: str) -> str:
    """"Usual Suspects, The (1995)" -> "The Usual Suspects (1995)";
    "Horseman on the Roof, The (Hussard sur le toit, Le)" ->
    "The Horseman on the Roof (Le Hussard sur le toit)"; "Misérables, Les" -> "Les Misérables"."""
    groups: list[str] = []
    rest = title.strip()
    while True:
        m = _TRAILING_GROUP_RE.search(rest)
        if not m or m.start() == 0:
            break
        groups.insert(0, m.group(1))
        rest = rest[: m.start()]
    fixed_groups = ["(" + _move_article(g[1:-1]) + ")" for g in groups]
    return " ".join([_move_article(rest)] + fixed_groups).strip()


_LCREC_DOT_RE = re.compile(r"(?<=[^.\s])\.$")


def fix_lcrec_title(title: str) -> str:
    """LC-Rec's preprocessing appends "." to every title ("Sizes!." -> "Sizes!")."""
    return _LCREC_DOT_RE.sub("", title)


def clean_title(x: Any, cfg: CleanConfig | None = None, source: str = "") -> str:
    cfg = cfg or CleanConfig()
    title = clean_text(x, single_line=True)
    if source == "movielens":
        title = fix_movielens_title(title)
    elif source == "lcrec":
        title = fix_lcrec_title(title)
    title = title.rstrip(" -,;:/|").strip()
    return cap_text(title, cfg.max_title_chars)


# --------------------------------------------------------------------------- lists


def _key(s: str) -> str:
    return re.sub(r"[\W_]+", " ", s.casefold()).strip()


def clean_features(x: Any, max_features: int = 10, max_chars: int = 200) -> list[str]:
    """Each feature cleaned (one line, capped); empties and case/space/punctuation-insensitive
    duplicates dropped, first kept; at most max_features (0 = no limit)."""
    out: list[str] = []
    seen: set[str] = set()
    for f in to_list(x):
        c = clean_text(f, max_chars=max_chars, single_line=True)
        k = _key(c)
        if not k or k in seen:
            continue
        seen.add(k)
        out.append(c)
        if max_features and len(out) >= max_features:
            break
    return out


_SENTENCE_END_RE = re.compile(r"[.!?]$")
GENERIC_CATEGORIES = {"", "all", "all products", "products", "category", "categories"}


def clean_categories(x: Any, max_chars: int = 80, max_words: int = 8) -> list[str]:
    """Category path, most general first, cleaned element-wise; drops duplicates (case /
    space-insensitive, first kept), generic placeholders (GENERIC_CATEGORIES) and entries that
    are not category names but text spilled in by the source: the first sentence (ends with
    . ! ? and has more than 3 words), entry longer than max_chars or with more than max_words
    words ends the path (it and everything after it are dropped)."""
    out: list[str] = []
    seen: set[str] = set()
    for c in to_list(x):
        c = clean_text(c, single_line=True, boilerplate=False)
        k = _key(c)
        if k in GENERIC_CATEGORIES or k in seen:
            continue
        words = c.split()
        if len(c) > max_chars or len(words) > max_words or (_SENTENCE_END_RE.search(c) and len(words) > 3):
            break  # text spilled into the path: this entry and everything after it
        seen.add(k)
        out.append(c)
    return out


# --------------------------------------------------------------------------- item_context

CONTEXT_LABELS: dict[str, str] = {
    "title": "Product",
    "brand": "Brand",
    "categories": "Category",
    "description": "Description",
    "features": "Features",
}


def _field_value(row: Mapping[str, Any] | pd.Series, name: str) -> str:
    if name in row.keys():
        value = row[name]
    else:  # fields kept by the loader in the `extra` JSON (year, price, genre, ...)
        extra = row["extra"] if "extra" in row.keys() else None
        try:
            extra = json.loads(extra) if isinstance(extra, str) and extra else extra
        except json.JSONDecodeError:
            extra = None
        value = extra.get(name) if isinstance(extra, dict) else None
    if name == "categories":
        return " > ".join(to_list(value))
    if name == "features":
        return "; ".join(to_list(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return "; ".join(to_list(value))
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return to_text(value)


def item_context(row: Mapping[str, Any] | pd.Series, fields: Sequence[str] | None = None, max_chars: int = 3000) -> str:
    """The text later stages embed, one "Label: value" line per non-empty field, e.g.

        Product: <title>
        Brand: <brand>
        Category: <a > b > c>
        Description: <description on one line>
        Features: <f1; f2>

    `fields` default: CleanConfig().context_fields. A field that is not a column is looked up
    in the `extra` JSON; its label is the field name in title case. Capped at max_chars on a
    word boundary; "" when every field is empty."""
    fields = list(fields) if fields is not None else CleanConfig().context_fields
    lines = []
    for name in fields:
        value = normalize_whitespace(_field_value(row, name), single_line=True)
        if value:
            label = CONTEXT_LABELS.get(name, name.replace("_", " ").title())
            lines.append(f"{label}: {value}")
    return cap_text("\n".join(lines), max_chars)


# --------------------------------------------------------------------------- items


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, list):
        return to_list(a) == b
    return to_text(a) == b


def clean_items(
    items: pd.DataFrame,
    cfg: CleanConfig | None = None,
    source: str = "",
    llm: LLMCleaner | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Clean every item (same rows, same order, same item_id: dense ids are never touched).

    Returns (items, report). items keeps every input column, with title / description /
    features / categories / brand cleaned, plus `raw_title` (the title as loaded) and
    `item_context`. If `llm` is given (or cfg.llm is set, then built by make_llm_cleaner with
    its cache in cache_dir), descriptions of the first cfg.llm_max_items items (0 = all) are
    rewritten by it after the rules, then re-cleaned and capped.

    report: items (n), items_cleaned (rows where any field changed), items_dropped (always 0,
    see the module docstring), dropped_reasons ({}), and per-rule counts: title_changed,
    description_changed, html_removed, boilerplate_removed, title_truncated,
    description_truncated, features_deduplicated, features_capped, categories_pruned,
    movielens_titles_fixed, empty_title_after_cleaning, empty_description_after_cleaning,
    empty_context_after_cleaning, llm_rewritten, llm_cache_hits.
    """
    cfg = cfg or CleanConfig()
    df = items.copy()
    n = len(df)
    for col in ("title", "description", "features", "categories", "brand"):
        if col not in df.columns:
            df[col] = [[] for _ in range(n)] if col in ("features", "categories") else ""
    raw = df[["title", "description", "features", "categories", "brand"]].copy()

    counts = dict.fromkeys(
        [
            "title_changed",
            "description_changed",
            "html_removed",
            "boilerplate_removed",
            "title_truncated",
            "description_truncated",
            "features_deduplicated",
            "features_capped",
            "categories_pruned",
            "movielens_titles_fixed",
            "empty_title_after_cleaning",
            "empty_description_after_cleaning",
            "empty_context_after_cleaning",
            "llm_rewritten",
            "llm_cache_hits",
        ],
        0,
    )
    titles, descs, feats, cats, brands = [], [], [], [], []
    for t, d, f, c, b in zip(raw["title"], raw["description"], raw["features"], raw["categories"], raw["brand"]):
        t_raw, d_raw = to_text(t), to_text(d)
        t_full = clean_title(t_raw, CleanConfig(max_title_chars=0), source)
        if source == "movielens" and t_full != clean_text(t_raw, single_line=True):
            counts["movielens_titles_fixed"] += 1
        title = cap_text(t_full, cfg.max_title_chars)
        counts["title_truncated"] += len(title) < len(t_full)
        d_full = clean_text(d_raw)
        desc = cap_text(d_full, cfg.max_description_chars)
        counts["description_truncated"] += len(desc) < len(d_full)
        if TAG_RE.search(t_raw) or TAG_RE.search(d_raw) or _COMMENT_RE.search(d_raw):
            counts["html_removed"] += 1
        if any(rx.search(d_raw) for rx in _SPAN_RES):
            counts["boilerplate_removed"] += 1
        fl_all = clean_features(f, max_features=0, max_chars=cfg.max_feature_chars)
        fl = fl_all[: cfg.max_features] if cfg.max_features else fl_all
        n_nonempty = sum(1 for v in to_list(f) if clean_text(v, single_line=True))
        counts["features_deduplicated"] += len(fl_all) < n_nonempty
        counts["features_capped"] += len(fl) < len(fl_all)
        cl = clean_categories(c)
        counts["categories_pruned"] += len(cl) < len(to_list(c))
        titles.append(title)
        descs.append(desc)
        feats.append(fl)
        cats.append(cl)
        brands.append(cap_text(clean_text(b, single_line=True), cfg.max_title_chars))

    # optional LLM rewrite of descriptions
    if llm is None and cfg.llm:
        llm = make_llm_cleaner(cfg, cache_dir=cache_dir)
    if llm is not None:
        idx = [i for i, d in enumerate(descs) if d]
        if cfg.llm_max_items:
            idx = [i for i in idx if i < cfg.llm_max_items]
        hits_before = getattr(llm, "hits", 0)
        rewritten = llm.clean([descs[i] for i in idx]) if idx else []
        for i, r in zip(idx, rewritten):
            r = clean_text(r, max_chars=cfg.max_description_chars)
            if r:
                descs[i] = r
                counts["llm_rewritten"] += 1
        counts["llm_cache_hits"] = getattr(llm, "hits", 0) - hits_before

    df["raw_title"] = pd.array([to_text(t) for t in raw["title"]], dtype="string")
    df["title"] = pd.array(titles, dtype="string")
    df["description"] = pd.array(descs, dtype="string")
    df["brand"] = pd.array(brands, dtype="string")
    df["features"] = pd.Series(feats, index=df.index, dtype=object)
    df["categories"] = pd.Series(cats, index=df.index, dtype=object)

    contexts = []
    for rec in df.to_dict("records"):
        ctx = item_context(rec, cfg.context_fields, cfg.max_context_chars)
        if not ctx:
            counts["empty_context_after_cleaning"] += 1
            ctx = f"Product ID: {rec.get('item_id', '')}"
        contexts.append(ctx)
    df["item_context"] = pd.array(contexts, dtype="string")

    changed = 0
    for i in range(n):
        row_changed = not (
            _same(raw["title"].iat[i], titles[i])
            and _same(raw["description"].iat[i], descs[i])
            and _same(raw["brand"].iat[i], brands[i])
            and _same(raw["features"].iat[i], feats[i])
            and _same(raw["categories"].iat[i], cats[i])
        )
        changed += row_changed
        counts["title_changed"] += not _same(raw["title"].iat[i], titles[i])
        counts["description_changed"] += not _same(raw["description"].iat[i], descs[i])
        counts["empty_title_after_cleaning"] += not titles[i]
        counts["empty_description_after_cleaning"] += not descs[i]
    if counts["empty_title_after_cleaning"]:
        log.warning(
            "%d items have an empty title after cleaning; they are kept (dense ids) and their "
            "item_context is built from the other fields",
            counts["empty_title_after_cleaning"],
        )
    report: dict[str, Any] = {
        "items": n,
        "items_cleaned": changed,
        "items_dropped": 0,
        "dropped_reasons": {},
        **counts,
    }
    return df, report


# --------------------------------------------------------------------------- stage 02


@dataclass
class CleanOutputs:
    """What stage 02 read and wrote (artifacts/<profile>/02-clean/)."""

    out: Path
    raw: pd.DataFrame  # 01's items
    items: pd.DataFrame  # cleaned, with item_context
    metrics: dict[str, Any]
    plot: Path


def run(cfg: Config) -> CleanOutputs:
    """Stage 02 (notebook 02): 01's items -> cleaned items with their item_context; a length plot."""
    out = stages.CLEAN.dir(cfg.profile, create=True)
    raw = pd.read_parquet(stages.PREP.dir(cfg.profile) / "items.parquet")
    # the optional LLM rewrite (clean.llm = "hf" | "openai"); None when off. Its cache is shared
    # across runs and profiles, keyed by model, prompt and text.
    llm = make_llm_cleaner(cfg.clean, cache_dir=paths.artifacts_root() / "cache" / "llm_clean")
    cleaned, report = clean_items(raw, cfg.clean, source=cfg.data.source, llm=llm)
    cleaned.to_parquet(out / "items.parquet")
    plot = plots.length_histogram(
        {"raw title+description": raw["title"].str.len() + raw["description"].str.len(),
         "item_context": cleaned["item_context"].str.len()},
        out / "context_lengths.png", xlabel="characters")
    return CleanOutputs(out, raw, cleaned, dict(report), plot)
