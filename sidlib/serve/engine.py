"""The model behind the server: loaded once, run by one worker thread, one request at a time.

Why one thread: generation holds the model's KV cache and the tokenizer for its whole length,
and interleaving two requests would only make both slower on a CPU (each step already uses every
core). A single-worker executor is the queue (first come, first served), and the model and the
tokenizer are only ever touched from that thread, so nothing in them needs a lock.

A request's time limit (`Limits.request_timeout`) counts from its arrival: time spent waiting in
the queue is taken from the generation's `max_time`, and a request that waited the whole limit is
answered 503 without running. A chat reply cut by the limit ends with finish_reason "length".
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from ..config import Config
from ..llm.decode import match_sids
from ..llm.demo import Chat, Generated, cut_at_stop, generate_reply, wants_sid
from ..sids import SID_START
from ..sids.scheme import SidFormatError
from .schemas import ApiError, ChatRequest, RecommendRequest

log = logging.getLogger("sidlib.serve")
T = TypeVar("T")


@dataclass
class Limits:
    """What one request may ask for."""

    request_timeout: float = 120.0  # seconds from arrival (queue + generation)
    max_tokens: int = 512  # the most a request may ask for (max_tokens above it: a 400)
    default_tokens: int = 64  # a request that names no max_tokens (the profile's eval.max_new_tokens)
    context: int = 512  # prompt + reply tokens (the length the model was fine-tuned on)


@dataclass
class Completion:
    """A finished chat reply, with the items it names."""

    gen: Generated
    items: list[dict[str, Any]]
    constrained: bool


class Engine:
    """The fine-tuned model (a `Chat`, used without its history), its SID table and the worker."""

    def __init__(self, chat: Chat, name: str, limits: Limits | None = None):
        self.chat, self.dec, self.table, self.cfg = chat, chat.dec, chat.table, chat.cfg
        self.name = name
        self.limits = limits or Limits(default_tokens=chat.cfg.eval.max_new_tokens,
                                       context=context_of(chat.model, chat.cfg))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidlib-serve")
        self.queued = 0  # requests waiting or running (for /health)
        # exact title -> item ids (a title may name several items: then the client must choose)
        self.by_title: dict[str, list[int]] = defaultdict(list)
        for item, title in zip(self.table.item_ids.tolist(), self.table.df["title"].astype(str)):
            self.by_title[title].append(int(item))
        self.pool.submit(lambda: self.dec.blank).result()  # made once now, not in the first request

    @classmethod
    def load(cls, cfg: Config, model_dir: str = "", name: str = "", **limits: Any) -> Engine:
        """The profile's 08 model (or any HF folder) and its SID table; `limits` override Limits'
        fields (None = the default)."""
        chat = Chat.load(cfg, model_dir)
        base = Limits(default_tokens=cfg.eval.max_new_tokens, context=context_of(chat.model, cfg))
        for k, v in limits.items():
            if v is not None:
                setattr(base, k, v)
        base.default_tokens = min(base.default_tokens, base.max_tokens)
        return cls(chat, name or cfg.profile, base)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- the queue
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args, seconds_left) on the worker thread, after every request that came before."""
        arrived = time.monotonic()
        self.queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self._in_time, arrived, fn, args)
        finally:
            self.queued -= 1

    def _in_time(self, arrived: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        left = self.limits.request_timeout - (time.monotonic() - arrived)
        if left <= 0:
            raise ApiError(f"the request waited {self.limits.request_timeout:g} s in the queue (the server's "
                           "--request-timeout) without its turn; try again later", status=503, type="server_error",
                           code="queue_timeout")
        return fn(*args, left)

    # -- chat
    def check_model(self, model: str | None) -> None:
        if model and model != self.name:
            raise ApiError(f"The model `{model}` does not exist: this server serves `{self.name}`", param="model",
                           code="model_not_found", status=404)

    def max_new(self, req: ChatRequest) -> int | None:
        """The request's token limit, checked against the server's (None: the default, fitted later)."""
        a, b = req.max_tokens, req.max_completion_tokens
        if a is not None and b is not None and a != b:
            raise ApiError(f"max_tokens={a} and max_completion_tokens={b} disagree: give one", param="max_tokens")
        want, param = (b, "max_completion_tokens") if b is not None else (a, "max_tokens")
        if want is None:
            return None
        if want < 1:
            raise ApiError(f"{param}={want}: must be at least 1", param=param, code="invalid_value")
        if want > self.limits.max_tokens:
            raise ApiError(f"{param}={want} is too large: this server writes at most {self.limits.max_tokens} "
                           "tokens a reply (--max-tokens)", param=param, code="invalid_value")
        return want

    def complete(self, req: ChatRequest, on_start: Callable[[int], None] | None,
                 on_text: Callable[[str], None] | None, cancel: threading.Event | None, left: float) -> Completion:
        """One reply (worker thread). on_start(prompt tokens) once the prompt is accepted, on_text(delta)
        as the reply grows: the streaming response's events. `cancel` set: stop early."""
        want = self.max_new(req)
        turns = [m.as_turn() for m in req.messages]
        prompt = self.dec.prompt(turns)
        ctx = self.limits.context
        if len(prompt) >= ctx or (want is not None and len(prompt) + want > ctx):
            asked = f" + {want} for the reply" if want is not None else ""
            raise ApiError(f"This model's maximum context length is {ctx} tokens; the messages take {len(prompt)}"
                           f"{asked}. Shorten the conversation" + (" or max_tokens." if want else "."),
                           param="messages", code="context_length_exceeded")
        max_new = want if want is not None else min(self.limits.default_tokens, ctx - len(prompt))
        stop = req.stop_strings()
        if on_start is not None:
            on_start(len(prompt))
        streamer = ReplyStreamer(self.dec, stop, on_text) if on_text is not None else None
        if req.seed is not None:
            torch.manual_seed(req.seed)  # one generation at a time: the global generator is this request's
        sample = bool(req.temperature)
        gen = generate_reply(self.dec, prompt, max_new, constrained=req.constrained, require_sid=wants_sid(turns),
                             sample=sample, temperature=req.temperature or 1.0, top_p=req.top_p or 1.0, stop=stop,
                             max_time=left, streamer=streamer, stopping=[Cancelled(cancel)] if cancel else ())
        if streamer is not None:
            streamer.finish(gen.raw)
        return Completion(gen, self.items_in(gen.raw), req.constrained)

    def items_in(self, text: str) -> list[dict[str, Any]]:
        """The items a reply names, one per SID block: exact, the nearest by prefix, or none."""
        out = []
        for m in match_sids(text, self.table):
            written = text[m.span[0]: m.span[1]]
            out.append({"item_id": m.item, "title": self.title(m.item) if m.item is not None else None,
                        "sid": written, "match": m.match, "depth": m.depth})
        return out

    def title(self, item: int) -> str:
        return self.chat.title(item)

    # -- recommend
    def resolve_history(self, history: Sequence[int | str]) -> list[int]:
        """Item ids of a history given as ids, SIDs or exact titles; every unknown entry named."""
        n, ids, bad = len(self.table), [], []
        for i, h in enumerate(history):
            if isinstance(h, int):
                if 0 <= h < n:
                    ids.append(h)
                else:
                    bad.append(f"history[{i}]: no item {h} (item ids are 0..{n - 1})")
            elif h.strip().startswith(SID_START):
                try:
                    item = self.table.item_of(h)
                except SidFormatError as e:
                    bad.append(f"history[{i}]: {e}")
                    continue
                if item is None:
                    bad.append(f"history[{i}]: no item has the SID {h.strip()}")
                else:
                    ids.append(int(item))
            else:
                hits = self.by_title.get(h, [])
                if len(hits) == 1:
                    ids.append(hits[0])
                elif hits:
                    bad.append(f"history[{i}]: the title {h!r} names {len(hits)} items (ids "
                               f"{', '.join(map(str, hits[:5]))}{', ...' if len(hits) > 5 else ''}): give an item id "
                               "or a SID")
                else:
                    bad.append(f"history[{i}]: no item has the title {h!r} (titles must match exactly, case included)")
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ApiError("; ".join(bad[:5]) + more, param="history", code="unknown_item")
        return ids

    def check_recommend(self, req: RecommendRequest) -> tuple[list[int], int, bool]:
        """(history item ids, k, exclude_seen) of a valid request."""
        self.check_model(req.model)
        k = self.cfg.eval.rec_beam if req.k is None else req.k
        n = len(self.table)
        if not 1 <= k <= n:
            raise ApiError(f"k={k}: ask for 1..{n} items (the catalogue holds {n})", param="k", code="invalid_value")
        ban = self.cfg.baselines.exclude_history if req.exclude_seen is None else req.exclude_seen
        return self.resolve_history(req.history), k, ban

    def recommend(self, history: list[int], k: int, exclude_seen: bool, left: float) -> list[dict[str, Any]]:
        """Ranked items (worker thread): `Chat.recommend`, the constrained beam search 09 ranks with."""
        frame = self.chat.recommend(history, k, exclude_seen=exclude_seen)
        return [{"rank": int(r.rank), "item_id": int(r.item_id), "title": str(r.title), "sid": str(r.sid)}
                for r in frame.itertuples(index=False)]


def context_of(model: Any, cfg: Config) -> int:
    """Prompt + reply tokens a request may use: the length the model was fine-tuned on
    (llm.max_length), never past its position embeddings."""
    most = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(cfg.llm.max_length, int(most)) if most else cfg.llm.max_length


class Cancelled(StoppingCriteria):
    """Ends a generation whose client has gone (the streaming response was closed)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ReplyStreamer(BaseStreamer):
    """Streams a reply as text deltas whose concatenation is exactly the finished reply
    (`Decoder.reply_text`, cut at a stop string): only text that can no longer change is sent.

    Held back: whitespace at the end (the reply is stripped), a character still split across
    byte tokens, the tail a stop string may begin with, everything after an end-of-turn token."""

    def __init__(self, dec: Any, stop: Sequence[str], on_text: Callable[[str], None]):
        self.dec, self.stop, self.on_text = dec, list(stop), on_text
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands the prompt over first
            self.prompt_seen = True
            return
        self.ids += value.flatten().tolist()
        self._send(self._stable())

    def end(self) -> None:
        pass  # the last delta comes from `finish`, with the reply generate_reply settled on

    def _stable(self) -> str:
        ends = self.dec.ends
        cut = next((i for i, t in enumerate(self.ids) if t in ends), len(self.ids))
        text = self.dec.tok.decode(self.ids[:cut], skip_special_tokens=False).lstrip()
        stopped = cut_at_stop(text, self.stop)
        if stopped is not None:
            return stopped
        if self.hold:
            text = text[: max(len(text) - self.hold, 0)]
        if "\ufffd" in text:
            text = text[: text.index("\ufffd")]
        return text.rstrip()

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.on_text(text[len(self.sent):])
            self.sent = text

    def finish(self, final: str) -> None:
        if not final.startswith(self.sent):  # cannot happen with a prefix-stable decode; say so if it does
            log.warning("streamed text %r is not a prefix of the reply %r", self.sent, final)
            return
        if len(final) > len(self.sent):
            self.on_text(final[len(self.sent):])
            self.sent = final
