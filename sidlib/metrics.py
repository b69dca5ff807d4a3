"""THE evaluation: every model (popularity, SASRec, SID-SASRec, SID-GR, the LLM) reports here.

Inputs are plain samples, `split.samples(split, "valid" | "test")`: one row per user with the
item ids of the history and one target item id. A model gives either

* a **score matrix** `[users, n_items]` (full ranking; `rank_of_target`, driven batch by batch
  by `evaluate_model(score_fn, samples, n_items)` so that no users × items matrix larger than
  one batch is ever built), or
* a **ranked top-K list** per user (generative models, beam search; `from_topk`, driven by
  `evaluate_topk(topk_fn, samples)`).

Both end as one 1-based rank of the target per sample, and `evaluate(ranks)` turns ranks into
the metrics. The choices, fixed once for every model:

Candidates
    **Full ranking over all items** by default (TIGER, LC-Rec, RecBole's full sort). The seed's
    protocol (target vs 1,000 sampled negatives) is the option `sampled=1000`: negatives are
    drawn uniformly *without* replacement from the items the user has not interacted with
    (neither history nor target, as the seed's and SASRec's original code do), seeded per
    (seed, user_id), so a number is reproducible and independent of the batch size. Sampled
    metrics are much higher than full-ranking ones and are not comparable with them
    (Krichene & Rendle 2020); `protocol` in every result says which was used.

History items
    **Kept among the candidates by default** (`exclude_history=False`). Repeat consumption
    exists (re-buying consumables, re-watching), the leave-one-out targets of some datasets
    are repeats, and masking the history silently turns every repeat target into a miss —
    or, if the target is exempted from the mask, leaks that the target is a repeat. Keeping the
    history is also what TIGER/LC-Rec-style generative evaluation does (a beam may emit a
    history item). `exclude_history=True` masks them (RecBole's full-sort default, fairer to
    ID models on de-duplicated data such as the 5-core Amazon sets where a target is never in
    its history); the target itself is never masked.

Ties
    The target's rank is **1 + #candidates with a strictly higher score + ½ · #other candidates
    with an equal score** (`ties="average"`, the expected rank under uniform random
    tie-breaking). A model that gives constant scores thus gets the middle rank, not rank 1
    (`"optimistic"`, which rewards degenerate models and is what `1 + #higher` code does) nor
    the last (`"pessimistic"`, `1 + #higher + #equal`). Ranks may therefore be x.5; hit@K
    counts rank ≤ K and NDCG uses 1 / log2(rank + 1) at that rank. NaN scores are an error.

Metrics, for K in (5, 10, 20): `hit@K` (= recall@K with one target), `ndcg@K`
(1 / log2(rank + 1) if rank ≤ K else 0; ideal DCG is 1 with one target), and `mrr` = mean of
1 / rank over *all* ranks (not truncated) for score matrices. A top-K list that misses the
target gives rank = inf, which contributes 0 to every metric, so for generative models `mrr`
is MRR@K (K = the list length) — a lower bound of the full MRR.

Slices: `"all"`, and `"cold"` = samples whose target occurs ≤ 5 times in the training
prefixes (`cold_items(train_counts, threshold=5)`). `cold_unseen` counts targets with 0
training occurrences: an ID model has only an untrained embedding for them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

KS: tuple[int, ...] = (5, 10, 20)
TIES = ("average", "pessimistic", "optimistic")
COLD_THRESHOLD = 5

Scores = "np.ndarray | torch.Tensor"
ScoreFn = Callable[[list[list[int]]], Any]  # histories -> [B, n_items] scores (numpy or torch)
TopKFn = Callable[[list[list[int]]], Any]  # histories -> B ranked lists of item ids


# --------------------------------------------------------------------------- ranks


def _as_tensor(scores: Any) -> torch.Tensor:
    t = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores))
    if t.ndim != 2:
        raise ValueError(f"scores must be a [users, items] matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    return t


def _exclude_mask(exclude: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """exclude: None, a bool [B, n_items] mask, or B iterables of item ids -> bool mask."""
    if exclude is None:
        return None
    if isinstance(exclude, torch.Tensor) and exclude.dtype == torch.bool:
        mask = exclude.to(device)
    elif isinstance(exclude, np.ndarray) and exclude.dtype == bool:
        mask = torch.from_numpy(exclude).to(device)
    else:
        rows = list(exclude)
        if len(rows) != shape[0]:
            raise ValueError(f"exclude has {len(rows)} rows for {shape[0]} score rows")
        lens = [len(r) for r in rows]
        mask = torch.zeros(shape, dtype=torch.bool, device=device)
        if sum(lens):
            cols = np.fromiter((int(i) for r in rows for i in r), dtype=np.int64, count=sum(lens))
            if cols.min() < 0 or cols.max() >= shape[1]:
                raise ValueError(f"exclude holds item ids outside [0, {shape[1]})")
            r_idx = np.repeat(np.arange(len(rows)), lens)
            mask[torch.from_numpy(r_idx).to(device), torch.from_numpy(cols).to(device)] = True
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"exclude mask has shape {tuple(mask.shape)}, scores {tuple(shape)}")
    return mask


def sample_negatives(
    n_items: int,
    targets: Sequence[int],
    n: int,
    *,
    exclude: Sequence[Iterable[int]] | None = None,
    seed: int = 0,
    keys: Sequence[int] | None = None,
) -> np.ndarray:
    """n negatives per row, uniform without replacement from [0, n_items) minus target and exclude.

    Row i uses `np.random.default_rng([seed, keys[i]])` (keys default: the row index; pass user
    ids), so a row's negatives do not depend on the batch it is in. A row with fewer than n
    allowed items gets all of them, padded with -1 (ignored by `rank_of_target`).
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    targets = np.asarray(targets, dtype=np.int64)
    keys = np.arange(len(targets)) if keys is None else np.asarray(keys, dtype=np.int64)
    out = np.full((len(targets), n), -1, dtype=np.int64)
    for i, t in enumerate(targets):
        banned = {int(t)}
        if exclude is not None:
            banned.update(int(x) for x in exclude[i])
        allowed = n_items - sum(1 for b in banned if 0 <= b < n_items)
        rng = np.random.default_rng([int(seed), int(keys[i]) & 0x7FFFFFFFFFFFFFFF])
        if allowed <= n:
            pool = np.setdiff1d(np.arange(n_items), np.fromiter(banned, dtype=np.int64))
            out[i, : len(pool)] = rng.permutation(pool)
            continue
        # a uniform random subset large enough to survive removing every banned id, in random order
        draw = rng.choice(n_items, size=min(n_items, n + len(banned)), replace=False)
        keep = draw[~np.isin(draw, np.fromiter(banned, dtype=np.int64))]
        out[i] = keep[:n]
    return out


def rank_of_target(
    scores: Any,
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    exclude: Any = None,
    *,
    sampled: int = 0,
    seed: int = 0,
    keys: Sequence[int] | None = None,
    candidates: np.ndarray | torch.Tensor | None = None,
    ties: str = "average",
) -> np.ndarray:
    """1-based rank of each row's target among its candidates: float64 [B].

    scores: [B, n_items] (numpy or torch; computed on the tensor's device).
    exclude: items that are not candidates (a bool [B, n_items] mask, or B iterables of item
        ids such as the histories); the target is never excluded.
    sampled: 0 = full ranking over all items; N > 0 = the target vs N negatives drawn by
        `sample_negatives` (seeded by seed and keys[i]) from items neither excluded nor the
        target. candidates: explicit negatives [B, C] instead (-1 = padding).
    ties: "average" (1 + #higher + #equal / 2, default), "pessimistic" or "optimistic"; see
        the module docstring.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    s = _as_tensor(scores)
    n_rows, n_items = s.shape
    t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(np.array(targets, dtype=np.int64))
    t = t.to(device=s.device, dtype=torch.long).reshape(-1)
    if len(t) != n_rows:
        raise ValueError(f"{len(t)} targets for {n_rows} score rows")
    if n_rows == 0:
        return np.zeros(0, dtype=np.float64)
    if int(t.min()) < 0 or int(t.max()) >= n_items:
        raise ValueError(f"targets must be item ids in [0, {n_items}), got range [{int(t.min())}, {int(t.max())}]")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    ts = s.gather(1, t[:, None])  # [B, 1]

    if sampled and candidates is None:
        ex_lists = None
        if isinstance(exclude, (np.ndarray, torch.Tensor)) and exclude.dtype in (bool, np.bool_, torch.bool):
            mask = _exclude_mask(exclude, (n_rows, n_items), s.device)
            ex_lists = [np.flatnonzero(row) for row in mask.cpu().numpy()]
        elif exclude is not None:
            ex_lists = list(exclude)
        candidates = sample_negatives(n_items, t.cpu().numpy(), sampled, exclude=ex_lists, seed=seed, keys=keys)
        exclude = None  # already honoured by the sampling
    if candidates is not None:
        c = candidates if isinstance(candidates, torch.Tensor) else torch.as_tensor(np.array(candidates, dtype=np.int64))
        c = c.to(device=s.device, dtype=torch.long)
        if c.shape[0] != n_rows:
            raise ValueError(f"candidates have {c.shape[0]} rows for {n_rows} score rows")
        valid = (c >= 0) & (c != t[:, None])
        cs = s.gather(1, c.clamp(min=0))
        mask = _exclude_mask(exclude, (n_rows, n_items), s.device)
        if mask is not None:
            valid &= ~mask.gather(1, c.clamp(min=0))
        higher = ((cs > ts) & valid).sum(1)
        equal = ((cs == ts) & valid).sum(1)
    else:
        mask = _exclude_mask(exclude, (n_rows, n_items), s.device)
        gt, eq = s > ts, s == ts
        if mask is not None:
            mask = mask.clone()
            mask[torch.arange(n_rows, device=s.device), t] = False  # the target is never excluded
            gt &= ~mask
            eq &= ~mask
        higher = gt.sum(1)
        equal = eq.sum(1) - 1  # the target itself
    higher = higher.double()
    equal = equal.double()
    if ties == "average":
        rank = 1 + higher + equal / 2
    elif ties == "pessimistic":
        rank = 1 + higher + equal
    else:
        rank = 1 + higher
    return rank.cpu().numpy().astype(np.float64)


def from_topk(topk_lists: Any, targets: Sequence[int] | np.ndarray, exclude: Any = None) -> np.ndarray:
    """Ranks from ranked top-K lists (generative models): float64 [B].

    topk_lists: B lists (ragged) or a [B, K] array, best first; negative ids are padding.
    rank = 1 + position of the target's first occurrence; inf when the target is not in the
    list (contributes 0 to every metric). exclude: B iterables of item ids removed from the
    lists before ranking (the `exclude_history=True` protocol; the target is never removed).
    Duplicates count once (the first occurrence).
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    rows = list(topk_lists) if not isinstance(topk_lists, np.ndarray) else list(topk_lists)
    if len(rows) != len(targets):
        raise ValueError(f"{len(rows)} top-K lists for {len(targets)} targets")
    ranks = np.full(len(targets), np.inf)
    for i, (row, target) in enumerate(zip(rows, targets)):
        banned = set() if exclude is None else {int(x) for x in exclude[i]} - {int(target)}
        seen: set[int] = set()
        pos = 0
        for item in (int(x) for x in (row.tolist() if hasattr(row, "tolist") else row)):
            if item < 0 or item in banned or item in seen:
                continue
            seen.add(item)
            pos += 1
            if item == target:
                ranks[i] = pos
                break
    return ranks


# --------------------------------------------------------------------------- metrics


def metrics_from_ranks(ranks: Sequence[float] | np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """{hit@K, ndcg@K for K in ks, mrr} averaged over the ranks ({} when there are none)."""
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if len(r) == 0:
        return {}
    if np.isnan(r).any() or (r < 1).any():
        raise ValueError("ranks must be >= 1 (inf = not retrieved)")
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = float((r <= k).mean())
    finite = np.isfinite(r)
    gain = np.zeros_like(r)
    gain[finite] = 1.0 / np.log2(r[finite] + 1.0)
    for k in ks:
        out[f"ndcg@{k}"] = float(np.where(r <= k, gain, 0.0).mean())
    rr = np.zeros_like(r)
    rr[finite] = 1.0 / r[finite]
    out["mrr"] = float(rr.mean())
    return out


def cold_items(train_counts: Sequence[int] | np.ndarray, threshold: int = COLD_THRESHOLD) -> np.ndarray:
    """bool [n_items]: True for items with <= threshold occurrences in the training prefixes."""
    return np.asarray(train_counts) <= threshold


def evaluate(
    ranks: Sequence[float] | np.ndarray, cold_mask: Sequence[bool] | np.ndarray | None = None, ks: Sequence[int] = KS
) -> dict[str, Any]:
    """{"all": metrics, "cold": metrics on the cold_mask samples ({} if none), "n_users", "n_cold"}.

    cold_mask is per sample (e.g. `cold_items(counts)[targets]`).
    """
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {"all": metrics_from_ranks(r, ks), "cold": {}, "n_users": int(len(r)), "n_cold": 0}
    if cold_mask is not None:
        m = np.asarray(cold_mask, dtype=bool).reshape(-1)
        if len(m) != len(r):
            raise ValueError(f"cold_mask has {len(m)} entries for {len(r)} ranks")
        out["cold"] = metrics_from_ranks(r[m], ks)
        out["n_cold"] = int(m.sum())
    return out


# --------------------------------------------------------------------------- drivers


def _samples_columns(samples: pd.DataFrame) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    missing = {"history", "target"} - set(samples.columns)
    if missing:
        raise ValueError(f"samples need columns history, target (missing: {sorted(missing)})")
    histories = [list(map(int, h)) for h in samples["history"]]
    targets = samples["target"].to_numpy(dtype=np.int64)
    users = samples["user_id"].to_numpy(dtype=np.int64) if "user_id" in samples.columns else np.arange(len(samples))
    return histories, targets, users


def _slices(
    out: dict[str, Any], ranks: np.ndarray, targets: np.ndarray, train_counts: Any, cold_threshold: int, ks: Sequence[int]
) -> dict[str, Any]:
    if train_counts is None:
        res = evaluate(ranks, None, ks)
    else:
        counts = np.asarray(train_counts)
        tc = np.where(targets < len(counts), counts[np.minimum(targets, len(counts) - 1)], 0)
        res = evaluate(ranks, tc <= cold_threshold, ks)
        res["cold_unseen"] = int((tc == 0).sum())
    res.update(out)
    return res


def evaluate_model(
    score_fn: ScoreFn,
    samples: pd.DataFrame,
    n_items: int,
    batch_size: int = 256,
    *,
    exclude_history: bool = False,
    sampled: int = 0,
    seed: int = 0,
    train_counts: Sequence[int] | np.ndarray | None = None,
    cold_threshold: int = COLD_THRESHOLD,
    ks: Sequence[int] = KS,
    ties: str = "average",
    return_ranks: bool = False,
) -> dict[str, Any]:
    """Rank every sample's target with `score_fn(histories) -> [B, n_items]`, batch by batch.

    Returns `evaluate(...)` plus "protocol" (what was measured) and, given train_counts,
    the cold slice and "cold_unseen"; "ranks" too with return_ranks. With `sampled` the
    negatives always avoid the history (the seed's protocol), whatever exclude_history says.
    """
    histories, targets, users = _samples_columns(samples)
    ranks = np.zeros(len(targets), dtype=np.float64)
    for a in range(0, len(targets), batch_size):
        b = min(a + batch_size, len(targets))
        hist = histories[a:b]
        scores = score_fn(hist)
        shape = tuple(scores.shape)
        if shape != (b - a, n_items):
            raise ValueError(f"score_fn returned shape {shape}, expected {(b - a, n_items)}")
        exclude = hist if (exclude_history or sampled) else None
        ranks[a:b] = rank_of_target(
            scores, targets[a:b], exclude, sampled=sampled, seed=seed, keys=users[a:b], ties=ties
        )
    protocol = {
        "ranking": f"sampled-{sampled}" if sampled else "full",
        "n_items": int(n_items),
        "exclude_history": bool(exclude_history or sampled),
        "ties": ties,
        "seed": int(seed) if sampled else None,
    }
    res = _slices({"protocol": protocol}, ranks, targets, train_counts, cold_threshold, ks)
    if return_ranks:
        res["ranks"], res["users"] = ranks, users
    return res


def evaluate_topk(
    topk_fn: TopKFn,
    samples: pd.DataFrame,
    batch_size: int = 64,
    *,
    exclude_history: bool = False,
    train_counts: Sequence[int] | np.ndarray | None = None,
    cold_threshold: int = COLD_THRESHOLD,
    ks: Sequence[int] = KS,
    return_ranks: bool = False,
) -> dict[str, Any]:
    """The same report for generative models: `topk_fn(histories) -> B ranked item-id lists`."""
    histories, targets, users = _samples_columns(samples)
    ranks = np.zeros(len(targets), dtype=np.float64)
    list_len = 0
    for a in range(0, len(targets), batch_size):
        b = min(a + batch_size, len(targets))
        lists = list(topk_fn(histories[a:b]))
        list_len = max([list_len] + [len(x) for x in lists])
        ranks[a:b] = from_topk(lists, targets[a:b], histories[a:b] if exclude_history else None)
    protocol = {"ranking": f"top-{list_len} lists", "exclude_history": bool(exclude_history), "mrr": f"MRR@{list_len}"}
    res = _slices({"protocol": protocol}, ranks, targets, train_counts, cold_threshold, ks)
    if return_ranks:
        res["ranks"], res["users"] = ranks, users
    return res


def on_users(user_ranks: pd.DataFrame, samples: pd.DataFrame, train_counts: Sequence[int] | np.ndarray | None = None,
             cold_threshold: int = COLD_THRESHOLD, ks: Sequence[int] = KS) -> dict[str, Any]:
    """A model's metrics on a subset of users, from its saved per-user ranks (DataFrame[user_id,
    rank], as 07 writes them): every model of a table measured on exactly the same users."""
    by_user = user_ranks.set_index("user_id")["rank"]
    users = samples["user_id"].to_numpy(dtype=np.int64)
    missing = np.setdiff1d(users, by_user.index.to_numpy())
    if len(missing):
        raise ValueError(f"no saved rank for {len(missing)} of the {len(users)} users (e.g. {missing[:3].tolist()})")
    ranks = by_user.loc[users].to_numpy(dtype=np.float64)
    return _slices({}, ranks, samples["target"].to_numpy(dtype=np.int64), train_counts, cold_threshold, ks)


def popularity_score_fn(train_counts: Sequence[int] | np.ndarray) -> ScoreFn:
    """The popularity baseline: every user gets the training counts as scores."""
    counts = torch.as_tensor(np.asarray(train_counts, dtype=np.float32))

    def score(histories: list[list[int]]) -> torch.Tensor:
        return counts[None, :].expand(len(histories), -1)

    return score


def to_frame(results: Mapping[str, Mapping[str, Any]], slice_: str = "all") -> pd.DataFrame:
    """{model name: evaluate result} -> one row per model, the slice's metrics as columns."""
    rows = []
    for name, res in results.items():
        row = {"model": name, **res.get(slice_, {})}
        row["n_users"] = res.get("n_cold" if slice_ == "cold" else "n_users", math.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")
