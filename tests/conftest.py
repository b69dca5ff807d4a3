"""Shared fixtures: the real shared data folder, and temp artifact/run roots for runner tests."""
from __future__ import annotations

import pytest

from sidlib import paths


@pytest.fixture(scope="session")
def shared_data():
    root = paths.shared_data()
    if not (root / "amazon2018-scientific").exists():
        pytest.skip(f"shared data folder {root} not found (set SIDLIB_SHARED_DATA)")
    return root


@pytest.fixture
def tmp_roots(tmp_path, monkeypatch):
    """Stage outputs and executed notebooks under a temp folder (papermill kernels inherit env)."""
    monkeypatch.setenv("SIDLIB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("SIDLIB_RUNS", str(tmp_path / "runs"))
    return tmp_path


def title_codes(item_json, levels: int = 3, k: int = 16, dims: int = 64, seed: int = 0):
    """Real semantic codes in ~1 s for model tests: TF-IDF of the item titles -> SVD -> residual
    k-means (levels x k) -> the project's dedup level. Returns (codes [n_items, levels+1], sizes)."""
    import json
    from pathlib import Path

    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from threadpoolctl import threadpool_limits

    from sidlib.sids import add_dedup_level

    items = json.loads(Path(item_json).read_text())
    titles = [(items[str(i)].get("title") or "") for i in range(len(items))]
    x = TfidfVectorizer(min_df=2, sublinear_tf=True).fit_transform(titles)
    with threadpool_limits(1):  # BLAS/OpenMP threads fighting torch's make SVD 20x slower
        z = TruncatedSVD(dims, random_state=seed).fit_transform(x)
        z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-9
        residual, codes = z, []
        for level in range(levels):
            km = KMeans(k, n_init=1, random_state=seed + level).fit(residual)
            codes.append(km.labels_.astype(np.int64))
            residual = residual - km.cluster_centers_[km.labels_]
    full = add_dedup_level(np.stack(codes, 1), dedup_codebook_size=len(items))
    return full, [k] * levels + [int(full[:, -1].max()) + 1]
