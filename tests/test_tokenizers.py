"""RQ-VAE, residual k-means and the quality table, on real MiniLM vectors of Scientific titles."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sidlib.config import EmbedConfig, TokenizerConfig
from sidlib.tokenizers import (
    TokenizerInputError, check_alignment, check_embeddings, encode, fit_tokenizer, load_tokenizer,
    reconstruct, save_tokenizer,
)
from sidlib.tokenizers import quality as Q
from sidlib.tokenizers import rqkmeans, rqvae

# tiny models: one thread is faster than two OpenMP threads fighting over a shared 2-core box
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def emb(shared_data, tmp_path_factory):
    """MiniLM vectors of the first 600 Scientific item titles (embedded once per session)."""
    from sidlib.embed import embed_texts

    items = json.loads((shared_data / "amazon2018-scientific" / "Scientific.item.json").read_text())
    titles = [items[k]["title"] for k in sorted(items, key=int)[:600]]
    cache = tmp_path_factory.mktemp("emb")
    return embed_texts(titles, EmbedConfig(max_seq_length=64, batch_size=128), cache, show_progress=False)


def small_cfg(**kw) -> TokenizerConfig:
    base = dict(levels=3, codebook_size=16, codebook_dim=16, hidden=[128, 64], epochs=25, batch_size=256,
                lr=2e-3, warmup_steps=5, kmeans_n_init=2, device="cpu")
    base.update(kw)
    return TokenizerConfig(**base)


@pytest.fixture(scope="module")
def fitted(emb):
    cfg = small_cfg()
    return cfg, fit_tokenizer(emb, cfg, method="rqvae", seed=0, progress=False)


# --------------------------------------------------------------------------- RQ-VAE


def test_rqvae_shapes_and_encode(emb, fitted):
    cfg, res = fitted
    assert res.method == "rqvae"
    assert res.codes.shape == (600, 3) and res.codes.dtype == np.int64
    assert res.codes.min() >= 0 and res.codes.max() < cfg.codebook_size
    assert res.recon.shape == emb.shape and res.recon.dtype == np.float32
    np.testing.assert_array_equal(encode(res.model, emb), res.codes)
    np.testing.assert_allclose(reconstruct(res.model, emb), res.recon, atol=1e-6)
    assert len(res.history) == cfg.epochs
    assert set(res.history[0]) >= {"recon", "vq", "total", "utilization", "unique_rate"}


def test_rqvae_losses_decrease(fitted):
    _, res = fitted
    h = res.history
    assert h[-1]["recon"] < 0.95 * h[0]["recon"]  # standardised MSE: 1.0 = the mean vector
    assert h[-1]["total"] < h[0]["total"]


def test_kmeans_init_puts_codes_at_centroids(emb):
    cfg = small_cfg()
    torch.manual_seed(0)
    model = rqvae.build(emb.shape[1], cfg)
    x = torch.as_tensor(emb)
    rqvae.kmeans_init(model, x, n_init=2, seed=0)
    with torch.no_grad():
        z = model.encoder(x)
    codes = model.codes_of(x)
    # level 1: every code is the mean of the latent vectors assigned to it
    for k in range(cfg.codebook_size):
        members = z[codes[:, 0] == k]
        assert len(members) > 0
        torch.testing.assert_close(model.codebooks[0, k], members.mean(0), atol=1e-4, rtol=1e-3)
    util, _ = rqvae._usage_stats(codes, cfg.codebook_size)
    assert min(util) >= 0.9  # first-step utilisation is high at every level


def test_dead_code_reset_revives_codes(emb):
    cfg = small_cfg()
    model = rqvae.build(emb.shape[1], cfg)
    x = torch.as_tensor(emb)
    rqvae.kmeans_init(model, x, n_init=1, seed=0)
    dead = torch.tensor([1, 5, 9])
    with torch.no_grad():
        model.codebooks.data[1, dead] = 1e3  # far away: never the nearest code
        out = model(x)
    usage = torch.stack([torch.bincount(out["codes"][:, lvl], minlength=cfg.codebook_size) for lvl in range(3)])
    assert (usage[1, dead] == 0).all()
    n = rqvae.reset_dead_codes(model, usage, out["residuals"], torch.Generator().manual_seed(0))
    assert n >= 3
    for k in dead:  # each revived code sits on a real level-2 residual ...
        dist = (out["residuals"][1] - model.codebooks[1, k]).norm(dim=1)
        assert float(dist.min().detach()) < 1e-6
    with torch.no_grad():
        codes = model.codes_of(x)
    assert all(int((codes[:, 1] == k).sum()) > 0 for k in dead)  # ... and is used again


def test_dead_code_reset_in_training(emb):
    """From a bad init (no k-means, tiny random codebooks) resets bring utilisation up."""
    kw = dict(kmeans_init=False, epochs=10)
    util = {}
    for every in (0, 1):
        res = fit_tokenizer(emb, small_cfg(dead_code_reset_every=every, **kw), "rqvae", seed=0, progress=False)
        util[every] = Q.utilization(res.codes, 16)
    assert min(util[1]) > min(util[0])
    assert min(util[1]) >= 0.75


def test_rotation_trick_forward_and_gradient():
    torch.manual_seed(0)
    e = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    q = torch.randn(4, 8, dtype=torch.float64)
    out = rqvae.rotation_trick(e, q)
    torch.testing.assert_close(out, q)  # forward: exactly the code
    g = torch.randn(4, 8, dtype=torch.float64)
    (out * g).sum().backward()
    for i in range(4):  # backward: lambda * R^T g with R the rotation taking e_hat onto q_hat
        ei, qi = e[i].detach(), q[i]
        eh, qh = ei / ei.norm(), qi / qi.norm()
        r = (eh + qh) / (eh + qh).norm()
        R = torch.eye(8, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(qh, eh)
        torch.testing.assert_close(R @ eh, qh)
        torch.testing.assert_close(R.T @ R, torch.eye(8, dtype=torch.float64))  # a rotation
        torch.testing.assert_close(e.grad[i], (qi.norm() / ei.norm()) * R.T @ g[i])


def test_rotation_gradient_reaches_encoder_and_differs_from_ste(emb):
    x = torch.as_tensor(emb[:128])
    grads = {}
    for grad in ("rotation", "ste"):
        torch.manual_seed(0)
        model = rqvae.build(emb.shape[1], small_cfg(grad=grad))
        rqvae.kmeans_init(model, x, n_init=1, seed=0)
        out = model(x)
        out["recon_loss"].backward()  # recon only: reaches the encoder through the estimator alone
        grads[grad] = model.encoder[0].weight.grad.clone()
        assert grads[grad].abs().sum() > 0
    assert not torch.allclose(grads["rotation"], grads["ste"])


def test_rqvae_deterministic(emb):
    cfg = small_cfg(epochs=6)
    a = fit_tokenizer(emb, cfg, "rqvae", seed=3, progress=False)
    b = fit_tokenizer(emb, cfg, "rqvae", seed=3, progress=False)
    np.testing.assert_array_equal(a.codes, b.codes)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_rqvae_save_load(emb, fitted, tmp_path):
    cfg, res = fitted
    path = save_tokenizer(res.model, cfg, tmp_path / "rqvae.pt")
    model, cfg2 = load_tokenizer(path)
    assert isinstance(model, rqvae.RQVAE) and cfg2 == cfg
    np.testing.assert_array_equal(encode(model, emb), res.codes)


def test_lr_schedule():
    cfg = TokenizerConfig(lr=1e-3, min_lr=1e-6, warmup_steps=10)
    lrs = [rqvae.lr_at(s, 200, cfg) for s in range(200)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-6, abs=1e-6)


# --------------------------------------------------------------------------- RQ-KMeans


def test_rqkmeans(emb, tmp_path):
    cfg = small_cfg(codebook_size=32, kmeans_n_init=2)
    res = fit_tokenizer(emb, cfg, "rqkmeans", seed=0, progress=False)
    assert res.codes.shape == (600, 3) and res.codes.dtype == np.int64
    assert res.codes.max() < 32 and res.recon.shape == emb.shape
    assert Q.unique_rate(res.codes) > 0.5
    c = res.model.centroids
    np.testing.assert_allclose(res.recon, c[0][res.codes[:, 0]] + c[1][res.codes[:, 1]] + c[2][res.codes[:, 2]],
                               atol=1e-6)
    # residual levels shrink the error
    assert [h["residual_norm"] for h in res.history] == sorted([h["residual_norm"] for h in res.history], reverse=True)
    model, _ = load_tokenizer(save_tokenizer(res.model, cfg, tmp_path / "rqk.pt"))
    assert isinstance(model, rqkmeans.RQKMeans)
    np.testing.assert_array_equal(encode(model, emb), res.codes)


# --------------------------------------------------------------------------- quality


def test_quality_hand_computed():
    codes = np.array([[0, 0], [0, 0], [1, 2], [1, 3], [2, 3]])
    assert Q.utilization(codes, 4) == [0.75, 0.75]
    assert Q.unique_rate(codes) == pytest.approx(3 / 5)
    assert Q.distinct_rate(codes) == pytest.approx(4 / 5)
    assert Q.max_collision(codes) == 2
    p = np.array([2, 2, 1]) / 5
    assert Q.perplexity(codes, 4)[0] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert Q.perplexity(np.array([[0], [1], [2], [3]]), 4) == [pytest.approx(4.0)]


def test_quality_table_keys_and_values():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    emb = np.repeat(centers, 10, axis=0) + 0.01 * rng.normal(size=(40, 16))  # 4 tight clusters of 10
    codes = np.stack([np.repeat(np.arange(4), 10), np.tile(np.arange(10), 4)], 1)
    q = Q.quality(emb, emb, codes, K=10, seed=0, tokenizer="x")
    assert list(q) == ["utilization", "perplexity", "recon_cosine_mean", "recon_cosine_p50", "nn_overlap_at_5",
                       "unique_rate", "max_collision", "prefix1_nn", "prefix1_random", "tokenizer"]
    assert q["recon_cosine_mean"] == pytest.approx(1.0) and q["nn_overlap_at_5"] == pytest.approx(1.0)
    assert q["unique_rate"] == 1.0 and q["max_collision"] == 1
    assert q["prefix1_nn"] == 1.0  # the nearest neighbour is always in the same cluster = same level-1 code
    assert q["prefix1_random"] == pytest.approx(9 / 39, abs=0.02)
    assert q["utilization"] == [0.4, 1.0] and q["tokenizer"] == "x"


def test_quality_plots(fitted, tmp_path):
    _, res = fitted
    for f in (Q.plot_training(res.history, tmp_path / "t.png"), Q.plot_code_usage(res.codes, 16, tmp_path / "u.png"),
              Q.plot_collisions(res.codes, tmp_path / "c.png")):
        assert f.exists() and f.stat().st_size > 1000


# --------------------------------------------------------------------------- bad input


def test_bad_inputs(emb):
    cfg = small_cfg()
    x = emb[:50].copy()
    x[7, 3] = np.nan
    with pytest.raises(TokenizerInputError, match=r"NaN.*rows 7"):
        fit_tokenizer(x, cfg, "rqvae")
    x = emb[:50].copy()
    x[[4, 11]] = 0
    with pytest.raises(TokenizerInputError, match=r"zero vectors: item rows 4, 11"):
        fit_tokenizer(x, cfg, "rqkmeans")
    with pytest.raises(TokenizerInputError, match="smaller codebook"):
        fit_tokenizer(emb[:10], cfg, "rqvae")
    with pytest.raises(TokenizerInputError, match="unknown tokenizer method"):
        fit_tokenizer(emb, cfg, "vqgan")
    with pytest.raises(TokenizerInputError, match="grad"):
        fit_tokenizer(emb, small_cfg(grad="magic"), "rqvae")
    with pytest.raises(TokenizerInputError, match="2-D"):
        check_embeddings(emb[0])
    with pytest.raises(TokenizerInputError, match="600 embedding rows for 599 items"):
        check_alignment(emb, list(range(599)))
    check_alignment(emb, list(range(600)))
