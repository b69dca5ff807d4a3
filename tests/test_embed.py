"""sidlib.embed: real MiniLM vectors, the on-disk cache, validation, the PCA plot."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sidlib import embed
from sidlib.config import EmbedConfig
from sidlib.device import resolve_device

TEXTS = [
    "Stainless steel staples for heavy duty staple guns, 1/2 inch leg",
    "Heavy duty steel staples, 3/8 inch, for Stanley staple gun",
    "Digital pH meter for laboratory water testing",
]


@pytest.fixture(scope="module")
def cfg():
    return EmbedConfig(model="minilm", batch_size=8, max_seq_length=64)


@pytest.fixture(scope="module")
def cached(tmp_path_factory, cfg):
    cache = tmp_path_factory.mktemp("emb-cache")
    return cache, embed.embed_texts(TEXTS, cfg, cache, show_progress=False)


def test_minilm_vectors(cached):
    _, e = cached
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2  # staples vs staples > staples vs pH meter


def test_cache_hit_does_not_load_model(cached, cfg, monkeypatch):
    cache, first = cached
    files = list(cache.glob("emb-*.npy"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("model loaded although the embeddings are cached")

    monkeypatch.setattr(embed, "load_model", boom)
    again = embed.embed_texts(TEXTS, cfg, cache, show_progress=False)
    np.testing.assert_array_equal(first, again)
    # any change to what the vectors depend on is a different key
    assert embed.cache_key(TEXTS, cfg) != embed.cache_key(TEXTS[:2], cfg)
    assert embed.cache_key(TEXTS, cfg) != embed.cache_key(TEXTS, EmbedConfig(prompt="Instruct: x\nQuery: "))
    assert embed.cache_key(TEXTS, cfg) != embed.cache_key(TEXTS, EmbedConfig(max_seq_length=128))


class FakeModel:
    def __init__(self, out):
        self.out = out
        self.prompts = []

    def encode(self, texts, prompt=None, **kw):
        self.prompts.append(prompt)
        return self.out[: len(texts)]


def test_prompt_is_passed(monkeypatch):
    fake = FakeModel(np.ones((2, 4), np.float32))
    monkeypatch.setattr(embed, "load_model", lambda cfg: fake)
    e = embed.embed_texts(["a", "b"], EmbedConfig(prompt="Instruct: find\nQuery: "), None)
    assert fake.prompts == ["Instruct: find\nQuery: "]
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0)


@pytest.mark.parametrize("bad,what", [(np.nan, "NaN"), (0.0, "zero")])
def test_bad_rows_are_named(monkeypatch, tmp_path, bad, what):
    out = np.ones((4, 8), np.float32)
    out[2] = bad
    monkeypatch.setattr(embed, "load_model", lambda cfg: FakeModel(out))
    with pytest.raises(embed.EmbeddingError, match=rf"{what}.*rows 2"):
        embed.embed_texts(["a", "b", "c", "d"], EmbedConfig(), tmp_path)
    assert not list(tmp_path.glob("emb-*.npy"))  # nothing bad is cached


def test_validate_and_inputs():
    ok = np.eye(3, dtype=np.float32)
    assert embed.validate_embeddings(ok) is ok
    with pytest.raises(embed.EmbeddingError, match="3 embedding rows for 4 items"):
        embed.validate_embeddings(ok, n_items=4)
    with pytest.raises(embed.EmbeddingError, match="no texts"):
        embed.embed_texts([], EmbedConfig(), None)


def test_device_setting(monkeypatch):
    """sidlib.device.resolve_device (embed, rqvae, llm): auto -> cuda or cpu, anything else as
    given; with the config key, 'cuda' without CUDA is an error that names the key."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == resolve_device("auto") == "cpu"
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:1", "embed.device") == "cuda:1"
    with pytest.raises(RuntimeError, match=r"embed.device = 'cuda' but no CUDA device is available"):
        embed.load_model(EmbedConfig(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cpu", "embed.device") == "cpu"
    assert resolve_device("cuda", "embed.device") == "cuda"


def test_top_labels_and_pca_plot(tmp_path):
    labels = [f"c{i % 13}" for i in range(130)] + [""] * 5
    top = embed.top_labels(labels, top=10)
    assert len(set(top)) == 11 and top[-1] == "other"
    rng = np.random.default_rng(0)
    path = embed.pca_plot(rng.normal(size=(135, 16)).astype(np.float32), labels, tmp_path / "pca.png")
    assert path.exists() and path.stat().st_size > 1000
