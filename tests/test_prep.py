"""01-prep: RawData -> items/users/interactions/sequences/split/pairs artifacts."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from sidlib import split as S
from sidlib.config import DataConfig
from sidlib.data import prep as P
from sidlib.data.schema import DataError, RawData
from sidlib.paths import resolve_data_path


def make_items(ids, titles=None, descriptions=None) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "item_id": [str(i) for i in ids],
            "title": titles if titles is not None else [f"title {i}" for i in ids],
            "description": descriptions if descriptions is not None else [""] * n,
            "features": [[f"f{i}"] if k % 2 else [] for k, i in enumerate(ids)],
            "categories": [["Cat", f"Sub{i}"] for i in ids],
            "brand": ["b"] * n,
            "extra": ['{"price": 1}'] * n,
        }
    )


def make_inter(rows, split=False) -> pd.DataFrame:
    cols = ["user_id", "item_id", "timestamp", "rating"] + (["split"] if split else [])
    rows = [(str(r[0]), str(r[1]), r[2], r[3] if len(r) > 3 and r[3] is not None else np.nan, *r[4:])
            for r in rows]
    df = pd.DataFrame(rows, columns=cols)
    df["timestamp"] = df["timestamp"].astype(np.int64)
    return df


def seq_rows(seqs: dict, t0: int = 0) -> list[tuple]:
    """{user: [items]} -> rows with increasing timestamps, users one after another."""
    return [(u, i, t0 + t) for u, items in seqs.items() for t, i in enumerate(items)]


def raw_of(seqs: dict, item_ids=None, pairs=None) -> RawData:
    items = item_ids if item_ids is not None else sorted({i for s in seqs.values() for i in s}, key=str)
    kw = {"pairs": pairs} if pairs is not None else {}
    return RawData(make_items(items), make_inter(seq_rows(seqs)), source="test", **kw)


def cfg(**kw) -> DataConfig:
    base = dict(kcore=0, min_seq_len=3, max_seq_len=0)
    base.update(kw)
    return DataConfig(**base)


# ---------------------------------------------------------------- items


def test_filter_items_reasons_and_stripped_lengths():
    items = make_items(
        ["a", "b", "c", "d", "a"],
        titles=["long title", "  ab  ", "abc", "abcdef", "dup"],
        descriptions=["x" * 10, "x" * 10, "x" * 10, "   x   ", "x" * 10],
    )
    kept, dropped = P.filter_items(items, cfg(min_title_chars=3, min_description_chars=5))
    assert kept["item_id"].tolist() == ["a", "c"]
    assert dropped == {
        "duplicate item id (the first row is kept)": 1,
        "title shorter than 3 chars": 1,  # "  ab  " strips to 2 chars
        "description shorter than 5 chars": 1,  # "   x   " strips to 1 char
    }


def test_filter_items_empty_names_the_filter():
    items = make_items(["a", "b"], titles=["short", "tiny"])
    with pytest.raises(DataError, match=r"item filter left no items .*title shorter than 20 chars: 2.*min_title_chars"):
        P.filter_items(items, cfg(min_title_chars=20))


def test_interactions_of_dropped_and_unknown_items_are_counted():
    seqs = {"u1": ["a", "b", "c", "d"], "u2": ["a", "b", "c", "zz"]}
    items = make_items(["a", "b", "c", "d"], titles=["ta", "tb", "tc", ""])
    raw = RawData(items, make_inter(seq_rows(seqs)), source="test")
    p = P.prepare(raw, cfg())
    inter = p.report["dropped"]["interactions"]
    assert inter["item removed by the item filters"] == 1
    assert inter["item not in the item table"] == 1
    assert p.report["dropped"]["items"]["title shorter than 1 chars"] == 1
    assert p.items["source_id"].tolist() == ["a", "b", "c"]
    assert p.sequences["item_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]


def test_no_interaction_left_after_item_filter_names_it():
    raw = RawData(make_items(["a"]), make_inter([("u", "x", 1), ("u", "y", 2)]), source="test")
    with pytest.raises(DataError, match=r"no interaction refers to a kept item .*item not in the item table: 2"):
        P.prepare(raw, cfg())


# ---------------------------------------------------------------- k-core


def pairs_frame(edges) -> pd.DataFrame:
    return pd.DataFrame(edges, columns=["user_id", "item_id"])


def test_kcore_cascade():
    core = [("u4", "x"), ("u4", "y"), ("u5", "x"), ("u5", "y")]
    chain = [("u0", "a"), ("u0", "b"), ("u1", "b"), ("u1", "c"), ("u2", "c"), ("u2", "d"), ("u3", "d")]
    df = pairs_frame(chain[:3] + core[:2] + chain[3:] + core[2:])
    out = P.kcore(df, 2)
    # u3 (1 item) goes first, then d, u2, c, u1, b, u0, a: the whole chain, round after round
    assert sorted(map(tuple, out.to_numpy().tolist())) == sorted(core)
    # a single pass would only remove u3 and a: the cascade is what k-core is about
    one_pass = df[(df.groupby("user_id")["item_id"].transform("size") >= 2)
                  & (df.groupby("item_id")["user_id"].transform("size") >= 2)]
    assert len(one_pass) > len(out)


def test_kcore_keeps_row_order():
    df = pairs_frame([("u2", "y"), ("u1", "x"), ("u1", "y"), ("u2", "x"), ("u3", "x")])
    assert P.kcore(df, 2).to_numpy().tolist() == [["u2", "y"], ["u1", "x"], ["u1", "y"], ["u2", "x"]]


def test_kcore_off_and_already_core():
    df = pairs_frame([("u0", "a")])
    assert P.kcore(df, 0).equals(df)
    full = pairs_frame([(f"u{u}", f"i{i}") for u in range(3) for i in range(3)])
    pd.testing.assert_frame_equal(P.kcore(full, 3), full)
    assert P.kcore(full, 4).empty


def test_kcore_empty_error_in_prepare():
    raw = raw_of({"u1": ["a", "b", "c"], "u2": ["c", "d", "e"]})
    with pytest.raises(DataError, match=r"k-core with k=5 left no interactions \(before: 6 interactions, 2 users.*lower data.kcore"):
        P.prepare(raw, cfg(kcore=5))


def test_kcore_in_prepare_counts_drops():
    seqs = {f"u{u}": ["a", "b", "c"] for u in range(3)}
    seqs["lonely"] = ["a", "b", "z"]  # z has 1 user -> dropped -> lonely has 2 items -> dropped
    p = P.prepare(raw_of(seqs), cfg(kcore=3))
    assert p.users["source_id"].tolist() == ["u0", "u1", "u2"]
    assert p.report["dropped"]["interactions"]["k-core (k=3)"] == 3
    assert p.report["dropped"]["users"]["k-core (k=3)"] == 1
    assert p.report["dropped"]["items"]["k-core (k=3)"] == 1


# ---------------------------------------------------------------- order, dedupe, lengths


def test_stable_tie_break_keeps_file_order():
    rows = [("u", "b", 5), ("u", "a", 5), ("u", "c", 1), ("u", "e", 9), ("u", "d", 5)]
    raw = RawData(make_items(["a", "b", "c", "d", "e"]), make_inter(rows), source="test")
    p = P.prepare(raw, cfg())
    src = p.items.set_index("item_id")["source_id"]
    assert [src[i] for i in p.sequences["item_ids"][0]] == ["c", "b", "a", "d", "e"]
    assert p.sequences["timestamps"][0] == [1, 5, 5, 5, 9]
    assert p.interactions["timestamp"].tolist() == [1, 5, 5, 5, 9]


def test_dedupe_keeps_first_chronologically():
    rows = [("u", "x", 10), ("u", "y", 1), ("u", "x", 5), ("u", "z", 7), ("u", "w", 12)]
    raw = RawData(make_items(["w", "x", "y", "z"]), make_inter(rows), source="test")
    p = P.prepare(raw, cfg())
    src = p.items.set_index("item_id")["source_id"]
    assert [src[i] for i in p.sequences["item_ids"][0]] == ["y", "x", "z", "w"]
    assert p.sequences["timestamps"][0] == [1, 5, 7, 12]
    assert p.report["dropped"]["interactions"]["duplicate (user, item): the first is kept"] == 1
    no = P.prepare(raw, cfg(dedupe=False))
    assert len(no.sequences["item_ids"][0]) == 5


def test_max_seq_len_keeps_the_last_items():
    seqs = {"u1": list("abcdefg"), "u2": list("abc")}
    p = P.prepare(raw_of(seqs), cfg(max_seq_len=4))
    src = p.items.set_index("item_id")["source_id"]
    assert [[src[i] for i in s] for s in p.sequences["item_ids"]] == [list("defg"), list("abc")]
    assert p.report["dropped"]["interactions"]["older than the last max_seq_len=4 events"] == 3
    assert p.split.loc[0, "test"] == p.items.set_index("source_id").loc["g", "item_id"]


def test_min_seq_len_drops_users_and_errors_when_empty():
    seqs = {"u1": list("abcd"), "u2": list("ab"), "u3": list("abc")}
    p = P.prepare(raw_of(seqs), cfg(min_seq_len=3))
    assert p.users["source_id"].tolist() == ["u1", "u3"]
    assert p.report["dropped"]["users"]["min_seq_len=3"] == 1
    with pytest.raises(DataError, match=r"min_seq_len=5 left no users \(before: 3 users.*longest sequence 4\).*lower data.min_seq_len"):
        P.prepare(raw_of(seqs), cfg(min_seq_len=5))


def test_loo_with_too_small_min_seq_len_is_an_error():
    with pytest.raises(DataError, match="1 of 2 users have fewer"):
        P.prepare(raw_of({"u1": list("abcd"), "u2": list("ab")}), cfg(min_seq_len=2))


def test_sample_users_deterministic():
    rows = seq_rows({f"u{u}": ["a", "b", "c"] for u in range(50)})
    df = make_inter(rows)
    a = P.sample_users(df, 10, seed=1)
    b = P.sample_users(df, 10, seed=1)
    c = P.sample_users(df, 10, seed=2)
    assert a["user_id"].nunique() == 10 and len(a) == 30
    pd.testing.assert_frame_equal(a, b)
    assert set(a["user_id"]) != set(c["user_id"])
    assert P.sample_users(df, 0, seed=1) is df
    assert len(P.sample_users(df, 500, seed=1)) == len(df)


def test_max_users_in_prepare():
    raw = raw_of({f"u{u}": ["a", "b", "c", "d"] for u in range(20)})
    p = P.prepare(raw, cfg(max_users=5), seed=3)
    assert len(p.users) == 5
    assert p.report["dropped"]["interactions"]["user not in the max_users=5 sample"] == 60
    q = P.prepare(raw, cfg(max_users=5), seed=3)
    assert p.users["source_id"].tolist() == q.users["source_id"].tolist()


# ---------------------------------------------------------------- ids


def test_dense_ids_follow_item_table_and_first_appearance():
    rows = [("zed", "c", 3), ("amy", "a", 1), ("zed", "b", 1), ("amy", "b", 2), ("zed", "a", 2), ("amy", "c", 3)]
    raw = RawData(make_items(["c", "x", "b", "a"]), make_inter(rows), source="test")
    p = P.prepare(raw, cfg())
    assert p.items["item_id"].tolist() == [0, 1, 2]
    assert p.items["source_id"].tolist() == ["c", "b", "a"]  # table order; "x" has no interaction
    assert p.report["dropped"]["items"]["no interactions in the source"] == 1
    assert p.users["source_id"].tolist() == ["zed", "amy"]  # first appearance in the file
    assert p.sequences["item_ids"].tolist() == [[1, 2, 0], [2, 1, 0]]
    assert p.items.loc[0, "categories"] == ["Cat", "Subc"]
    # interactions are dense and chronological per user
    assert p.interactions["user_id"].tolist() == [0, 0, 0, 1, 1, 1]
    assert p.interactions["item_id"].tolist() == [1, 2, 0, 2, 1, 0]


# ---------------------------------------------------------------- pairs


def test_sequence_pairs_only_from_train_prefixes():
    seqs = {"u1": ["a", "b", "c", "v1", "t1"], "u2": ["b", "c", "d", "v2", "t2"], "u3": ["c", "a", "b", "t1", "v1"]}
    p = P.prepare(raw_of(seqs), cfg(metadata_pairs=False))
    sp = p.split
    seq = p.pairs[p.pairs["kind"] == "sequence"]
    got = {(int(s), int(d)): int(c) for s, d, c in seq[["src", "dst", "count"]].to_numpy()}
    # no transition into/out of a valid or test position
    for tr, v, t in zip(sp["train"], sp["valid"], sp["test"]):
        for bad in [(tr[-1], v), (v, tr[-1]), (v, t), (t, v)]:
            assert bad not in got
    idx = dict(zip(p.items["source_id"], p.items["item_id"]))
    a, b, c, d = idx["a"], idx["b"], idx["c"], idx["d"]
    # trains: a b c | b c d | c a b  -> a-b x2, b-c x2, c-d x1, c-a x1, both directions
    assert got == {(a, b): 2, (b, a): 2, (b, c): 2, (c, b): 2, (c, d): 1, (d, c): 1, (c, a): 1, (a, c): 1}
    assert not any(idx[x] in {s for pair in got for s in pair} for x in ["v1", "v2", "t1", "t2"])


def test_metadata_pairs_mapped_between_kept_items():
    seqs = {"u1": ["a", "b", "c", "d"], "u2": ["c", "b", "a", "d"]}
    meta = pd.DataFrame(
        {"src": ["a", "a", "b", "a", "c"], "dst": ["b", "gone", "a", "a", "a"],
         "kind": ["also_buy", "also_buy", "bought_together", "also_buy", "also_buy"]}
    )
    p = P.prepare(raw_of(seqs, pairs=meta), cfg())
    idx = dict(zip(p.items["source_id"], p.items["item_id"]))
    m = p.pairs[p.pairs["kind"] != "sequence"]
    assert sorted(map(tuple, m[["src", "dst", "kind", "count"]].to_numpy().tolist())) == sorted(
        [(idx["a"], idx["b"], "also_buy", 1), (idx["b"], idx["a"], "bought_together", 1), (idx["c"], idx["a"], "also_buy", 1)]
    )
    off = P.prepare(raw_of(seqs, pairs=meta), cfg(metadata_pairs=False))
    assert set(off.pairs["kind"]) == {"sequence"}


# ---------------------------------------------------------------- official split


def test_official_split_in_prepare():
    rows = [
        ("u1", "a", 1, 5.0, "train"), ("u1", "b", 2, 4.0, "train"), ("u1", "c", 3, None, "valid"),
        ("u1", "d", 4, None, "test"),
        ("u2", "a", 1, None, "train"), ("u2", "b", 2, None, "train"), ("u2", "a", 3, None, "test"),
        ("u2", "b", 2, None, "train"),  # a real duplicate within train
    ]
    raw = RawData(make_items(["a", "b", "c", "d"]), make_inter(rows, split=True), source="test")
    p = P.prepare(raw, cfg(split="official"))
    assert p.split["train"].tolist() == [[0, 1], [0, 1]]
    assert p.split["valid"].tolist() == [2, S.NONE]
    assert p.split["test"].tolist() == [3, 0]  # the official test row survives the dedupe
    assert p.report["dropped"]["interactions"]["duplicate (user, item): the first is kept"] == 1
    assert p.metrics()["test_users"] == 2
    assert "split" in p.interactions.columns
    with pytest.raises(DataError, match="no official split"):
        P.prepare(RawData(make_items(["a"]), make_inter([("u", "a", 1)]), source="x"), cfg(split="official"))


# ---------------------------------------------------------------- artifacts


def test_save_load_round_trip(tmp_path):
    seqs = {"u1": list("abcde"), "u2": list("bcda"), "u3": list("eab")}
    meta = pd.DataFrame({"src": ["a"], "dst": ["b"], "kind": ["also_buy"]})
    p = P.prepare(raw_of(seqs, pairs=meta), cfg())
    p.report["loader_skipped"] = {"x.json: bad line": 2}
    p.save(tmp_path)
    for name in ["items", "users", "interactions", "sequences", "split", "pairs"]:
        assert (tmp_path / f"{name}.parquet").exists()
    q = P.Prepared.load(tmp_path)
    for name in ["items", "users", "interactions", "sequences", "split", "pairs"]:
        a, b = getattr(p, name), getattr(q, name)
        assert list(a.columns) == list(b.columns), name
        assert a.astype(object).to_numpy().tolist() == b.astype(object).to_numpy().tolist() or name == "interactions"
    # ratings are NaN here: compare the interactions with NaN-aware equality
    pd.testing.assert_frame_equal(p.interactions, q.interactions, check_dtype=False)
    assert q.items["features"].tolist() == [[], ["fb"], [], ["fd"], []]
    assert isinstance(q.sequences["item_ids"][0], list) and isinstance(q.split["train"][0][0], int)
    assert q.report == json.loads(json.dumps(p.report))
    assert q.metrics() == p.metrics() == p.report["metrics"]
    assert q.items["item_id"].dtype == np.int64


def test_load_missing_folder(tmp_path):
    with pytest.raises(DataError, match="items.parquet: not found"):
        P.Prepared.load(tmp_path)


def test_metrics_and_report():
    p = P.prepare(raw_of({"u1": list("abcd"), "u2": list("abc")}), cfg())
    assert p.metrics() == {"users": 2, "items": 4, "interactions": 7, "mean_seq_len": 3.5, "test_users": 2,
                           "repeat_test_share": 0.0}
    assert p.report["config"] == dataclasses.asdict(cfg())
    assert [r["step"] for r in p.report["funnel"]][0] == "loaded"


def test_plot_distributions(tmp_path):
    p = P.prepare(raw_of({"u1": list("abcd"), "u2": list("abc"), "u3": list("bcdef")}), cfg())
    out = P.plot_distributions(p, tmp_path / "plots" / "dist.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- real data


def test_real_scientific_is_already_5core():
    try:
        from sidlib.data import load_raw
    except ImportError:
        pytest.skip("sidlib.data.load_raw is not there yet")
    c = DataConfig(source="lcrec", path="shared:amazon2018-scientific", name="Scientific", kcore=5)
    if not resolve_data_path(c.path).exists():
        pytest.skip("shared Scientific data not present")
    raw = load_raw(c)
    p = P.prepare(raw, c)
    m = p.metrics()
    assert (m["items"], m["users"], m["interactions"], m["test_users"]) == (4344, 8317, 58492, 8317)
    funnel = {r["step"]: r for r in p.report["funnel"]}
    assert funnel["k-core (k=5)"]["interactions"] == funnel["loaded"]["interactions"] == 58492
    assert p.report["dropped"]["interactions"] == {}
    # LC-Rec ids "0".."n-1" in file order: dense ids are the identity
    assert (p.items["source_id"].astype(int) == p.items["item_id"]).all()
    assert len(S.samples(p.split, "test")) == 8317


def test_all_beauty_profile_keeps_the_official_split(shared_data):
    from sidlib import config
    from sidlib.data import load_raw
    from sidlib.data import prep as P

    cfg = config.load("all-beauty")
    prepared = P.prepare(load_raw(cfg.data), cfg.data, seed=cfg.seed)
    assert prepared.metrics()["users"] == 253 and prepared.metrics()["items"] == 356
    assert prepared.metrics()["interactions"] == 2535
    # the official test rows are the targets: every user has one, and it is their last event
    inter = prepared.interactions
    last = inter.groupby("user_id").tail(1).set_index("user_id")["item_id"]
    assert (prepared.split.set_index("user_id")["test"] == last).all()


def test_repeat_test_share_counts_targets_seen_before():
    split = pd.DataFrame({"user_id": [0, 1, 2, 3], "train": [[1, 2], [3], [4, 5], [6]], "valid": [7, 8, 5, 9],
                          "test": [2, 9, 5, -1]})
    # user 0: 2 in train; user 1: 9 unseen; user 2: 5 in train (and valid); user 3: no test item
    assert P.repeat_share(split) == round(2 / 3, 4)
    assert P.repeat_share(split.assign(test=[10, 11, 12, -1])) == 0.0
