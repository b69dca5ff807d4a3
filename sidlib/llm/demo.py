"""Chat with the fine-tuned model: a conversation that keeps its history and shows SIDs as titles.

    chat = Chat.load(cfg)                       # the profile's 08 model (or model_dir=...)
    reply = chat("I like Comedy movies. <|rec|>")
    print(reply.text)                           # "[Toy Story (1995)]": SIDs rendered as titles
    chat("Something older, please. <|rec|>")    # a second turn sees the first

Replies are generated with the SidConstraint on by default (every SID the model writes names an
existing item; free text is untouched); `constrained=False` shows what the model writes alone.
Rendering never fails: a SID that names no item is shown by the title of an item sharing its
longest known prefix, marked "(L2 match)", or as "[unknown SID]" (sidlib.llm.decode.render).
`recommend` ranks items for a history by constrained beam search, as 09-eval does.
`generate_reply` is one turn's generation (constraint, reply rules, stop strings, time limit,
streaming): the Chat and the server (sidlib.serve) both answer through it.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import StoppingCriteriaList

from ..config import Config
from ..sids import REC, SidTable
from ..text import is_missing
from .decode import ReplyOnly, ReplyRules, render
from .finetuned import load_finetuned
from .generate import Decoder, rec_messages
from .tasks import templates_of, words_for


@dataclass
class Reply:
    """One assistant turn: what the model wrote (raw, SID tokens included) and what people read."""

    raw: str
    text: str
    constrained: bool = True
    assisted: bool = False  # a reply rule (never empty, a SID for <|rec|>) changed the model's choice

    def __str__(self) -> str:
        return self.text


@dataclass
class Chat:
    """A conversation with a SID-speaking model. Call it with the user's message."""

    model: Any = field(repr=False)
    tok: Any = field(repr=False)
    table: SidTable = field(repr=False)
    cfg: Config = field(repr=False)
    constrained: bool = True
    system: str | None = None  # None = the SFT data's system prompt (what the model was trained with)
    max_new_tokens: int | None = None  # None = eval.max_new_tokens
    sample: bool = False  # greedy by default: the demo is reproducible
    temperature: float = 0.7
    history: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dec = Decoder(self.model, self.tok, self.table, self.cfg.llm)

    @classmethod
    def load(cls, cfg: Config, model_dir: str = "", **kw: Any) -> Chat:
        """The fine-tuned model of the profile (08's folder), or any HF folder / hub id."""
        model, tok, table, _where = load_finetuned(cfg, model_dir)
        return cls(model, tok, table, cfg, **kw)

    # -- the conversation
    def messages(self) -> list[dict[str, str]]:
        system = self.cfg.sft.system_prompt if self.system is None else self.system
        return ([{"role": "system", "content": system}] if system else []) + list(self.history)

    def __call__(self, text: str) -> Reply:
        """Send a user message; the reply joins the history (so the next turn can refine it).

        Replies are never empty, and with the constraint on (the default) a `<|rec|>` request is
        answered with at least one existing item (`ReplyRules`; `Reply.assisted` says when the
        model needed it). An empty reply (only possible with the constraint off) is not stored."""
        user = {"role": "user", "content": text}
        ids = self.dec.prompt(self.messages() + [user])
        g = generate_reply(self.dec, ids, self.max_new_tokens or self.cfg.eval.max_new_tokens,
                           constrained=self.constrained, require_sid=REC in text, sample=self.sample,
                           temperature=self.temperature)
        if g.raw:
            self.history += [user, {"role": "assistant", "content": g.raw}]
        return Reply(g.raw, self.render(g.raw), constrained=self.constrained, assisted=g.assisted)

    def reset(self) -> None:
        self.history.clear()

    def render(self, text: str) -> str:
        """SIDs -> "[title]"; an unknown SID -> its nearest known prefix, marked, or "[unknown SID]"."""
        return render(text, self.table)

    def transcript(self) -> pd.DataFrame:
        """The conversation so far: role, what was written, what a person reads."""
        return pd.DataFrame([{"role": m["role"], "rendered": self.render(m["content"]), "raw": m["content"]}
                             for m in self.history])

    # -- recommendations, as 09-eval ranks them
    def recommend(self, history: Sequence[int], k: int = 5, exclude_seen: bool | None = None) -> pd.DataFrame:
        """Top-k items for a history (item ids, oldest first) by constrained beam search on the
        sequential prompt: rank, item_id, title, sid. exclude_seen (default: the profile's
        baselines.exclude_history, as 09 ranks): never an item of the history itself."""
        ban = self.cfg.baselines.exclude_history if exclude_seen is None else exclude_seen
        items = self.dec.recommend([list(history)], self.cfg, k, exclude_history=ban)[0]
        items = [int(i) for i in items if i >= 0]
        return pd.DataFrame({"rank": np.arange(1, len(items) + 1), "item_id": items,
                             "title": [self.title(i) for i in items], "sid": [self.table.sid_of(i) for i in items]})

    def title(self, item: int) -> str:
        return str(self.table.df["title"].iat[int(item)])


# --------------------------------------------------------------------------- one reply
# The Chat's turn and the server's (sidlib.serve) completion are this one call.


@dataclass
class Generated:
    """One generated reply and how it ended."""

    raw: str  # what the model wrote up to its end of turn (or a stop string), SID tokens included
    assisted: bool  # a reply rule (never empty, a SID for <|rec|>) changed the model's choice
    finish: str  # "stop": the model ended its turn or wrote a stop string; "length": max_new or max_time ran out
    prompt_tokens: int
    completion_tokens: int


def wants_sid(messages: Sequence[Mapping[str, str]]) -> bool:
    """A `<|rec|>` in the last user message asks for an item now (06's rec tasks end with it)."""
    user = [m for m in messages if m.get("role") == "user"]
    return bool(user) and REC in str(user[-1].get("content", ""))


@torch.no_grad()
def generate_reply(dec: Decoder, prompt: Sequence[int], max_new: int, constrained: bool = True,
                   require_sid: bool = False, sample: bool = False, temperature: float = 0.7, top_p: float = 1.0,
                   stop: Sequence[str] = (), max_time: float | None = None, streamer: Any = None,
                   stopping: Sequence[Any] = ()) -> Generated:
    """The assistant's reply to a prompt (token ids ending where the answer begins).

    constrained: the SidConstraint on every SID block, and the reply rules (never empty;
    `require_sid`: at least one closed SID, as a `<|rec|>` request wants). Greedy unless `sample`.
    stop: strings that end the reply (not included, as OpenAI's `stop`); max_time: seconds for
    the whole generation (then it ends as "length"); streamer / stopping: transformers'
    streamer and extra StoppingCriteria, passed through."""
    model = dec.model
    x = torch.tensor([list(prompt)], device=next(model.parameters()).device)
    kw: dict[str, Any] = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sample \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stop:
        kw.update(stop_strings=list(stop), tokenizer=dec.tok)
    procs: list[Any] = []
    rules = None
    if constrained:
        con = dec.constraint
        rules = ReplyRules(con.start_id, con.end_id, dec.ends, dec.blank, dec.table.scheme.levels, len(prompt),
                           max_new, require_sid=require_sid)
        procs = [rules, ReplyOnly(con, len(prompt))]  # the rules may open a block; the constraint fills it
    out = model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, logits_processor=procs or None,
        eos_token_id=dec.ends, pad_token_id=dec.pad_id, max_time=max_time, streamer=streamer,
        stopping_criteria=StoppingCriteriaList(stopping) if stopping else None, **kw)
    new = out[0, len(prompt):].tolist()
    ended = next((i for i, t in enumerate(new) if t in dec.ends), None)
    raw = dec.reply_text(new)
    cut = cut_at_stop(raw, stop)
    assisted = bool(rules is not None and rules.intervened is not None and rules.intervened.any())
    return Generated(cut if cut is not None else raw, assisted,
                     "stop" if ended is not None or cut is not None else "length",
                     len(prompt), len(new) if ended is None else ended + 1)


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """`text` before the first stop string it holds (stripped), None when it holds none."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(hits)].strip() if hits else None


# --------------------------------------------------------------------------- prompts for the examples
# In the phrasings of 06's SFT tasks (sidlib.llm.tasks.TEMPLATES): the model answers best in the
# questions it was trained on.


def sft_question(task: str, cfg: Config, template: int = 0, **fields: Any) -> str:
    """The user turn of one of 06's phrasings, e.g. sft_question("sid_to_title", cfg, sid=...)."""
    w = words_for(cfg.data.source, cfg.sft.item_noun)
    user_t, _answer = templates_of(task)[template]
    return user_t.format(noun=w.noun, nouns=w.nouns, verb=w.verb, verb_ing=w.verb_ing, people=w.people, rec=REC,
                         **fields)


def history_prompt(history: Sequence[int], table: SidTable, cfg: Config) -> str:
    """The sequential question 09 ranks with ("A user's last 5 movies were: ... What comes next?")."""
    return rec_messages(history, table, cfg)[-1]["content"]


def preference_prompt(labels: Sequence[str], cfg: Config) -> str:
    """A rec_steering request: "I like Comedy and Drama movies. <|rec|>"."""
    nouns = words_for(cfg.data.source, cfg.sft.item_noun).nouns
    return f"I like {' and '.join(labels)} {nouns}. {REC}"


def top_labels(items: pd.DataFrame, history: Sequence[int], source: str, n: int = 2) -> list[str]:
    """The most frequent categories of the history items (MovieLens: genres; others: the leaf
    category), as 06 builds a preference."""
    counts: Counter = Counter()
    cats = items.set_index("item_id")["categories"]
    for i in history:
        c = cats.get(int(i))
        if is_missing(c):
            continue
        c = [c] if isinstance(c, str) else [str(x) for x in c]
        counts.update(c if source == "movielens" else c[-1:])
    return [lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def find_items(table: SidTable, text: str, n: int = 5) -> pd.DataFrame:
    """Items whose title contains `text` (case-insensitive): title -> SID lookups by hand."""
    hit = table.df[table.df["title"].astype(str).str.contains(text, case=False, regex=False)]
    return hit[["item_id", "sid", "title"]].head(n).reset_index(drop=True)


# --------------------------------------------------------------------------- the demo's record
# What a person sees in the demo, written down so anyone can check it without opening the
# notebook: artifacts/<profile>/demo/transcript.jsonl and the "demo" entry of summary.json.

# a recommendation request | a question that asks for words | one that asks for an item's SID
REC_TURN, TEXT_TURN, SID_TURN = "rec", "text", "sid"
TURN_KINDS = (REC_TURN, TEXT_TURN, SID_TURN)


def outside_sids(raw: str, table: SidTable) -> str:
    """A reply with its SID blocks taken out."""
    last, parts = 0, []
    for (a, b), _codes in table.scheme.find_all(raw):
        parts.append(raw[last:a])
        last = b
    parts.append(raw[last:])
    return " ".join(parts)


def words_outside_sids(raw: str, table: SidTable) -> list[str]:
    """The words (2+ letters) of a reply once its SID blocks are taken out."""
    return re.findall(r"[A-Za-z][A-Za-z'\-]+", outside_sids(raw, table))


def _mostly_letters(text: str) -> bool:
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and sum(c.isalpha() for c in chars) >= len(chars) / 2


@dataclass
class DemoLog:
    """The demo's turns: what was asked, what the model wrote, what a person read."""

    table: SidTable = field(repr=False)
    turns: list[dict[str, Any]] = field(default_factory=list)

    def add(self, section: str, kind: str, prompt: str, reply: Reply) -> Reply:
        if kind not in TURN_KINDS:
            raise ValueError(f"turn kind {kind!r}: expected one of {TURN_KINDS}")
        trie = self.table.trie()
        found = self.table.scheme.find_all(reply.raw)
        items = [int(trie.item_of(c)) for _s, c in found if c is not None and trie.item_of(c) is not None]
        words = words_outside_sids(reply.raw, self.table)
        self.turns.append({
            "section": section, "kind": kind, "prompt": prompt, "raw": reply.raw, "rendered": reply.text,
            "constrained": reply.constrained, "assisted": reply.assisted, "items": items,
            "sids": len(found), "words": len(words),
            # words asked for: some words, more words than SIDs (an answer may name the items), and
            # mostly letters ("The 2019 2023 2024 ..." has a word but is no answer in words)
            "in_words": bool(words) and (not found or len(words) >= 2 * len(found)) and _mostly_letters(
                outside_sids(reply.raw, self.table)),
        })
        return reply

    def counts(self) -> dict[str, Any]:
        rec = [t for t in self.turns if t["kind"] == REC_TURN]
        text = [t for t in self.turns if t["kind"] == TEXT_TURN]
        return {
            "turns": len(self.turns),
            "empty_replies": sum(not t["raw"].strip() for t in self.turns),
            "rec_turns": len(rec),
            "rec_turns_with_item": sum(bool(t["items"]) for t in rec),
            # the rec turns where a reply rule (a SID for <|rec|>) changed the model's own choice
            "rec_turns_assisted": sum(t["assisted"] for t in rec),
            "text_turns": len(text),
            "text_turns_in_words": sum(t["in_words"] for t in text),
            "sid_turns": sum(t["kind"] == SID_TURN for t in self.turns),
            "sid_turns_with_item": sum(bool(t["items"]) for t in self.turns if t["kind"] == SID_TURN),
        }

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.turns)

    def write(self, folder: str | Path) -> Path:
        """transcript.jsonl in `folder` (created); returns its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "transcript.jsonl"
        with path.open("w") as f:
            for t in self.turns:
                f.write(json.dumps(t, ensure_ascii=False) + "\n")
        return path
