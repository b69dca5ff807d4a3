"""`python -m sidlib new-profile`: a starter profile for a user's own tables (written here in their
real formats) and for RecBole files (ml-100k from the recbole wheel); the file it writes loads,
and 01-prep runs on it through the runner."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sidlib import config, paths, runner, summary
from sidlib.__main__ import main
from sidlib.data import load_raw
from sidlib.data.schema import DataError
from sidlib.new_profile import make


def shop(folder, repeat: bool = False, ext: str = ".csv"):
    """60 customers x 8 events over 40 products, dates as ISO text, categories as "A > B" strings."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({"product_id": [f"P{j:03d}" for j in range(40)],
                          "product_name": [f"Widget model {j}" for j in range(40)],
                          "category_path": [f"Tools > {'Hand' if j % 2 else 'Power'}" for j in range(40)],
                          "price": rng.uniform(1, 50, 40).round(2)})
    rows = []
    for u in range(60):
        seq = list(rng.choice(40, 8, replace=False))
        if repeat and u % 2:
            seq[-1] = seq[0]  # half the customers buy their first product again
        rows += [(f"c{u}", f"P{j:03d}", f"2024-0{1 + t // 4}-{10 + t:02d}T10:00:00Z") for t, j in enumerate(seq)]
    events = pd.DataFrame(rows, columns=["customer_id", "product_id", "event_time"])
    if ext == ".parquet":
        items.to_parquet(folder / "products.parquet", index=False)
        events.to_parquet(folder / "orders.parquet", index=False)
    else:
        items.to_csv(folder / f"products{ext}", index=False)
        events.to_csv(folder / f"orders{ext}", index=False)
    return folder / f"products{ext}", folder / f"orders{ext}"


def test_starter_profile_for_shop_tables_runs_01(tmp_roots, tmp_path, capsys):
    items, events = shop(tmp_path / "exports")
    out = tmp_path / "profiles" / "shop.toml"
    assert main(["new-profile", "--items", str(items), "--interactions", str(events), "--out", str(out)]) == 0
    assert "next: python -m sidlib run --profile" in capsys.readouterr().out
    text = out.read_text()
    assert 'path = "../exports"' in text and 'categories_sep = ">"' in text  # relative to the file; detected
    assert 'name = "exports"' in text  # default name: the items file's folder
    cfg = config.load(str(out))
    assert cfg.data.source == "tables" and cfg.data.columns == {
        "user": "customer_id", "item": "product_id", "timestamp": "event_time", "title": "product_name",
        "categories": "category_path"}
    assert cfg.baselines.exclude_history is True and cfg.rqvae.codebook_size == 16 and cfg.baselines.max_len == 20
    assert cfg.data.kcore == 5 and "#   k = 5: 60 users, 40 items, 480 events" in text
    raw = load_raw(cfg.data)
    assert raw.items.set_index("item_id").loc["P001", "categories"] == ["Tools", "Hand"]
    lines: list[str] = []
    assert runner.run(str(out), "01", echo=lines.append) == 0, "\n".join(lines)
    prep = summary.load("exports")["stages"]["prep"]["metrics"]
    assert prep["repeat_test_share"] == 0.0


def test_repeat_consumption_keeps_the_history_and_parquet_lists(tmp_path):
    items, events = shop(tmp_path, repeat=True, ext=".parquet")
    text, s = make(items, events, "rep", tmp_path / "rep.toml")
    assert s.repeat_last == pytest.approx(0.5) and not s.exclude_history
    assert "exclude_history = false" in text and "repeats happen" in text


def test_recbole_files_of_ml100k(tmp_path):
    try:
        folder = paths.movielens_100k_dir()
    except paths.AssetMissing as e:
        pytest.skip(str(e))
    out = tmp_path / "ml.toml"
    text, s = make(folder / "ml-100k.item", folder / "ml-100k.inter", "ml", out)
    out.write_text(text)
    cfg = config.load(str(out))
    assert (cfg.data.source, cfg.data.name) == ("recbole", "ml-100k")
    assert cfg.data.columns == {"title": "movie_title", "categories": "class"}
    assert (s.items, s.users, s.kcore, s.codebook_size) == (1682, 943, 5, 64)  # ml100k's own 64
    assert s.kcore_table[5] == (943, 1349, 99_287) and cfg.baselines.exclude_history is True
    assert "rating_threshold" in text  # commented: the log has ratings


def test_bad_input(tmp_path):
    items, events = shop(tmp_path)
    pd.read_csv(events).rename(columns={"event_time": "when_it_happened"}).to_csv(events, index=False)
    with pytest.raises(DataError, match=r"orders\.csv: cannot tell which column is the timestamp; columns found: "
                                        r"\['customer_id', 'product_id', 'when_it_happened'\] — name it with --map"):
        make(items, events, "x", tmp_path / "x.toml")
    text, _ = make(items, events, "x", tmp_path / "x.toml", given={"timestamp": "when_it_happened"})
    assert 'timestamp = "when_it_happened"' in text
    with pytest.raises(DataError, match=r"--map timestamp=whenever: no such column"):
        make(items, events, "x", tmp_path / "x.toml", given={"timestamp": "whenever"})
    with pytest.raises(DataError, match=r"--map: unknown names \['time'\]"):
        make(items, events, "x", tmp_path / "x.toml", given={"time": "when_it_happened"})
    pd.read_csv(items).rename(columns={"product_id": "sku"}).to_csv(items, index=False)
    with pytest.raises(DataError, match=r"the item column differs: products\.csv has 'sku', orders\.csv has "
                                        r"'product_id'"):
        make(items, events, "x", tmp_path / "x.toml", given={"timestamp": "when_it_happened"})
    (tmp_path / "taken.toml").write_text("")
    assert main(["new-profile", "--items", str(items), "--interactions", str(events),
                 "--out", str(tmp_path / "taken.toml")]) == 2  # exists: --force to overwrite
    pd.DataFrame({"customer_id": ["c1"], "sku": ["P001"], "when_it_happened": ["yesterday"]}).to_csv(
        events, index=False)
    with pytest.raises(DataError, match=r"orders\.csv: row 1: column 'when_it_happened' value 'yesterday' is not a time"):
        make(items, events, "x", tmp_path / "x.toml", given={"timestamp": "when_it_happened", "item": "sku"})
