"""sidlib.split: leave-one-out, the official split, evaluation samples, training sequences."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sidlib import split as S
from sidlib.data.schema import DataError


def seqs(*items: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.arange(len(items)), "item_ids": list(items)})


def test_leave_one_out_hand_made():
    sp = S.leave_one_out(seqs([5, 6, 7], [1, 2, 3, 4, 9]))
    assert list(sp.columns) == S.SPLIT_COLUMNS
    assert sp["train"].tolist() == [[5], [1, 2, 3]]
    assert sp["valid"].tolist() == [6, 4]
    assert sp["test"].tolist() == [7, 9]
    assert sp["valid"].dtype == np.int64 and sp["test"].dtype == np.int64


def test_leave_one_out_needs_three_items_and_names_the_count():
    with pytest.raises(DataError, match=r"2 of 3 users have fewer \(shortest: 1\)"):
        S.leave_one_out(seqs([1, 2], [1, 2, 3], [4]))


def official_rows() -> pd.DataFrame:
    # file order is not chronological; user 1 has no valid row, user 2 two test rows, user 3 no test
    return pd.DataFrame(
        [
            (0, 13, 30, "test"),
            (0, 10, 10, "train"),
            (0, 12, 25, "valid"),
            (0, 11, 20, "train"),
            (1, 20, 1, "train"),
            (1, 21, 2, "train"),
            (1, 22, 3, "test"),
            (2, 30, 1, "train"),
            (2, 32, 9, "test"),
            (2, 31, 5, "test"),
            (3, 40, 1, "train"),
            (3, 41, 2, "valid"),
        ],
        columns=["user_id", "item_id", "timestamp", "split"],
    )


def test_official_split():
    sp = S.official_split(official_rows())
    assert sp["user_id"].tolist() == [0, 1, 2, 3]
    assert sp["train"].tolist() == [[10, 11], [20, 21], [30], [40]]
    assert sp["valid"].tolist() == [12, S.NONE, S.NONE, 41]
    assert sp["test"].tolist() == [13, 22, 31, S.NONE]  # user 2: the chronologically first test row


def test_official_split_stable_on_equal_timestamps():
    df = pd.DataFrame(
        {"user_id": [0, 0, 0, 0], "item_id": [3, 1, 2, 4], "timestamp": [5, 5, 5, 5],
         "split": ["train", "train", "valid", "test"]}
    )
    sp = S.official_split(df)
    assert sp["train"].tolist() == [[3, 1]]


def test_official_split_rejects_bad_values_and_missing_column():
    df = official_rows()
    df.loc[0, "split"] = "testing"
    with pytest.raises(DataError, match="1 rows have a split value other than"):
        S.official_split(df)
    with pytest.raises(DataError, match="no 'split' column"):
        S.official_split(df.drop(columns="split"))


def test_samples_history_and_target():
    sp = S.leave_one_out(seqs([5, 6, 7], [1, 2, 3, 4, 9]))
    v = S.samples(sp, "valid")
    assert v["history"].tolist() == [[5], [1, 2, 3]]
    assert v["target"].tolist() == [6, 4]
    t = S.samples(sp, "test")
    assert t["history"].tolist() == [[5, 6], [1, 2, 3, 4]]
    assert t["target"].tolist() == [7, 9]
    # the split table itself is not modified by building samples
    assert sp["train"].tolist() == [[5], [1, 2, 3]]
    with pytest.raises(ValueError):
        S.samples(sp, "train")


def test_samples_skip_missing_targets():
    sp = S.official_split(official_rows())
    v = S.samples(sp, "valid")
    assert v["user_id"].tolist() == [0, 3]
    t = S.samples(sp, "test")
    assert t["user_id"].tolist() == [0, 1, 2]
    # user 1 has no valid item: its test history is the train prefix alone
    assert t["history"].tolist() == [[10, 11, 12], [20, 21], [30]]


def test_sample_users_is_seeded_and_keeps_users_with_a_target():
    sp = S.official_split(official_rows())  # user 1 has no valid target
    one = S.sample_users(sp, "valid", 1, seed=3)
    assert len(one) == 1 and one["user_id"].iloc[0] in (0, 3)
    assert one.equals(S.sample_users(sp, "valid", 1, seed=3))  # the same users every validation
    assert S.sample_users(sp, "valid", 0) is sp and S.sample_users(sp, "valid", 2) is sp  # all of them
    ids = {int(S.sample_users(sp, "test", 2, seed=s)["user_id"].nunique()) for s in range(5)}
    assert ids == {2}
    with pytest.raises(ValueError):
        S.sample_users(sp, "train", 1)


def test_training_sequences_protocol():
    sp = S.leave_one_out(seqs([5, 6, 7], [1, 2, 3, 4, 9]))
    for which in ("valid", "test"):  # standard protocol: train prefixes only
        assert S.training_sequences(sp, which)["item_ids"].tolist() == [[5], [1, 2, 3]]
    refit = S.training_sequences(sp, "test", include_valid=True)
    assert refit["item_ids"].tolist() == [[5, 6], [1, 2, 3, 4]]
    # never the test item
    assert all(7 not in s and 9 not in s for s in refit["item_ids"])


def test_training_sequences_drop_empty():
    sp = pd.DataFrame({"user_id": [0, 1], "train": [[], [1]], "valid": [2, -1], "test": [3, 4]})
    assert S.training_sequences(sp, "valid")["user_id"].tolist() == [1]
    assert S.training_sequences(sp, "test", include_valid=True)["item_ids"].tolist() == [[2], [1]]


def test_item_train_counts():
    sp = S.leave_one_out(seqs([1, 1, 2, 8], [1, 3, 4, 5]))  # trains: [1, 1], [1, 3]
    c = S.item_train_counts(sp)
    assert len(c) == 9  # up to the largest target
    assert c.tolist() == [0, 3, 0, 1, 0, 0, 0, 0, 0]
    assert len(S.item_train_counts(sp, n_items=20)) == 20
