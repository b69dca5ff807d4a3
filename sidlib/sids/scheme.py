"""The token scheme: SID tokens, format / parse, the manifest; the errors of SID handling."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np



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
        check_range(codes, self.codebook_sizes)
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


# --------------------------------------------------------------------------- code arrays


def as_codes(codes: Any, what: str = "codes") -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise SidError(f"{what}: expected a 2-D array [items, levels], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise SidError(f"{what}: codes must be integers")
    return arr.astype(np.int64)


def check_range(codes: np.ndarray, sizes: Sequence[int], ids: Sequence[Any] | None = None, what: str = "codes") -> None:
    for l, k in enumerate(sizes):
        bad = np.flatnonzero((codes[:, l] < 0) | (codes[:, l] >= k))
        if bad.size:
            i = int(bad[0])
            name = f"item {ids[i]!r}" if ids is not None else f"row {i}"
            raise SidError(
                f"{what}: {bad.size} code(s) out of range at level {l} (0..{k - 1}); first: {name} has {int(codes[i, l])}"
            )


def sorted_order(codes: np.ndarray, item_ids: np.ndarray | None = None) -> np.ndarray:
    keys = [codes[:, j] for j in reversed(range(codes.shape[1]))]
    if item_ids is not None:
        keys = [item_ids] + keys
    return np.lexsort(keys) if keys else np.arange(len(codes))


def first_duplicate(codes: np.ndarray) -> tuple[int, int] | None:
    """Rows (i, j), i < j, of the first duplicate tuple, or None when all rows are unique."""
    if len(codes) < 2:
        return None
    order = sorted_order(codes, np.arange(len(codes)))
    s = codes[order]
    same = np.all(s[1:] == s[:-1], axis=1)
    hit = np.flatnonzero(same)
    if not hit.size:
        return None
    a, b = sorted((int(order[hit[0]]), int(order[hit[0] + 1])))
    return a, b
