"""Item tasks: text -> SID, SID -> text, the catalog structure (category -> SID, SID prefix ->
categories, similar items)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...sids import SID_START
from .common import STOPWORDS, Catalog, Context, Draft, ItemBuilder, cap_drafts, join_and, norm_word, pick_template, task_rng

SIMILAR_ANSWER_ITEMS = 3  # items listed by a similar_items answer
MAX_PREFIX_LABELS = 3  # categories listed by a prefix_to_category answer


def _title_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    title = ctx.catalog.titles[i]
    if not title:
        return "no title"
    if ctx.title_index[tuple(norm_word(w) for w in title.split())] > 1:
        return "title shared with another item"
    return Draft("title_to_sid", pick_template(rng, "title_to_sid"), {"title": title, "sid": ctx.catalog.sids[i]},
                 answer_items=[i])


def _description_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    desc = ctx.catalog.descriptions[i]
    if not desc:
        return "no description"
    return Draft("description_to_sid", pick_template(rng, "description_to_sid"), {"sid": ctx.catalog.sids[i]},
                 text=desc, answer_items=[i])


def _features_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    feats = ctx.catalog.features[i]
    if not feats:
        return "no features"
    return Draft("features_to_sid", pick_template(rng, "features_to_sid"), {"sid": ctx.catalog.sids[i]},
                 text="\n".join(f"- {f}" for f in feats), answer_items=[i])


def _title_prefix_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    words = ctx.title_words(i)
    if len(words) < 2:
        return "title has fewer than 2 words"
    key = [norm_word(w) for w in words]
    # at least half the words, then as many more as needed for the prefix to name one item
    for k in range(max(1, math.ceil(len(words) / 2)), len(words)):
        if ctx.prefix_index[tuple(key[:k])] == 1:
            return Draft("title_prefix_to_sid", pick_template(rng, "title_prefix_to_sid"),
                         {"prefix": " ".join(words[:k]), "sid": ctx.catalog.sids[i]}, answer_items=[i])
    return "no title prefix shorter than the title names only this item"


def _title_contains_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    words = ctx.title_words(i)
    if len(words) < 2:
        return "title has fewer than 2 words"
    key = [norm_word(w) for w in words]
    # phrases from inside the title (not its start: that is title_prefix_to_sid), in random order
    spans = [(a, k) for k in (1, 2, 3) for a in range(1, len(words) - k + 1)]
    for j in rng.permutation(len(spans)).tolist():
        a, k = spans[j]
        gram = tuple(key[a : a + k])
        if all(w in STOPWORDS or not w for w in gram) or len(" ".join(gram)) < 4:
            continue
        if ctx.ngram_index[gram] == 1:
            return Draft("title_contains_to_sid", pick_template(rng, "title_contains_to_sid"),
                         {"span": " ".join(words[a : a + k]), "sid": ctx.catalog.sids[i]}, answer_items=[i])
    return "no phrase inside the title names only this item"


def _sid_to_title(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    if not ctx.catalog.titles[i]:
        return "no title"
    return Draft("sid_to_title", pick_template(rng, "sid_to_title"),
                 {"sid": ctx.catalog.sids[i], "title": ctx.catalog.titles[i]}, context=[i])


def _sid_to_description(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    if not ctx.catalog.descriptions[i]:
        return "no description"
    return Draft("sid_to_description", pick_template(rng, "sid_to_description"), {"sid": ctx.catalog.sids[i]},
                 text=ctx.catalog.descriptions[i], context=[i])


def _sid_to_category(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    if not ctx.catalog.categories[i]:
        return "no categories"
    return Draft("sid_to_category", pick_template(rng, "sid_to_category"),
                 {"sid": ctx.catalog.sids[i], "category": ctx.catalog.category_text(i)}, context=[i])


def _category_to_sid(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    labels = ctx.catalog.labels[i]
    if not labels:
        return "no categories"
    label = labels[int(rng.integers(len(labels)))]
    return Draft("category_to_sid", pick_template(rng, "category_to_sid"), {"label": label, "sid": ctx.catalog.sids[i]},
                 answer_items=[i])


def _similar_items(ctx: Context, i: int, rng: np.random.Generator) -> Draft | str:
    k = ctx.cfg.similar_prefix
    group = ctx.groups[tuple(ctx.catalog.codes[i, :k].tolist())]
    others = [j for j in group if j != i][:SIMILAR_ANSWER_ITEMS]
    if not others:
        return f"no other item shares the first {k} codes"
    return Draft("similar_items", pick_template(rng, "similar_items"),
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
    rng = task_rng(seed, task, part)
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
    return cap_drafts(out, ctx.cfg.max_per_task if part == "train" else ctx.cfg.valid_per_task)


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
    rng = task_rng(seed, task, part)
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
        out.append(Draft(task, pick_template(rng, task),
                         {"prefix": prefix_text(ctx.inputs.table.scheme, prefix), "labels": join_and(labels)}))
        if part == "valid" and len(out) >= ctx.cfg.valid_per_task:
            break
    ctx.tally.add(task, part, "candidates", len(out))
    return cap_drafts(out, ctx.cfg.max_per_task if part == "train" else ctx.cfg.valid_per_task)
