"""The semantic-ID token scheme, owned here for the whole project (the seed's scheme).

An item's SID is L+1 codes: L from the tokenizer (RQ-VAE / RQ-KMeans) plus one dedup level
that makes every tuple unique. Level l has K_l codes; its tokens are `<|sid_{offset_l + c}|>`
with offset_l = K_0 + ... + K_{l-1} (equal K: `<|sid_{l*K + c}|>`, the seed's
`<|sid_{level*256+code}|>`). Three special tokens: `<|sid_start|>`, `<|sid_end|>` around every
SID and `<|rec|>` (a prompt asks for a recommendation).

    <|sid_start|><|sid_64|><|sid_313|><|sid_637|><|sid_768|><|sid_end|>

What lives here:
- `SidScheme`: token list, format / parse (strict, `SidFormatError` says what is wrong),
  `find_all` (SID blocks inside free text, malformed ones reported as None), manifest JSON.
- `add_dedup_level`: the extra level, index within the collision group ordered by item id.
- `import_lcrec_index` (LC-Rec `index.json`) and `import_codes_table` (parquet / CSV),
  validated: every item covered, codes in range, tuples unique.
- `SidTable`: item_id, codes, sid, title; `save` writes `sids.parquet`, `sid_mapping.pt`
  (LongTensor [levels, items], column i = item i, the layout NVIDIA's SID-GR loads) and
  `sid_manifest.json`.
- `CodeTrie`: the one prefix trie of the items' codes, as dense per-level tensors: batched
  masks / steps for constrained decoding (beam search, the LLM's SidConstraint), and one-prefix
  lookups: allowed next codes, item lookup, longest known prefix (rendering SIDs that name no item).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sidlib import paths, plots, stages
from sidlib.config import Config

__all__ = [
    "REC",
    "SID_END",
    "SID_START",
    "SidError",
    "SidFormatError",
    "SidScheme",
    "SidTable",
    "CodeTrie",
    "add_dedup_level",
    "collision_stats",
    "import_codes_table",
    "import_lcrec_index",
]

SID_START = "<|sid_start|>"
SID_END = "<|sid_end|>"
REC = "<|rec|>"
SPECIAL_TOKENS = [SID_START, SID_END, REC]
MANIFEST_FORMAT = "sidlib.sids/1"

# any SID-related token: start, end or a numbered code token
TOKEN_RE = re.compile(r"<\|sid_(start|end|\d+)\|>")


class SidFormatError(ValueError):
    """A string that is not a well-formed SID of the scheme."""


class SidError(ValueError):
    """Codes that cannot become SIDs: collisions, out-of-range codes, missing items."""


def _show(text: str, limit: int = 160) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------- scheme


@dataclass
class SidScheme:
    """Per-level codebook sizes, e.g. [256, 256, 256, 256] (3 tokenizer levels + dedup)."""

    codebook_sizes: list[int]

    def __post_init__(self) -> None:
        sizes = [int(k) for k in self.codebook_sizes]
        if not sizes or any(k <= 0 for k in sizes):
            raise SidError(f"codebook_sizes must be a non-empty list of positive ints, got {self.codebook_sizes!r}")
        self.codebook_sizes = sizes
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @classmethod
    def uniform(cls, levels: int, codebook_size: int) -> SidScheme:
        return cls([codebook_size] * levels)

    # -- sizes
    @property
    def levels(self) -> int:
        """Codes per SID (tokenizer levels + the dedup level)."""
        return len(self.codebook_sizes)

    @property
    def offsets(self) -> list[int]:
        """Token number of code 0 of each level."""
        return self._offsets[:-1].tolist()

    @property
    def num_code_tokens(self) -> int:
        return int(self._offsets[-1])

    # -- tokens
    def token_number(self, level: int, code: int) -> int:
        if not 0 <= level < self.levels:
            raise SidError(f"level {level} out of range 0..{self.levels - 1}")
        if not 0 <= code < self.codebook_sizes[level]:
            raise SidError(f"code {code} out of range for level {level} (0..{self.codebook_sizes[level] - 1})")
        return int(self._offsets[level]) + int(code)

    def token(self, level: int, code: int) -> str:
        return f"<|sid_{self.token_number(level, code)}|>"

    def token_to_level_code(self, n: int) -> tuple[int, int]:
        """Token number (the N of <|sid_N|>) -> (level, code)."""
        n = int(n)
        if not 0 <= n < self.num_code_tokens:
            raise SidError(f"<|sid_{n}|> is not a token of this scheme (tokens 0..{self.num_code_tokens - 1})")
        level = int(np.searchsorted(self._offsets, n, side="right") - 1)
        return level, n - int(self._offsets[level])

    def code_tokens(self) -> list[str]:
        return [f"<|sid_{n}|>" for n in range(self.num_code_tokens)]

    @staticmethod
    def special_tokens() -> list[str]:
        return list(SPECIAL_TOKENS)

    def tokens(self) -> list[str]:
        """Every token to add to a tokenizer: the code tokens in number order, then
        <|sid_start|>, <|sid_end|>, <|rec|>."""
        return self.code_tokens() + self.special_tokens()

    def level_token_range(self, level: int) -> tuple[int, int]:
        """[first, last] token numbers of a level."""
        return int(self._offsets[level]), int(self._offsets[level + 1]) - 1

    # -- strings
    def format(self, codes: Sequence[int] | np.ndarray) -> str:
        codes = [int(c) for c in np.asarray(codes).reshape(-1)]
        if len(codes) != self.levels:
            raise SidError(f"expected {self.levels} codes, got {len(codes)}: {codes}")
        return SID_START + "".join(self.token(l, c) for l, c in enumerate(codes)) + SID_END

    def tokens_of(self, sid: str | Sequence[int] | np.ndarray) -> list[str]:
        """The token strings of one SID (a SID string or its codes): start, L codes, end."""
        codes = self.parse(sid) if isinstance(sid, str) else [int(c) for c in np.asarray(sid).reshape(-1)]
        return [SID_START] + [self.token(l, c) for l, c in enumerate(codes)] + [SID_END]

    def format_many(self, codes: np.ndarray) -> list[str]:
        """Vectorised format of an [N, levels] array."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise SidError(f"expected codes of shape [N, {self.levels}], got {codes.shape}")
        _check_range(codes, self.codebook_sizes)
        numbers = codes + self._offsets[:-1]
        parts = [np.char.add(np.char.add("<|sid_", numbers[:, l].astype(str)), "|>") for l in range(self.levels)]
        body = parts[0]
        for p in parts[1:]:
            body = np.char.add(body, p)
        return [SID_START + s + SID_END for s in body.tolist()]

    def parse(self, text: str) -> list[int]:
        """One SID (surrounding whitespace and whitespace between tokens allowed) -> codes.
        SidFormatError names the string and what is wrong."""
        s = text.strip()
        toks = list(TOKEN_RE.finditer(s))
        where = f"SID {_show(text)}"
        pos = 0
        for m in toks:
            gap = s[pos : m.start()]
            if gap.strip():
                raise SidFormatError(f"{where}: unexpected text {_show(gap.strip(), 40)} at position {pos}")
            pos = m.end()
        if s[pos:].strip():
            raise SidFormatError(f"{where}: unexpected text {_show(s[pos:].strip(), 40)} at position {pos}")
        names = [m.group(1) for m in toks]
        if not names or names[0] != "start":
            raise SidFormatError(f"{where}: missing {SID_START} at the start")
        if names[-1] != "end" or len(names) == 1:
            raise SidFormatError(f"{where}: missing {SID_END} at the end")
        inner = names[1:-1]
        for i, name in enumerate(inner):
            if name in ("start", "end"):
                tok = SID_START if name == "start" else SID_END
                raise SidFormatError(f"{where}: {tok} inside the SID (code position {i}); two SIDs run together?")
        if len(inner) != self.levels:
            raise SidFormatError(f"{where}: wrong level count: {len(inner)} code tokens, expected {self.levels}")
        codes = []
        for i, name in enumerate(inner):
            n = int(name)
            lo, hi = self.level_token_range(i)
            if not lo <= n <= hi:
                if n >= self.num_code_tokens:
                    what = f"not a token of this scheme (tokens 0..{self.num_code_tokens - 1})"
                else:
                    lvl, code = self.token_to_level_code(n)
                    what = f"a level-{lvl} token (code {code})"
                raise SidFormatError(
                    f"{where}: token <|sid_{n}|> at level {i} is out of range for its level: {what}; "
                    f"level {i} uses <|sid_{lo}|>..<|sid_{hi}|>"
                )
            codes.append(n - lo)
        return codes

    def find_all(self, text: str) -> list[tuple[tuple[int, int], list[int] | None]]:
        """Every SID-like block in free text, in order: ((start, end) char span, codes), codes
        None for a malformed block (call `parse` on the span's text for the reason). A block
        is a run of SID tokens separated by nothing but whitespace; <|sid_start|> opens a
        block, <|sid_end|> closes one, stray code tokens form a block of their own."""
        out: list[tuple[tuple[int, int], list[int] | None]] = []
        block: list[re.Match[str]] = []

        def flush() -> None:
            if block:
                span = (block[0].start(), block[-1].end())
                try:
                    codes: list[int] | None = self.parse(text[span[0] : span[1]])
                except SidFormatError:
                    codes = None
                out.append((span, codes))
                block.clear()

        prev_end = None
        for m in TOKEN_RE.finditer(text):
            adjacent = prev_end is not None and not text[prev_end : m.start()].strip()
            if block and not adjacent:
                flush()
            name = m.group(1)
            if name == "start" and block:
                flush()
            block.append(m)
            if name == "end":
                flush()
            prev_end = m.end()
        flush()
        return out

    # -- manifest
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "codebook_sizes": list(self.codebook_sizes),
            "levels": self.levels,
            "offsets": self.offsets,
            "num_code_tokens": self.num_code_tokens,
            "special_tokens": {"start": SID_START, "end": SID_END, "rec": REC},
            "token_pattern": "<|sid_{offset[level] + code}|>",
            "tokens": self.tokens(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SidScheme:
        if "codebook_sizes" not in d:
            raise SidError(f"SID manifest without codebook_sizes (keys: {sorted(d)})")
        scheme = cls(list(d["codebook_sizes"]))
        if "levels" in d and int(d["levels"]) != scheme.levels:
            raise SidError(f"SID manifest: levels {d['levels']} but {scheme.levels} codebook sizes")
        return scheme

    @classmethod
    def from_json(cls, data: str | dict[str, Any] | Path) -> SidScheme:
        """A manifest as a dict, a JSON string or a path to sid_manifest.json."""
        if isinstance(data, dict):
            return cls.from_dict(data)
        if isinstance(data, Path) or (isinstance(data, str) and not data.lstrip().startswith("{")):
            data = Path(data).read_text()
        return cls.from_dict(json.loads(data))


# --------------------------------------------------------------------------- dedup level


def _as_codes(codes: Any, what: str = "codes") -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise SidError(f"{what}: expected a 2-D array [items, levels], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise SidError(f"{what}: codes must be integers")
    return arr.astype(np.int64)


def _check_range(codes: np.ndarray, sizes: Sequence[int], ids: Sequence[Any] | None = None, what: str = "codes") -> None:
    for l, k in enumerate(sizes):
        bad = np.flatnonzero((codes[:, l] < 0) | (codes[:, l] >= k))
        if bad.size:
            i = int(bad[0])
            name = f"item {ids[i]!r}" if ids is not None else f"row {i}"
            raise SidError(
                f"{what}: {bad.size} code(s) out of range at level {l} (0..{k - 1}); first: {name} has {int(codes[i, l])}"
            )


def _sorted_order(codes: np.ndarray, item_ids: np.ndarray | None = None) -> np.ndarray:
    keys = [codes[:, j] for j in reversed(range(codes.shape[1]))]
    if item_ids is not None:
        keys = [item_ids] + keys
    return np.lexsort(keys) if keys else np.arange(len(codes))


def _first_duplicate(codes: np.ndarray) -> tuple[int, int] | None:
    """Rows (i, j), i < j, of the first duplicate tuple, or None when all rows are unique."""
    if len(codes) < 2:
        return None
    order = _sorted_order(codes, np.arange(len(codes)))
    s = codes[order]
    same = np.all(s[1:] == s[:-1], axis=1)
    hit = np.flatnonzero(same)
    if not hit.size:
        return None
    a, b = sorted((int(order[hit[0]]), int(order[hit[0] + 1])))
    return a, b


def collision_stats(codes: np.ndarray) -> dict[str, Any]:
    """How far the tokenizer codes are from unique: items, unique tuples, the fraction of
    items whose tuple no other item has, the largest group of items sharing one tuple."""
    codes = _as_codes(codes)
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
    codes = _as_codes(codes)
    n, L = codes.shape
    ids = np.arange(n) if item_ids is None else np.asarray(item_ids)
    if len(ids) != n:
        raise SidError(f"item_ids has {len(ids)} entries for {n} rows of codes")
    if n == 0:
        return np.zeros((0, L + 1), dtype=np.int64)
    order = _sorted_order(codes, ids)
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
    dup = _first_duplicate(out)
    assert dup is None, f"dedup level left duplicates: rows {dup}"
    return out


# --------------------------------------------------------------------------- imports

_LCREC_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")


def _validate_imported(
    codes: np.ndarray, ids: Sequence[Any], sizes: Sequence[int] | None, where: str
) -> SidScheme:
    if sizes is None:
        sizes = (codes.max(axis=0) + 1).tolist() if len(codes) else [1] * codes.shape[1]
    if len(sizes) != codes.shape[1]:
        raise SidError(f"{where}: {codes.shape[1]} levels but {len(sizes)} codebook sizes given")
    _check_range(codes, sizes, ids, where)
    dup = _first_duplicate(codes)
    if dup is not None:
        a, b = dup
        raise SidError(
            f"{where}: items {ids[a]!r} and {ids[b]!r} have the same codes {codes[a].tolist()}; SIDs must be unique "
            f"(an index without a dedup level? add one with add_dedup_level)"
        )
    return SidScheme(list(sizes))


def _missing_error(where: str, missing: list[Any], total: int) -> SidError:
    first = ", ".join(repr(m) for m in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return SidError(f"{where}: {len(missing)} of {total} items have no codes: {first}{more}")


def import_lcrec_index(
    path: str | Path, item_source_ids: Sequence[Any], codebook_sizes: Sequence[int] | None = None
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
        expect = "abcdefghijklmnopqrstuvwxyz"[: len(toks)]
        if letters != expect:
            raise SidError(f"{where}: item {i!r}: levels out of order ({letters!r}, expected {expect!r}): {entry!r}")
        if levels is None:
            levels = len(toks)
        elif len(toks) != levels:
            raise SidError(f"{where}: item {i!r} has {len(toks)} levels, earlier items have {levels}: {entry!r}")
        rows.append([int(b) for _, b in toks])
    codes = np.asarray(rows, dtype=np.int64).reshape(len(ids), levels or 0)
    return codes, _validate_imported(codes, ids, codebook_sizes, where)


def _parse_codes_cell(x: Any) -> list[int]:
    if isinstance(x, (list, tuple, np.ndarray)):
        return [int(v) for v in x]
    s = str(x).strip()
    if s.startswith("<"):
        return [int(b) for _, b in _LCREC_TOKEN_RE.findall(s)]
    return [int(v) for v in re.split(r"[\s,;\[\]()]+", s) if v]


def import_codes_table(
    path: str | Path, item_ids: Sequence[Any], codebook_sizes: Sequence[int] | None = None
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
    return codes, _validate_imported(codes, ids, codebook_sizes, where)


# --------------------------------------------------------------------------- trie


class CodeTrie:
    """Prefix trie over the items' code tuples, as dense per-level transition tables.

    `child[l][p, c]` is the index of the level-(l+1) prefix reached from level-l prefix `p` by
    code `c` (-1: no item has that prefix); on the last level it is the item's row. Masks for a
    whole batch of beams are one gather (`child[l][p] >= 0`), no Python loop over the vocabulary
    (`allowed_mask`, `step`: the constrained decoding of `sidlib.models.beam` and
    `sidlib.llm.decode`). The tables are int32 and dense: sum_l P_l * K_l entries (P_l = number
    of distinct prefixes of length l), e.g. 4,344 items x (16,16,16,K_dedup) -> a few hundred
    KB; 1M items x 3 x 256 (+ a dedup level) -> a few hundred MB at worst.

    codes: [n_items, n_levels] ints, row i = the code tuple of item i.
    sizes: codebook size per level (default: max code + 1 per level).
    item_ids: what the Python lookups (`item_of`, `longest_known_prefix`) return for each row
    (default: the row index). The tensor side (`step`, `item_prefix`, `beam_search`) always
    speaks row indices.
    """

    def __init__(self, codes: np.ndarray | torch.Tensor, sizes: Sequence[int] | None = None,
                 item_ids: Sequence[int] | np.ndarray | None = None):
        codes = _as_codes(codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else codes)
        if codes.shape[1] == 0:
            raise SidError(f"codes must be an [n_items, n_levels] array with n_levels >= 1, got shape {codes.shape}")
        n, d = codes.shape
        ids = np.arange(n, dtype=np.int64) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
        if len(ids) != n:
            raise SidError(f"item_ids has {len(ids)} entries for {n} code rows")
        if sizes is None:
            sizes = (codes.max(axis=0) + 1).tolist() if n else [0] * d
        sizes = [int(k) for k in sizes]
        if len(sizes) != d:
            raise SidError(f"{d} code levels but {len(sizes)} codebook sizes")
        if (codes < 0).any() or (codes >= np.asarray(sizes)[None, :]).any():
            bad = np.argwhere((codes < 0) | (codes >= np.asarray(sizes)[None, :]))[0]
            raise SidError(f"code out of range: item {ids[bad[0]]} level {bad[1]} = {codes[bad[0], bad[1]]} "
                           f"(size {sizes[bad[1]]})")
        self.n_items, self.n_levels, self.sizes = n, d, sizes
        # prefix ids per level: pid[l][i] = index of codes[i, :l] among the distinct length-l prefixes
        pids = [np.zeros(n, dtype=np.int64)]
        for l in range(1, d + 1):
            _, inv = np.unique(codes[:, :l], axis=0, return_inverse=True)
            pids.append(inv.reshape(-1))
        n_full = int(pids[d].max()) + 1 if n else 0
        if n_full != n:
            _, first, counts = np.unique(pids[d], return_index=True, return_counts=True)
            dup = int(first[counts > 1][0])
            raise SidError(f"{n - n_full} items share their full code tuple with another item "
                           f"(e.g. item {ids[dup]}: {codes[dup].tolist()})")
        self.n_prefixes = [1] + [int(p.max()) + 1 if n else 0 for p in pids[1:]]  # P_0 = 1, ..., P_d = n_items
        tables = []
        for l in range(d):
            table = np.full((self.n_prefixes[l], sizes[l]), -1, dtype=np.int32)
            table[pids[l], codes[:, l]] = np.arange(n) if l == d - 1 else pids[l + 1]
            tables.append(table)
        self.child: list[torch.Tensor] = [torch.from_numpy(t) for t in tables]
        self.codes = torch.from_numpy(codes)
        # for excluding items (a user's history) during the search: each item's prefix index at
        # every level 1..d, as `step` numbers them (on the last level the item's row), and
        # how many items lie under each prefix (`under[d]` is all ones)
        rows = pids[1:d] + [np.arange(n)]
        under = [np.array([n], dtype=np.int64)] + [
            np.bincount(p, minlength=self.n_prefixes[l + 1]).astype(np.int64) for l, p in enumerate(rows)]
        self.item_prefix = torch.from_numpy(np.stack(rows, 1))  # [n_items, d]
        self.under = [torch.from_numpy(u) for u in under]
        # the Python lookups stay on the CPU (numpy views of the tables), wherever `to` moves them
        self._tables, self._under, self._ids = tables, under, ids
        # smallest item id under each prefix of levels 1..d-1 (longest_known_prefix's example)
        self._first = [np.zeros(1, dtype=np.int64)]
        for l in range(1, d):
            first = np.full(self.n_prefixes[l], np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(first, pids[l], ids)
            self._first.append(first)

    # ---- device -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.child[0].device

    def to(self, device: torch.device | str) -> CodeTrie:
        device = torch.device(device)
        if self.device != device:
            self.child = [t.to(device) for t in self.child]
            self.codes = self.codes.to(device)
            self.item_prefix = self.item_prefix.to(device)
            self.under = [t.to(device) for t in self.under]
        return self

    # ---- vectorised lookups ---------------------------------------------------------------
    def allowed_mask(self, level: int, prefix_ids: torch.Tensor) -> torch.Tensor:
        """[...] prefix indices at `level` (-1 = dead) -> [..., K_level] bool: valid next codes."""
        nxt = self.child[level][prefix_ids.clamp(min=0)]
        return (nxt >= 0) & (prefix_ids >= 0).unsqueeze(-1)

    def step(self, level: int, prefix_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next prefix index (item row on the last level) for each (prefix, code); -1 if none."""
        nxt = self.child[level][prefix_ids.clamp(min=0), codes].long()
        return torch.where(prefix_ids >= 0, nxt, torch.full_like(nxt, -1))

    # ---- Python lookups (one prefix at a time) ---------------------------------------------
    def _walk(self, prefix: Sequence[int] | np.ndarray) -> int:
        """Prefix index of `prefix` at level len(prefix) (the item row for a full tuple); -1: none."""
        p = 0
        for l, c in enumerate(prefix):
            if l >= self.n_levels or not 0 <= int(c) < self.sizes[l]:
                return -1
            p = int(self._tables[l][p, int(c)])
            if p < 0:
                return -1
        return p

    def allowed(self, prefix: Sequence[int] | np.ndarray = ()) -> np.ndarray:
        """Sorted codes that extend `prefix` towards an existing item (empty for a complete or
        unknown prefix)."""
        p = self._walk(prefix) if len(prefix) < self.n_levels else -1
        if p < 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._tables[len(prefix)][p] >= 0).astype(np.int64)

    def count(self, prefix: Sequence[int] | np.ndarray = ()) -> int:
        """Items whose codes start with `prefix`."""
        p = self._walk(prefix)
        return int(self._under[len(prefix)][p]) if p >= 0 else 0

    def is_prefix(self, prefix: Sequence[int] | np.ndarray) -> bool:
        return self.count(prefix) > 0

    def is_item(self, codes: Sequence[int] | np.ndarray) -> bool:
        return len(codes) == self.n_levels and self._walk(codes) >= 0

    def item_of(self, codes: Sequence[int] | np.ndarray) -> int | None:
        """The item id whose codes are exactly `codes`; None when no item has them."""
        return int(self._ids[self._walk(codes)]) if self.is_item(codes) else None

    def longest_known_prefix(self, codes: Sequence[int] | np.ndarray) -> tuple[int, int | None]:
        """(depth, example item): the most leading codes some item shares, and the smallest
        item id with that prefix; (0, None) when even the first code matches no item."""
        p, k = 0, 0
        for l, c in enumerate(list(codes)[: self.n_levels]):
            if not 0 <= int(c) < self.sizes[l] or self._tables[l][p, int(c)] < 0:
                break
            p, k = int(self._tables[l][p, int(c)]), l + 1
        if k == 0:
            return 0, None
        return k, int(self._ids[p] if k == self.n_levels else self._first[k][p])


# --------------------------------------------------------------------------- table


@dataclass
class SidTable:
    """One row per item, sorted by item_id: item_id (int), codes (list[int]), sid (str), title."""

    df: pd.DataFrame
    scheme: SidScheme
    _trie: CodeTrie | None = field(default=None, repr=False)

    FILES = {"table": "sids.parquet", "mapping": "sid_mapping.pt", "manifest": "sid_manifest.json"}

    @classmethod
    def build(
        cls,
        codes: np.ndarray,
        scheme: SidScheme,
        titles: Sequence[str] | None = None,
        item_ids: Sequence[int] | np.ndarray | None = None,
    ) -> SidTable:
        """Validated: shape matches the scheme, codes in range, tuples unique."""
        codes = _as_codes(codes)
        n = len(codes)
        if codes.shape[1] != scheme.levels:
            raise SidError(f"codes have {codes.shape[1]} levels, the scheme {scheme.levels}")
        ids = np.arange(n, dtype=np.int64) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
        if len(ids) != n:
            raise SidError(f"item_ids has {len(ids)} entries for {n} code rows")
        if len(np.unique(ids)) != n:
            raise SidError("item_ids are not unique")
        _check_range(codes, scheme.codebook_sizes, ids.tolist())
        dup = _first_duplicate(codes)
        if dup is not None:
            raise SidError(
                f"items {int(ids[dup[0]])} and {int(ids[dup[1]])} have the same codes {codes[dup[0]].tolist()}; "
                "add the dedup level (add_dedup_level) first"
            )
        titles_l = [""] * n if titles is None else ["" if t is None or t is pd.NA else str(t) for t in titles]
        if len(titles_l) != n:
            raise SidError(f"{len(titles_l)} titles for {n} items")
        order = np.argsort(ids, kind="stable")
        df = pd.DataFrame(
            {
                "item_id": ids[order],
                "codes": pd.Series([r for r in codes[order].tolist()], dtype=object),
                "sid": pd.array(scheme.format_many(codes[order]) if n else [], dtype="string"),
                "title": pd.array([titles_l[i] for i in order], dtype="string"),
            }
        )
        return cls(df, scheme)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def codes(self) -> np.ndarray:
        """[N, levels] int64, row order = df order (item_id ascending)."""
        if not len(self.df):
            return np.zeros((0, self.scheme.levels), dtype=np.int64)
        return np.asarray(self.df["codes"].tolist(), dtype=np.int64)

    @property
    def item_ids(self) -> np.ndarray:
        return self.df["item_id"].to_numpy(dtype=np.int64)

    def trie(self) -> CodeTrie:
        if self._trie is None:
            self._trie = CodeTrie(self.codes, self.scheme.codebook_sizes, self.item_ids)
        return self._trie

    def sid_of(self, item_id: int) -> str:
        row = np.searchsorted(self.item_ids, item_id)
        if row >= len(self.df) or self.item_ids[row] != item_id:
            raise KeyError(f"item {item_id} has no SID")
        return str(self.df["sid"].iat[row])

    def item_of(self, sid: str | Sequence[int]) -> int | None:
        """Item id of a SID string or code tuple; None when no item has it."""
        codes = self.scheme.parse(sid) if isinstance(sid, str) else sid
        return self.trie().item_of(codes)

    def mapping_tensor(self) -> torch.Tensor:
        """LongTensor [levels, items], column i = codes of item i (needs item ids 0..N-1)."""
        ids = self.item_ids
        if not np.array_equal(ids, np.arange(len(ids))):
            raise SidError("the mapping tensor needs dense item ids 0..N-1 (column i = item i)")
        return torch.from_numpy(np.ascontiguousarray(self.codes.T)).long()

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Path]:
        """Write sids.parquet, sid_mapping.pt and sid_manifest.json (scheme + num_items +
        `extra`, e.g. collision stats); returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {k: folder / v for k, v in self.FILES.items()}
        df = self.df.copy()
        df["codes"] = df["codes"].map(lambda r: [int(c) for c in r])
        df.to_parquet(paths["table"], index=False)
        torch.save(self.mapping_tensor(), paths["mapping"])
        manifest = {
            **self.scheme.to_dict(),
            "num_items": len(self),
            "mapping": {"file": self.FILES["mapping"], "shape": [self.scheme.levels, len(self)], "layout": "[levels, items], column i = item i"},
            **(extra or {}),
        }
        paths["manifest"].write_text(json.dumps(manifest, indent=2))
        return paths

    @classmethod
    def load(cls, folder: str | Path) -> SidTable:
        folder = Path(folder)
        for name in cls.FILES.values():
            if not (folder / name).exists():
                raise SidError(f"{folder / name}: not found; expected the output of SidTable.save (05-sids)")
        scheme = SidScheme.from_json(folder / cls.FILES["manifest"])
        df = pd.read_parquet(folder / cls.FILES["table"])
        table = cls.build(np.asarray([list(r) for r in df["codes"]], dtype=np.int64).reshape(len(df), scheme.levels),
                          scheme, df["title"].tolist(), df["item_id"].to_numpy())
        if not table.df["sid"].astype(str).equals(df["sid"].astype(str)):
            raise SidError(f"{folder}: the sid column does not match the codes under the manifest's scheme")
        return table


# --------------------------------------------------------------------------- stage 05 entry point


def build_table(
    items: pd.DataFrame,
    codes: np.ndarray | None,
    codebook_size: int,
    import_path: str | Path | None = None,
    dedup_codebook_size: int = 0,
) -> tuple[SidTable, dict[str, Any]]:
    """The SID table of stage 05 and its metrics.

    Either the tokenizer's codes [N, L] get a last level that makes every item unique (index
    within its collision group), or an external index (LC-Rec index.json, or a parquet/CSV of
    codes) is imported as is — it must already be unique. Row i of `items` is item i.
    """
    if import_path:
        path = Path(import_path)
        if path.suffix == ".json":
            full, scheme = import_lcrec_index(path, items["source_id"].astype(str).tolist())
        else:
            full, scheme = import_codes_table(path, items["item_id"].tolist())
        before = collision_stats(full)
        dedup_max = 0
    else:
        if codes is None:
            raise SidError("no tokenizer codes and no sids.import_path: run 04-rqvae or set an import path")
        codes = _as_codes(codes)
        if len(codes) != len(items):
            raise SidError(f"{len(codes)} code rows for {len(items)} items: the codes come from another item table")
        before = collision_stats(codes)
        # 0 = auto: the tokenizer's K, grown to the largest collision group when that is larger
        # (small catalogs with small K); an explicit size is a hard limit.
        k_last = dedup_codebook_size or max(codebook_size, before["max_group"])
        full = add_dedup_level(codes, k_last)
        scheme = SidScheme([codebook_size] * codes.shape[1] + [k_last])
        dedup_max = int(full[:, -1].max()) if len(full) else 0
    table = SidTable.build(full, scheme, titles=items["title"].tolist(), item_ids=items["item_id"].tolist())
    unique_after = len(np.unique(table.codes, axis=0))
    if unique_after != len(items):
        raise SidError(f"only {unique_after} unique SIDs for {len(items)} items")
    metrics = {
        "items": len(items),
        "levels": scheme.levels,
        "codebook_sizes": list(scheme.codebook_sizes),
        "unique_after_dedup": unique_after,
        "dedup_level_max": dedup_max,
        "unique_before_dedup": before["unique_ratio"],
        "max_collision_before_dedup": before["max_group"],
        "source": "import" if import_path else "tokenizer",
    }
    return table, metrics


@dataclass
class SidOutputs:
    """What stage 05 read and wrote (artifacts/<profile>/05-sids/)."""

    out: Path
    table: SidTable
    metrics: dict[str, Any]
    plot: Path
    source: str  # where the codes came from, for the notebook's first line


def run(cfg: Config) -> SidOutputs:
    """Stage 05 (notebook 05): 04's codes (or sids.import_path) + a uniqueness level -> the SID
    table (sids.parquet, sid_mapping.pt, sid_manifest.json) and a plot of the collision groups."""
    out = stages.SIDS.dir(cfg.profile, create=True)
    items = pd.read_parquet(stages.CLEAN.dir(cfg.profile) / "items.parquet")
    if cfg.sids.import_path:
        codes, k, import_path = None, 0, paths.resolve_data_path(cfg.sids.import_path)
        source = f"external SIDs imported from {import_path}"
    else:
        tok_dir = stages.RQVAE.dir(cfg.profile)
        codes = np.load(tok_dir / "codes.npy")
        k = json.loads((tok_dir / "tokenizer.json").read_text())["codebook_size"]
        import_path = None
        source = f"{codes.shape[1]} tokenizer levels x {k} codes from 04-rqvae"
    table, metrics = build_table(items, codes, k, import_path, cfg.sids.dedup_codebook_size)
    table.save(out, extra={"metrics": metrics})
    group_sizes = table.df["codes"].map(lambda c: tuple(c[:-1])).value_counts().to_numpy()
    plot = plots.length_histogram({"items per tokenizer tuple": group_sizes}, out / "collision_groups.png",
                                  xlabel="group size", bins=max(5, int(group_sizes.max())))
    return SidOutputs(out, table, metrics, plot, source)
