"""Where an item's codes come from besides the tokenizer, and what makes them unique: the dedup
level, collision statistics, LC-Rec `index.json` and parquet / CSV code tables, validated."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .scheme import SidError, SidScheme, as_codes, check_range, first_duplicate, sorted_order


# --------------------------------------------------------------------------- dedup level














def collision_stats(codes: np.ndarray) -> dict[str, Any]:
    """How far the tokenizer codes are from unique: items, unique tuples, the fraction of
    items whose tuple no other item has, the largest group of items sharing one tuple."""
    codes = as_codes(codes)
    n = len(codes)
    if n == 0:
        return {"items": 0, "unique_tuples": 0, "unique_ratio": 1.0, "items_without_collision": 0, "max_group": 0}
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "items": n,
        "unique_tuples": int(len(counts)),
        "unique_ratio": float(len(counts) / n),
        "items_without_collision": int((counts == 1).sum()),
        "items_without_collision_ratio": float((counts == 1).sum() / n),
        "max_group": int(counts.max()),
    }


def add_dedup_level(
    codes: np.ndarray, dedup_codebook_size: int, item_ids: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """[N, L] tokenizer codes -> [N, L+1]: the last code is the item's index within the group of
    items sharing its L codes, groups ordered by item id (default: row number), so the result
    is the same on every run. Raises SidError when a group is larger than the dedup codebook."""
    codes = as_codes(codes)
    n, L = codes.shape
    ids = np.arange(n) if item_ids is None else np.asarray(item_ids)
    if len(ids) != n:
        raise SidError(f"item_ids has {len(ids)} entries for {n} rows of codes")
    if n == 0:
        return np.zeros((0, L + 1), dtype=np.int64)
    order = sorted_order(codes, ids)
    s = codes[order]
    new_group = np.ones(n, dtype=bool)
    if L:
        new_group[1:] = np.any(s[1:] != s[:-1], axis=1)
    else:
        new_group[1:] = False
    starts = np.flatnonzero(new_group)
    group_start = starts[np.cumsum(new_group) - 1]
    rank = np.arange(n) - group_start
    if rank.max() >= dedup_codebook_size:
        big = int(np.argmax(rank))
        start = int(group_start[big])
        size = int(np.searchsorted(starts, start, side="right"))
        end = int(starts[size]) if size < len(starts) else n
        raise SidError(
            f"{end - start} items share the codes {tuple(int(c) for c in s[big])} but the dedup level has only "
            f"{dedup_codebook_size} codes; use more tokenizer levels, a larger codebook (rqvae.codebook_size / "
            f"rqvae.levels) or a larger dedup level (sids.dedup_codebook_size)"
        )
    dedup = np.empty(n, dtype=np.int64)
    dedup[order] = rank
    out = np.concatenate([codes, dedup[:, None]], axis=1)
    dup = first_duplicate(out)
    assert dup is None, f"dedup level left duplicates: rows {dup}"
    return out


# --------------------------------------------------------------------------- imports

_LCREC_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")
LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # LC-Rec names level l by the l-th letter: <a_12><b_7>...


def _validate_imported(
    codes: np.ndarray, ids: Sequence[Any], sizes: Sequence[int] | None, where: str, duplicates: bool = False
) -> SidScheme:
    if sizes is None:
        sizes = (codes.max(axis=0) + 1).tolist() if len(codes) else [1] * codes.shape[1]
    if len(sizes) != codes.shape[1]:
        raise SidError(f"{where}: {codes.shape[1]} levels but {len(sizes)} codebook sizes given")
    check_range(codes, sizes, ids, where)
    dup = None if duplicates else first_duplicate(codes)
    if dup is not None:
        a, b = dup
        n = len(codes) - len(np.unique(codes, axis=0))
        raise SidError(
            f"{where}: items {ids[a]!r} and {ids[b]!r} have the same codes {codes[a].tolist()} ({n} items share "
            "a tuple with an earlier one); SIDs must be unique. Set sids.import_collisions = \"next_free\" to give "
            "each of them the next free last code under its prefix"
        )
    return SidScheme(list(sizes))


def resolve_collisions(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Imported codes made unique by moving, in every group of items sharing a tuple, each item
    after the first (row order) to the smallest last code that no item with the same prefix
    uses. Returns (codes, how many items moved). The other items keep their codes exactly."""
    codes = as_codes(codes).copy()
    if len(codes) == 0 or codes.shape[1] == 0:
        return codes, 0
    used: dict[tuple[int, ...], set[int]] = {}
    for row in codes:
        used.setdefault(tuple(int(c) for c in row[:-1]), set()).add(int(row[-1]))
    seen: set[tuple[int, ...]] = set()
    moved = 0
    for r, row in enumerate(codes):
        key = tuple(int(c) for c in row)
        if key not in seen:
            seen.add(key)
            continue
        prefix, taken = key[:-1], used[key[:-1]]
        free = next(c for c in range(len(taken) + 1) if c not in taken)
        codes[r, -1] = free
        taken.add(free)
        seen.add(prefix + (free,))
        moved += 1
    return codes, moved


def _missing_error(where: str, missing: list[Any], total: int) -> SidError:
    first = ", ".join(repr(m) for m in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return SidError(f"{where}: {len(missing)} of {total} items have no codes: {first}{more}")


def import_lcrec_index(
    path: str | Path, item_source_ids: Sequence[Any], codebook_sizes: Sequence[int] | None = None,
    duplicates: bool = False,
) -> tuple[np.ndarray, SidScheme]:
    """LC-Rec `index.json` ({"<item id>": ["<a_12>", "<b_7>", "<c_3>", "<d_0>"]}, letters =
    levels) -> (codes [N, levels] with row i = item_source_ids[i], scheme). Ids are compared
    as strings; index entries for other items are ignored. codebook_sizes default: max code
    + 1 per level. SidError on a missing item, malformed entry, out-of-range code or a
    duplicate tuple."""
    path = Path(path)
    where = str(path)
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise SidError(f"{where}: not found; expected an LC-Rec index.json") from None
    except json.JSONDecodeError as e:
        raise SidError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(index, dict):
        raise SidError(f"{where}: expected a JSON object item id -> list of tokens, got {type(index).__name__}")
    ids = [str(i) for i in item_source_ids]
    missing = [i for i in ids if i not in index]
    if missing:
        raise _missing_error(where, missing, len(ids))
    rows: list[list[int]] = []
    levels = None
    for i in ids:
        entry = index[i]
        text = "".join(entry) if isinstance(entry, list) else str(entry)
        toks = _LCREC_TOKEN_RE.findall(text)
        if not toks or "".join(f"<{a}_{b}>" for a, b in toks) != text.replace(" ", ""):
            raise SidError(f"{where}: item {i!r}: expected tokens like <a_12><b_7>, got {entry!r}")
        letters = "".join(a for a, _ in toks)
        expect = LEVEL_LETTERS[: len(toks)]
        if letters != expect:
            raise SidError(f"{where}: item {i!r}: levels out of order ({letters!r}, expected {expect!r}): {entry!r}")
        if levels is None:
            levels = len(toks)
        elif len(toks) != levels:
            raise SidError(f"{where}: item {i!r} has {len(toks)} levels, earlier items have {levels}: {entry!r}")
        rows.append([int(b) for _, b in toks])
    codes = np.asarray(rows, dtype=np.int64).reshape(len(ids), levels or 0)
    return codes, _validate_imported(codes, ids, codebook_sizes, where, duplicates)


def _parse_codes_cell(x: Any) -> list[int]:
    if isinstance(x, (list, tuple, np.ndarray)):
        return [int(v) for v in x]
    s = str(x).strip()
    if s.startswith("<"):
        return [int(b) for _, b in _LCREC_TOKEN_RE.findall(s)]
    return [int(v) for v in re.split(r"[\s,;\[\]()]+", s) if v]


def import_codes_table(
    path: str | Path, item_ids: Sequence[Any], codebook_sizes: Sequence[int] | None = None,
    duplicates: bool = False,
) -> tuple[np.ndarray, SidScheme]:
    """A parquet or CSV of codes per item -> (codes [N, levels] with row i = item_ids[i], scheme).
    Columns: `item_id` plus `code_0`..`code_n`, or `item_id` plus a `codes` list column (a
    list, "[1, 2, 3]", "1 2 3" or "<a_1><b_2><c_3>"). Ids compared as strings; rows for other
    items ignored. Same validation as import_lcrec_index."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise SidError(f"{where}: not found; expected a parquet or CSV with item_id and code_0..code_n or codes")
    if path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype={"item_id": str})
    else:
        raise SidError(f"{where}: unknown table format {path.suffix!r}; use .parquet or .csv")
    if "item_id" not in df.columns:
        raise SidError(f"{where}: no item_id column (columns: {list(df.columns)})")
    code_cols = sorted((c for c in df.columns if re.fullmatch(r"code_\d+", str(c))), key=lambda c: int(c[5:]))
    table_ids = df["item_id"].astype(str).tolist()
    if code_cols:
        if [int(c[5:]) for c in code_cols] != list(range(len(code_cols))):
            raise SidError(f"{where}: code columns must be code_0..code_n without gaps, got {code_cols}")
        values = df[code_cols]
        if values.isna().any().any():
            r = int(np.flatnonzero(values.isna().any(axis=1).to_numpy())[0])
            raise SidError(f"{where}: item {table_ids[r]!r} has an empty code")
        table = values.to_numpy().astype(np.int64)
    elif "codes" in df.columns:
        lists = [_parse_codes_cell(x) for x in df["codes"]]
        lengths = {len(x) for x in lists}
        if len(lengths) > 1:
            r = next(i for i, x in enumerate(lists) if len(x) != len(lists[0]))
            raise SidError(f"{where}: item {table_ids[r]!r} has {len(lists[r])} codes, item {table_ids[0]!r} has {len(lists[0])}")
        table = np.asarray(lists, dtype=np.int64).reshape(len(lists), lengths.pop() if lengths else 0)
    else:
        raise SidError(f"{where}: no code_0..code_n columns and no codes column (columns: {list(df.columns)})")
    pos: dict[str, int] = {}
    for r, i in enumerate(table_ids):
        if i in pos:
            raise SidError(f"{where}: item {i!r} appears twice (rows {pos[i]} and {r})")
        pos[i] = r
    ids = [str(i) for i in item_ids]
    missing = [i for i in ids if i not in pos]
    if missing:
        raise _missing_error(where, missing, len(ids))
    codes = table[[pos[i] for i in ids]] if ids else np.zeros((0, table.shape[1]), dtype=np.int64)
    return codes, _validate_imported(codes, ids, codebook_sizes, where, duplicates)


# --------------------------------------------------------------------------- export


def export_lcrec_index(codes: np.ndarray, item_source_ids: Sequence[Any], path: str | Path) -> Path:
    """SIDs as an LC-Rec `index.json` ({"<item id>": ["<a_12>", "<b_7>", "<c_3>", "<d_0>"]}): the
    format LC-Rec, LETTER and MiniOneRec read, keyed by the items' source ids (what
    import_lcrec_index reads back)."""
    codes = as_codes(codes)
    if codes.shape[1] > len(LEVEL_LETTERS):
        raise SidError(f"{codes.shape[1]} levels: LC-Rec's index names at most {len(LEVEL_LETTERS)}")
    ids = [str(i) for i in item_source_ids]
    if len(ids) != len(codes) or len(set(ids)) != len(ids):
        raise SidError(f"{len(ids)} source ids ({len(set(ids))} distinct) for {len(codes)} items: need one each")
    index = {i: [f"<{LEVEL_LETTERS[level]}_{int(c)}>" for level, c in enumerate(row)] for i, row in zip(ids, codes)}
    path = Path(path)
    path.write_text(json.dumps(index, indent=1) + "\n")
    return path
