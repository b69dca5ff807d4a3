"""Explain tasks, answered in words: why two items go together, a name for a bundle."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .common import Catalog, Context, Draft, join_and, pick_template, task_rng
from .users import copurchase_edges, training_windows


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def pair_answer(cat: Catalog, a: int, b: int) -> str:
    """Why two items go together, from their categories: what they share, else what each is."""
    shared = [lab for lab in cat.labels[a] if lab in cat.labels[b]]
    if shared:
        return f"Both are {join_and(shared[:2])} {cat.words.nouns}."
    la, lb = (join_and(cat.labels[i][:2]) if cat.labels[i] else "popular" for i in (a, b))
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
    rng = task_rng(seed, task, part)
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
            out.append(Draft(task, pick_template(rng, task),
                             {"sid": cat.sids[a], "title": cat.titles[a], "sid_b": cat.sids[b], "title_b": cat.titles[b],
                              "answer": pair_answer(cat, a, b)}, context=[a, b]))
            if cap and len(out) >= cap:
                break
        return out
    train = ctx.inputs.split["train"].tolist()
    rows, pos, _last = training_windows(train, 2)
    ctx.tally.add(task, part, "candidates", len(rows))
    for j in rng.permutation(len(rows)).tolist():
        items = [int(i) for i in train[int(rows[j])][int(pos[j]) - 2: int(pos[j]) + 1]]
        answer = bundle_answer(cat, items)
        if answer is None:
            ctx.tally.skip(task, part, "no item of the bundle has a category")
            continue
        out.append(Draft(task, pick_template(rng, task), {"answer": answer}, history=items, min_history=3,
                         context=items))
        if cap and len(out) >= cap:
            break
    return out
