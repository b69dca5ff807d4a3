"""03-embed: item texts -> L2-normalised vectors with a sentence-transformers model.

`embed_texts` is the one entry point. It caches its output on disk, keyed by everything the
vectors depend on (model, prompt, max_seq_length, normalisation and every text, in order), so a
rerun of the stage loads an .npy file instead of loading the model.

Models: "minilm" is the offline all-MiniLM-L6-v2 folder (`paths.minilm_dir()`); anything else
is a sentence-transformers model id or folder, e.g. "Qwen/Qwen3-Embedding-0.6B" with the
Qwen3 instruction prompt "Instruct: ...\\nQuery: " in `EmbedConfig.prompt`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from sidlib import paths, stages
from sidlib.config import Config, EmbedConfig
from sidlib.device import resolve_device
from sidlib.plots import plt

log = logging.getLogger(__name__)


class EmbeddingError(ValueError):
    """Embeddings that later stages cannot use (NaN rows, zero vectors, wrong shape)."""


# --------------------------------------------------------------------------- model


def resolve_model(name: str) -> str:
    """"minilm" -> the offline folder; an existing folder -> its absolute path; else a hub id."""
    if name == "minilm":
        return str(paths.minilm_dir())
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def resolve_dtype(dtype: str, device: str):
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"embed.dtype must be auto | float32 | bfloat16 | float16, got {dtype!r}") from None


def load_model(cfg: EmbedConfig):
    """A SentenceTransformer on the configured device/dtype; a local folder never touches the hub."""
    # lazy: importing it takes seconds (most of `import sidlib.embed`), and a cache hit never loads the model
    from sentence_transformers import SentenceTransformer

    model_path = resolve_model(cfg.model)
    device = resolve_device(cfg.device, "embed.device")
    dtype = resolve_dtype(cfg.dtype, device)
    local = Path(model_path).is_dir()
    if local:
        # A folder holds everything: no hub lookups (works with HF_HUB_OFFLINE=1 and no network).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(
        model_path,
        device=device,
        local_files_only=local,
        model_kwargs={"dtype": dtype},
    )
    model.max_seq_length = cfg.max_seq_length
    return model


# --------------------------------------------------------------------------- cache


def cache_key(texts: Sequence[str], cfg: EmbedConfig) -> str:
    """sha256 over model name, prompt, max_seq_length, normalisation and all texts (in order)."""
    h = hashlib.sha256()
    for part in (cfg.model, cfg.prompt, str(cfg.max_seq_length), f"normalize={cfg.normalize}"):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    h.update(str(len(texts)).encode())
    for t in texts:
        h.update(b"\x1e")
        h.update(t.encode("utf-8"))
    return h.hexdigest()[:32]


def cache_path(texts: Sequence[str], cfg: EmbedConfig, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"emb-{cache_key(texts, cfg)}.npy"


# --------------------------------------------------------------------------- validation


def _rows(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in idx[:limit])
    return shown + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")


def validate_embeddings(emb: np.ndarray, n_items: int | None = None) -> np.ndarray:
    """Raise EmbeddingError naming the rows that are NaN/inf or all-zero; return emb unchanged."""
    if emb.ndim != 2:
        raise EmbeddingError(f"embeddings must be a 2-D array [items, dim], got shape {emb.shape}")
    if n_items is not None and emb.shape[0] != n_items:
        raise EmbeddingError(f"{emb.shape[0]} embedding rows for {n_items} items")
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if len(bad):
        raise EmbeddingError(f"{len(bad)} embedding rows hold NaN/inf values: item rows {_rows(bad)}")
    zero = np.flatnonzero(np.abs(emb).max(axis=1) == 0) if emb.shape[0] else np.array([], int)
    if len(zero):
        raise EmbeddingError(
            f"{len(zero)} embedding rows are zero vectors: item rows {_rows(zero)} "
            f"(empty texts? check the item_context of these items)"
        )
    return emb


# --------------------------------------------------------------------------- embed


def embed_texts(
    texts: list[str], cfg: EmbedConfig, cache_dir: Path | None = None, show_progress: bool = True
) -> np.ndarray:
    """float32 [N, d] embeddings of `texts` (cfg.prompt prepended), cached under cache_dir."""
    texts = list(texts)
    if not texts:
        raise EmbeddingError("no texts to embed")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise EmbeddingError(f"texts must be strings; rows {_rows(np.array(bad))} are not")
    path = cache_path(texts, cfg, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        emb = np.load(path)
        if emb.shape[0] == len(texts):
            log.info("embeddings loaded from cache %s", path)
            return validate_embeddings(emb.astype(np.float32, copy=False))
        log.warning("cache %s has %d rows for %d texts: recomputing", path, emb.shape[0], len(texts))

    model = load_model(cfg)
    emb = model.encode(
        texts,
        prompt=cfg.prompt or None,  # Qwen3-Embedding style: the instruction is prepended to each text
        batch_size=cfg.batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=False,
    )
    emb = np.asarray(emb, dtype=np.float32)
    validate_embeddings(emb, len(texts))
    if cfg.normalize:
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.ascontiguousarray(emb, dtype=np.float32)

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        tmp.replace(path)
    return emb


# --------------------------------------------------------------------------- plot


def top_labels(labels: Sequence[str], top: int = 10, other: str = "other") -> list[str]:
    """Keep the `top` most frequent labels, map the rest (and empty ones) to `other`."""
    labels = [str(x) if x is not None and str(x) != "" else other for x in labels]
    keep = {lab for lab, _ in Counter(x for x in labels if x != other).most_common(top)}
    return [x if x in keep else other for x in labels]


def pca_plot(emb: np.ndarray, labels: Sequence[str], path: Path | str, title: str = "", top: int = 10):
    """2-D PCA scatter of the embeddings coloured by (top) category; saved to `path`."""
    if len(labels) != emb.shape[0]:
        raise ValueError(f"{len(labels)} labels for {emb.shape[0]} embeddings")
    xy = PCA(n_components=2, random_state=0).fit_transform(np.asarray(emb, dtype=np.float32))
    labs = np.array(top_labels(labels, top))
    order = [lab for lab in dict.fromkeys(sorted(set(labs), key=lambda s: (s == "other", -int((labs == s).sum()))))]
    fig, ax = plt.subplots(figsize=(8, 6.5))
    cmap = plt.get_cmap("tab10")
    for i, lab in enumerate(order):
        m = labs == lab
        color = "lightgrey" if lab == "other" else cmap(i % 10)
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, color=color, label=f"{lab[:40]} ({m.sum()})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or f"PCA of {emb.shape[0]} item embeddings (d={emb.shape[1]})")
    ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def category_labels(categories: Sequence[Sequence[str]]) -> list[str]:
    """One label per item for plots: the first category level at which items differ.

    Amazon paths start with the store root ("Industrial & Scientific" for every item), which
    would colour everything the same; MovieLens genres differ at the first level already.
    """
    cats = [list(c) if c is not None else [] for c in categories]
    depth = 0
    while True:
        level = {c[depth] for c in cats if len(c) > depth}
        if len(level) != 1 or depth > 4:
            break
        depth += 1
    return [c[depth] if len(c) > depth else (c[-1] if c else "") for c in cats]


# --------------------------------------------------------------------------- stage 03


@dataclass
class EmbedOutputs:
    """What stage 03 read and wrote (artifacts/<profile>/03-embed/)."""

    out: Path
    items: pd.DataFrame  # 02's items: row i is embedding i
    embeddings: np.ndarray
    metrics: dict
    plot: Path


def run(cfg: Config) -> EmbedOutputs:
    """Stage 03 (notebook 03): 02's item_context -> embeddings.npy (cached by model and text); a PCA plot."""
    out = stages.EMBED.dir(cfg.profile, create=True)
    items = pd.read_parquet(stages.CLEAN.dir(cfg.profile) / "items.parquet")
    texts = items["item_context"].tolist()
    cache_dir = paths.artifacts_root() / "cache" / "embeddings"
    cached = cache_path(texts, cfg.embed, cache_dir).exists()
    t0 = time.perf_counter()
    emb = embed_texts(texts, cfg.embed, cache_dir=cache_dir)
    seconds = time.perf_counter() - t0
    np.save(out / "embeddings.npy", emb)
    metrics = {"items": emb.shape[0], "dim": emb.shape[1], "seconds": round(seconds, 2),
               "items_per_second": round(emb.shape[0] / max(seconds, 1e-9), 1), "model": cfg.embed.model,
               "cached": cached}
    plot = pca_plot(emb, category_labels(items["categories"]), out / "pca.png", title=f"{cfg.profile}: {cfg.embed.model}")
    return EmbedOutputs(out, items, emb, metrics, plot)
