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
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..sids import REC, SidTable
from .decode import render
from .decode import ReplyOnly
from .eval import Decoder, load_finetuned, rec_messages


@dataclass
class Reply:
    """One assistant turn: what the model wrote (raw, SID tokens included) and what people read."""

    raw: str
    text: str

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

    @torch.no_grad()
    def __call__(self, text: str) -> Reply:
        """Send a user message; the reply joins the history (so the next turn can refine it)."""
        user = {"role": "user", "content": text}
        ids = self.dec.prompt(self.messages() + [user])
        x = torch.tensor([ids], device=next(self.model.parameters()).device)
        kw: dict[str, Any] = dict(do_sample=self.sample, temperature=self.temperature, top_p=1.0, top_k=0) \
            if self.sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=self.max_new_tokens or self.cfg.eval.max_new_tokens,
            logits_processor=[ReplyOnly(self.dec.constraint, len(ids))] if self.constrained else None,
            eos_token_id=self.dec.ends, pad_token_id=self.dec.pad_id, **kw)
        raw = self.dec.reply_text(out[0, len(ids):].tolist())
        self.history += [user, {"role": "assistant", "content": raw}]
        return Reply(raw, self.render(raw))

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


# --------------------------------------------------------------------------- prompts for the examples
# In the phrasings of 06's SFT tasks (sidlib.llm.sft_data.TEMPLATES): the model answers best in the
# questions it was trained on.


def sft_question(task: str, cfg: Config, template: int = 0, **fields: Any) -> str:
    """The user turn of one of 06's phrasings, e.g. sft_question("sid_to_title", cfg, sid=...)."""
    from .sft_data import templates_of, words_for

    w = words_for(cfg.data.source, cfg.sft.item_noun)
    user_t, _answer = templates_of(task)[template]
    return user_t.format(noun=w.noun, nouns=w.nouns, verb=w.verb, verb_ing=w.verb_ing, people=w.people, rec=REC,
                         **fields)


def history_prompt(history: Sequence[int], table: SidTable, cfg: Config) -> str:
    """The sequential question 09 ranks with ("A user's last 5 movies were: ... What comes next?")."""
    return rec_messages(history, table, cfg)[-1]["content"]


def preference_prompt(labels: Sequence[str], cfg: Config) -> str:
    """A rec_steering request: "I like Comedy and Drama movies. <|rec|>"."""
    from .sft_data import words_for

    nouns = words_for(cfg.data.source, cfg.sft.item_noun).nouns
    return f"I like {' and '.join(labels)} {nouns}. {REC}"


def top_labels(items: pd.DataFrame, history: Sequence[int], source: str, n: int = 2) -> list[str]:
    """The most frequent categories of the history items (MovieLens: genres; others: the leaf
    category), as 06 builds a preference."""
    counts: Counter = Counter()
    cats = items.set_index("item_id")["categories"]
    for i in history:
        c = cats.get(int(i))
        if c is None or (isinstance(c, float) and np.isnan(c)):
            continue
        c = [c] if isinstance(c, str) else [str(x) for x in c]
        counts.update(c if source == "movielens" else c[-1:])
    return [lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def find_items(table: SidTable, text: str, n: int = 5) -> pd.DataFrame:
    """Items whose title contains `text` (case-insensitive): title -> SID lookups by hand."""
    hit = table.df[table.df["title"].astype(str).str.contains(text, case=False, regex=False)]
    return hit[["item_id", "sid", "title"]].head(n).reset_index(drop=True)
