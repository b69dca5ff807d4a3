"""Raw-data loaders (stage 01-prep): real shared files where present, small written files else."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sidlib import paths
from sidlib.config import DataConfig
from sidlib.data import DataError, RawData, load_raw
from sidlib.data.amazon2023 import load_amazon2023
from sidlib.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS

SHARED = paths.shared_data()


def shared(folder: str) -> Path:
    path = SHARED / folder
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is missing (set SIDLIB_SHARED_DATA)")
    return path


def check_schema(raw: RawData) -> None:
    """The contract of schema.py: columns, dtypes, list columns, JSON extra."""
    assert list(raw.items.columns[: len(ITEM_COLUMNS)]) == ITEM_COLUMNS
    assert list(raw.interactions.columns[:4]) == INTERACTION_COLUMNS
    inter, items = raw.interactions, raw.items
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    for col in ("user_id", "item_id"):
        assert pd.api.types.is_string_dtype(inter[col]) and inter[col].notna().all()
    for col in ("item_id", "title", "description", "brand", "extra"):
        assert pd.api.types.is_string_dtype(items[col]) and items[col].notna().all()
    assert items["item_id"].is_unique
    for col in ("features", "categories"):
        assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in items[col])
    assert all(isinstance(json.loads(e), dict) for e in items["extra"])
    assert inter["item_id"].isin(items["item_id"]).all()
    assert list(raw.pairs.columns) == ["src", "dst", "kind"]


# ---------------------------------------------------------------- real data


def test_movielens_100k_counts_and_repaired_rows():
    try:
        paths.movielens_100k_dir()
    except paths.AssetMissing as e:
        pytest.skip(str(e))
    raw = load_raw(DataConfig(source="movielens"))
    check_schema(raw)
    inter, items = raw.interactions, raw.items.set_index("item_id")
    assert (inter.user_id.nunique(), len(items), len(inter)) == (943, 1682, 100_000)
    assert raw.skipped == {}
    # file order kept (timestamps tie; prep sorts stably)
    assert inter.iloc[0].tolist() == ["196", "242", 881250949, 3.0]
    # 267: "unkonwn" everywhere -> empty title and no categories (prep's title filter drops it)
    assert items.loc["267", "title"] == "" and items.loc["267", "categories"] == []
    # 1412: year "V", the year was inside the title
    assert items.loc["1412", "title"] == "Land Before Time III: The Time of the Great Giving"
    assert json.loads(items.loc["1412", "extra"]) == {"release_year": 1995}
    assert items.loc["1", "categories"] == ["Animation", "Children's", "Comedy"]
    genres = {g for cats in items["categories"] for g in cats}
    assert {"Children's", "Film-Noir", "Sci-Fi"} <= genres and "unknown" not in genres
    assert len(genres) == 18


def test_movielens_atomic_files_malformed_rows(tmp_path):
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tOld Film (1931)\tV\tFilm-Noir\n"
        "3\tshort line\n")  # a short line is empty trailing fields, as RecBole reads it: no year, no genre
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t1\t4\t881250949\n7\t2\tfour\t881250950\n8\t2\t3\t\n8\t4\t3\t881250951\n9\t1\t5\t881250949\n")
    raw = load_raw(DataConfig(source="movielens", path=str(tmp_path)))
    check_schema(raw)
    assert raw.interactions.values.tolist() == [["7", "1", 881250949, 4.0], ["9", "1", 881250949, 5.0]]
    assert raw.items.title.tolist() == ["Toy Story", "Old Film", "short line"]
    assert raw.items.categories.tolist()[2] == [] and json.loads(raw.items.extra[1]) == {"release_year": 1931}
    assert raw.skipped == {"ml-100k.inter: unparsable rating": 1,
                           "ml-100k.inter: missing timestamp (row number, header excluded)": 1,
                           "ml-100k.inter: interaction with unknown item": 1}
    with pytest.raises(DataError, match=r"ml-100k\.inter:2: unparsable rating: 'four'"):
        load_raw(DataConfig(source="movielens", path=str(tmp_path), strict=True))


def test_lcrec_scientific_counts_and_positions():
    folder = shared("amazon2018-scientific")
    raw = load_raw(DataConfig(source="lcrec", path=str(folder), name="Scientific"))
    check_schema(raw)
    inter = raw.interactions
    assert (len(raw.items), inter.user_id.nunique(), len(inter)) == (4344, 8317, 58_492)
    assert raw.skipped == {} and raw.interactions["rating"].isna().all()
    first = inter[inter.user_id == "0"]
    assert first.item_id.tolist() == [str(i) for i in range(9)]
    assert first.timestamp.tolist() == list(range(9))  # LC-Rec: position in the sequence
    # category names holding ", " stay whole
    cats = {c for cs in raw.items["categories"] for c in cs}
    assert "Tapes, Adhesives & Sealants" in cats and "Tapes" not in cats
    assert raw.items.set_index("item_id").loc["0", "categories"] == [
        "Industrial & Scientific", "Industrial Electrical", "Passive Components", "Capacitors"]


def test_lcrec_shared_prefix_and_index_file(tmp_path):
    shared("amazon2018-scientific")
    raw = load_raw(DataConfig(source="lcrec", path="shared:amazon2018-scientific", name="Scientific"))
    assert len(raw.items) == 4344
    # a small LC-Rec folder: index.json reported, an unknown item counted
    (tmp_path / "T.item.json").write_text(json.dumps(
        {"0": {"title": "a", "description": "", "brand": "b", "categories": "X,Y, Z"}, "1": {"title": "c"}}))
    (tmp_path / "T.inter.json").write_text(json.dumps({"u": [0, 1, 7], "v": [1, 0]}))
    (tmp_path / "T.index.json").write_text(json.dumps({"0": ["<a_1>", "<b_2>"], "1": ["<a_3>", "<b_4>"]}))
    raw = load_raw(DataConfig(source="lcrec", path=str(tmp_path), name="T"))
    check_schema(raw)
    assert str(tmp_path / "T.index.json") in raw.files
    assert len(raw.interactions) == 4
    assert raw.skipped == {"T.inter.json: interaction with unknown item": 1}
    assert raw.items.categories.tolist() == [["X", "Y, Z"], []]


def test_amazon2018_gift_cards():
    folder = shared("amazon2018-gift-cards")
    raw = load_raw(DataConfig(source="amazon2018", path=str(folder), name="Gift_Cards"))
    check_schema(raw)
    inter = raw.interactions
    assert (inter.user_id.nunique(), inter.item_id.nunique(), len(inter)) == (458, 148, 2972)
    assert len(raw.items) == 1547 and raw.skipped == {}  # all metadata items kept; prep drops the rest
    assert inter.timestamp.between(1.2e9, 1.6e9).all()  # seconds
    # also_buy pairs among reviewed items
    reviewed = set(inter.item_id)
    assert len(raw.pairs) == 1918 and set(raw.pairs.kind) == {"also_buy"}
    assert set(raw.pairs.src) <= reviewed and set(raw.pairs.dst) <= reviewed
    assert not raw.pairs.duplicated().any() and (raw.pairs.src != raw.pairs.dst).all()
    no_pairs = load_raw(DataConfig(source="amazon2018", path=str(folder), name="Gift_Cards", metadata_pairs=False))
    assert no_pairs.pairs.empty
    item = raw.items.set_index("item_id").loc["B001BKEWF2"]
    assert item.title == "Serendipity 3 $100.00 Gift Card" and item.brand == "Serendipity 3"
    assert item.description.count("\n") == 1  # two paragraphs joined


def test_amazon2023_benchmark_rating_only():
    folder = shared("amazon2023-all-beauty")
    raw = load_raw(DataConfig(source="amazon2023_benchmark", path=str(folder), name="All_Beauty",
                              benchmark="rating_only"))
    check_schema(raw)
    inter = raw.interactions
    assert (inter.user_id.nunique(), inter.item_id.nunique(), len(inter)) == (253, 356, 2535)
    assert len(raw.items) == 356 and "split" not in inter and raw.skipped == {}
    assert inter.timestamp.min() > 1e12  # milliseconds
    item = raw.items.set_index("item_id").loc["B08LYT4Q2X"]
    assert item.brand == "Shiny Leaf" and json.loads(item.extra)["details"]["Item Form"] == "Oil"


def test_amazon2023_benchmark_official_split():
    folder = shared("amazon2023-all-beauty")
    raw = load_raw(DataConfig(source="amazon2023_benchmark", path=str(folder), name="All_Beauty"))
    check_schema(raw)
    inter = raw.interactions
    counts = inter.split.value_counts().to_dict()
    users = inter.user_id.nunique()
    assert users == 253 and counts == {"train": 2029, "valid": users, "test": users}
    # the same rows as rating_only
    only = load_raw(DataConfig(source="amazon2023_benchmark", path=str(folder), name="All_Beauty",
                               benchmark="rating_only")).interactions
    key = INTERACTION_COLUMNS
    assert only.sort_values(key).reset_index(drop=True).equals(inter[key].sort_values(key).reset_index(drop=True))


# ---------------------------------------------------------------- Amazon 2023 raw schema (written files)

TOY_META = [
    {"main_category": "Toys", "title": "Red Ball", "average_rating": 4.5, "rating_number": 10,
     "features": ["Rubber", "10 cm"], "description": ["A red ball.", "Bounces."], "price": 9.99,
     "images": [{"thumb": "t", "large": "l", "variant": "MAIN", "hi_res": None}], "videos": [],
     "store": "BallCo", "categories": ["Toys", "Balls"], "details": {"Brand": "Acme", "Color": "Red"},
     "parent_asin": "P1", "bought_together": ["P2", "P9"]},
    {"main_category": "Toys", "title": "Blue Kite", "average_rating": 4.0, "rating_number": 3,
     "features": [], "description": [], "price": None, "images": [], "videos": [],
     "store": "KiteStore", "categories": [], "details": {"Material": "Nylon"},
     "parent_asin": "P2", "bought_together": None},
    {"main_category": "Toys", "title": "Yo-yo", "average_rating": 3.0, "rating_number": 1,
     "features": ["Wood"], "description": ["Classic."], "price": "None", "images": [], "videos": [],
     "store": None, "categories": ["Toys"], "details": {}, "parent_asin": "P3", "bought_together": None},
]


def review(user: str, item: str, ts: int, rating: float = 5.0) -> dict:
    return {"rating": rating, "title": "ok", "text": "fine", "images": [], "asin": item + "-child",
            "parent_asin": item, "user_id": user, "timestamp": ts, "helpful_vote": 0, "verified_purchase": True}


TOY_REVIEWS = [
    review("U1", "P1", 1_600_000_000_000), review("U1", "P2", 1_600_000_000_500, 4.0),
    review("U2", "P2", 1_600_000_001_000), review("U2", "P3", 1_600_000_002_000, 3.0),
    review("U2", "P404", 1_600_000_003_000),  # no metadata row: dropped and counted
    review("U3", "P1", 1_600_000_004_000),
]


def write_jsonl(path: Path, rows: list, bad_line_at: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if bad_line_at is not None:
        lines.insert(bad_line_at, '{"user_id": "U9", "parent_asin": "P1", ')  # truncated JSON
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_toy(folder: Path, suffix: str = "", bad_line: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / f"Toy.jsonl{suffix}", TOY_REVIEWS, bad_line_at=2 if bad_line else None)
    write_jsonl(folder / f"meta_Toy.jsonl{suffix}", TOY_META)
    return folder


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_amazon2023_raw_local(tmp_path, suffix):
    folder = write_toy(tmp_path, suffix)
    raw = load_raw(DataConfig(source="amazon2023", path=str(folder), name="Toy"))
    check_schema(raw)
    inter = raw.interactions
    assert len(inter) == 5 and inter.user_id.tolist() == ["U1", "U1", "U2", "U2", "U3"]
    assert inter.timestamp.iloc[0] == 1_600_000_000_000 and inter.rating.tolist() == [5.0, 4.0, 5.0, 3.0, 5.0]
    assert raw.skipped == {f"Toy.jsonl{suffix}: malformed line": 1,
                           f"Toy.jsonl{suffix}: interaction with unknown item": 1}
    items = raw.items.set_index("item_id")
    assert list(items.index) == ["P1", "P2", "P3"]
    assert items.loc["P1", "brand"] == "Acme"  # details.Brand first
    assert items.loc["P2", "brand"] == "KiteStore"  # else the store
    assert items.loc["P3", "brand"] == ""
    assert items.loc["P1", "description"] == "A red ball.\nBounces."
    assert items.loc["P1", "features"] == ["Rubber", "10 cm"] and items.loc["P1", "categories"] == ["Toys", "Balls"]
    extra = json.loads(items.loc["P1", "extra"])
    assert extra["price"] == 9.99 and extra["details"]["Color"] == "Red" and extra["main_category"] == "Toys"
    assert "price" not in json.loads(items.loc["P3", "extra"])  # "None" price dropped
    # P9 has no metadata: only P1 -> P2 remains
    assert raw.pairs.values.tolist() == [["P1", "P2", "bought_together"]]


def test_amazon2023_raw_strict_and_missing_fields(tmp_path):
    folder = write_toy(tmp_path)
    with pytest.raises(DataError, match=r"Toy\.jsonl:3: malformed line"):
        load_raw(DataConfig(source="amazon2023", path=str(folder), name="Toy", strict=True))
    rows = TOY_REVIEWS[:2] + [{**TOY_REVIEWS[2], "user_id": None}, {**TOY_REVIEWS[3], "timestamp": "soon"}]
    write_jsonl(folder / "Toy.jsonl", rows)
    raw = load_raw(DataConfig(source="amazon2023", path=str(folder), name="Toy"))
    assert len(raw.interactions) == 2
    assert raw.skipped == {"Toy.jsonl: missing user id": 1, "Toy.jsonl: unparsable timestamp": 1}
    # unknown items are counted, never an error, even when strict
    write_jsonl(folder / "Toy.jsonl", TOY_REVIEWS)
    raw = load_raw(DataConfig(source="amazon2023", path=str(folder), name="Toy", strict=True))
    assert raw.skipped == {"Toy.jsonl: interaction with unknown item": 1}


def test_amazon2023_arrow_path_matches_line_reader(tmp_path):
    """Large files go through datasets' Arrow JSON reader; forced here with a 0-byte threshold."""
    folder = write_toy(tmp_path / "clean", bad_line=False)
    by_line = load_amazon2023(folder, "Toy")
    by_arrow = load_amazon2023(folder, "Toy", large_file_bytes=0, cache_dir=str(tmp_path / "cache"))
    pd.testing.assert_frame_equal(by_line.interactions, by_arrow.interactions)
    pd.testing.assert_frame_equal(by_line.items, by_arrow.items)
    assert by_arrow.skipped == by_line.skipped == {"Toy.jsonl: interaction with unknown item": 1}
    # a malformed line: the Arrow reader fails, the line reader counts it (or strict raises)
    folder = write_toy(tmp_path / "bad")
    raw = load_amazon2023(folder, "Toy", large_file_bytes=0, cache_dir=str(tmp_path / "cache"))
    assert raw.skipped["Toy.jsonl: malformed line"] == 1 and len(raw.interactions) == 5
    with pytest.raises(DataError, match="Toy.jsonl"):
        load_amazon2023(folder, "Toy", strict=True, large_file_bytes=0, cache_dir=str(tmp_path / "cache"))


def test_amazon2023_hub_path_same_as_local(tmp_path, monkeypatch):
    """Only the hub call is faked: the hub's Parquet has `details` as a JSON string."""
    import datasets

    import sidlib.data.amazon2023 as a23

    def fake_hub(hf_repo, name, num_proc, cache_dir):
        assert (hf_repo, name) == ("McAuley-Lab/Amazon-Reviews-2023", "Toy")
        meta = [{**m, "details": json.dumps(m["details"]), "price": str(m["price"])} for m in TOY_META]
        for m in meta:  # the hub schema is columnar: no ragged image structs needed here
            m.pop("images"), m.pop("videos")
        reviews = [{k: v for k, v in r.items() if k != "images"} for r in TOY_REVIEWS]
        return datasets.Dataset.from_list(reviews), datasets.Dataset.from_list(meta)

    monkeypatch.setattr(a23, "_hub_datasets", fake_hub)
    hub = load_raw(DataConfig(source="amazon2023", hf_repo="McAuley-Lab/Amazon-Reviews-2023", name="Toy"))
    local = load_raw(DataConfig(source="amazon2023", path=str(write_toy(tmp_path, bad_line=False)), name="Toy"))
    check_schema(hub)
    pd.testing.assert_frame_equal(hub.interactions, local.interactions)
    pd.testing.assert_frame_equal(hub.items, local.items)
    pd.testing.assert_frame_equal(hub.pairs, local.pairs)
    assert list(hub.skipped.values()) == [1] and hub.files[0].startswith("hf://datasets/")


# ---------------------------------------------------------------- Amazon 2014 (Python-literal meta)


def test_amazon2014_python_literal_meta(tmp_path):
    reviews = [
        {"reviewerID": "A1", "asin": "X1", "overall": 5.0, "unixReviewTime": 1400000000, "reviewText": "good"},
        {"reviewerID": "A1", "asin": "X2", "overall": 3.0, "unixReviewTime": 1400000100},
        {"reviewerID": "A2", "asin": "X2", "overall": "n/a", "unixReviewTime": 1400000200},  # bad rating
        {"reviewerID": "A2", "asin": "X3", "overall": 4.0, "unixReviewTime": 1400000300},
    ]
    write_jsonl(tmp_path / "reviews_Toy_5.json.gz", reviews)
    meta = [
        {"asin": "X1", "title": "Kite", "description": "A kite.", "price": 3.5, "brand": "Sky",
         "categories": [["Toys & Games", "Outdoor"], ["Toys & Games", "Kites"]], "salesRank": {"Toys": 12},
         "related": {"also_bought": ["X2", "X9"], "bought_together": ["X2"], "also_viewed": ["X3"]}},
        {"asin": "X2", "title": "Ball", "categories": [["Toys & Games"]], "related": {"also_bought": ["X1"]}},
        {"asin": "X3", "title": "Doll's house"},
    ]
    lines = [repr(m) for m in meta] + ["{'asin': 'X4', 'title': "]  # Python literals, one broken
    (tmp_path / "meta_Toy.json").write_text("\n".join(lines) + "\n")
    raw = load_raw(DataConfig(source="amazon2018", path=str(tmp_path), name="Toy"))
    check_schema(raw)
    assert raw.interactions.item_id.tolist() == ["X1", "X2", "X3"]
    assert raw.skipped == {"reviews_Toy_5.json.gz: unparsable rating": 1, "meta_Toy.json: malformed line": 1}
    items = raw.items.set_index("item_id")
    assert items.loc["X1", "categories"] == ["Toys & Games", "Outdoor", "Kites"]
    assert items.loc["X1", "description"] == "A kite." and items.loc["X1", "brand"] == "Sky"
    assert json.loads(items.loc["X1", "extra"]) == {"price": 3.5, "salesRank": {"Toys": 12}}
    assert items.loc["X3", "title"] == "Doll's house"
    assert raw.pairs.values.tolist() == [["X1", "X2", "also_buy"], ["X1", "X2", "bought_together"],
                                         ["X2", "X1", "also_buy"]]


# ---------------------------------------------------------------- bad input


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    for source, name in [("lcrec", "Scientific"), ("amazon2018", "Gift_Cards"), ("amazon2023", "Toy"),
                         ("amazon2023_benchmark", "All_Beauty"), ("movielens", "ml-100k")]:
        with pytest.raises(DataError, match="nowhere") as e:
            load_raw(DataConfig(source=source, path=str(missing), name=name))
        assert "\n" not in str(e.value) and "expected" in str(e.value)


def test_missing_files_name_the_expected_ones(tmp_path):
    with pytest.raises(DataError, match=r"Scientific\.item\.json"):
        load_raw(DataConfig(source="lcrec", path=str(tmp_path), name="Scientific"))
    with pytest.raises(DataError, match=r"Gift_Cards_5\.json"):
        load_raw(DataConfig(source="amazon2018", path=str(tmp_path), name="Gift_Cards"))
    with pytest.raises(DataError, match=r"Toy\.jsonl"):
        load_raw(DataConfig(source="amazon2023", path=str(tmp_path), name="Toy"))
    with pytest.raises(DataError, match=r"All_Beauty\.csv"):
        load_raw(DataConfig(source="amazon2023_benchmark", path=str(tmp_path), name="All_Beauty",
                            benchmark="rating_only"))


def test_unknown_source_and_settings():
    with pytest.raises(DataError, match="amazon2023_benchmark") as e:
        load_raw(DataConfig(source="netflix"))
    assert "netflix" in str(e.value) and "movielens" in str(e.value)
    with pytest.raises(DataError, match="data.path is empty"):
        load_raw(DataConfig(source="lcrec", name="Scientific"))
    with pytest.raises(DataError, match="data.hf_repo"):
        load_raw(DataConfig(source="amazon2023", name="Toy"))
    with pytest.raises(DataError, match="data.name is empty"):
        load_raw(DataConfig(source="lcrec", path="/tmp"))
    with pytest.raises(DataError, match="rating_only"):
        load_raw(DataConfig(source="amazon2023_benchmark", path="/tmp", name="X", benchmark="leave_one_out"))


def test_malformed_json_object_file(tmp_path):
    (tmp_path / "T.item.json").write_text("{not json")
    (tmp_path / "T.inter.json").write_text("{}")
    with pytest.raises(DataError, match=r"T\.item\.json: not a JSON file"):
        load_raw(DataConfig(source="lcrec", path=str(tmp_path), name="T"))


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, sidlib.data; sys.exit('torch' in sys.modules or 'datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
