"""User tasks, from the training part of each user's history only: last N -> next, sessions of
"Next?" turns, co-purchase, <|rec|> steering."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ... import split as splitlib
from ...data.prep import SEQUENCE_KIND
from ...data.schema import DataError
from .common import Catalog, Context, Draft, Inputs, pick_template, task_rng
from .names import FOLLOW_UPS, HISTORY, SESSION, seq_task
from .templates import PREFERENCES, REC_WITH_HISTORY


def training_windows(train: Sequence[Sequence[int]], min_pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    rng = task_rng(seed, task, part)
    split = ctx.inputs.split
    users = split["user_id"].to_numpy(dtype=np.int64)
    out: list[Draft] = []
    if part == "train":
        train = split["train"].tolist()
        rows, pos, last = training_windows(train, n)
        ctx.tally.skip(task, part, f"training part shorter than {n + 1} items (users)",
                       int(sum(len(t) <= n for t in train)))
        order = _window_order(last, rng)
        if ctx.cfg.max_per_task:
            order = order[: ctx.cfg.max_per_task]
        for j in order.tolist():
            seq, t = train[rows[j]], int(pos[j])
            out.append(Draft(task, pick_template(rng, task), {"sid": ctx.catalog.sids[seq[t]]},
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
        out.append(Draft(task, pick_template(rng, task), {"sid": ctx.catalog.sids[target]},
                         history=list(seq[-n:]), min_history=1, answer_items=[target], user_id=int(users[r])))
    return out


def session_drafts(ctx: Context, part: str, seed: int) -> list[Draft]:
    """seq_session: the user's training part cut into consecutive sessions of n history items
    (n = the longest sft.seq_lengths) and 1 + sft.session_turns answers, so every training
    transition is an answer of at most one conversation; each user's last session first, then
    the rest at random, capped by sft.max_per_task. The valid sample is seq_last_n's: the whole
    training part's last n items -> the valid item, one turn (what 09's recommender asks)."""
    n, turns = max(ctx.cfg.seq_lengths), ctx.cfg.session_turns
    rng = task_rng(seed, SESSION, part)
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
        out.append(Draft(SESSION, pick_template(rng, SESSION), {"sid": ctx.catalog.sids[answers[0]]},
                         history=list(seq[t - n : t]), min_history=1, answer_items=answers,
                         user_id=int(users[row]), follow=follow))
    return out


def history_windows(seq: Sequence[int], width: int) -> list[list[int]]:
    """A training part cut into consecutive lists of up to `width` items from its end (the oldest
    one shorter), each item in exactly one, so each is a label once (SID-GR's windows also overlap
    by one item of context; a chat list starts from none). A one-item remainder at the start is
    dropped: a list of one teaches only which items are common."""
    out = []
    end = len(seq)
    while end >= 2:
        out.append([int(i) for i in seq[max(0, end - width): end]])
        end -= width
    return out


def history_drafts(ctx: Context, part: str, seed: int) -> list[Draft]:
    """seq_history: each list of sft.history_window items of a training part (history_windows) is
    one conversation whose answer lists them, oldest first: every item is predicted from the ones
    before it (the first from none), the all-position loss of SASRec and SID-GR. Each user's
    latest list first, then the rest at random, capped by sft.max_per_task. 06 drops the oldest
    items of a list that does not fit llm.max_length. No valid samples: 09 measures this task as
    the recommender (eval.rec_prompt)."""
    if part != "train":
        return []
    rng = task_rng(seed, HISTORY, part)
    split = ctx.inputs.split
    users = split["user_id"].to_numpy(dtype=np.int64)
    # (user row, list, is the user's latest list): history_windows yields the latest first
    lists = [(row, w, k == 0) for row, seq in enumerate(split["train"])
             for k, w in enumerate(history_windows(seq, ctx.cfg.history_window))]
    ctx.tally.add(HISTORY, part, "candidates", len(lists))
    ctx.tally.skip(HISTORY, part, "training part shorter than 2 items (users)",
                   int(sum(len(t) < 2 for t in split["train"])))
    order = _window_order(np.array([latest for _r, _w, latest in lists], dtype=bool), rng)
    if ctx.cfg.max_per_task:
        order = order[: ctx.cfg.max_per_task]
    out = []
    for j in order.tolist():
        row, w, _latest = lists[j]
        out.append(Draft(HISTORY, pick_template(rng, HISTORY), {}, history=w, min_history=2, answer_items=list(w),
                         user_id=int(users[row])))
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
    rng = task_rng(seed, task, part)
    forward = task == "copurchase_forward"
    cat = ctx.catalog
    out: list[Draft] = []

    def draft(given: int, answer: int, user: int = -1) -> Draft:
        return Draft(task, pick_template(rng, task),
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
    rng = task_rng(seed, task, part)
    split, cat = ctx.inputs.split, ctx.catalog
    users = split["user_id"].to_numpy(dtype=np.int64)
    train = split["train"].tolist()
    if part == "train":
        rows, pos, last = training_windows(train, 1)
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
        tmpl = pick_template(rng, task)
        shown = list(seq[max(0, t - ctx.cfg.max_history) : t]) if tmpl in REC_WITH_HISTORY else []
        out.append(Draft(task, tmpl, {"prefs": prefs, "sid": cat.sids[target]}, history=shown,
                         min_history=1 if shown else 0, answer_items=[target], user_id=int(users[r])))
    return out
