"""Conversations as model inputs: the base model's chat template, loss on assistant tokens only.

One function renders and one encodes, so 06 (token lengths, truncation), 08 (training), 09 and
the demo (prompts) all see the same token sequence for the same messages.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import LLMConfig

IGNORE = -100  # label of tokens without loss (prompt, system, padding)
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")  # chat templates' end of turn
Messages = Sequence[dict[str, str]]


def render(tokenizer: Any, messages: Messages, cfg: LLMConfig, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
        enable_thinking=cfg.enable_thinking,
    )


def prompt_ids(tokenizer: Any, messages: Messages, cfg: LLMConfig) -> list[int]:
    """Token ids of a prompt that ends where the assistant's answer begins."""
    return _ids(tokenizer, render(tokenizer, messages, cfg, add_generation_prompt=True))


def _ids(tokenizer: Any, text: str) -> list[int]:
    # the template already holds every special token (bos, <|im_start|>): add none
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer: Any, messages: Messages, cfg: LLMConfig) -> dict[str, list[int]]:
    """input_ids and labels of a whole conversation; labels are IGNORE except on the tokens each
    assistant turn adds (its content and end-of-turn marker), which is what the model must say.

    Rendered turn by turn: text before an assistant turn = the template with a generation prompt
    for the messages so far, so the label span is exactly what generation would produce. Chat
    templates put special tokens at turn boundaries, so encoding the pieces separately gives the
    tokens of the whole."""
    messages = list(messages)
    input_ids: list[int] = []
    labels: list[int] = []
    done = ""  # rendered text covered so far
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], cfg, add_generation_prompt=True)
        after = render(tokenizer, messages[: i + 1], cfg)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError(
                "the chat template is not prefix-consistent (a later turn re-renders an earlier one); "
                f"cannot find the assistant span of message {i}"
            )
        ctx = _ids(tokenizer, before[len(done):])
        ans = _ids(tokenizer, after[len(before):])
        input_ids += ctx + ans
        labels += [IGNORE] * len(ctx) + ans
        done = after
    full = render(tokenizer, messages, cfg)
    if len(full) > len(done):  # trailing non-assistant turns: context without loss
        tail = _ids(tokenizer, full[len(done):])
        input_ids += tail
        labels += [IGNORE] * len(tail)
    return {"input_ids": input_ids, "labels": labels}


def end_token_ids(tok: Any, model: Any = None) -> list[int]:
    """Tokens that end the assistant's turn: eos, the model's generation eos, the template's marker."""
    ids: list[int] = []
    cands: list[Any] = [tok.eos_token_id]
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.eos_token_id is not None:
        cands += gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    vocab_ = tok.get_vocab()
    cands += [vocab_[m] for m in END_MARKERS if m in vocab_]
    for c in cands:
        if c is not None and int(c) not in ids:
            ids.append(int(c))
    if not ids:
        raise ValueError("the tokenizer has no eos token: cannot tell where a reply ends")
    return ids
