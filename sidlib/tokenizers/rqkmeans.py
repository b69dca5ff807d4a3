"""Residual k-means (RQ-KMeans): the RQ-VAE's quantiser without the autoencoder.

Level 1 clusters the item vectors into K centroids; level l clusters what earlier levels left
over (the residuals) into K more. An item's codes are its nearest centroid at each level, its
reconstruction the sum of those centroids. No training loop, nothing learned but centroids,
and (GRID, snap-research) often as good a tokenizer as an RQ-VAE.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from sidlib.config import TokenizerConfig


@dataclasses.dataclass
class RQKMeans:
    centroids: np.ndarray  # float32 [L, K, d]

    @property
    def levels(self) -> int:
        return self.centroids.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.centroids.shape[1]


def _nearest(x: np.ndarray, c: np.ndarray, batch: int = 8192) -> np.ndarray:
    c_sq = (c * c).sum(1)
    out = np.empty(len(x), dtype=np.int64)
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        out[i:i + batch] = np.argmin(c_sq[None] - 2 * xb @ c.T, axis=1)
    return out


def fit(emb: np.ndarray, cfg: TokenizerConfig, seed: int = 0, progress: bool = True) -> tuple[RQKMeans, list[dict]]:
    """Level-by-level sklearn KMeans (cfg.kmeans_n_init restarts); history = one row per level."""
    x = np.asarray(emb, dtype=np.float32)
    r = x.copy()
    cents, history = [], []
    for lvl in tqdm(range(cfg.levels), desc="rqkmeans", disable=not progress):
        km = KMeans(n_clusters=cfg.codebook_size, n_init=cfg.kmeans_n_init, random_state=seed + lvl)
        labels = km.fit_predict(r)
        c = km.cluster_centers_.astype(np.float32)
        cents.append(c)
        r = r - c[labels]
        history.append(dict(level=lvl, inertia=float(km.inertia_),
                            residual_norm=float(np.linalg.norm(r, axis=1).mean()),
                            utilization=float(len(np.unique(labels)) / cfg.codebook_size)))
    return RQKMeans(np.stack(cents)), history


def encode(model: RQKMeans, emb: np.ndarray) -> np.ndarray:
    """int64 [N, L]: greedy nearest centroid, level by level, on the residuals."""
    r = np.asarray(emb, dtype=np.float32).copy()
    codes = np.empty((len(r), model.levels), dtype=np.int64)
    for lvl in range(model.levels):
        codes[:, lvl] = _nearest(r, model.centroids[lvl])
        r -= model.centroids[lvl][codes[:, lvl]]
    return codes


def decode_codes(model: RQKMeans, codes: np.ndarray) -> np.ndarray:
    """float32 [N, d]: sum of the codes' centroids."""
    codes = np.asarray(codes, dtype=np.int64)
    return sum(model.centroids[lvl][codes[:, lvl]] for lvl in range(model.levels)).astype(np.float32)


def reconstruct(model: RQKMeans, emb: np.ndarray) -> np.ndarray:
    return decode_codes(model, encode(model, emb))


def save(model: RQKMeans, cfg: TokenizerConfig, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"method": "rqkmeans", "centroids": torch.from_numpy(model.centroids),
                "config": json.dumps(dataclasses.asdict(cfg))}, path)
    return path


def load(path: Path | str) -> tuple[RQKMeans, TokenizerConfig]:
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if blob.get("method") != "rqkmeans":
        raise ValueError(f"{path} is not an RQ-KMeans checkpoint (method={blob.get('method')!r})")
    known = {f.name for f in dataclasses.fields(TokenizerConfig)}
    cfg = TokenizerConfig(**{k: v for k, v in json.loads(blob["config"]).items() if k in known})
    return RQKMeans(blob["centroids"].numpy().astype(np.float32)), cfg
