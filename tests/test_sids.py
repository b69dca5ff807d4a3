"""The SID token scheme, the dedup level, external imports, the saved table and the trie."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sidlib.sids import (
    REC,
    SID_END,
    SID_START,
    CodeTrie,
    SidError,
    SidFormatError,
    SidScheme,
    SidTable,
    add_dedup_level,
    build_table,
    collision_stats,
    export_lcrec_index,
    import_codes_table,
    import_lcrec_index,
    resolve_collisions,
)

SEED = SidScheme([256, 256, 256, 256])


# --------------------------------------------------------------------------- scheme


def test_seed_scheme_tokens():
    toks = SEED.tokens()
    assert len(toks) == 1024 + 3
    assert toks[0] == "<|sid_0|>" and toks[1023] == "<|sid_1023|>"
    assert toks[-3:] == [SID_START, SID_END, REC]
    assert len(set(toks)) == len(toks)
    # the seed README's example: level*256 + code
    assert SEED.format([64, 313 - 256, 637 - 512, 0]) == (
        "<|sid_start|><|sid_64|><|sid_313|><|sid_637|><|sid_768|><|sid_end|>"
    )
    assert SEED.token_to_level_code(637) == (2, 125)
    assert SEED.token_to_level_code(0) == (0, 0)
    assert SEED.token_to_level_code(1023) == (3, 255)
    with pytest.raises(SidError):
        SEED.token_to_level_code(1024)


def test_unequal_codebook_sizes_offsets():
    s = SidScheme([4, 8, 3])
    assert s.offsets == [0, 4, 12]
    assert s.num_code_tokens == 15
    assert s.format([3, 7, 2]) == "<|sid_start|><|sid_3|><|sid_11|><|sid_14|><|sid_end|>"
    assert [s.token_to_level_code(n) for n in (3, 4, 11, 12, 14)] == [(0, 3), (1, 0), (1, 7), (2, 0), (2, 2)]
    with pytest.raises(SidError, match="out of range for level 1"):
        s.format([0, 8, 0])
    with pytest.raises(SidError, match="expected 3 codes"):
        s.format([0, 1])


@pytest.mark.parametrize("sizes", [[256, 256, 256, 256], [4, 8, 3], [1000, 7]])
def test_format_parse_round_trip_random(sizes):
    s = SidScheme(sizes)
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, k, 200) for k in sizes], axis=1)
    strings = s.format_many(codes)
    for row, text in zip(codes, strings):
        assert text == s.format(row)
        assert s.parse(text) == row.tolist()
    # whitespace around / between tokens is accepted
    spaced = " " + " ".join(t for t in [SID_START] + [s.token(l, int(c)) for l, c in enumerate(codes[0])] + [SID_END]) + "\n"
    assert s.parse(spaced) == codes[0].tolist()


@pytest.mark.parametrize(
    "text, message",
    [
        ("<|sid_3|><|sid_300|><|sid_600|><|sid_768|><|sid_end|>", "missing <|sid_start|>"),
        ("<|sid_start|><|sid_3|><|sid_300|><|sid_600|><|sid_768|>", "missing <|sid_end|>"),
        ("", "missing <|sid_start|>"),
        ("<|sid_start|>", "missing <|sid_end|>"),
        ("<|sid_start|><|sid_3|><|sid_300|><|sid_600|><|sid_end|>", "wrong level count: 3 code tokens, expected 4"),
        ("<|sid_start|><|sid_3|><|sid_300|><|sid_600|><|sid_768|><|sid_769|><|sid_end|>", "wrong level count: 5"),
        ("<|sid_start|><|sid_300|><|sid_3|><|sid_600|><|sid_768|><|sid_end|>", r"<\|sid_300\|> at level 0 is out of range"),
        ("<|sid_start|><|sid_3|><|sid_300|><|sid_600|><|sid_1024|><|sid_end|>", "not a token of this scheme"),
        ("<|sid_start|><|sid_3|>oops<|sid_300|><|sid_600|><|sid_768|><|sid_end|>", "unexpected text 'oops'"),
        ("<|sid_start|><|sid_3|><|sid_300|><|sid_600|><|sid_768|><|sid_end|> and more", "unexpected text 'and more'"),
        ("<|sid_start|><|sid_3|><|sid_end|><|sid_start|><|sid_600|><|sid_end|>", "inside the SID"),
    ],
)
def test_parse_errors_name_string_and_problem(text, message):
    with pytest.raises(SidFormatError, match=message) as e:
        SEED.parse(text)
    assert str(e.value).startswith("SID '") and text.strip()[:20] in str(e.value)


def test_find_all_in_free_text():
    a, b = SEED.format([1, 2, 3, 4]), SEED.format([255, 0, 17, 9])
    text = (
        f"You bought {a}, so try {b} next.\n"
        f"Broken: <|sid_start|><|sid_1|><|sid_end|> and a stray <|sid_5|> then {REC}"
        f" and truncated <|sid_start|><|sid_1|><|sid_257|>"
    )
    found = SEED.find_all(text)
    assert [codes for _, codes in found] == [[1, 2, 3, 4], [255, 0, 17, 9], None, None, None]
    (s0, e0), _ = found[0]
    assert text[s0:e0] == a
    (s1, e1), _ = found[1]
    assert text[s1:e1] == b
    assert text[found[2][0][0] : found[2][0][1]] == "<|sid_start|><|sid_1|><|sid_end|>"
    assert text[found[3][0][0] : found[3][0][1]] == "<|sid_5|>"
    assert text[found[4][0][0] :].startswith("<|sid_start|><|sid_1|>")
    # two SIDs written back to back are two blocks
    assert [c for _, c in SEED.find_all(a + b)] == [[1, 2, 3, 4], [255, 0, 17, 9]]
    # a start that interrupts an unfinished SID: the unfinished one is malformed
    assert [c for _, c in SEED.find_all("<|sid_start|><|sid_1|>" + a)] == [None, [1, 2, 3, 4]]
    assert SEED.find_all("no ids here") == []


def test_manifest_round_trip(tmp_path):
    s = SidScheme([8, 8, 5])
    d = json.loads(s.to_json())
    assert d["codebook_sizes"] == [8, 8, 5] and d["levels"] == 3 and len(d["tokens"]) == 21 + 3
    assert SidScheme.from_json(s.to_json()) == s
    assert SidScheme.from_json(d) == s
    p = tmp_path / "m.json"
    p.write_text(s.to_json())
    assert SidScheme.from_json(p) == s
    assert SidScheme.from_json(str(p)) == s
    with pytest.raises(SidError, match="codebook_sizes"):
        SidScheme.from_json({"levels": 3})


# --------------------------------------------------------------------------- dedup


def test_dedup_level_unique_and_deterministic():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(500, 3))  # 64 prefixes for 500 items: many collisions
    out = add_dedup_level(codes, 64)
    assert out.shape == (500, 4)
    assert np.array_equal(out[:, :3], codes)
    assert len(np.unique(out, axis=0)) == 500
    # within a collision group, dedup codes are 0..n-1 in item-id (row) order
    for prefix in {tuple(r) for r in codes[:50].tolist()}:
        rows = np.flatnonzero((codes == prefix).all(axis=1))
        assert out[rows, 3].tolist() == list(range(len(rows)))
    assert np.array_equal(add_dedup_level(codes, 64), out)
    # ordered by the given item ids, not by row position
    ids = np.arange(500)[::-1]
    rev = add_dedup_level(codes, 64, item_ids=ids)
    rows = np.flatnonzero((codes == codes[0]).all(axis=1))
    assert rev[rows, 3].tolist() == list(range(len(rows)))[::-1]
    # unique input: the dedup code is 0 everywhere
    assert (add_dedup_level(np.arange(12).reshape(4, 3), 1)[:, 3] == 0).all()


def test_dedup_order_popularity_on_smoke(smoke_stages):
    """sids.dedup_order = "popularity" on smoke's real 01-04 outputs: in every collision group the
    item with the most training interactions gets last code 0, and the codes are still unique;
    a misspelt order is a clear error."""
    from sidlib import config, split
    from sidlib.sids import stage

    cfg = config.load("smoke", {"sids.dedup_order": "popularity"})
    out = stage.run(cfg)
    counts = split.item_train_counts(pd.read_parquet(smoke_stages / "01-prep" / "split.parquet"), len(out.table.df))
    codes = out.table.codes
    groups = pd.DataFrame({"cell": [tuple(c[:-1]) for c in codes], "last": codes[:, -1], "n": counts})
    multi = groups[groups.groupby("cell")["cell"].transform("size") > 1]
    assert multi["cell"].nunique() >= 3, "smoke should have collision groups to order"
    for _, g in multi.groupby("cell"):
        g = g.sort_values("last")
        assert g["last"].tolist() == list(range(len(g)))
        assert g["n"].is_monotonic_decreasing, g
    assert len(np.unique(codes, axis=0)) == len(codes) and out.metrics["dedup_order"] == "popularity"
    with pytest.raises(SidError, match="dedup_order.*popularity"):
        stage.run(config.load("smoke", {"sids.dedup_order": "popular"}))


def test_dedup_group_too_large():
    codes = np.array([[1, 2]] * 5 + [[0, 0]])
    with pytest.raises(SidError, match=r"5 items share the codes \(1, 2\).*only 4 codes.*larger codebook"):
        add_dedup_level(codes, 4)
    assert add_dedup_level(codes, 5)[:, 2].tolist() == [0, 1, 2, 3, 4, 0]


def test_collision_stats():
    st = collision_stats(np.array([[0, 0], [0, 0], [0, 1], [1, 1]]))
    assert st["items"] == 4 and st["unique_tuples"] == 3 and st["max_group"] == 2
    assert st["items_without_collision"] == 2 and st["unique_ratio"] == 0.75


# --------------------------------------------------------------------------- imports


def _write_lcrec(path, ids, codes):
    index = {str(i): [f"<{'abcd'[l]}_{int(c)}>" for l, c in enumerate(row)] for i, row in zip(ids, codes)}
    path.write_text(json.dumps(index))


def test_import_lcrec_index(tmp_path):
    rng = np.random.default_rng(2)
    codes = add_dedup_level(rng.integers(0, 16, size=(300, 3)), 16)
    ids = [f"item{i}" for i in range(300)]
    p = tmp_path / "index.json"
    _write_lcrec(p, ids, codes)
    # our item order differs from the file's, and the file has extra items
    ours = ids[::-1][:250]
    got, scheme = import_lcrec_index(p, ours)
    assert np.array_equal(got, codes[::-1][:250])
    assert scheme.levels == 4
    got, scheme = import_lcrec_index(p, ours, codebook_sizes=[256] * 4)
    assert scheme.codebook_sizes == [256] * 4
    # a string per item is accepted as well as a list
    p2 = tmp_path / "index_str.json"
    p2.write_text(json.dumps({"a": "<a_1><b_2>", "b": "<a_1><b_3>"}))
    assert import_lcrec_index(p2, ["a", "b"])[0].tolist() == [[1, 2], [1, 3]]


def test_import_lcrec_errors(tmp_path):
    codes = np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0]])
    p = tmp_path / "index.json"
    _write_lcrec(p, ["x", "y", "z"], codes)
    with pytest.raises(SidError, match=r"2 of 4 items have no codes: 'w', 'v'"):
        import_lcrec_index(p, ["x", "w", "y", "v"])
    with pytest.raises(SidError, match=r"level 1 \(0\.\.1\); first: item 'x' has 2"):
        import_lcrec_index(p, ["x", "y", "z"], codebook_sizes=[4, 2, 4])
    _write_lcrec(p, ["x", "y", "z"], np.array([[1, 2, 0], [3, 0, 0], [1, 2, 0]]))
    with pytest.raises(SidError, match=r"items 'x' and 'z' have the same codes \[1, 2, 0\]"):
        import_lcrec_index(p, ["x", "y", "z"])
    p.write_text(json.dumps({"x": ["<a_1>", "<c_2>"]}))
    with pytest.raises(SidError, match="levels out of order"):
        import_lcrec_index(p, ["x"])
    p.write_text(json.dumps({"x": ["<a_1>", "<b_2>"], "y": ["<a_1>"]}))
    with pytest.raises(SidError, match="1 levels, earlier items have 2"):
        import_lcrec_index(p, ["x", "y"])
    p.write_text(json.dumps({"x": ["a_1", "b_2"]}))
    with pytest.raises(SidError, match="expected tokens like"):
        import_lcrec_index(p, ["x"])
    with pytest.raises(SidError, match="not found"):
        import_lcrec_index(tmp_path / "nope.json", ["x"])


def test_import_codes_table(tmp_path):
    codes = np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0]])
    wide = pd.DataFrame({"item_id": ["b", "a", "c"], "code_0": codes[:, 0], "code_1": codes[:, 1], "code_2": codes[:, 2]})
    wide.to_parquet(tmp_path / "wide.parquet")
    wide.to_csv(tmp_path / "wide.csv", index=False)
    for name in ("wide.parquet", "wide.csv"):
        got, scheme = import_codes_table(tmp_path / name, ["a", "b", "c"])
        assert got.tolist() == [[1, 2, 1], [1, 2, 0], [3, 0, 0]]
        assert scheme.codebook_sizes == [4, 3, 2]
    lists = pd.DataFrame({"item_id": [0, 1, 2], "codes": [list(r) for r in codes.tolist()]})
    lists.to_parquet(tmp_path / "lists.parquet")
    lists.assign(codes=[str(r) for r in codes.tolist()]).to_csv(tmp_path / "lists.csv", index=False)
    for name in ("lists.parquet", "lists.csv"):
        got, _ = import_codes_table(tmp_path / name, [0, 1, 2], codebook_sizes=[8, 8, 8])
        assert got.tolist() == codes.tolist()
    with pytest.raises(SidError, match="1 of 4 items have no codes: '3'"):
        import_codes_table(tmp_path / "lists.parquet", [0, 1, 2, 3])
    with pytest.raises(SidError, match="out of range at level 0"):
        import_codes_table(tmp_path / "lists.parquet", [0, 1, 2], codebook_sizes=[2, 8, 8])
    dup = wide.assign(code_2=0)
    dup.to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(SidError, match="items 'a' and 'b' have the same codes"):
        import_codes_table(tmp_path / "dup.parquet", ["a", "b", "c"])
    pd.DataFrame({"item_id": ["a"], "x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SidError, match="no code_0..code_n columns"):
        import_codes_table(tmp_path / "bad.csv", ["a"])


# --------------------------------------------------------------------------- table + trie


def test_sid_table_save_load_and_tensor(tmp_path):
    rng = np.random.default_rng(3)
    codes = add_dedup_level(rng.integers(0, 8, size=(100, 3)), 8)
    scheme = SidScheme([8, 8, 8, 8])
    titles = [f"Item {i}" for i in range(100)]
    table = SidTable.build(codes, scheme, titles)
    assert list(table.df.columns) == ["item_id", "codes", "sid", "title"]
    assert table.df["sid"].iat[7] == scheme.format(codes[7])
    paths = table.save(tmp_path / "05-sids", extra={"collisions": collision_stats(codes[:, :3])})
    assert {p.name for p in paths.values()} == {"sids.parquet", "sid_mapping.pt", "sid_manifest.json"}
    mapping = torch.load(paths["mapping"])
    assert mapping.dtype == torch.int64 and tuple(mapping.shape) == (4, 100)
    for i in (0, 42, 99):  # column i = item i
        assert mapping[:, i].tolist() == codes[i].tolist()
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["codebook_sizes"] == [8] * 4 and manifest["num_items"] == 100
    assert manifest["mapping"]["shape"] == [4, 100] and "collisions" in manifest
    loaded = SidTable.load(tmp_path / "05-sids")
    assert loaded.scheme == scheme
    assert np.array_equal(loaded.codes, codes)
    assert loaded.df["title"].tolist() == titles
    assert loaded.sid_of(42) == scheme.format(codes[42])
    assert loaded.item_of(scheme.format(codes[42])) == 42
    assert loaded.item_of(list(codes[17])) == 17


def test_sid_table_validation():
    scheme = SidScheme([4, 4])
    with pytest.raises(SidError, match="same codes"):
        SidTable.build(np.array([[1, 1], [1, 1]]), scheme)
    with pytest.raises(SidError, match="out of range"):
        SidTable.build(np.array([[1, 4]]), scheme)
    with pytest.raises(SidError, match="3 levels"):
        SidTable.build(np.array([[1, 1, 1]]), scheme)
    t = SidTable.build(np.array([[0, 1], [0, 2]]), scheme, item_ids=[5, 9])
    with pytest.raises(SidError, match="dense item ids"):
        t.mapping_tensor()


def test_trie_shared_prefixes():
    codes = np.array(
        [
            [1, 2, 3, 0],  # item 0
            [1, 2, 3, 1],  # item 1: shares 3 codes with item 0
            [1, 2, 5, 0],  # item 2
            [1, 7, 0, 0],  # item 3
            [4, 0, 0, 0],  # item 4
        ]
    )
    trie = CodeTrie(codes)
    assert trie.allowed([]).tolist() == [1, 4]
    assert trie.allowed([1]).tolist() == [2, 7]
    assert trie.allowed([1, 2]).tolist() == [3, 5]
    assert trie.allowed([1, 2, 3]).tolist() == [0, 1]
    assert trie.allowed([1, 2, 3, 1]).tolist() == []  # complete
    assert trie.allowed([9]).tolist() == []  # unknown
    assert trie.count([1]) == 4 and trie.count([1, 2]) == 3 and trie.count([]) == 5
    assert trie.is_item([1, 2, 3, 1]) and not trie.is_item([1, 2, 3]) and not trie.is_item([1, 2, 3, 2])
    assert trie.item_of([1, 2, 5, 0]) == 2 and trie.item_of([1, 2, 5, 1]) is None
    assert trie.longest_known_prefix([1, 2, 3, 9]) == (3, 0)
    assert trie.longest_known_prefix([1, 2, 9, 9]) == (2, 0)
    assert trie.longest_known_prefix([1, 7, 0, 0]) == (4, 3)
    assert trie.longest_known_prefix([9, 9, 9, 9]) == (0, None)
    # with item ids: the example item is the smallest id under the prefix
    trie2 = CodeTrie(codes, item_ids=[50, 40, 30, 20, 10])
    assert trie2.longest_known_prefix([1, 2, 9, 9]) == (2, 30)
    assert trie2.item_of([4, 0, 0, 0]) == 10
    with pytest.raises(SidError, match=r"1 items share their full code tuple.*item 7: \[1, 2\]"):
        CodeTrie(np.array([[1, 2], [1, 2]]), item_ids=[7, 8])
    with pytest.raises(SidError, match="out of range"):
        CodeTrie(np.array([[0, 5]]), [2, 2])


def test_trie_matches_brute_force():
    rng = np.random.default_rng(4)
    codes = add_dedup_level(rng.integers(0, 5, size=(400, 2)), 32)
    trie = CodeTrie(codes)
    rows = [tuple(r) for r in codes.tolist()]
    for prefix in [(), (0,), (3,), (2, 4), (1, 1), (4, 4, 0)]:
        k = len(prefix)
        expect = sorted({r[k] for r in rows if r[:k] == prefix}) if k < 3 else []
        assert trie.allowed(prefix).tolist() == expect
    for i in (0, 123, 399):
        assert trie.item_of(codes[i]) == i


def test_trie_dense_tables_and_masks():
    """The tensor side that constrained decoding uses: per-level prefix counts, and the masks of
    a batch of prefixes in one gather."""
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 2, 1]])
    t = CodeTrie(codes, [2, 3, 2])
    assert t.n_prefixes == [1, 2, 4, 5]
    assert t.allowed([]).tolist() == [0, 1]
    assert t.allowed([0]).tolist() == [0, 1] and t.allowed([1]).tolist() == [0, 2]
    assert t.allowed([0, 0]).tolist() == [0, 1] and t.allowed([1, 2]).tolist() == [1]
    assert t.allowed([0, 2]).tolist() == [] and t.allowed([0, 0, 1]).tolist() == []
    assert [t.item_of(c) for c in codes.tolist()] == [0, 1, 2, 3, 4]
    assert t.is_item([1, 2, 1]) and not t.is_item([1, 2, 0]) and not t.is_item([1, 2])
    # vectorised masks for a batch of prefixes (-1 = dead beam: nothing allowed)
    mask = t.allowed_mask(1, torch.tensor([[0, 1, -1]]))
    assert mask.tolist() == [[[True, True, False], [True, False, True], [False, False, False]]]
    # one step per (prefix, code): the next prefix index, the item row on the last level
    assert t.step(0, torch.tensor([0, 0, -1]), torch.tensor([1, 0, 0])).tolist() == [1, 0, -1]
    assert t.step(2, torch.tensor([3]), torch.tensor([1])).tolist() == [4]


def test_trie_of_a_table_names_item_ids():
    """SidTable.trie(): the lookups return the table's item ids, the tensor side row indices."""
    codes = np.array([[1, 0], [0, 1], [0, 0]])
    table = SidTable.build(codes, SidScheme([2, 2]), item_ids=[30, 10, 20])  # rows sorted by id
    trie = table.trie()
    assert trie is table.trie()  # built once
    assert trie.item_of([1, 0]) == 30 and table.item_of([0, 1]) == 10
    assert trie.longest_known_prefix([0, 9]) == (1, 10) and trie.longest_known_prefix([1, 1]) == (1, 30)
    row = int(trie.step(1, trie.step(0, torch.tensor([0]), torch.tensor([1])), torch.tensor([0])))
    assert table.item_ids[row] == 30


def test_lcrec_index_export_round_trip_and_collisions_on_import(tmp_path):
    """05 writes LC-Rec's index.json; reading it back gives the same SIDs. An index with shared
    tuples is refused with the setting that fixes it, and that setting moves only the repeats."""
    codes = np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0], [0, 0, 0]])
    ids = ["10", "11", "12", "13"]
    path = export_lcrec_index(codes, ids, tmp_path / "index.json")
    assert json.loads(path.read_text())["11"] == ["<a_1>", "<b_2>", "<c_1>"]
    back, scheme = import_lcrec_index(path, ids)
    assert np.array_equal(back, codes) and list(scheme.codebook_sizes) == [4, 3, 2]
    # a published index with shared tuples: items 11 and 13 repeat 10's and 12's
    shared = {"10": ["<a_1>", "<b_2>", "<c_0>"], "11": ["<a_1>", "<b_2>", "<c_0>"],
              "12": ["<a_3>", "<b_0>", "<c_0>"], "13": ["<a_3>", "<b_0>", "<c_0>"], "14": ["<a_1>", "<b_2>", "<c_1>"]}
    (tmp_path / "shared.json").write_text(json.dumps(shared))
    ids = list(shared)
    with pytest.raises(SidError, match='import_collisions = "next_free"'):
        import_lcrec_index(tmp_path / "shared.json", ids)
    raw, _ = import_lcrec_index(tmp_path / "shared.json", ids, duplicates=True)
    fixed, moved = resolve_collisions(raw)
    assert moved == 2 and len(np.unique(fixed, axis=0)) == 5
    assert fixed[[0, 2, 4]].tolist() == raw[[0, 2, 4]].tolist()  # only the repeats move
    assert fixed[1].tolist() == [1, 2, 2] and fixed[3].tolist() == [3, 0, 1]  # next free last code under the prefix
    items = pd.DataFrame({"item_id": range(5), "source_id": ids, "title": [f"t{i}" for i in range(5)]})
    table, metrics = build_table(items, None, 0, tmp_path / "shared.json", import_collisions="next_free")
    assert metrics["import_moved"] == 2 and np.array_equal(table.codes, fixed)
    with pytest.raises(SidError, match="next_free"):
        build_table(items, None, 0, tmp_path / "shared.json")
