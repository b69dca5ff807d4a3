"""THE split: one table that every later stage (baselines, SFT data, LLM eval) reads.

Layout (one row per user, dense ints from 01-prep):

    user_id: int
    train:   list[int]   the training prefix, chronological
    valid:   int         the validation target (-1 = the user has none)
    test:    int         the test target (-1 = the user has none)

Two ways to build it:

* `leave_one_out(sequences)`: last item = test, second to last = valid, the rest = train
  (the standard protocol on the LC-Rec / SASRec / RecBole benchmarks). Every user has both.
* `official_split(interactions)`: the dataset's own "train"/"valid"/"test" rows (Amazon
  Reviews 2023 benchmark files). The first valid row of a user is the valid target, the first
  test row the test target; a user with no such row gets -1 there (no sample for that user).
  Further valid/test rows of the same user (time-cutoff splits can have several) are ignored;
  01-prep counts them in its report.

Evaluation protocol (used by every stage, so that numbers are comparable):

* `samples(split, "valid")`: history = train, target = valid.
* `samples(split, "test")`:  history = train + [valid], target = test.
* `training_sequences(split, which)`: what a model may be fit on. The standard protocol is
  chosen: models are fit on the **train prefixes only**, for both the valid and the test
  evaluation; the valid item is never a training target, it is only *history* at test time
  (SASRec's original code, RecBole's leave-one-out, LC-Rec's data builder all do this). One
  fitted model therefore serves both evaluations. `include_valid=True` gives the other
  protocol (refit on train + valid before testing) for those who want it; nothing in sidlib
  uses it by default.
* `item_train_counts(split)`: how often each item occurs in the train prefixes; an item with
  0 is "cold" (never seen in training), the cold-item slice of the evaluation.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from sidlib.data.schema import DataError

SPLIT_COLUMNS = ["user_id", "train", "valid", "test"]
SPLIT_VALUES = ("train", "valid", "test")
Which = Literal["valid", "test"]
NONE = -1  # a user without a valid / test target


def _check_which(which: str) -> None:
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")


def leave_one_out(sequences: pd.DataFrame) -> pd.DataFrame:
    """sequences[user_id, item_ids (chronological list[int])] -> the split table.

    train = items[:-2], valid = items[-2], test = items[-1]. Every user needs >= 3 items.
    """
    lengths = sequences["item_ids"].map(len).to_numpy()
    short = int((lengths < 3).sum())
    if short:
        raise DataError(
            f"leave-one-out needs >= 3 items per user, but {short:,} of {len(sequences):,} users "
            f"have fewer (shortest: {int(lengths.min())}) — set data.min_seq_len >= 3"
        )
    seqs = [list(map(int, s)) for s in sequences["item_ids"]]
    return pd.DataFrame(
        {
            "user_id": sequences["user_id"].to_numpy(dtype=np.int64),
            "train": [s[:-2] for s in seqs],
            "valid": np.array([s[-2] for s in seqs], dtype=np.int64),
            "test": np.array([s[-1] for s in seqs], dtype=np.int64),
        }
    )


def official_split(interactions: pd.DataFrame) -> pd.DataFrame:
    """interactions[user_id, item_id, (timestamp), split] -> the split table.

    Rows are ordered per user by timestamp with a stable sort (ties keep the given order);
    train = the user's "train" rows in that order, valid / test = the item of the first
    "valid" / "test" row (-1 when the user has none). Users are listed in ascending user_id.
    """
    if "split" not in interactions.columns:
        raise DataError("official split: the interactions have no 'split' column (train/valid/test)")
    split = interactions["split"].astype(str).to_numpy()
    bad = ~np.isin(split, SPLIT_VALUES)
    if bad.any():
        values = sorted(set(split[bad].tolist()))[:5]
        raise DataError(
            f"official split: {int(bad.sum()):,} rows have a split value other than "
            f"train/valid/test (e.g. {values})"
        )
    users = interactions["user_id"].to_numpy(dtype=np.int64)
    items = interactions["item_id"].to_numpy(dtype=np.int64)
    if "timestamp" in interactions.columns:
        order = np.lexsort((interactions["timestamp"].to_numpy(dtype=np.int64), users))
    else:
        order = np.argsort(users, kind="stable")
    users, items, split = users[order], items[order], split[order]

    uniq, first_row = np.unique(users, return_index=True)
    bounds = np.append(first_row, len(users))
    is_train = split == "train"
    train = [items[a:b][is_train[a:b]].tolist() for a, b in zip(bounds[:-1], bounds[1:])]

    def first_of(kind: str) -> np.ndarray:
        out = np.full(len(uniq), NONE, dtype=np.int64)
        rows = np.flatnonzero(split == kind)
        u, first = np.unique(users[rows], return_index=True)  # first row of each user
        out[np.searchsorted(uniq, u)] = items[rows[first]]
        return out

    return pd.DataFrame({"user_id": uniq, "train": train, "valid": first_of("valid"), "test": first_of("test")})


def sample_rows(n_rows: int, n: int, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a fixed seeded sample of n of n_rows rows; None when n = 0 or n >= n_rows
    (keep them all). The one sampler of the early-stopping validations of every baseline."""
    if n <= 0 or n >= n_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_rows, n, replace=False))


def sample_users(split: pd.DataFrame, which: Which, n: int, seed: int = 0) -> pd.DataFrame:
    """The split's rows of a fixed seeded sample of n users that have a `which` target (n = 0 or
    more than there are: every row). For cheap early-stopping validations; reports use all users."""
    _check_which(which)
    has = np.flatnonzero(split[which].to_numpy() != NONE)
    keep = sample_rows(len(has), n, seed)
    return split if keep is None else split.iloc[has[keep]].reset_index(drop=True)


def samples(split: pd.DataFrame, which: Which) -> pd.DataFrame:
    """The (history, target) pairs a model is evaluated on: DataFrame[user_id, history, target].

    valid: history = train, target = valid. test: history = train + [valid] (the valid item
    is known at test time), target = test. Users without the target (-1) have no sample.
    """
    _check_which(which)
    keep = split[split[which].to_numpy() != NONE]
    if which == "valid":
        history = [list(t) for t in keep["train"]]
    else:
        history = [list(t) + ([int(v)] if v != NONE else []) for t, v in zip(keep["train"], keep["valid"])]
    return pd.DataFrame(
        {
            "user_id": keep["user_id"].to_numpy(dtype=np.int64),
            "history": history,
            "target": keep[which].to_numpy(dtype=np.int64),
        }
    )


def training_sequences(split: pd.DataFrame, which: Which = "test", include_valid: bool = False) -> pd.DataFrame:
    """What a model may be fit on when it is evaluated on `which`: DataFrame[user_id, item_ids].

    Standard protocol (default): the train prefixes, for both `which` values — the valid item
    is only history at test time, never a training target. `include_valid=True` with
    which="test" appends the valid item (the refit-on-train+valid protocol). Users with an
    empty sequence are left out.
    """
    _check_which(which)
    if include_valid and which == "test":
        seqs = [list(t) + ([int(v)] if v != NONE else []) for t, v in zip(split["train"], split["valid"])]
    else:
        seqs = [list(t) for t in split["train"]]
    out = pd.DataFrame({"user_id": split["user_id"].to_numpy(dtype=np.int64), "item_ids": seqs})
    return out[out["item_ids"].map(len) > 0].reset_index(drop=True)


def item_train_counts(split: pd.DataFrame, n_items: int | None = None) -> np.ndarray:
    """counts[item_id] = occurrences of the item in the train prefixes (0 = a cold item).

    The array has n_items entries (default: 1 + the largest item id in train/valid/test), so
    it can be indexed with any target.
    """
    flat = np.fromiter((i for t in split["train"] for i in t), dtype=np.int64)
    if n_items is None:
        ids = [flat, split["valid"].to_numpy(dtype=np.int64), split["test"].to_numpy(dtype=np.int64)]
        n_items = int(max((a.max() for a in ids if len(a)), default=-1)) + 1
    return np.bincount(flat, minlength=n_items).astype(np.int64)
