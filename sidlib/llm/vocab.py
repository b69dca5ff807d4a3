"""Stage 1 of the fine-tune: teach the base model's vocabulary the SID tokens.

The scheme's tokens (every `<|sid_N|>`, `<|sid_start|>`, `<|sid_end|>`, `<|rec|>`, from
`sidlib.sids`) are appended as special tokens, so old token ids never move and a SID is always
exactly L+2 tokens. New embedding rows start either at the mean of the existing rows or — better
on a short run, see bench/finetune_init.py — from text: the row of code c at level l is the mean
LLM embedding of the titles of the items whose level-l code is c, so a code starts near the
words of the items it groups. Tied input/output embeddings are untied first (as the seed does):
a SID token's input meaning and its output score are learned separately.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..sids import SidScheme
from ..sids.codes import LEVEL_LETTERS
from .base import LLMError

INITS = ("text", "mean")


def add_sid_tokens(tokenizer: Any, scheme: SidScheme) -> list[int]:
    """Append the scheme's tokens to the tokenizer (those already present are kept); returns
    their ids in `scheme.tokens()` order."""
    tokens = scheme.tokens()
    missing = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return sid_token_ids(tokenizer, scheme)


def sid_token_ids(tokenizer: Any, scheme: SidScheme) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(scheme.tokens())
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise LLMError("the tokenizer lacks some SID tokens: call add_sid_tokens first")
    return list(ids)


def check_sid_tokenization(tokenizer: Any, scheme: SidScheme, sids: Sequence[str]) -> None:
    """Every SID must encode to exactly its L+2 tokens, alone and inside a sentence (a
    tokenizer that merges the space before a special token, or splits `<|sid_12|>` into pieces,
    would teach the model other strings than the ones we decode)."""
    for sid in sids:
        want = tokenizer.convert_tokens_to_ids(scheme.tokens_of(sid))
        for text in (sid, f"Item: {sid}", f"items {sid}, {sid}."):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if not _contains(ids, want):
                pieces = tokenizer.convert_ids_to_tokens(ids)
                raise LLMError(
                    f"the tokenizer splits SID tokens: {text!r} encodes to {pieces}, expected the run "
                    f"{scheme.tokens_of(sid)}; add the SID tokens as special tokens (add_sid_tokens)"
                )


def _contains(ids: Sequence[int], run: Sequence[int]) -> bool:
    n = len(run)
    return any(list(ids[i : i + n]) == list(run) for i in range(len(ids) - n + 1))


def untie_embeddings(model: Any) -> bool:
    """Give the output layer its own copy of the input embeddings; True when they were tied."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out.weight.data_ptr() == inp.weight.data_ptr()
    if tied:
        out.weight = torch.nn.Parameter(inp.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text_cfg is not None:
        text_cfg.tie_word_embeddings = False
    return tied


def text_rows(matrix: torch.Tensor, token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """[items, hidden]: mean of `matrix` rows over each item's title tokens (mean of all rows
    for an item without tokens)."""
    fallback = matrix.mean(0)
    out = torch.empty(len(token_lists), matrix.shape[1], dtype=matrix.dtype)
    for i, toks in enumerate(token_lists):
        out[i] = matrix[list(toks)].mean(0) if len(toks) else fallback
    return out


def code_rows(item_rows: torch.Tensor, codes: np.ndarray, scheme: SidScheme) -> torch.Tensor:
    """[num_code_tokens, hidden]: row of code c at level l = mean of item_rows of items with
    codes[:, l] == c (scatter-mean, no loop over codes); codes no item uses get the overall mean."""
    hidden = item_rows.shape[1]
    numbers = torch.from_numpy(np.asarray(codes, dtype=np.int64) + np.asarray(scheme.offsets, dtype=np.int64))
    sums = torch.zeros(scheme.num_code_tokens, hidden, dtype=torch.float64)
    counts = torch.zeros(scheme.num_code_tokens, dtype=torch.float64)
    rows64 = item_rows.double()
    for level in range(scheme.levels):
        sums.index_add_(0, numbers[:, level], rows64)
        counts.index_add_(0, numbers[:, level], torch.ones(len(numbers), dtype=torch.float64))
    out = sums / counts.clamp(min=1).unsqueeze(1)
    out[counts == 0] = rows64.mean(0)
    return out.to(item_rows.dtype)


@torch.no_grad()
def resize_and_init(model: Any, tokenizer: Any, scheme: SidScheme, method: str = "text",
                    codes: np.ndarray | None = None, titles: Sequence[str] | None = None,
                    structure: bool = False) -> dict[str, Any]:
    """Add rows for the new tokens to both embedding matrices (untied) and initialise them.

    `codes` [items, levels] and `titles` are needed for method="text". Old rows are unchanged.
    structure: also mark where in a SID each input row sits (`mark_structure`)."""
    if method not in INITS:
        raise LLMError(f"finetune.init={method!r}: expected one of {INITS}")
    ids = add_sid_tokens(tokenizer, scheme)
    rows = model.get_input_embeddings().weight.shape[0]
    # the old vocabulary is the tokenizer's, not the embedding matrix's: Qwen3 has 151,936 rows for
    # 151,669 tokens, so the SID tokens take ids inside the existing rows (no resize) and must not
    # be counted among the old ones (stage 1 would freeze them, the init would average padding rows)
    old = n_old_tokens(tokenizer, scheme)
    tied = untie_embeddings(model)
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    n_codes = scheme.num_code_tokens
    code_ids, special_ids = ids[:n_codes], ids[n_codes:]
    if method == "text":
        if codes is None or titles is None:
            raise LLMError("finetune.init='text' needs the SID codes and the item titles")
        token_lists = tokenizer([str(t) for t in titles], add_special_tokens=False)["input_ids"]
        # title tokens must be old tokens: a title that happens to contain SID text is not an anchor
        token_lists = [[t for t in toks if t < old] for toks in token_lists]
    for emb in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        base = emb[:old].float()
        mean = base.mean(0)
        if method == "mean":
            emb[code_ids] = mean.to(emb.dtype)
        else:
            emb[code_ids] = code_rows(text_rows(base, token_lists), codes, scheme).to(emb.dtype)
        emb[special_ids] = mean.to(emb.dtype)
    if structure:
        mark_structure(model.get_input_embeddings().weight, tokenizer, scheme, old, ids)
    return {"added": len(tokenizer) - old, "vocab_before": old, "vocab_after": len(tokenizer),
            "embedding_rows": int(model.get_input_embeddings().weight.shape[0]), "untied": tied, "init": method}


# what the input rows of <|sid_start|>, <|sid_end|>, <|rec|> start from with `structure`
STRUCTURE_TEXT = ("[", "]", " recommend")


@torch.no_grad()
def mark_structure(emb: torch.Tensor, tokenizer: Any, scheme: SidScheme, old: int, ids: Sequence[int]) -> None:
    """Input rows that tell a frozen trunk where in a SID it is (finetune.structure).

    With the plain init, <|sid_start|>, <|sid_end|> and <|rec|> share one input row (the mean) and
    the code rows of every level are title means alike, so the trunk's hidden state after
    <|sid_start|> equals the one after <|sid_end|>, and a level-1 code looks like a level-3 one.
    Stage 1 on cached states (sidlib.llm.head) only fits output rows on those states, so it cannot
    learn "after <|sid_start|> comes a level-1 code": on whole-history listings it predicted
    <|sid_start|> after <|sid_start|> and the dedup code after every level (docs/benchmarks.md).
    Here the three special tokens start from the rows of "[", "]" and "recommend", and each code
    row of level l gains (row of the letter of l) - (mean row): the title meaning stays, the
    level becomes visible. Output rows are left alone (they start where they never win)."""
    base = emb[:old].float()
    mean = base.mean(0)

    def text_row(text: str) -> torch.Tensor:
        toks = [t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t < old]
        return base[toks].mean(0) if toks else mean

    for level in range(scheme.levels):
        first, last = scheme.level_token_range(level)
        emb[list(ids[first: last + 1])] += (text_row(" " + LEVEL_LETTERS[level].upper()) - mean).to(emb.dtype)
    n_codes = scheme.num_code_tokens
    for tid, text in zip(ids[n_codes:], STRUCTURE_TEXT):
        emb[tid] = text_row(text).to(emb.dtype)


def n_old_tokens(tokenizer: Any, scheme: SidScheme) -> int:
    """Tokens of the base vocabulary: every id below the first SID token (they are appended)."""
    ids = sid_token_ids(tokenizer, scheme)
    first = min(ids)
    if sorted(ids) != list(range(first, first + len(ids))):
        raise LLMError("the SID tokens are not one block of ids at the end of the vocabulary")
    return first


def freeze_all_but_embeddings(model: Any) -> int:
    """Stage 1: only the input and output embedding matrices train. Returns trainable params."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
