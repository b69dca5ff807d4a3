"""data.source = "recbole": RecBole atomic files — ml-100k from the recbole wheel read by the generic
loader, an Amazon-style dataset written in RecBole's layout, and every bad input's error or skip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidlib import paths
from sidlib.config import DataConfig
from sidlib.data import DataError, load_raw
from sidlib.data.prep import prepare

ML_COLUMNS = {"title": "movie_title", "categories": "class"}
ITEM_HEADER = "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def ml100k() -> Path:
    try:
        return paths.movielens_100k_dir()
    except paths.AssetMissing as e:
        pytest.skip(str(e))


def write_dataset(folder: Path, name: str = "shop", items: list[str] | None = None,
                  inter: list[str] | None = None, item_header: str = ITEM_HEADER,
                  inter_header: str = INTER_HEADER) -> Path:
    """An Amazon-style RecBole dataset (the fields RecBole's Amazon conversions carry)."""
    folder.mkdir(parents=True, exist_ok=True)
    items = items if items is not None else [
        "A1\tRed Pen\tOffice Pens\tAcme\t1.5", "B2\tBlue Ink\tOffice Ink\tAcme\t3",
        "C3\tPaper Pad\tPaper\t\t2.25", "D4\tStapler\t\tClip\t9"]
    inter = inter if inter is not None else [
        "u1\tA1\t5\t1700000000", "u1\tB2\t3\t1700000010", "u1\tC3\t4\t1700000020",
        "u2\tB2\t5\t1700000005", "u2\tD4\t4.5\t1700000006", "u3\tA1\t2\t1700000030"]
    (folder / f"{name}.item").write_text("\n".join([item_header, *items]) + "\n")
    (folder / f"{name}.inter").write_text("\n".join([inter_header, *inter]) + "\n")
    return folder


def cfg(folder: Path, name: str = "shop", **kw) -> DataConfig:
    return DataConfig(source="recbole", path=str(folder), name=name, **kw)


# ---------------------------------------------------------------- real and round-trip data


def test_ml100k_through_the_generic_loader_matches_the_movielens_source():
    """The wheel's ml-100k by name alone (data.path "" = the wheel's examples): same users, items and
    events as source "movielens", which only adds the two row repairs."""
    ml100k()
    raw = load_raw(DataConfig(source="recbole", name="ml-100k", columns=ML_COLUMNS))
    ml = load_raw(DataConfig(source="movielens"))
    assert (raw.interactions.user_id.nunique(), len(raw.items), len(raw.interactions)) == (943, 1682, 100_000)
    assert raw.source == "recbole" and raw.skipped == {}
    assert raw.interactions.equals(ml.interactions)
    items = raw.items.set_index("item_id")
    assert items.loc["1", "categories"] == ["Animation", "Children's", "Comedy"]  # token_seq split on " "
    assert json.loads(items.loc["1", "extra"]) == {"release_year": "1995"}  # an unmapped field, kept
    assert items.loc["267", "title"] == "unkonwn"  # the movielens source repairs it; the generic one keeps it
    assert ml.items.set_index("item_id").loc["267", "title"] == ""


def test_amazon_style_dataset_in_recbole_layout(tmp_path):
    """data.path may be RecBole's data_path (files in <name>/); threshold and prep as for any source."""
    write_dataset(tmp_path / "shop")
    raw = load_raw(cfg(tmp_path, rating_threshold=3))
    items = raw.items.set_index("item_id")
    assert items.loc["A1", "categories"] == ["Office", "Pens"] and items.loc["D4", "categories"] == []
    assert items.loc["C3", "brand"] == "" and json.loads(items.loc["B2", "extra"]) == {"price": "3"}
    assert raw.interactions.values.tolist() == [
        ["u1", "A1", 1700000000, 5.0], ["u1", "B2", 1700000010, 3.0], ["u1", "C3", 1700000020, 4.0],
        ["u2", "B2", 1700000005, 5.0], ["u2", "D4", 1700000006, 4.5]]
    assert raw.skipped == {"shop.inter: rating below data.rating_threshold=3 (or missing)": 1}
    rng = np.random.default_rng(0)  # and the rest of 01 over it
    events = [f"u{u}\t{'ABCD'[j]}{j + 1}\t5\t{1700000000 + 10 * u + t}"
              for u in range(20) for t, j in enumerate(rng.permutation(4)[:3])]
    write_dataset(tmp_path / "shop", inter=events)
    prep = prepare(load_raw(cfg(tmp_path, kcore=2)), cfg(tmp_path, kcore=2), seed=0)
    assert len(prep.items) == 4 and prep.items["categories"].iloc[0]


def test_custom_field_names_and_separator(tmp_path):
    write_dataset(tmp_path, item_header="iid:token\tname:token\ttags:token_seq\tbrand:token\tprice:float",
                  inter_header="uid:token\tiid:token\tscore:float\tts:token",
                  items=["A1\tRed Pen\tOffice,Pens\tAcme\t1"],
                  inter=["u1\tA1\t5\t2024-05-01", "u1\tA1\t4\t2024-05-02T10:00:00Z"])
    columns = {"user": "uid", "item": "iid", "rating": "score", "timestamp": "ts", "title": "name",
               "categories": "tags"}
    raw = load_raw(cfg(tmp_path, columns=columns, seq_separator=","))
    assert raw.items.categories.tolist() == [["Office", "Pens"]]
    assert raw.interactions.timestamp.tolist() == [1714521600, 1714644000]  # dates in a token field


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("header, message", [
    ("item_id\ttitle:token_seq", r"shop\.item:1: header field 'item_id' has no type"),
    ("item_id:token\ttitle:text", r"header field 'title:text' has the unknown type 'text'"),
    ("item_id:token\titem_id:token_seq", r"field 'item_id' appears twice"),
])
def test_bad_headers(tmp_path, header, message):
    write_dataset(tmp_path, item_header=header, items=["A1\tx"])
    with pytest.raises(DataError, match=message):
        load_raw(cfg(tmp_path))


@pytest.mark.parametrize("columns, message", [
    ({"timestamp": "item_id"}, r"shop\.inter: timestamp maps to field 'item_id' of type token"),  # token ok...
    ({"user": "rating"}, r"user maps to field 'rating' of type float; user needs a token field"),
    ({"title": "price"}, r"title maps to field 'price' of type float; title needs a token or token_seq field"),
])
def test_a_mapping_onto_the_wrong_type(tmp_path, columns, message):
    write_dataset(tmp_path)
    if columns == {"timestamp": "item_id"}:  # ...but item ids are not times: named as such
        message = r"shop\.inter: row 1: column 'item_id' value 'A1' is not a time"
    with pytest.raises(DataError, match=message):
        load_raw(cfg(tmp_path, columns=columns))


def test_missing_field_lists_the_header(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(DataError, match=r"shop\.item: missing columns title \('name'\); columns found: "
                                        r"\['item_id', 'title', 'categories', 'brand', 'price'\]"):
        load_raw(cfg(tmp_path, columns={"title": "name"}))


def test_files_that_are_missing_empty_or_ragged(tmp_path):
    with pytest.raises(DataError, match=r"no shop\.inter here or in shop/.*found: nothing"):
        load_raw(cfg(tmp_path))
    write_dataset(tmp_path)
    (tmp_path / "shop.item").unlink()
    with pytest.raises(DataError, match=r"shop\.item: not found; expected RecBole atomic files"):
        load_raw(cfg(tmp_path))
    with pytest.raises(DataError, match="data.name is empty"):
        load_raw(cfg(tmp_path, name=""))
    write_dataset(tmp_path, items=[])
    with pytest.raises(DataError, match=r"shop\.item: a header and no records"):
        load_raw(cfg(tmp_path))
    (tmp_path / "shop.item").write_text("")
    with pytest.raises(DataError, match=r"shop\.item: the file is empty"):
        load_raw(cfg(tmp_path))
    write_dataset(tmp_path, inter=["u1\tA1\t5\t1700000000", "u1\tB2\t3\t1700000010\tsurplus"])
    with pytest.raises(DataError, match=r"shop\.inter: Expected 4 fields in line 3, saw 5; RecBole atomic"):
        load_raw(cfg(tmp_path))
    (tmp_path / "shop.inter").write_bytes(INTER_HEADER.encode() + b"\nu1\tA1\t5\t\xff\n")
    with pytest.raises(DataError, match=r"shop\.inter: not UTF-8 text"):
        load_raw(cfg(tmp_path))


def test_bad_rows_are_counted_skips_or_strict_errors(tmp_path):
    write_dataset(tmp_path, inter=["u1\tA1\tfive\t1700000000", "u1\tB2\t3\t", "\tC3\t4\t1700000020",
                                   "u2\tZ9\t5\t1700000005", "u2\tD4\t4\tsoon", "u3\tA1\t2\t1700000030"])
    raw = load_raw(cfg(tmp_path))
    assert raw.interactions.values.tolist() == [["u3", "A1", 1700000030, 2.0]]
    assert raw.skipped == {
        "shop.inter: unparsable timestamp": 1, "shop.inter: unparsable rating": 1,
        "shop.inter: missing timestamp (row number, header excluded)": 1,
        "shop.inter: missing user id (row number, header excluded)": 1,
        "shop.inter: interaction with unknown item": 1}
    with pytest.raises(DataError, match=r"shop\.inter:5: unparsable timestamp: 'soon'.*strict mode"):
        load_raw(cfg(tmp_path, strict=True))


def test_one_item_id_with_two_titles(tmp_path):
    write_dataset(tmp_path, items=["A1\tRed Pen\t\t\t1", "A1\tBlue Pen\t\t\t1"])
    with pytest.raises(DataError, match=r"item id 'A1' has two titles: row 1 'Red Pen' and row 2 'Blue Pen'"):
        load_raw(cfg(tmp_path))
