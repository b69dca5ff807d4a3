"""The optional LLM rewrite of item descriptions in 02-clean (`clean.llm = "hf" | "openai"`).

A cleaner rewrites texts, one output per input; `CachedCleaner` keeps every answer on disk keyed
by model, prompt and text, so a rerun (or another profile over the same catalog) asks nothing
twice. `HFCleaner` runs a local transformers chat model, `OpenAICleaner` any OpenAI-compatible
endpoint (vLLM, llama.cpp server, ...). sidlib.text.clean_items calls it on descriptions after the
rule-based cleaning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sidlib.config import CleanConfig
from sidlib.paths import smollm2_gguf

log = logging.getLogger("sidlib.cleaners")

DEFAULT_PROMPT = (
    "Rewrite the following product description concisely, in under 200 words. Keep the facts "
    "(what the product is, what it does, key specifications); remove marketing fluff, "
    "shipping and warranty notes, and disclaimers. Reply with the rewritten description only."
)


class CleanerError(RuntimeError):
    """The LLM cleaner (clean.llm) could not run (unreachable endpoint, bad response, missing
    model). Not `sidlib.llm.base.LLMError` (a base model unfit for the SID chat model)."""


@runtime_checkable
class LLMCleaner(Protocol):
    """Rewrites texts; one output per input, same order. `model` and `prompt` name what
    produced the output (they key the on-disk cache)."""

    model: str
    prompt: str

    def clean(self, texts: list[str]) -> list[str]: ...


def _postprocess(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^(?:here is|here's)[^:\n]{0,80}:\s*", "", text, flags=re.I)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


class HFCleaner:
    """A local transformers causal LM with a chat template; greedy decoding, batched.

    `model`: a hub id / folder, a `.gguf` file (loaded with `gguf_file=`), or "smollm2" for the
    offline SmolLM2-135M-Instruct GGUF. A loaded `model_obj` / `tokenizer` may be passed instead
    (the `model` string then only names it in the cache key)."""

    def __init__(
        self,
        model: str | Path = "smollm2",
        *,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 160,
        batch_size: int = 8,
        device: str = "cpu",
        model_obj: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.model = str(model)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self.calls = 0  # number of texts sent to the model
        self._model = model_obj
        self._tok = tokenizer

    def _load(self) -> None:
        if self._model is not None and self._tok is not None:
            return
        # lazy: transformers serves only this optional LLM rewrite; rule-based cleaning must not pay for it
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {}
        if self.model == "smollm2":
            g = smollm2_gguf()
            where, kwargs["gguf_file"] = str(g.parent), g.name
        elif self.model.endswith(".gguf"):
            g = Path(self.model)
            where, kwargs["gguf_file"] = str(g.parent), g.name
        else:
            where = self.model
        try:
            self._tok = self._tok or AutoTokenizer.from_pretrained(where, **kwargs)
            self._model = self._model or AutoModelForCausalLM.from_pretrained(where, **kwargs)
        except OSError as e:
            raise CleanerError(f"cannot load the cleaning model {self.model!r} (clean.llm_model): {e}") from None
        self._model.to(self.device).eval()

    def _messages(self, text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{self.prompt}\n\nDescription:\n{text}"}]

    def clean(self, texts: list[str]) -> list[str]:
        import torch  # lazy, with transformers: only the optional LLM rewrite runs a model
        if not texts:
            return []
        self._load()
        tok, model = self._tok, self._model
        if not getattr(tok, "chat_template", None):
            raise CleanerError(f"the cleaning model {self.model!r} has no chat template; use an instruct / chat model")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        side = tok.padding_side
        tok.padding_side = "left"
        out: list[str] = []
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                prompts = [tok.apply_chat_template(self._messages(t), tokenize=False, add_generation_prompt=True) for t in batch]
                enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    gen = model.generate(
                        **enc,
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                    )
                new = gen[:, enc["input_ids"].shape[1] :]
                out.extend(_postprocess(s) for s in tok.batch_decode(new, skip_special_tokens=True))
                self.calls += len(batch)
        finally:
            tok.padding_side = side
        return out


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class OpenAICleaner:
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, OpenAI): one POST to
    `{url}/chat/completions` per text with urllib (no extra dependency), temperature 0.
    The API key, if any, comes from `api_key` or $SIDLIB_LLM_API_KEY / $OPENAI_API_KEY."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        prompt: str = DEFAULT_PROMPT,
        max_tokens: int = 160,
        timeout: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        if not url:
            raise CleanerError("clean.llm = 'openai' needs clean.llm_url (e.g. http://127.0.0.1:8000/v1)")
        self.url = url.rstrip("/")
        self.model = model
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.api_key = api_key if api_key is not None else os.environ.get("SIDLIB_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.calls = 0

    @property
    def endpoint(self) -> str:
        return f"{self.url}/chat/completions"

    def _one(self, text: str) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt},
                {"role": "user", "content": text},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # a local server is reached directly, whatever proxy the environment sets
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if host in _LOOPBACK else urllib.request.build_opener()
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            raise CleanerError(f"{self.endpoint} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CleanerError(
                f"cannot reach the OpenAI-compatible endpoint {self.endpoint}: {reason}. "
                f"Is the server running? (set clean.llm_url, or clean.llm=\"\" to skip the LLM cleaner)"
            ) from None
        self.calls += 1
        try:
            data = json.loads(payload)
            return _postprocess(data["choices"][0]["message"]["content"] or "")
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise CleanerError(f"{self.endpoint}: unexpected response {payload[:300]!r}") from None

    def clean(self, texts: list[str]) -> list[str]:
        return [self._one(t) for t in texts]


class CachedCleaner:
    """On-disk cache around any LLMCleaner: a JSON-lines file of {"key", "output"}, key =
    sha256(model + NUL + prompt + NUL + text). Only texts not in the cache reach the inner
    cleaner (in chunks of chunk_size, duplicates sent once); each chunk's results are appended
as soon as it is done, so an interrupted run keeps what it computed."""

    def __init__(self, inner: LLMCleaner, path: str | Path, chunk_size: int = 64) -> None:
        self.inner = inner
        self.chunk_size = max(1, chunk_size)
        self.model = getattr(inner, "model", type(inner).__name__)
        self.prompt = getattr(inner, "prompt", "")
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self._cache[rec["key"]] = rec["output"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line cut by an interrupted run

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model}\0{self.prompt}\0{text}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._cache)

    def clean(self, texts: list[str]) -> list[str]:
        keys = [self.key(t) for t in texts]
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k in self._cache:
                self.hits += 1
            elif k not in todo:
                todo[k] = t
        pending = list(todo.items())
        for start in range(0, len(pending), self.chunk_size):
            chunk = pending[start : start + self.chunk_size]
            outputs = self.inner.clean([t for _, t in chunk])
            if len(outputs) != len(chunk):
                raise CleanerError(f"{self.model}: {len(outputs)} outputs for {len(chunk)} inputs")
            self.misses += len(chunk)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, self.path.open("a", encoding="utf-8") as fh:
                for (k, _), out in zip(chunk, outputs):
                    self._cache[k] = out
                    fh.write(json.dumps({"key": k, "output": out}, ensure_ascii=False) + "\n")
            if len(pending) > self.chunk_size:
                log.info("LLM cleaner: %d / %d new texts", min(start + self.chunk_size, len(pending)), len(pending))
        return [self._cache[k] for k in keys]


def make_llm_cleaner(cfg: CleanConfig, cache_dir: str | Path | None = None) -> CachedCleaner | None:
    """cfg.llm "" -> None; "hf" -> HFCleaner(cfg.llm_model or "smollm2"); "openai" ->
    OpenAICleaner(cfg.llm_url, cfg.llm_model). Wrapped in a CachedCleaner whose file is
    `<cache_dir>/llm_cache.jsonl` (cache_dir default: the current folder)."""
    if not cfg.llm:
        return None
    if cfg.llm == "hf":
        inner: LLMCleaner = HFCleaner(cfg.llm_model or "smollm2", max_new_tokens=cfg.llm_max_new_tokens)
    elif cfg.llm == "openai":
        if not cfg.llm_model:
            raise CleanerError("clean.llm = 'openai' needs clean.llm_model (the endpoint's model name)")
        inner = OpenAICleaner(cfg.llm_url, cfg.llm_model, max_tokens=cfg.llm_max_new_tokens)
    else:
        raise CleanerError(f"clean.llm = {cfg.llm!r}: expected '', 'hf' or 'openai'")
    return CachedCleaner(inner, Path(cache_dir or ".") / "llm_cache.jsonl")
