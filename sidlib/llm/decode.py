"""Decoding with SIDs: constrain every SID block to an existing item, and render SIDs as titles.

`SidConstraint` is a transformers `LogitsProcessor`. Inside a `<|sid_start|> ... <|sid_end|>`
block it allows only the code tokens that continue some item's SID (the dense prefix trie of
`sidlib.sids.CodeTrie`: one gather per level for all rows), then only `<|sid_end|>`;
outside blocks it withholds only the tokens that belong inside one (the code tokens and
`<|sid_end|>`: a stray one would be a broken SID), so free text is untouched. Rows are independent, so
the same processor serves greedy, sampling and beam search (beams are rows), batched.

`ReplyOnly` shows the constraint only the reply (a prompt may hold an open SID prefix, e.g.
"what category is <|sid_start|><|sid_3|>…?", which is not a block the reply must close).

`render` turns SIDs in generated text into titles for people: a known SID becomes its title,
an unknown one its longest known prefix, marked, or "unknown SID" — never an exception.
`match_sids` gives the same lookups as data (the server's `items` of a reply).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from ..sids import SID_END, SID_START, CodeTrie, SidTable
from .vocab import sid_token_ids


class SidConstraint(LogitsProcessor):
    """Only existing items inside SID blocks; free text elsewhere."""

    def __init__(self, tokenizer: Any, table: SidTable):
        scheme = table.scheme
        if not np.array_equal(table.item_ids, np.arange(len(table))):
            raise ValueError("SidConstraint needs dense item ids 0..N-1 (the SID table of 05-sids)")
        self.levels = scheme.levels
        self.trie = CodeTrie(table.codes, scheme.codebook_sizes)
        ids = torch.tensor(sid_token_ids(tokenizer, scheme), dtype=torch.long)
        n_codes = scheme.num_code_tokens
        self.start_id = int(tokenizer.convert_tokens_to_ids(SID_START))
        self.end_id = int(tokenizer.convert_tokens_to_ids(SID_END))
        code_ids = ids[:n_codes]
        # token ids of each level's codes, and token id -> code within its level
        self.level_ids = [code_ids[o : o + k] for o, k in zip(scheme.offsets, scheme.codebook_sizes)]
        # outside a block these mean nothing (a SID opens with <|sid_start|>): a model that writes a
        # stray code or <|sid_end|> in its text would leave a broken SID for the reader
        self.block_only = torch.cat([code_ids, torch.tensor([self.end_id])])
        self.code_of = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        for o, k in zip(scheme.offsets, scheme.codebook_sizes):
            self.code_of[code_ids[o : o + k]] = torch.arange(k)

    def _state(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: codes generated since an unclosed <|sid_start|> (-1 = not in a block), and
        the trie prefix index they reach (-1 = not a prefix of any item)."""
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        last_start = torch.where(input_ids == self.start_id, pos, -1).max(dim=1).values
        last_end = torch.where(input_ids == self.end_id, pos, -1).max(dim=1).values
        inside = last_start > last_end
        depth = torch.where(inside, t - 1 - last_start, torch.full_like(last_start, -1))
        prefix = torch.zeros_like(depth)
        code_of = self.code_of.to(input_ids.device)
        for level in range(int(depth.max().clamp(min=0))):  # <= L+1 steps, vectorised over rows
            rows = depth > level
            tok = input_ids[torch.arange(len(depth), device=input_ids.device), (last_start + 1 + level).clamp(max=t - 1)]
            code = code_of[tok.clamp(max=len(code_of) - 1)]
            code = torch.where(tok < len(code_of), code, torch.full_like(code, -1))
            if level < self.levels:
                ok = rows & (prefix >= 0) & (code >= 0)
                nxt = self.trie.step(level, torch.where(ok, prefix, -1), code.clamp(min=0))
                prefix = torch.where(rows, torch.where(ok, nxt, -1), prefix)
            else:
                prefix = torch.where(rows, -1, prefix)  # more codes than levels
        return depth, prefix

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.trie.to(scores.device)
        depth, prefix = self._state(input_ids)
        banned = torch.zeros_like(scores, dtype=torch.bool)
        inside = depth >= 0
        outside = torch.nonzero(~inside).flatten()
        if len(outside):  # free text stays free, only the SID-internal tokens are withheld
            banned[outside.unsqueeze(1), self.block_only.to(scores.device).unsqueeze(0)] = True
        banned[inside] = True
        for level in range(self.levels):
            rows = torch.nonzero(depth == level).flatten()
            if len(rows) == 0:
                continue
            allowed = self.trie.allowed_mask(level, prefix[rows])  # [rows, K_level]
            ids = self.level_ids[level].to(scores.device)
            banned[rows.unsqueeze(1), ids.unsqueeze(0)] = ~allowed
        # a complete SID, or a block that went wrong (cannot happen under the constraint, but a
        # prompt may open one): close it
        closing = inside & ((depth >= self.levels) | (prefix < 0))
        banned[closing] = True
        banned[closing, self.end_id] = False
        return scores.masked_fill(banned, float("-inf"))


class ReplyOnly(LogitsProcessor):
    """Shows a processor (a SidConstraint) only the reply and the last prompt token, so an open
    SID prefix inside the prompt is not taken for a block the reply must close."""

    def __init__(self, inner: LogitsProcessor, prompt_len: int):
        self.inner, self.start = inner, max(prompt_len - 1, 0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.inner(input_ids[:, self.start:], scores)


class ReplyRules(LogitsProcessor):
    """What a chat reply must do, enforced only where the model would not do it on its own:

    - never empty: the end-of-turn tokens are withheld until the reply holds a visible token (an
      empty turn in the history leaves the next turn building on nothing);
    - `require_sid` (a `<|rec|>` request, which means "recommend now"): the end-of-turn tokens
      are withheld until a SID block is closed, and when only room for one block is left
      (`levels` codes + `<|sid_start|>` + `<|sid_end|>`) and none is open, `<|sid_start|>` is
      forced. With the SidConstraint inside the block, the reply then names an existing item.

    `intervened` records, per row, whether a rule changed the model's own choice, so a guarantee
    never hides a weak model: the demo reports the replies that needed it."""

    def __init__(self, start_id: int, end_id: int, ends: list[int], blank: torch.Tensor, levels: int,
                 prompt_len: int, max_new: int, require_sid: bool):
        self.start_id, self.end_id, self.levels = start_id, end_id, levels
        self.ends = torch.as_tensor(ends, dtype=torch.long)
        self.blank = blank  # [vocab] True for tokens that show nothing (whitespace, empty)
        self.prompt_len, self.max_new, self.require_sid = prompt_len, max_new, require_sid
        self.intervened: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        reply = input_ids[:, self.prompt_len:]
        dev = scores.device
        if self.intervened is None:
            self.intervened = torch.zeros(len(scores), dtype=torch.bool, device=dev)
        blank = self.blank.to(dev)
        visible = (~blank[reply.clamp(max=len(blank) - 1)]).any(1) if reply.shape[1] else \
            torch.zeros(len(scores), dtype=torch.bool, device=dev)
        hold = ~visible
        force = torch.zeros_like(hold)
        if self.require_sid:
            t = reply.shape[1]
            pos = torch.arange(t, device=dev)
            last_start = torch.where(reply == self.start_id, pos, -1).max(1).values if t else torch.full_like(hold, -1, dtype=torch.long)
            last_end = torch.where(reply == self.end_id, pos, -1).max(1).values if t else torch.full_like(hold, -1, dtype=torch.long)
            closed = last_end >= 0
            inside = last_start > last_end
            hold |= ~closed
            force = ~closed & ~inside & (self.max_new - t <= self.levels + 2)
        best = scores.argmax(-1)
        ends = self.ends.to(dev)
        out = scores.clone()
        out[hold.nonzero().flatten().unsqueeze(1), ends.unsqueeze(0)] = float("-inf")
        if force.any():
            out[force] = float("-inf")
            out[force, self.start_id] = scores[force, self.start_id]
        self.intervened |= out.argmax(-1) != best
        return out


def blank_tokens(tokenizer: Any) -> torch.Tensor:
    """[vocab] True for the tokens that decode to nothing visible (whitespace, empty)."""
    n = len(tokenizer)
    return torch.tensor([not tokenizer.decode([i]).strip() for i in range(n)], dtype=torch.bool)


@dataclass(frozen=True)
class SidMatch:
    """One SID block of a text and the item it names: "exact" (its codes are the item's),
    "prefix" (no item has them; `item` is the smallest item sharing the longest known prefix of
    `depth` codes) or "none" (malformed, or not even the first code matches: `item` is None)."""

    span: tuple[int, int]  # character span of the block in the text
    match: str
    item: int | None
    depth: int  # leading codes shared with `item` (scheme.levels for an exact match)


def match_sids(text: str, table: SidTable) -> list[SidMatch]:
    """Every SID block of `text`, in order, matched to the table (the lookups `render` shows)."""
    scheme, trie = table.scheme, table.trie()
    out = []
    for span, codes in scheme.find_all(text):
        item = trie.item_of(codes) if codes is not None else None
        if item is not None:
            out.append(SidMatch(span, "exact", int(item), scheme.levels))
            continue
        depth, example = trie.longest_known_prefix(codes) if codes is not None else (0, None)
        out.append(SidMatch(span, "prefix", example, depth) if example is not None else SidMatch(span, "none", None, 0))
    return out


def render(text: str, table: SidTable, mark: bool = True) -> str:
    """Every SID in `text` replaced by a readable name: the item's title; for a SID that names no
    item, the title of an item sharing its longest known prefix, marked "(L2 match)", or
    "[unknown SID]" when not even the first code matches."""
    out, last = [], 0
    for m in match_sids(text, table):
        a, b = m.span
        out.append(text[last:a])
        if m.item is None:
            out.append("[unknown SID]")
        else:
            title = table.df["title"].iat[int(np.searchsorted(table.item_ids, m.item))]
            out.append(f"[{title} (L{m.depth} match)]" if m.match == "prefix" and mark else f"[{title}]")
        last = b
    out.append(text[last:])
    return "".join(out)
