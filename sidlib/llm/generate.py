"""Generation with the SID chat model: the one place that touches the KV cache.

`Decoder` holds a causal LM, its tokenizer and the SID table with what decoding needs
precomputed, and offers greedy replies (free, or under the SidConstraint), SID beams, and the
recommender (`recommend`). 09 (sidlib.llm.eval), the demo's Chat and bench/llm_curve.py use it.

Decoding choices, and why:

- One prefill per batch of prompts serves every pass (greedy, beams, free replies): its KV cache
  is copied per pass (`Prefilled.select`, through the cache's public `reorder_cache`). The prompt
  dominates the cost on a CPU, and `generate`'s beam search would also prefill every beam separately.
- Beams are `sidlib.models.beam.beam_search` (SID-GR's search, "expand" cache mode) over the LM's
  logits: a SID's score is the sum of its code tokens' log-probabilities under the whole
  vocabulary, the quantity transformers' constrained beam search ranks by.
- The SidConstraint sees only the reply (plus the last prompt token): a prompt may itself hold an
  open SID prefix (prefix_to_category asks about `<|sid_start|><|sid_3|>`), which the constraint
  would otherwise take for an unfinished block and close.
"""
from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, ConfigError, LLMConfig
from ..models.beam import BeamResult, beam_search
from ..sids import REC, SID_START, CodeTrie, SidTable
from . import chat, tasks, vocab
from .chat import end_token_ids
from .decode import SidConstraint, blank_tokens


# --------------------------------------------------------------------------- decoding primitives


@dataclass
class Prefilled:
    """A batch of prompts run through the model: KV cache, attention mask, positions and the
    next-token logits. `step` grows the cache in place, so branch with `select` first."""

    cache: Any
    mask: torch.Tensor  # [B, T] 1 = a real token (prompts are left-padded)
    pos: torch.Tensor  # [B] position id of the last token fed
    logits: torch.Tensor  # [B, V] float32 next-token logits
    last: torch.Tensor  # [B] the last token fed (where the constraint's view of a reply starts)

    def select(self, rows: torch.Tensor) -> Prefilled:
        """A private copy holding `rows` (repeats allowed): passes never write into each other."""
        rows = rows.to(self.mask.device)
        return Prefilled(_select_cache(self.cache, rows), self.mask[rows], self.pos[rows], self.logits[rows],
                         self.last[rows])


def _select_cache(cache: Any, rows: torch.Tensor) -> Any:
    """Rows of a transformers cache as a new cache object; the original is untouched (the
    layers' index_select makes new tensors, only the shallow layer copies are shared)."""
    if hasattr(cache, "layers"):
        new = copy.copy(cache)
        new.layers = [copy.copy(layer) for layer in cache.layers]
    else:  # older cache classes
        new = copy.deepcopy(cache)
    new.reorder_cache(rows)
    return new


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [B, T] with every prompt ending at the right edge, where generation goes on."""
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, n - len(p):] = 1
    return ids, mask


@functools.lru_cache(maxsize=None)
def _cache_arg(model_cls: type) -> str:
    """The KV-cache argument of the model's forward: `cache` in the transformers sidlib pins
    (`past_key_values` is deprecated there, removed in 5.40), `past_key_values` in older ones."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def prefill(model: Any, prompts: Sequence[Sequence[int]], pad_id: int) -> Prefilled:
    """Left-pad the prompts (generation continues at the right edge of every row) and run them."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # padding does not shift a prompt's positions
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    return Prefilled(_cache_of(out), mask, pos[:, -1], out.logits[:, -1].float(), ids[:, -1])


@torch.no_grad()
def step(model: Any, state: Prefilled, tokens: torch.Tensor) -> Prefilled:
    """Feed one token per row; the cache grows in place."""
    tokens = tokens.to(state.mask.device)
    mask = torch.cat([state.mask, state.mask.new_ones(len(tokens), 1)], 1)
    pos = state.pos + 1
    out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None], use_cache=True,
                **{_cache_arg(type(model)): state.cache})
    return Prefilled(_cache_of(out), mask, pos, out.logits[:, -1].float(), tokens)


class _Rows:
    """`beam_search` reads the batch size from `prompt.tokens`: here row indices of a prefill."""

    def __init__(self, rows: Sequence[int], device: torch.device):
        self.tokens = torch.as_tensor(list(rows), dtype=torch.long, device=device)


class _BeamLM:
    """The model protocol of `sidlib.models.beam.beam_search` ("expand" cache mode) over a
    prefilled LM batch: the search's prefill feeds <|sid_start|>, level l scores the level's
    code tokens, each decode step feeds the chosen code token."""

    def __init__(self, model: Any, state: Prefilled, start_id: int, level_ids: list[torch.Tensor]):
        self.model, self.state, self.start_id, self.level_ids = model, state, start_id, level_ids
        self.n_levels = len(level_ids)

    def parameters(self):  # noqa: ANN201 - beam_search reads the device from here
        return self.model.parameters()

    def build_prompt(self, rows: Sequence[int]) -> _Rows:
        return _Rows(rows, self.state.mask.device)

    def prefill(self, prompt: _Rows) -> tuple[torch.Tensor, Prefilled]:
        st = self.state.select(prompt.tokens)
        st = step(self.model, st, torch.full((len(prompt.tokens),), self.start_id, dtype=torch.long))
        return st.logits, st

    def level_logprobs(self, logits: torch.Tensor, level: int) -> torch.Tensor:
        ids = self.level_ids[level].to(logits.device)
        return logits.float().log_softmax(-1)[..., ids]

    def decode_flat(self, codes: torch.Tensor, level: int, st: Prefilled) -> tuple[torch.Tensor, Prefilled]:
        st = step(self.model, st, self.level_ids[level].to(codes.device)[codes])
        return st.logits, st

    @staticmethod
    def reindex_flat_cache(st: Prefilled, idx: torch.Tensor) -> Prefilled:
        st.cache.reorder_cache(idx)  # in place: the search drops the old beams
        return Prefilled(st.cache, st.mask[idx], st.pos[idx], st.logits[idx], st.last[idx])


class Decoder:
    """A causal LM, its tokenizer (with the SID tokens) and the SID table, with what decoding
    needs precomputed: prompts, prefill, greedy replies with or without the constraint, SID beams."""

    def __init__(self, model: Any, tok: Any, table: SidTable, llm: LLMConfig):
        if not np.array_equal(table.item_ids, np.arange(len(table))):
            raise ValueError("evaluation needs the dense item ids 0..N-1 of the 05-sids table")
        self.model, self.tok, self.table, self.llm = model.eval(), tok, table, llm
        scheme = table.scheme
        ids = vocab.sid_token_ids(tok, scheme)
        code_ids = torch.tensor(ids[: scheme.num_code_tokens], dtype=torch.long)
        self.level_ids = [code_ids[o: o + k] for o, k in zip(scheme.offsets, scheme.codebook_sizes)]
        self.start_id = int(tok.convert_tokens_to_ids(SID_START))
        self.trie = CodeTrie(table.codes, scheme.codebook_sizes)
        self.constraint = SidConstraint(tok, table)
        self.ends = end_token_ids(tok, model)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.ends[0]
        model.config.use_cache = True  # 08 trains without the cache; generation needs it

    @functools.cached_property
    def blank(self) -> torch.Tensor:
        """[vocab] True for the tokens that show nothing (the reply rules' "never empty"); a
        decode of every token, so made once, when a reply first needs it."""
        return blank_tokens(self.tok)

    def prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        return chat.prompt_ids(self.tok, messages, self.llm)

    def rec_prompt(self, history: Sequence[int], cfg: Config) -> list[int]:
        """Token ids the recommender's beams start after (`rec_prompt_mode`): 06's seq_last_N
        question, or seq_history's question with the last sft.history_window items already
        listed as the answer, so the next SID continues the list."""
        if rec_prompt_mode(cfg) == "question":
            return self.prompt(rec_messages(history, self.table, cfg))
        shown = [int(i) for i in history][-cfg.sft.history_window:]
        if not shown:
            raise ValueError("the recommender needs at least one history item")
        listing = "".join(self.table.sid_of(i) for i in shown)
        return self.prompt(history_messages(self.table, cfg)) + self.tok(listing, add_special_tokens=False)["input_ids"]

    def prefill(self, prompts: Sequence[Sequence[int]]) -> Prefilled:
        return prefill(self.model, prompts, self.pad_id)

    @torch.no_grad()
    def greedy(self, state: Prefilled, rows: Sequence[int], max_new: int,
               constrained: bool | Sequence[bool]) -> list[str]:
        """Free greedy replies of some rows of a prefill (on a copy), end-of-turn stripped.

        `constrained` per row (or for all): one batch can hold the same prompt with and without
        the SidConstraint, so both replies cost one pass of decoding steps."""
        rows = list(rows)
        flags = [constrained] * len(rows) if isinstance(constrained, bool) else list(constrained)
        if len(flags) != len(rows):
            raise ValueError(f"{len(flags)} constrained flags for {len(rows)} rows")
        st = state.select(torch.as_tensor(rows, dtype=torch.long))
        seen = st.last[:, None]  # the constraint's view: last prompt token + the reply
        con = torch.as_tensor(flags, dtype=torch.bool, device=seen.device)
        ends = torch.tensor(self.ends, device=seen.device)
        done = torch.zeros(len(seen), dtype=torch.bool, device=seen.device)
        for t in range(max_new):
            scores = st.logits
            if bool(con.any()):
                scores = scores.clone()
                scores[con] = self.constraint(seen[con], scores[con])
            nxt = torch.where(done, ends[0], scores.argmax(-1))
            seen = torch.cat([seen, nxt[:, None]], 1)
            done |= torch.isin(nxt, ends)
            if bool(done.all()) or t == max_new - 1:
                break
            st = step(self.model, st, nxt)
        return [self.reply_text(row[1:].tolist()) for row in seen]

    def reply_text(self, ids: Sequence[int]) -> str:
        """Generated ids -> text up to the first end-of-turn token. SID tokens are special tokens:
        keep them (skip_special_tokens=False)."""
        ids = list(ids)
        cut = next((i for i, t in enumerate(ids) if t in self.ends), len(ids))
        return self.tok.decode(ids[:cut], skip_special_tokens=False).strip()

    def beam(self, state: Prefilled, rows: Sequence[int], k: int,
             exclude: Sequence[Sequence[int]] | None = None) -> BeamResult:
        """Top-k existing items for some rows of a prefill, by constrained beam search after
        <|sid_start|> (k = 1 is greedy under the trie). items [rows, k] (-1 padding), descending.
        exclude: per row, items the beams must not produce (the SID-GR search's bans)."""
        lm = _BeamLM(self.model, state, self.start_id, self.level_ids)
        rows = list(rows)
        return beam_search(lm, rows, self.trie, beam=k, topk=k, cache="expand", batch_users=max(len(rows), 1),
                           exclude=exclude)

    def codes_in(self, text: str) -> list[list[int] | None]:
        """Codes of every SID block of a reply (None: malformed)."""
        return [codes for _span, codes in self.table.scheme.find_all(text)]

    def wellformed(self, text: str) -> bool:
        """At least one SID block, and every block one code of each level, in order, closed
        (whether it names an item is `valid`)."""
        found = self.codes_in(text)
        return bool(found) and all(c is not None for c in found)

    def valid(self, text: str) -> bool:
        """At least one SID, and every SID names an existing item."""
        found = self.codes_in(text)
        return bool(found) and all(c is not None and self.trie.is_item(c) for c in found)

    def first_item_codes(self, text: str) -> list[int] | None:
        found = self.codes_in(text)
        return found[0] if found and found[0] is not None else None

    # -- the recommender
    def recommend(self, histories: Sequence[Sequence[int]], cfg: Config, k: int, batch_size: int | None = None,
                  progress: bool = False, exclude_history: bool = False) -> np.ndarray:
        """[B, k] item ids per history, best first (-1 padding), by constrained beam search on
        06's sequential prompt. Prompts are batched by length (less padding). exclude_history:
        the beams never produce an item of the user's (whole) history, as SID-GR's."""
        prompts = [self.rec_prompt(h, cfg) for h in histories]
        out = np.full((len(prompts), k), -1, dtype=np.int64)
        bs = batch_size or cfg.eval.batch_size
        order = np.argsort([len(p) for p in prompts], kind="stable")
        batches = [order[a: a + bs] for a in range(0, len(order), bs)]
        for idx in tqdm(batches, desc="09 recommend", disable=not progress, mininterval=5.0):
            st = self.prefill([prompts[i] for i in idx])
            bans = [histories[i] for i in idx] if exclude_history else None
            out[idx] = self.beam(st, range(len(idx)), k, exclude=bans).items.cpu().numpy()
        return out


# --------------------------------------------------------------------------- prompts


REC_PROMPTS = ("auto", "question", "history")


def rec_prompt_mode(cfg: Config) -> str:
    """eval.rec_prompt resolved: "history" when 06 builds seq_history (sft.history_window > 0)
    under "auto", else "question"; "history" without seq_history is an error (the model never
    read that prompt)."""
    mode = cfg.eval.rec_prompt
    if mode not in REC_PROMPTS:
        raise ConfigError(f"eval.rec_prompt = {mode!r}: expected one of {', '.join(REC_PROMPTS)}")
    if mode == "history" and cfg.sft.history_window < 2:
        raise ConfigError("eval.rec_prompt = 'history' needs 06's seq_history task: set sft.history_window (e.g. 50)")
    if mode == "auto":
        return "history" if cfg.sft.history_window >= 2 else "question"
    return mode


def history_messages(table: SidTable, cfg: Config) -> list[dict[str, str]]:
    """seq_history's question (system prompt included), whose answer lists a history."""
    words = tasks.words_for(cfg.data.source, cfg.sft.item_noun)
    user_t, _answer = tasks.templates_of(tasks.HISTORY)[0]
    system = [{"role": "system", "content": cfg.sft.system_prompt}] if cfg.sft.system_prompt else []
    return system + [{"role": "user", "content": user_t.format(nouns=words.nouns, verb=words.verb)}]


def rec_messages(history: Sequence[int], table: SidTable, cfg: Config) -> list[dict[str, str]]:
    """The recommender prompt: 06's `seq_last_N` question (its first phrasing, N = the longest of
    sft.seq_lengths) on the last N history items, after the same system prompt, so the model sees
    a prompt like its training data."""
    n = max(cfg.sft.seq_lengths)
    shown = [int(i) for i in history][-n:]
    if not shown:
        raise ValueError("the recommender needs at least one history item")
    words = tasks.words_for(cfg.data.source, cfg.sft.item_noun)
    user_t, _answer = tasks.templates_of(tasks.seq_task(n))[0]
    text = user_t.format(noun=words.noun, nouns=words.nouns, verb=words.verb, verb_ing=words.verb_ing,
                         people=words.people, rec=REC, n=len(shown),
                         history=", ".join(table.sid_of(i) for i in shown))
    system = [{"role": "system", "content": cfg.sft.system_prompt}] if cfg.sft.system_prompt else []
    return system + [{"role": "user", "content": text}]
