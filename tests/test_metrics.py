"""sidlib.metrics: hand-computed ranks (ties, history, sampled protocol, top-K), metrics, slices."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import rankdata

from sidlib import metrics as M
from sidlib import split as S

SCORES = np.array(
    [
        [0.1, 0.5, 0.3, 0.5, 0.0],  # item 1 and 3 tie at the top
        [0.9, 0.8, 0.7, 0.6, 0.5],  # strictly decreasing
        [0.2, 0.2, 0.2, 0.2, 0.2],  # constant
    ]
)


def test_rank_of_target_hand_computed_with_ties():
    # row 0, target 2: two items strictly higher -> 3; row 1, target 4: last of 5;
    # row 2, constant scores: 1 + 0 + 4/2 = 3 (the middle), not 1 (optimistic) nor 5 (pessimistic)
    assert M.rank_of_target(SCORES, [2, 4, 0]).tolist() == [3.0, 5.0, 3.0]
    # row 0, target 1 ties with item 3: 1 + 0 + 1/2
    assert M.rank_of_target(SCORES[:1], [1]).tolist() == [1.5]
    assert M.rank_of_target(SCORES[:1], [1], ties="pessimistic").tolist() == [2.0]
    assert M.rank_of_target(SCORES[:1], [1], ties="optimistic").tolist() == [1.0]
    assert M.rank_of_target(SCORES, [2, 4, 0], ties="pessimistic").tolist() == [3.0, 5.0, 5.0]
    assert M.rank_of_target(SCORES, [2, 4, 0], ties="optimistic").tolist() == [3.0, 5.0, 1.0]
    # torch input, same answer
    assert M.rank_of_target(torch.tensor(SCORES, dtype=torch.float32), torch.tensor([2, 4, 0])).tolist() == [3.0, 5.0, 3.0]


def test_rank_of_target_exclude_history_never_masks_the_target():
    hist = [[1], [0, 1, 2], [0, 1, 2, 3, 4]]
    # row 0: item 1 masked -> only item 3 above -> 2; row 1: 3 of the 4 above masked -> 2;
    # row 2: the target 0 is in its own history but is never masked; the others are -> rank 1
    assert M.rank_of_target(SCORES, [2, 4, 0], hist).tolist() == [2.0, 2.0, 1.0]
    mask = np.zeros(SCORES.shape, dtype=bool)
    for i, h in enumerate(hist):
        mask[i, h] = True
    assert M.rank_of_target(SCORES, [2, 4, 0], mask).tolist() == [2.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="outside"):
        M.rank_of_target(SCORES, [2, 4, 0], [[7], [], []])


def test_rank_errors():
    with pytest.raises(ValueError, match="NaN"):
        M.rank_of_target(np.array([[0.1, np.nan]]), [0])
    with pytest.raises(ValueError, match="targets must be item ids"):
        M.rank_of_target(SCORES, [2, 4, 5])
    with pytest.raises(ValueError, match="ties"):
        M.rank_of_target(SCORES, [0, 0, 0], ties="random")


def test_sampled_protocol_is_seeded_per_user_and_avoids_history_and_target():
    n_items = 50
    scores = np.tile(np.arange(n_items, dtype=float), (4, 1))  # higher id = higher score
    targets = np.array([10, 20, 30, 40])
    hist = [[11, 12], [21], [], list(range(31, 50))]
    users = np.array([7, 8, 9, 10])
    neg = M.sample_negatives(n_items, targets, 12, exclude=hist, seed=3, keys=users)
    assert neg.shape == (4, 12)
    for row, t, h in zip(neg, targets, hist):
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)  # without replacement
        assert t not in real and not set(h) & set(real.tolist())
    # user 10 has only 50 - 1 - 19 = 30 allowed items: still 12 drawn
    assert (neg[3] >= 0).all()
    # the rank is 1 + #negatives with a larger id (no ties here)
    ranks = M.rank_of_target(scores, targets, hist, sampled=12, seed=3, keys=users)
    assert ranks.tolist() == [1.0 + (r > t).sum() for r, t in zip(neg, targets)]
    # same seed + user -> same negatives, whatever the batch; another seed -> others
    alone = M.sample_negatives(n_items, targets[2:3], 12, exclude=hist[2:3], seed=3, keys=users[2:3])
    assert (alone[0] == neg[2]).all()
    assert not (M.sample_negatives(n_items, targets, 12, exclude=hist, seed=4, keys=users) == neg).all()
    # fewer allowed items than asked: all of them, padded with -1, ignored by the ranking
    few = M.sample_negatives(5, [0], 10, exclude=[[1]])
    assert sorted(few[0][few[0] >= 0].tolist()) == [2, 3, 4] and (few[0] == -1).sum() == 7
    assert M.rank_of_target(np.array([[0.0, 9, 1, 2, 3]]), [0], [[1]], sampled=10).tolist() == [4.0]


def test_from_topk():
    lists = [[3, 1, 2], [5, 6, -1], [4, 4, 0, 2]]
    assert M.from_topk(lists, [1, 9, 2]).tolist() == [2.0, math.inf, 3.0]  # duplicate 4 counts once
    # exclude_history removes history items (never the target) before ranking
    assert M.from_topk(lists, [1, 9, 2], exclude=[[3], [], [4, 2]]).tolist() == [1.0, math.inf, 2.0]
    assert M.from_topk(np.array([[3, 1], [1, 3]]), np.array([3, 3])).tolist() == [1.0, 2.0]


def test_metrics_hand_computed():
    ranks = [1, 3, 11, math.inf]
    m = M.metrics_from_ranks(ranks)
    assert list(m) == ["hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"]
    assert m["hit@5"] == m["hit@10"] == 0.5 and m["hit@20"] == 0.75
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["ndcg@10"] == pytest.approx(0.375)
    assert m["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(12)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 4)
    # a tie-averaged rank of 10.5 is outside the top 10
    assert M.metrics_from_ranks([10.5])["hit@10"] == 0.0
    assert M.metrics_from_ranks([]) == {}
    with pytest.raises(ValueError):
        M.metrics_from_ranks([0.5])


def test_evaluate_cold_slice():
    counts = np.array([0, 5, 6, 100])
    assert M.cold_items(counts).tolist() == [True, True, False, False]
    assert M.cold_items(counts, threshold=0).tolist() == [True, False, False, False]
    targets = np.array([0, 1, 2, 3])
    res = M.evaluate([1, 2, 30, 4], M.cold_items(counts)[targets])
    assert res["n_users"] == 4 and res["n_cold"] == 2
    assert res["cold"]["hit@5"] == 1.0 and res["all"]["hit@5"] == 0.75
    assert res["cold"]["mrr"] == pytest.approx(0.75)
    assert M.evaluate([1, 2])["cold"] == {} and M.evaluate([1, 2])["n_cold"] == 0


def samples_frame(histories, targets):
    return pd.DataFrame({"user_id": np.arange(len(targets)), "history": histories, "target": targets})


def test_evaluate_model_batches_protocols_and_topk_agree():
    rng = np.random.default_rng(0)
    n_items, n_users = 40, 23
    table = rng.normal(size=(n_users, n_items))
    hist = [rng.choice(n_items, size=rng.integers(1, 6), replace=False).tolist() for _ in range(n_users)]
    targets = rng.integers(0, n_items, size=n_users)
    samples = samples_frame(hist, targets)
    row_of = {tuple(h): i for i, h in enumerate(hist)}

    def score_fn(histories):
        return table[[row_of[tuple(h)] for h in histories]]

    counts = np.bincount(rng.integers(0, n_items, 200), minlength=n_items)
    counts[targets[0]] = 0
    full = M.evaluate_model(score_fn, samples, n_items, batch_size=5, train_counts=counts, return_ranks=True)
    one = M.evaluate_model(score_fn, samples, n_items, batch_size=100, train_counts=counts, return_ranks=True)
    assert (full["ranks"] == one["ranks"]).all()
    assert full["ranks"].tolist() == M.rank_of_target(table, targets).tolist()
    assert full["protocol"]["ranking"] == "full" and full["cold_unseen"] == int((counts[targets] == 0).sum())
    assert full["n_cold"] == int((counts[targets] <= 5).sum())
    ex = M.evaluate_model(score_fn, samples, n_items, batch_size=7, exclude_history=True, return_ranks=True)
    assert (ex["ranks"] <= full["ranks"]).all()
    s1 = M.evaluate_model(score_fn, samples, n_items, batch_size=4, sampled=10, seed=1, return_ranks=True)
    s2 = M.evaluate_model(score_fn, samples, n_items, batch_size=9, sampled=10, seed=1, return_ranks=True)
    assert (s1["ranks"] == s2["ranks"]).all() and s1["protocol"]["ranking"] == "sampled-10"
    assert s1["all"]["hit@10"] >= full["all"]["hit@10"]

    # a generative model returning the top-20 of the same scores gets the same metrics at K <= 20
    def topk_fn(histories):
        return np.argsort(-score_fn(histories), axis=1)[:, :20]

    tk = M.evaluate_topk(topk_fn, samples, batch_size=6)
    for key in ("hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20"):
        assert tk["all"][key] == pytest.approx(full["all"][key])
    assert tk["all"]["mrr"] <= full["all"]["mrr"] and tk["protocol"]["mrr"] == "MRR@20"
    with pytest.raises(ValueError, match="shape"):
        M.evaluate_model(lambda h: table[: len(h), :10], samples, n_items)


def test_popularity_on_real_data_matches_scipy_average_ranks(shared_data):
    inter = json.loads((shared_data / "amazon2018-scientific" / "Scientific.inter.json").read_text())
    seqs = pd.DataFrame({"user_id": [int(u) for u in inter], "item_ids": list(inter.values())})
    sp = S.leave_one_out(seqs)
    counts = S.item_train_counts(sp)
    valid = S.samples(sp, "valid")
    res = M.evaluate_model(M.popularity_score_fn(counts), valid, len(counts), 1024, train_counts=counts, return_ranks=True)
    # the tie rule is scipy's "average" rank of the negated scores (counts tie a lot)
    expected = rankdata(-counts.astype(float), method="average")[valid["target"].to_numpy()]
    assert np.allclose(res["ranks"], expected)
    assert res["n_users"] == len(sp) == 8317
    assert 0.005 < res["all"]["ndcg@10"] < 0.05
    assert res["cold_unseen"] == int((counts[valid["target"]] == 0).sum()) > 0
    assert M.to_frame({"pop": res}).loc["pop", "ndcg@10"] == res["all"]["ndcg@10"]
