"""How good are the codes? The seed 003 table (kalistratov RQ-VAE card), for any tokenizer.

    utilization       per level: codes used / K                           (card: 1.00 every level)
    perplexity        per level: exp(entropy of code usage), at most K    (card: 228-242 of 256)
    recon_cosine_*    cosine(original, reconstruction): mean and median   (card: 0.80 / 0.80)
    nn_overlap_at_5   |5-NN in original ∩ 5-NN in reconstruction| / 5     (card: 0.236)
    unique_rate       share of items whose L-code tuple no other item has
    max_collision     largest group of items sharing one tuple
    prefix1_nn        share of items whose nearest neighbour (original space) has the same level-1 code
    prefix1_random    the same for random pairs: the chance level          (card: 0.745 vs 0.005)

Note: the card's "unique 87.9%" counts distinct tuples / items (`distinct_rate` here), which
is always >= unique_rate (items that share their tuple with nobody).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from sidlib.plots import plt

EXACT_NN_MAX = 20_000  # above this many items, nearest-neighbour metrics use a sample of queries
NN_SAMPLE = 5_000


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk_neighbours(x: np.ndarray, k: int, queries: np.ndarray | None = None, batch: int = 2048) -> np.ndarray:
    """[Q, k] indices of the k most cosine-similar rows of x to each query row, itself excluded."""
    xu = _unit(x)
    q = np.arange(len(x)) if queries is None else np.asarray(queries)
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), batch):
        qi = q[s:s + batch]
        sim = xu[qi] @ xu.T
        sim[np.arange(len(qi)), qi] = -np.inf
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        out[s:s + batch] = np.take_along_axis(part, order, 1)
    return out


def utilization(codes: np.ndarray, K: int) -> list[float]:
    return [float(len(np.unique(codes[:, lvl])) / K) for lvl in range(codes.shape[1])]


def perplexity(codes: np.ndarray, K: int) -> list[float]:
    out = []
    for lvl in range(codes.shape[1]):
        p = np.bincount(codes[:, lvl], minlength=K) / len(codes)
        p = p[p > 0]
        out.append(float(np.exp(-(p * np.log(p)).sum())))
    return out


def tuple_groups(codes: np.ndarray) -> np.ndarray:
    """Size of the group (items sharing the full tuple) for each item."""
    _, inv, counts = np.unique(np.asarray(codes), axis=0, return_inverse=True, return_counts=True)
    return counts[inv.reshape(-1)]


def unique_rate(codes: np.ndarray) -> float:
    return float((tuple_groups(codes) == 1).mean())


def distinct_rate(codes: np.ndarray) -> float:
    """Distinct tuples / items (the seed card's "unique tuples" figure)."""
    return float(len(np.unique(np.asarray(codes), axis=0)) / len(codes))


def max_collision(codes: np.ndarray) -> int:
    return int(tuple_groups(codes).max())


def quality(emb: np.ndarray, recon: np.ndarray, codes: np.ndarray, K: int, seed: int = 0,
            tokenizer: str = "") -> dict:
    """The seed 003 metrics of one tokenizer's codes and reconstruction (see the module doc)."""
    emb = np.asarray(emb, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    codes = np.asarray(codes, dtype=np.int64)
    n = len(emb)
    if recon.shape != emb.shape or codes.shape[0] != n:
        raise ValueError(f"shapes do not match: emb {emb.shape}, recon {recon.shape}, codes {codes.shape}")
    rng = np.random.default_rng(seed)

    cos = (_unit(emb) * _unit(recon)).sum(1)
    queries = None if n <= EXACT_NN_MAX else np.sort(rng.choice(n, NN_SAMPLE, replace=False))
    k = min(5, n - 1)
    nn_o = topk_neighbours(emb, k, queries)
    nn_r = topk_neighbours(recon, k, queries)
    overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(nn_o, nn_r)])
    q_idx = np.arange(n) if queries is None else queries
    prefix1_nn = float((codes[q_idx, 0] == codes[nn_o[:, 0], 0]).mean())
    m = max(n, 100_000)
    i = rng.integers(0, n, m)
    j = (i + rng.integers(1, n, m)) % n  # j != i
    prefix1_random = float((codes[i, 0] == codes[j, 0]).mean())

    return {
        "utilization": utilization(codes, K),
        "perplexity": perplexity(codes, K),
        "recon_cosine_mean": float(cos.mean()),
        "recon_cosine_p50": float(np.median(cos)),
        "nn_overlap_at_5": float(overlap),
        "unique_rate": unique_rate(codes),
        "max_collision": max_collision(codes),
        "prefix1_nn": prefix1_nn,
        "prefix1_random": prefix1_random,
        "tokenizer": tokenizer,
    }


# --------------------------------------------------------------------------- plots


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(history: list[dict], path) -> Path:
    """RQ-VAE: losses (log scale) and per-level utilisation / unique rate per epoch."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if history and "recon" in history[0]:
        ep = [h["epoch"] for h in history]
        for key in ("recon", "vq", "total"):
            a.plot(ep, [h[key] for h in history], label=key)
        a.set_yscale("log")
        a.set_xlabel("epoch")
        a.set_title("loss")
        a.legend()
        util = np.array([h["utilization"] for h in history])
        for lvl in range(util.shape[1]):
            b.plot(ep, util[:, lvl], label=f"utilisation L{lvl + 1}")
        b.plot(ep, [h["unique_rate"] for h in history], "k--", label="unique rate")
        b.set_ylim(0, 1.02)
        b.set_xlabel("epoch")
        b.legend(fontsize=8)
    else:  # residual k-means: one row per level
        lv = [h["level"] + 1 for h in history]
        a.plot(lv, [h["inertia"] for h in history], "o-")
        a.set_title("k-means inertia per level")
        b.plot(lv, [h["residual_norm"] for h in history], "o-")
        b.set_title("mean residual norm after level")
    return _save(fig, path)


def plot_code_usage(codes: np.ndarray, K: int, path) -> Path:
    """Per level: items per code, codes sorted by count (dead codes show as the zero tail)."""
    L = codes.shape[1]
    fig, axes = plt.subplots(1, L, figsize=(4 * L, 3.2), squeeze=False)
    for lvl, ax in enumerate(axes[0]):
        cnt = np.sort(np.bincount(codes[:, lvl], minlength=K))[::-1]
        ax.bar(np.arange(K), cnt, width=1.0)
        ax.axhline(len(codes) / K, color="k", ls="--", lw=0.8, label="uniform")
        ax.set_title(f"level {lvl + 1}: {int((cnt > 0).sum())}/{K} used")
        ax.set_xlabel("code (sorted by count)")
        ax.set_ylabel("items")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_collisions(codes: np.ndarray, path) -> Path:
    """How many tuples are shared by 1, 2, 3, ... items."""
    _, counts = np.unique(np.asarray(codes), axis=0, return_counts=True)
    hist = Counter(counts.tolist())
    sizes = sorted(hist)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([str(s) for s in sizes], [hist[s] for s in sizes])
    ax.set_yscale("log")
    ax.set_xlabel("items sharing a code tuple")
    ax.set_ylabel("tuples")
    ax.set_title(f"unique rate {unique_rate(codes):.3f}, largest group {max(sizes)}")
    return _save(fig, path)
