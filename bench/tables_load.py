"""Speed of the `tables` source: how long `load_tables` takes on a few million interactions.

    .venv/bin/python bench/tables_load.py [--interactions 3000000] [--users N] [--items N] [--formats parquet,csv]

Writes N synthetic interactions (random users x items, epoch-second times, ratings 1..5) and
an items table (title, "a|b" categories) in each format to a temp folder, times `load_tables`
on them (best of `--repeat`), prints a table and writes artifacts/bench/tables_load.json.
Goal: a few million interactions in seconds — the loader is column-wise pandas/pyarrow, with
no Python loop over interactions. Writing the files is not timed.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sidlib import paths  # noqa: E402
from sidlib.config import DataConfig  # noqa: E402
from sidlib.data.tables import load_tables  # noqa: E402

EXT = {"parquet": ".parquet", "csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl"}


def synthetic(n: int, users: int, items: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, interactions) frames: every item is named, so nothing is skipped."""
    rng = np.random.default_rng(seed)
    item_ids = np.array([f"i{j}" for j in range(items)], dtype=object)
    items_df = pd.DataFrame({"item_id": item_ids, "title": [f"Item {j}" for j in range(items)],
                             "categories": [f"C{j % 20}|S{j % 7}" for j in range(items)]})
    inter = pd.DataFrame({
        "user_id": np.char.add("u", rng.integers(0, users, n).astype(str)),
        "item_id": item_ids[rng.integers(0, items, n)],
        "timestamp": 1_600_000_000 + rng.integers(0, 100_000_000, n),
        "rating": rng.integers(1, 6, n).astype(float),
    })
    return items_df, inter


def write(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interactions", type=int, default=3_000_000)
    ap.add_argument("--users", type=int, default=0, help="default: interactions / 20")
    ap.add_argument("--items", type=int, default=0, help="default: interactions / 60")
    ap.add_argument("--formats", default="parquet,csv", help=f"comma separated: {', '.join(EXT)}")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    n = args.interactions
    users, items = args.users or max(n // 20, 1), args.items or max(n // 60, 1)
    items_df, inter = synthetic(n, users, items)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tables_load_") as tmp:
        folder = Path(tmp)
        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            ext = EXT[fmt]
            t = time.perf_counter()
            write(items_df, folder / f"items{ext}")
            write(inter, folder / f"inter{ext}")
            write_s = time.perf_counter() - t
            cfg = DataConfig(source="tables", path=str(folder), items_file=f"items{ext}",
                             interactions_file=f"inter{ext}")
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                raw = load_tables(cfg, folder)
                best = min(best, time.perf_counter() - t)
            assert len(raw.interactions) == n and len(raw.items) == items, "synthetic rows were skipped"
            mb = sum((folder / f).stat().st_size for f in (f"items{ext}", f"inter{ext}")) / 2**20
            rows.append({"format": fmt, "interactions": n, "items": items, "users": users,
                         "file_mb": round(mb, 1), "load_s": round(best, 2), "write_s": round(write_s, 2),
                         "interactions_per_s": round(n / best)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    result = {"rows": rows, "python": platform.python_version(), "pandas": pd.__version__,
              "machine": platform.machine(), "cpus": __import__("os").cpu_count()}
    print("wrote", paths.write_bench("tables_load", result))
    return result


if __name__ == "__main__":
    main()
