"""04-rqvae: item vectors -> L hierarchical codes, by RQ-VAE or residual k-means.

Both tokenizers give the same thing, a `TokenizerResult` with `codes` int64 [N, L] and
`recon` float32 [N, d], so every later stage (SIDs, models, evaluation) is tokenizer-agnostic:

    res = fit_tokenizer(emb, cfg, method="rqvae", seed=42)
    codes = encode(res.model, emb)            # same codes as res.codes
    save_tokenizer(res.model, cfg, path); model = load_tokenizer(path)

The validation helpers here raise `TokenizerInputError` (a ValueError) with a message that says
what to change: NaN / zero embedding rows (naming the rows), a codebook larger than the
catalogue, embeddings that do not line up with the item table.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sidlib import stages, summary
from sidlib.config import Config, TokenizerConfig
from sidlib.tokenizers import quality as q
from sidlib.tokenizers import rqkmeans, rqvae

METHODS = ("rqvae", "rqkmeans")


class TokenizerInputError(ValueError):
    """Embeddings or settings a tokenizer cannot work with."""


@dataclass
class TokenizerResult:
    codes: np.ndarray  # int64 [N, L]
    recon: np.ndarray  # float32 [N, d]: the decoder's (or the centroids') reconstruction
    history: list[dict] = field(default_factory=list)  # per epoch (RQ-VAE) / per level (RQ-KMeans)
    method: str = ""
    model: Any = None  # rqvae.RQVAE | rqkmeans.RQKMeans
    seconds: float = 0.0


# --------------------------------------------------------------------------- validation


def _rows(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")


def check_embeddings(emb: np.ndarray, codebook_size: int | None = None) -> np.ndarray:
    """float32 [N, d] view of emb; errors for a bad shape, NaN/inf or zero rows, K > N."""
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise TokenizerInputError(f"embeddings must be a non-empty 2-D array [items, dim], got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise TokenizerInputError(f"embeddings must be floating point, got dtype {emb.dtype}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if len(bad):
        raise TokenizerInputError(f"{len(bad)} embedding rows hold NaN/inf values: item rows {_rows(bad)}")
    zero = np.flatnonzero(np.abs(emb).max(axis=1) == 0)
    if len(zero):
        raise TokenizerInputError(
            f"{len(zero)} embedding rows are zero vectors: item rows {_rows(zero)} (empty item texts?)"
        )
    if codebook_size is not None:
        n = emb.shape[0]
        if codebook_size < 2:
            raise TokenizerInputError(f"codebook_size must be >= 2, got {codebook_size}")
        if codebook_size > n:
            suggestion = max(2, 1 << int(np.floor(np.log2(max(2, n // 8)))))
            raise TokenizerInputError(
                f"codebook_size {codebook_size} > number of items {n}: most codes could never be used; "
                f"use a smaller codebook (e.g. --set rqvae.codebook_size={suggestion})"
            )
    return emb


def check_alignment(emb: np.ndarray, items: Any) -> None:
    """Embeddings row i must belong to item i: same count, and item_id (if present) = 0..n-1."""
    n_items = len(items)
    if emb.shape[0] != n_items:
        raise TokenizerInputError(
            f"{emb.shape[0]} embedding rows for {n_items} items: the embeddings are stale or from another "
            f"item table (rerun the embed stage)"
        )
    ids = None
    if hasattr(items, "columns") and "item_id" in items.columns:
        ids = np.asarray(items["item_id"])
    elif isinstance(items, dict) and "item_id" in items:
        ids = np.asarray(items["item_id"])
    if ids is not None and np.issubdtype(ids.dtype, np.integer) and not np.array_equal(ids, np.arange(n_items)):
        raise TokenizerInputError("items must be sorted by dense item_id 0..n-1 so row i of the embeddings is item i")


def check_config(cfg: TokenizerConfig, method: str) -> None:
    if method not in METHODS:
        raise TokenizerInputError(f"unknown tokenizer method {method!r} (known: {', '.join(METHODS)})")
    if cfg.levels < 1:
        raise TokenizerInputError(f"levels must be >= 1, got {cfg.levels}")
    if method == "rqvae" and cfg.grad not in ("rotation", "ste"):
        raise TokenizerInputError(f"rqvae.grad must be 'rotation' or 'ste', got {cfg.grad!r}")


# --------------------------------------------------------------------------- dispatch


def fit_tokenizer(
    emb: np.ndarray, cfg: TokenizerConfig, method: str | None = None, seed: int = 0, progress: bool = True
) -> TokenizerResult:
    """Fit `method` (default cfg.method) on emb and return its codes and reconstruction."""
    method = method or cfg.method
    check_config(cfg, method)
    emb = check_embeddings(emb, cfg.codebook_size)
    t0 = time.perf_counter()
    mod = rqvae if method == "rqvae" else rqkmeans
    model, history = mod.fit(emb, cfg, seed=seed, progress=progress)
    codes = mod.encode(model, emb)
    recon = mod.decode_codes(model, codes)
    return TokenizerResult(codes=codes, recon=recon, history=history, method=method, model=model,
                           seconds=time.perf_counter() - t0)


def _module(model: Any):
    if isinstance(model, rqvae.RQVAE):
        return rqvae
    if isinstance(model, rqkmeans.RQKMeans):
        return rqkmeans
    raise TypeError(f"not a tokenizer model: {type(model).__name__}")


def encode(model: Any, emb: np.ndarray) -> np.ndarray:
    """int64 [N, L] codes of emb under a fitted RQ-VAE or RQ-KMeans."""
    return _module(model).encode(model, check_embeddings(emb))


def reconstruct(model: Any, emb: np.ndarray) -> np.ndarray:
    """float32 [N, d]: emb -> codes -> decoded vectors."""
    mod = _module(model)
    return mod.decode_codes(model, mod.encode(model, check_embeddings(emb)))


def save_tokenizer(model: Any, cfg: TokenizerConfig, path: Path | str) -> Path:
    return _module(model).save(model, cfg, path)


def load_tokenizer(path: Path | str):
    """(model, cfg) from a file written by save_tokenizer (either method)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if blob.get("method") == "rqkmeans":
        return rqkmeans.load(path)
    return rqvae.load(path)


__all__ = [
    "METHODS", "TokenizerInputError", "TokenizerResult", "check_alignment", "check_config",
    "check_embeddings", "encode", "fit_tokenizer", "load_tokenizer", "reconstruct", "save_tokenizer",
]


# --------------------------------------------------------------------------- stage 04


@dataclass
class TokenizerOutputs:
    """What stage 04 read and wrote (artifacts/<profile>/04-rqvae/)."""

    out: Path
    embeddings: np.ndarray
    results: dict[str, TokenizerResult]  # the chosen method first, then the compared ones
    quality: dict[str, dict[str, Any]]  # method -> quality.quality(...) + seconds
    chosen: TokenizerResult
    plots: list[Path]
    metrics: dict[str, Any]


def run(cfg: Config) -> TokenizerOutputs:
    """Stage 04 (notebook 04): 03's embeddings -> codes.npy (cfg.rqvae.method; with `compare`, the
    other method too, side by side), the tokenizer, its quality report and plots."""
    out = stages.RQVAE.dir(cfg.profile, create=True)
    emb = np.load(stages.EMBED.dir(cfg.profile) / "embeddings.npy")
    check_alignment(emb, pd.read_parquet(stages.CLEAN.dir(cfg.profile) / "items.parquet"))
    tc = cfg.rqvae
    methods = [tc.method] + ([m for m in METHODS if m != tc.method] if tc.compare else [])
    results, table = {}, {}
    for method in methods:
        res = fit_tokenizer(emb, tc, method=method, seed=cfg.seed)
        results[method] = res
        table[method] = dict(q.quality(emb, res.recon, res.codes, tc.codebook_size, seed=cfg.seed),
                             seconds=round(res.seconds, 1))
        np.save(out / f"codes_{method}.npy", res.codes)
    chosen = results[tc.method]
    np.save(out / "codes.npy", chosen.codes)
    save_tokenizer(chosen.model, tc, out / "tokenizer.pt")
    (out / "tokenizer.json").write_text(json.dumps(
        {"method": tc.method, "levels": tc.levels, "codebook_size": tc.codebook_size, "dim": int(emb.shape[1])}))
    (out / "quality.json").write_text(json.dumps(summary.jsonable(table), indent=2))
    plots = []
    if "rqvae" in results:
        plots.append(q.plot_training(results["rqvae"].history, out / "training.png"))
    plots.append(q.plot_code_usage(chosen.codes, tc.codebook_size, out / "code_usage.png"))
    plots.append(q.plot_collisions(chosen.codes, out / "collisions.png"))
    metrics = dict(table[tc.method], tokenizer=tc.method)
    metrics["compare"] = {m: t for m, t in table.items() if m != tc.method}
    return TokenizerOutputs(out, emb, results, table, chosen, plots, metrics)
