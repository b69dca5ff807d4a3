"""`python -m sidlib new-profile --items FILE --interactions FILE`: a starter profile for your tables.

It reads both tables once, detects which column is the user, the item, the time, the title...
(`--map item=sku` where it cannot tell), loads them through the real loader (so every error a
run would hit shows up now, naming the file and row), measures the catalogue, and writes a
commented `<name>.toml` whose sizes follow from what it measured:

- rqvae.codebook_size: the smallest power of two K (16..256) with K^2 >= 2 x items, so two levels
  (the base ml100k's, inherited) already tell most items apart (ml100k's 64 for 1.6k items; 256,
  the papers' size, from ~33k items); `levels = 3` gives the papers' depth;
- data.kcore: the largest k of 5, 3, 2 that keeps at least 30% of the events (the survivors of
  each are in a comment);
- baselines.max_len: the median history length rounded up to tens (20..200), as SASRec's paper
  sizes it (50 for sparse Amazon logs, 200 for ML-1M): most users fit whole, long ones keep their
  latest items;
- baselines.exclude_history: true when under 1% of users' last items repeat an earlier one (no
  repeat consumption: a ranking should not spend its slots on items the user already has).

Files named `*.inter` / `*.item` are read as a RecBole atomic dataset (data.source = "recbole").
The profile starts from a packaged one (`--base`, default ml100k: the CPU sizes) and names its
data relative to itself, so the folder can move as a whole.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import config
from .data import load_raw, prep
from .data.recbole import read_atomic
from .data.schema import DataError, RawData
from .data.tables import DEFAULT_COLUMNS, ITEM_OPTIONAL, MS_FROM, read_table


# our name -> column names seen in public datasets and shop exports (compared lower-case, letters and
# digits only). Order matters: the first present wins.
SYNONYMS = {
    "user": ["user_id", "userid", "user", "uid", "customer_id", "customer", "client_id", "visitor_id",
             "reviewer_id", "member_id", "account_id", "session_id"],
    "item": ["item_id", "itemid", "item", "iid", "product_id", "productid", "product", "sku", "parent_asin",
             "asin", "article_id", "movie_id", "movieid", "book_id", "track_id", "video_id", "offer_id"],
    "timestamp": ["timestamp", "ts", "time", "datetime", "date", "event_time", "created_at", "unix_review_time",
                  "unixreviewtime", "t_dat", "order_date", "event_date", "time_stamp"],
    "rating": ["rating", "score", "stars", "overall", "rate"],
    "title": ["title", "name", "product_name", "item_name", "movie_title", "prod_name", "product_title"],
    "description": ["description", "desc", "detail_desc", "product_description", "summary", "about"],
    "brand": ["brand", "manufacturer", "maker", "vendor", "brand_name"],
    "categories": ["categories", "category", "category_path", "genres", "genre", "tags", "class",
                   "department", "category_name"],
    "features": ["features", "feature", "bullets", "bullet_points", "attributes"],
}
ITEM_KEYS = ("item", "title") + ITEM_OPTIONAL
INTER_KEYS = ("user", "item", "timestamp", "rating")
SEPARATORS = ("|", ";", ">", ",", "/")


@dataclass
class Survey:
    """What the starter profile is sized from."""

    items: int
    users: int
    events: int
    median_len: float
    repeat_last: float  # share of users whose last item repeats an earlier one (raw log)
    kcore: int
    kcore_table: dict[int, tuple[int, int, int]]  # k -> users, items, events left
    time_kind: str
    has_rating: bool
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def codebook_size(self) -> int:
        return int(min(256, max(16, 2 ** math.ceil(math.log2(math.sqrt(2 * max(self.items, 1)))))))

    @property
    def max_len(self) -> int:
        return int(min(200, max(20, math.ceil(self.median_len / 10) * 10)))

    @property
    def exclude_history(self) -> bool:
        return self.repeat_last < 0.01


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def detect(columns: list[str], keys: tuple[str, ...], given: dict[str, str], path: Path,
           required: tuple[str, ...]) -> dict[str, str]:
    """our name -> the table's column, from `given` (--map) or SYNONYMS; a required one not found raises."""
    by_norm = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    out: dict[str, str] = {}
    for key in keys:
        if key in given:
            if given[key] not in columns:
                raise DataError(f"{path}: --map {key}={given[key]}: no such column; columns found: {columns}")
            out[key] = given[key]
            continue
        hit = next((by_norm[_norm(s)] for s in SYNONYMS[key] if _norm(s) in by_norm), None)
        if hit is not None and hit not in out.values():
            out[key] = hit
        elif key in required:
            raise DataError(f"{path}: cannot tell which column is the {key}; columns found: {columns} — "
                            f"name it with --map {key}=COLUMN")
    return out


def separator(values: pd.Series) -> str:
    """The delimiter of categories given as one string ("Books|Fiction"): the commonest of SEPARATORS."""
    text = values.dropna().astype(str).head(5000)
    counts = {s: int(text.str.count(re.escape(s)).sum()) for s in SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else "|"


def time_kind(s: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetimes"
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().mean() < 0.5:
        return "dates as text (ISO 8601)"
    return "epoch milliseconds" if float(num.median()) >= MS_FROM else "epoch seconds (or an order)"


def survey(raw: RawData, time: str, has_rating: bool) -> Survey:
    """Sizes of the log after the loader, and what k-core would leave."""
    inter = prep.chronological(raw.interactions)
    later = inter.duplicated(subset=["user_id", "item_id"], keep="first").to_numpy()
    last = ~inter["_user_order"].duplicated(keep="last").to_numpy()
    repeat_last = float(later[last].mean()) if last.any() else 0.0
    deduped, _ = prep.dedupe(inter)
    table = {}
    for k in (5, 3, 2):
        left = prep.kcore(deduped, k)
        table[k] = (int(left["user_id"].nunique()), int(left["item_id"].nunique()), len(left))
    k = next((k for k in (5, 3, 2) if table[k][2] >= 0.3 * len(deduped) and table[k][0] >= 10), 2)
    lengths = prep.kcore(deduped, k).groupby("user_id").size()
    return Survey(items=len(raw.items), users=int(deduped["user_id"].nunique()), events=len(deduped),
                  median_len=float(lengths.median()) if len(lengths) else 0.0, repeat_last=repeat_last,
                  kcore=k, kcore_table=table, time_kind=time, has_rating=has_rating, skipped=raw.skipped)


def _rel(path: Path, start: Path) -> str:
    """`path` relative to `start` when it lies near it (the folder can move as a whole), else absolute."""
    try:
        rel = os.path.relpath(path, start)
    except ValueError:  # another drive
        return str(path)
    return rel if rel.split(os.sep).count("..") <= 2 else str(path)


def _q(v: object) -> str:
    """A TOML value: JSON's strings, numbers and booleans are TOML's."""
    return json.dumps(v, ensure_ascii=False)


def make(items: Path, interactions: Path, name: str, out: Path, base: str = "ml100k",
         given: dict[str, str] | None = None) -> tuple[str, Survey]:
    """The profile text for the two files, and what it was sized from."""
    items, interactions = items.expanduser().resolve(), interactions.expanduser().resolve()
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULT_COLUMNS))
    if unknown:
        raise DataError(f"--map: unknown names {unknown}; known: {', '.join(DEFAULT_COLUMNS)}")
    recbole = items.suffix == ".item" and interactions.suffix == ".inter"
    if recbole:
        if items.stem != interactions.stem or items.parent != interactions.parent:
            raise DataError(f"{items} / {interactions}: RecBole files must be <name>.item and <name>.inter in one folder")
    read = (lambda p: read_atomic(p)[0]) if recbole else (lambda p: read_table(p, []))
    item_df, inter_df = read(items), read(interactions)
    imap = detect(list(item_df.columns), ITEM_KEYS, given, items, ("item", "title"))
    umap = detect(list(inter_df.columns), INTER_KEYS, given, interactions, ("user", "item", "timestamp"))
    if imap["item"] != umap["item"]:  # both tables must call the item the same: one data.columns.item
        if imap["item"] in inter_df.columns:
            umap["item"] = imap["item"]
        elif umap["item"] in item_df.columns:
            imap["item"] = umap["item"]
        else:
            raise DataError(f"the item column differs: {items.name} has {imap['item']!r}, {interactions.name} has "
                            f"{umap['item']!r}; rename one so both tables use the same name")
    columns = {k: v for k, v in {**imap, **umap}.items() if v != DEFAULT_COLUMNS[k]}
    folder = out.parent.resolve()
    if recbole:
        data = {"source": "recbole", "path": _rel(items.parent, folder), "name": items.stem}
        dcfg = config.DataConfig(source="recbole", path=str(items.parent), name=items.stem, columns=columns)
    else:
        common = Path(os.path.commonpath([items.parent, interactions.parent]))
        data = {"source": "tables", "path": _rel(common, folder), "items_file": _rel(items, common),
                "interactions_file": _rel(interactions, common)}
        cats = item_df[imap["categories"]] if "categories" in imap else None
        if cats is not None and not cats.map(lambda v: isinstance(v, (list, np.ndarray))).any():
            data["categories_sep"] = separator(cats)
        dcfg = config.DataConfig(source="tables", path=str(common), items_file=data["items_file"],
                                 interactions_file=data["interactions_file"], columns=columns,
                                 categories_sep=data.get("categories_sep", "|"))
    raw = load_raw(dcfg)  # every error a run would meet, now
    s = survey(raw, time_kind(inter_df[umap["timestamp"]].head(5000)), "rating" in umap)
    return render(name, base, data, columns, s, items, interactions), s


def render(name: str, base: str, data: dict, columns: dict[str, str], s: Survey, items: Path,
           interactions: Path) -> str:
    k_lines = "\n".join(f"#   k = {k}: {u:,} users, {i:,} items, {e:,} events" for k, (u, i, e) in s.kcore_table.items())
    lines = [
        f"# Starter profile for {items.name} + {interactions.name}, written by `python -m sidlib new-profile`.",
        f"# Measured: {s.items:,} items, {s.users:,} users, {s.events:,} distinct (user, item) events;",
        f"# timestamps read as {s.time_kind}. Edit freely; `python -m sidlib show --profile {name}.toml`",
        "# prints every resolved setting, `python -m sidlib run --profile <this file>` runs the chain.",
        f"base = {_q(base)}   # a packaged profile's sizes to start from (ml100k: CPU; scientific: thousands of products)",
        f"name = {_q(name)}   # artifacts/{name}/",
        f"description = {_q(f'{name}: {s.items:,} items, {s.users:,} users (starter profile)')}",
        "",
        "[data]",
    ]
    for k, v in data.items():
        note = {"path": "   # relative to this file", "categories_sep": "   # categories given as one string are split on it"}
        lines.append(f"{k} = {_q(v)}{note.get(k, '')}")
    lines += [
        "# k-core (every user and item keeps >= k events); what each k leaves:",
        k_lines,
        f"kcore = {s.kcore}",
        "dedupe = true   # repeated (user, item) events: the first is kept",
    ]
    if s.has_rating:
        lines.append("# rating_threshold = 4   # keep only ratings >= 4 as positives (0 = every event counts)")
    if s.skipped:
        lines.append(f"# the loader skipped rows (counted, see 01's prep_report.json): {s.skipped}")
    if columns:
        lines += ["", "[data.columns]   # our name = your column"]
        lines += [f"{k} = {_q(v)}" for k, v in columns.items()]
    lines += [
        "",
        "[rqvae]",
        f"codebook_size = {s.codebook_size}   # smallest power of two K with K^2 >= 2 x {s.items:,} items",
        "# levels = 3   # the papers' depth; the base's 2 are what a small LLM learns on a CPU budget",
        "",
        "[baselines]",
        f"max_len = {s.max_len}   # about the median history ({s.median_len:g} items after k-core)",
        f"# {s.repeat_last:.1%} of users' last items repeat an earlier one" + (
            ": no repeat consumption, so rankings leave the history out" if s.exclude_history else
            ": repeats happen, so history items stay candidates"),
        f"exclude_history = {_q(s.exclude_history)}",
        "",
    ]
    return "\n".join(lines)


def parse_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, eq, col = p.partition("=")
        if not eq or not key.strip() or not col.strip():
            raise DataError(f"--map {p!r}: expected NAME=COLUMN, e.g. --map item=sku")
        out[key.strip()] = col.strip()
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--items", required=True, type=Path, help="items table (.csv .tsv .parquet .jsonl; or <name>.item)")
    ap.add_argument("--interactions", required=True, type=Path, help="interactions table (or <name>.inter)")
    ap.add_argument("--name", help="profile name (default: the items file's folder name)")
    ap.add_argument("--out", type=Path, help="where to write it (default: ./<name>.toml)")
    ap.add_argument("--base", default="ml100k", help=f"packaged profile to start from ({', '.join(config.list_profiles())})")
    ap.add_argument("--map", dest="mapping", action="append", default=[], metavar="NAME=COLUMN",
                    help="name a column the detection misses, e.g. --map item=sku (repeatable)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    name = args.name or re.sub(r"[^0-9A-Za-z_.-]", "-", args.items.expanduser().resolve().parent.name) or "mydata"
    out = (args.out or Path(f"{name}.toml")).expanduser()
    if out.exists() and not args.force:
        raise DataError(f"{out}: exists; pass --force to overwrite it or --out to write elsewhere")
    if args.base not in config.list_profiles():
        raise DataError(f"--base {args.base!r}: not a packaged profile ({', '.join(config.list_profiles())})")
    text, s = make(args.items, args.interactions, name, out, args.base, parse_map(args.mapping))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    config.load(str(out))  # the file it wrote loads: a bad key would fail here, not in 01
    print(f"wrote {out}: {s.items:,} items, {s.users:,} users, kcore {s.kcore}, codebook {s.codebook_size}, "
          f"max_len {s.max_len}, exclude_history {str(s.exclude_history).lower()}")
    print(f"next: python -m sidlib run --profile {out}")
    return 0
