"""data.source = "tables": the user's own items and interactions tables, written here in every
supported type, loaded through `load_raw`, and every bad input's error or counted skip."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sidlib.config import DataConfig
from sidlib.data import SOURCES, DataError, load_raw
from sidlib.data.prep import prepare
from sidlib.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS

# the user's own column names, mapped with data.columns
COLUMNS = {"user": "customer", "item": "sku", "timestamp": "when", "title": "name", "rating": "stars"}
CAT_COLUMNS = dict(COLUMNS, categories="cats")  # for the tables with_categories writes
T0 = 1_700_000_000  # epoch seconds, 2023-11-14


def items_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "sku": ["007", "B2", "C3", "D4"],
        "name": ["Red Pen", "Blue Ink", "Paper Pad", "Stapler"],
        "description": ["A pen.", None, "Lined, A4.", ""],
        "brand": ["Acme", "Acme", "", "Clip"],
        "price": [1.5, 3.0, 2.25, 9.0],
    })


def inter_frame() -> pd.DataFrame:
    """u1: seconds; u2: milliseconds; u3: ISO dates (as a text column they all stay text)."""
    return pd.DataFrame({
        "customer": ["u1", "u1", "u1", "u2", "u2", "u3", "u3"],
        "sku": ["007", "B2", "C3", "B2", "D4", "007", "D4"],
        "when": [T0, T0 + 10, T0 + 20, (T0 + 5) * 1000, (T0 + 6) * 1000, T0 + 30, T0 + 40],
        "stars": [5, 3, 4, 5, 4.5, 2, 5],
    })


def write(df: pd.DataFrame, path: Path) -> Path:
    """`df` as the table type of `path`'s extension (list columns as "a|b" in csv/tsv)."""
    name = path.name
    if name.endswith((".parquet", ".pq")):
        df.to_parquet(path, index=False)
    elif name.endswith((".jsonl", ".json", ".jsonl.gz")):
        text = df.to_json(orient="records", lines=True, force_ascii=False)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    else:
        flat = df.copy()
        for c in flat.columns:
            if flat[c].map(lambda v: isinstance(v, list)).any():
                flat[c] = flat[c].map("|".join)
        flat.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False,
                    compression="gzip" if name.endswith(".gz") else None)
    return path


def cfg_for(folder: Path, items: str, inter: str, **kw) -> DataConfig:
    return DataConfig(source="tables", path=str(folder), items_file=items, interactions_file=inter,
                      columns=kw.pop("columns", COLUMNS), **kw)


def write_pair(folder: Path, ext: str, items: pd.DataFrame | None = None,
               inter: pd.DataFrame | None = None) -> tuple[str, str]:
    write(items_frame() if items is None else items, folder / f"items{ext}")
    write(inter_frame() if inter is None else inter, folder / f"inter{ext}")
    return f"items{ext}", f"inter{ext}"


def with_categories(df: pd.DataFrame, as_text: bool) -> pd.DataFrame:
    df = df.copy()
    cats = [["Office", "Pens"], ["Office", "Ink"], ["Paper"], []]
    df["cats"] = ["|".join(c) for c in cats] if as_text else cats
    df["features"] = [["refillable"], [], ["80 gsm", "50 sheets"], ["metal"]]
    return df


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".parquet", ".jsonl", ".csv.gz", ".tsv.gz", ".jsonl.gz", ".pq"])
def test_round_trip_every_type(tmp_path, ext):
    items_file, inter_file = write_pair(tmp_path, ext, items=with_categories(items_frame(), as_text=False))
    raw = load_raw(cfg_for(tmp_path, items_file, inter_file, columns=CAT_COLUMNS))
    assert raw.source == "tables" and "tables" in SOURCES
    assert list(raw.items.columns) == ITEM_COLUMNS and list(raw.interactions.columns) == INTERACTION_COLUMNS
    items = raw.items.set_index("item_id")
    assert list(raw.items["item_id"]) == ["007", "B2", "C3", "D4"]  # "007" stays text in csv too
    assert items.loc["007", "title"] == "Red Pen" and items.loc["B2", "description"] == ""
    assert items.loc["C3", "categories"] == ["Paper"] and items.loc["D4", "categories"] == []
    assert items.loc["007", "categories"] == ["Office", "Pens"]
    assert items.loc["C3", "features"] == ["80 gsm", "50 sheets"]
    assert items.loc["D4", "brand"] == "Clip"
    assert json.loads(items.loc["C3", "extra"]) == {"price": 2.25}  # unmapped columns kept
    inter = raw.interactions
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    assert pd.api.types.is_string_dtype(inter["user_id"]) and pd.api.types.is_string_dtype(inter["item_id"])
    assert list(inter["user_id"]) == ["u1", "u1", "u1", "u2", "u2", "u3", "u3"]  # file order
    # ms (u2) became seconds
    assert list(inter["timestamp"]) == [T0, T0 + 10, T0 + 20, T0 + 5, T0 + 6, T0 + 30, T0 + 40]
    assert list(inter["rating"]) == [5, 3, 4, 5, 4.5, 2, 5]
    assert raw.skipped == {}


def test_categories_as_delimited_text_and_custom_separator(tmp_path):
    items = with_categories(items_frame(), as_text=True)
    items["cats"] = items["cats"].str.replace("|", " > ")
    write(items, tmp_path / "items.parquet")  # text in parquet: split even there
    write(inter_frame(), tmp_path / "inter.csv")
    raw = load_raw(cfg_for(tmp_path, "items.parquet", "inter.csv", columns=CAT_COLUMNS, categories_sep=">"))
    assert raw.items.set_index("item_id").loc["007", "categories"] == ["Office", "Pens"]


def test_iso_dates_and_datetime_columns(tmp_path):
    inter = inter_frame().assign(when=["2024-05-01", "2024-05-01T10:00:00Z", "2024-05-02 00:00:01",
                                       "2024-05-01T12:00:00+02:00", "1714521600", "2024-05-03", "2024-05-04"])
    items_file, inter_file = write_pair(tmp_path, ".csv", inter=inter)
    ts = load_raw(cfg_for(tmp_path, items_file, inter_file)).interactions["timestamp"]
    day = 1714521600  # 2024-05-01T00:00:00Z
    assert list(ts) == [day, day + 36000, day + 86401, day + 36000, day, day + 2 * 86400, day + 3 * 86400]
    # a real datetime column (parquet) gives the same seconds
    inter["when"] = pd.to_datetime(["2024-05-01"] * 7, utc=True)
    write(inter, tmp_path / "inter.parquet")
    ts = load_raw(cfg_for(tmp_path, items_file, "inter.parquet")).interactions["timestamp"]
    assert (ts == day).all()
    inter.loc[1, "when"] = pd.NaT  # a missing time is a counted skip, not 1970
    write(inter, tmp_path / "inter.parquet")
    raw = load_raw(cfg_for(tmp_path, items_file, "inter.parquet"))
    assert len(raw.interactions) == 6 and (raw.interactions["timestamp"] == day).all()
    assert raw.skipped == {"inter.parquet: missing timestamp (row number, header excluded)": 1}


def test_rating_threshold_and_default_column_names(tmp_path):
    items = items_frame().rename(columns={"sku": "item_id", "name": "title"})
    inter = inter_frame().rename(columns={"customer": "user_id", "sku": "item_id", "when": "timestamp",
                                          "stars": "rating"})
    items_file, inter_file = write_pair(tmp_path, ".jsonl", items=items, inter=inter)
    raw = load_raw(cfg_for(tmp_path, items_file, inter_file, columns={}, rating_threshold=4))
    assert list(raw.interactions["rating"]) == [5, 4, 5, 4.5, 5]
    assert raw.skipped == {"inter.jsonl: rating below data.rating_threshold=4 (or missing)": 2}
    assert (raw.items["categories"].map(len) == 0).all()  # no categories column: empty lists


def test_absolute_files_need_no_path(tmp_path):
    items_file, inter_file = write_pair(tmp_path, ".csv")
    cfg = DataConfig(source="tables", items_file=str(tmp_path / items_file),
                     interactions_file=str(tmp_path / inter_file), columns=COLUMNS)
    assert len(load_raw(cfg).interactions) == 7
    with pytest.raises(DataError, match="relative but data.path is empty"):
        load_raw(DataConfig(source="tables", items_file="items.csv", interactions_file="inter.csv"))


def test_prepare_accepts_a_loaded_table(tmp_path):
    """The rest of 01: 30 users x 6 events over 20 items survive k-core 2 and min_seq_len 3."""
    rng = np.random.default_rng(0)
    items = pd.DataFrame({"sku": [f"i{j}" for j in range(20)], "name": [f"Item {j}" for j in range(20)],
                          "cats": ["A|B"] * 20})
    inter = pd.DataFrame({"customer": np.repeat([f"u{u}" for u in range(30)], 6),
                          "sku": [f"i{j}" for j in rng.integers(0, 20, 180)],
                          "when": (T0 + np.arange(180)) * 1000, "stars": 5})
    items_file, inter_file = write_pair(tmp_path, ".parquet", items=items, inter=inter)
    cfg = cfg_for(tmp_path, items_file, inter_file, columns=CAT_COLUMNS, kcore=2)
    prep = prepare(load_raw(cfg), cfg, seed=0)
    assert len(prep.users) > 20 and len(prep.items) > 10
    assert prep.items["categories"].iloc[0] == ["A", "B"]


# ---------------------------------------------------------------- bad input


def test_misspelt_column_lists_the_columns_found(tmp_path):
    items_file, inter_file = write_pair(tmp_path, ".csv")
    cols = dict(COLUMNS, timestamp="time")
    with pytest.raises(DataError, match=r"inter\.csv: missing columns timestamp \('time'\); columns found: "
                                        r"\['customer', 'sku', 'when', 'stars'\]"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, columns=cols))
    with pytest.raises(DataError, match=r"items\.csv: missing columns title \('title'\)"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, columns=dict(COLUMNS, title="title")))
    # an optional column the user mapped must be there too; an unmapped one may be absent
    with pytest.raises(DataError, match=r"items\.csv: missing columns brand \('maker'\)"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, columns=dict(COLUMNS, brand="maker")))
    with pytest.raises(DataError, match=r"data\.columns: unknown keys \['usr'\]"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, columns=dict(COLUMNS, usr="x")))


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
def test_empty_file(tmp_path, ext):
    items_file, inter_file = write_pair(tmp_path, ext)
    if ext == ".parquet":
        write(inter_frame().iloc[:0], tmp_path / inter_file)
    else:
        (tmp_path / inter_file).write_text("")
    with pytest.raises(DataError, match=rf"inter{ext}: (the file is empty|no rows)"):
        load_raw(cfg_for(tmp_path, items_file, inter_file))


def test_duplicate_item_ids(tmp_path):
    items = pd.concat([items_frame(), items_frame().iloc[[1]].assign(name="Black Ink")], ignore_index=True)
    items_file, inter_file = write_pair(tmp_path, ".csv", items=items)
    with pytest.raises(DataError, match=r"items\.csv: item id 'B2' has two titles: row 2 'Blue Ink' "
                                        r"and row 5 'Black Ink'"):
        load_raw(cfg_for(tmp_path, items_file, inter_file))
    # the same row twice is harmless: the first is kept, counted
    items = pd.concat([items_frame(), items_frame().iloc[[1]]], ignore_index=True)
    write(items, tmp_path / items_file)
    raw = load_raw(cfg_for(tmp_path, items_file, inter_file))
    assert len(raw.items) == 4 and raw.skipped == {"items.csv: duplicate item id, same title (first kept)": 1}


def test_unknown_items_are_counted_skips(tmp_path):
    inter = pd.concat([inter_frame(), inter_frame().iloc[:2].assign(sku=["ZZ", "ZZ"])], ignore_index=True)
    items_file, inter_file = write_pair(tmp_path, ".tsv", inter=inter)
    raw = load_raw(cfg_for(tmp_path, items_file, inter_file))
    assert len(raw.interactions) == 7
    assert raw.skipped == {"inter.tsv: interaction with unknown item": 2}


def test_unparsable_timestamp_names_row_and_value(tmp_path):
    inter = inter_frame().astype({"when": str})
    inter.loc[4, "when"] = "yesterday"
    items_file, inter_file = write_pair(tmp_path, ".csv", inter=inter)
    with pytest.raises(DataError, match=r"inter\.csv: row 5: column 'when' value 'yesterday' is not a time"):
        load_raw(cfg_for(tmp_path, items_file, inter_file))


def test_timestamp_column_of_text_is_a_wrong_mapping(tmp_path):
    """Mapping the timestamp to a text column (here the item column) names the column and row 1."""
    items_file, inter_file = write_pair(tmp_path, ".parquet")
    with pytest.raises(DataError, match=r"inter\.parquet: row 1: column 'customer' value 'u1' is not a time"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, columns=dict(COLUMNS, timestamp="customer")))
    with pytest.raises(DataError, match=r"inter\.parquet: row 2: column 'sku' value 'B2' is not a number"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, columns=dict(COLUMNS, rating="sku")))
    items = with_categories(items_frame(), as_text=False)
    write(items, tmp_path / items_file)
    with pytest.raises(DataError, match=r"items\.parquet: row 1: column 'cats' holds"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, columns=dict(CAT_COLUMNS, title="cats")))


def test_missing_fields_are_counted_skips_or_strict_errors(tmp_path):
    inter = inter_frame().astype({"when": object})
    inter.loc[2, "when"] = None
    inter.loc[3, "customer"] = None
    items_file, inter_file = write_pair(tmp_path, ".jsonl", inter=inter)
    raw = load_raw(cfg_for(tmp_path, items_file, inter_file))
    assert len(raw.interactions) == 5
    assert raw.skipped == {"inter.jsonl: missing user id (row number, header excluded)": 1,
                           "inter.jsonl: missing timestamp (row number, header excluded)": 1}
    with pytest.raises(DataError, match=r"inter\.jsonl:4: missing user id"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, strict=True))


def test_empty_titles_are_left_to_prep_filter(tmp_path):
    """A NaN or blank title loads as "" and prep's data.min_title_chars filter drops it, counted."""
    items = items_frame()
    items.loc[2, "name"] = None
    items.loc[3, "name"] = "  "
    inter = pd.DataFrame({"customer": ["u1"] * 4 + ["u2"] * 4,
                          "sku": ["007", "B2", "007", "C3", "B2", "007", "B2", "D4"],
                          "when": T0 + np.arange(8), "stars": 5})
    items_file, inter_file = write_pair(tmp_path, ".csv", items=items, inter=inter)
    cfg = cfg_for(tmp_path, items_file, inter_file, kcore=0, dedupe=False)
    raw = load_raw(cfg)
    assert list(raw.items["title"]) == ["Red Pen", "Blue Ink", "", ""]
    prep = prepare(raw, cfg, seed=0)
    assert set(prep.items["source_id"]) == {"007", "B2"}
    assert prep.report["dropped"]["items"]["title shorter than 1 chars"] == 2


def test_threshold_without_rating_column(tmp_path):
    items_file, inter_file = write_pair(tmp_path, ".csv", inter=inter_frame().drop(columns="stars"))
    with pytest.raises(DataError, match=r"inter\.csv: data\.rating_threshold = 4\.0 needs a rating column"):
        load_raw(cfg_for(tmp_path, items_file, inter_file, rating_threshold=4.0,
                         columns={k: v for k, v in COLUMNS.items() if k != "rating"}))


@pytest.mark.parametrize("name", ["items.xlsx", "items", "items.parquet.gz"])
def test_unknown_extension(tmp_path, name):
    _, inter_file = write_pair(tmp_path, ".csv")
    (tmp_path / name).write_text("x")
    with pytest.raises(DataError, match=rf"{name}: unknown table type"):
        load_raw(cfg_for(tmp_path, name, inter_file))


def test_missing_file_and_setting(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: not found"):
        load_raw(cfg_for(tmp_path, "nope.csv", "inter.csv"))
    with pytest.raises(DataError, match=r"data\.items_file is empty"):
        load_raw(cfg_for(tmp_path, "", "inter.csv"))


def test_settings_from_a_profile_override():
    """data.columns is a TOML table; --set data.columns.user=... reaches it too."""
    from sidlib import config

    cfg = config.load(config.DEFAULT_PROFILE, ["data.source=tables", "data.columns.user=customer",
                                              "data.rating_threshold=4", "data.items_file=items.csv"])
    assert cfg.data.columns == {"user": "customer"} and cfg.data.rating_threshold == 4.0
    assert cfg.data.items_file == "items.csv" and cfg.data.categories_sep == "|"
    assert config.load(config.DEFAULT_PROFILE).data.columns == {}


def test_a_data_path_that_does_not_exist_and_a_user_with_one_event(tmp_path):
    """A relative data.path in a profile file resolves against the file and, missing, is named as
    the setting at fault; a user with one event is dropped by min_seq_len, counted in the report."""
    from sidlib import config

    f = tmp_path / "shop.toml"
    f.write_text('base = "smoke"\n[data]\nsource = "tables"\npath = "exports"\nitems_file = "items.csv"\n'
                 'interactions_file = "inter.csv"\n[data.columns]\nuser = "customer"\nitem = "sku"\n'
                 'timestamp = "when"\ntitle = "name"\nrating = "stars"\n')
    with pytest.raises(DataError, match=r"data\.path = '.*exports': no such folder .*expected the folder of the 'tables' files \(a relative path in a profile file is relative to that file"):
        load_raw(config.load(str(f)).data)
    (tmp_path / "exports").mkdir()
    inter = pd.concat([inter_frame(), pd.DataFrame({"customer": ["loner"], "sku": ["C3"], "when": [T0], "stars": [5]})])
    write_pair(tmp_path / "exports", ".csv", inter=inter)
    cfg = config.load(str(f), {"data.kcore": 0}).data
    prep = prepare(load_raw(cfg), cfg, seed=0)
    assert prep.report["dropped"]["users"]["min_seq_len=3"] == 3  # u2, u3 (2 events each) and the loner
    assert len(prep.users) == 1
