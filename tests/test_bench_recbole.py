"""bench/recbole_sasrec.py's side of the comparison that runs without RecBole: the split it hands
RecBole (an atomic .inter file), the hyper-parameter mapping and the same-samples check."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pandas as pd
import pytest

from sidlib import paths
from sidlib import split as S
from sidlib.config import BaselineConfig, SasrecConfig


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("recbole_sasrec", paths.REPO / "bench" / "recbole_sasrec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def split(shared_data):
    inter = json.loads((shared_data / "amazon2018-scientific" / "Scientific.inter.json").read_text())
    seqs = pd.DataFrame({"user_id": [int(u) for u in inter], "item_ids": list(inter.values())})
    return S.leave_one_out(seqs).iloc[:400].reset_index(drop=True)


def test_atomic_file_gives_back_the_split_in_order(bench, split, tmp_path):
    path = bench.write_atomic(split, tmp_path, "sci")
    assert path == tmp_path / "sci" / "sci.inter"
    assert path.read_text().splitlines()[0] == "user_id:token\titem_id:token\ttimestamp:float"
    inter = pd.read_csv(path, sep="\t")
    inter.columns = ["user", "item", "ts"]
    # RecBole's time order (a stable sort by user, then timestamp) must rebuild every sequence
    inter = inter.sort_values(["user", "ts"], kind="stable")
    got = inter.groupby("user")["item"].apply(list).to_dict()
    want = {int(u): [*tr, va, te] for u, tr, va, te in split[["user_id", "train", "valid", "test"]].itertuples(index=False)}
    assert got == want
    assert len(inter) == sum(len(s) for s in want.values())


def test_atomic_file_refuses_users_without_valid_or_test(bench, split, tmp_path):
    broken = split.copy()
    broken.loc[3, "test"] = S.NONE
    with pytest.raises(ValueError, match="leave-one-out"):
        bench.write_atomic(broken, tmp_path, "sci")


def test_recbole_params_map_the_profile(bench):
    cfg = BaselineConfig(sasrec=SasrecConfig(hidden=64, blocks=2, heads=1), dropout=0.2, batch_size=32, patience=10, max_len=50)
    p = bench.recbole_params(cfg, seed=7)
    assert (p["hidden_size"], p["inner_size"], p["n_layers"], p["n_heads"]) == (64, 64, 2, 1)
    assert p["hidden_dropout_prob"] == p["attn_dropout_prob"] == 0.2
    assert p["MAX_ITEM_LIST_LENGTH"] == 50 and p["loss_type"] == "CE" and p["seed"] == 7
    assert p["stopping_step"] == 9  # RecBole stops when cur_step > stopping_step: patience 10
    assert p["train_batch_size"] == 32
    assert bench.recbole_params(cfg, seed=7, batch_size=256)["train_batch_size"] == 256
    with pytest.raises(ValueError, match="loss"):
        bench.recbole_params(replace(cfg, loss="bce"), seed=7)
    with pytest.raises(ValueError, match="full ranking"):
        bench.recbole_params(replace(cfg, sampled_negatives=100), seed=7)


def test_same_samples_check_catches_another_target(bench, split):
    def recbole_side(sp):
        return {"samples": {w: [{"user": str(u), "target": str(t), "history": [str(x) for x in h[-50:]]}
                                for u, t, h in S.samples(sp, w)[["user_id", "target", "history"]].itertuples(index=False)]
                            for w in ("valid", "test")}}

    rb = recbole_side(split)
    report = bench.check_same_samples(split, rb, max_len=50)
    assert report["test"]["users"] == report["test"]["same_targets"] == len(S.samples(split, "test"))
    rb["samples"]["test"][5]["target"] = "-1"
    with pytest.raises(SystemExit, match="1 users with other targets"):
        bench.check_same_samples(split, rb, max_len=50)
