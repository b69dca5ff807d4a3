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


def text_codes(texts, levels: int = 3, k: int = 16, dims: int = 64, seed: int = 0, min_df: int = 2):
    """Real semantic codes in ~1 s for model tests: TF-IDF of the texts -> SVD -> residual
    k-means (levels x k) -> the project's dedup level. Returns (codes [n, levels+1], sizes)."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from threadpoolctl import threadpool_limits

    from sidlib.sids import add_dedup_level

    x = TfidfVectorizer(min_df=min_df, sublinear_tf=True).fit_transform(texts)
    with threadpool_limits(1):  # BLAS/OpenMP threads fighting torch's make SVD 20x slower
        z = TruncatedSVD(dims, random_state=seed).fit_transform(x)
        z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-9
        residual, codes = z, []
        for level in range(levels):
            km = KMeans(k, n_init=1, random_state=seed + level).fit(residual)
            codes.append(km.labels_.astype(np.int64))
            residual = residual - km.cluster_centers_[km.labels_]
    full = add_dedup_level(np.stack(codes, 1), dedup_codebook_size=len(texts))
    return full, [k] * levels + [int(full[:, -1].max()) + 1]


def title_codes(item_json, levels: int = 3, k: int = 16, dims: int = 64, seed: int = 0):
    """text_codes of the titles of an LC-Rec item.json (item id = its key)."""
    import json
    from pathlib import Path

    items = json.loads(Path(item_json).read_text())
    return text_codes([(items[str(i)].get("title") or "") for i in range(len(items))], levels, k, dims, seed)


@pytest.fixture(scope="session")
def smoke_artifacts(tmp_path_factory):
    """An artifacts root holding the smoke profile's stages 01-05, run once per session through
    the runner (~25 s). Read-only for tests: copy it (`smoke_stages`) before writing a stage."""
    from sidlib import runner

    root = tmp_path_factory.mktemp("smoke-chain")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:  # session scope: the function-scoped tmp_roots cannot serve
        mp.setenv("SIDLIB_ARTIFACTS", str(root / "artifacts"))
        mp.setenv("SIDLIB_RUNS", str(root / "runs"))
        if runner.run("smoke", "01-05", echo=lines.append) != 0:
            pytest.fail("smoke stages 01-05 failed:\n" + "\n".join(lines))
    return root / "artifacts"


@pytest.fixture
def smoke_stages(smoke_artifacts, tmp_roots):
    """tmp_roots with a private copy of smoke's 01-05 outputs (stage 07's inputs): the smoke
    profile's artifact folder, ready for a test to run a later stage in."""
    import shutil
    from pathlib import Path

    return Path(shutil.copytree(smoke_artifacts / "smoke", tmp_roots / "artifacts" / "smoke"))


@pytest.fixture(scope="session")
def scientific_sid_table(shared_data):
    """A real SID table in ~1 s: Scientific's 4,344 titles -> title_codes (3 x 16 + dedup)."""
    import pandas as pd

    from sidlib.sids import SidScheme, SidTable

    item_json = shared_data / "amazon2018-scientific" / "Scientific.item.json"
    codes, sizes = title_codes(item_json, levels=3, k=16)
    titles = pd.read_json(item_json, orient="index").sort_index()["title"].astype(str).tolist()
    return SidTable.build(codes, SidScheme(sizes), titles)
