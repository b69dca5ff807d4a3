"""SID-GR (TIGER-style generative retrieval) and its constrained beam search.

Mechanics (random-init models, float64 so that the three decoding paths can be compared
exactly): KV cache == no cache, only existing items, sorted scores, beam >= #items returns
every item once, scores == teacher-forced sequence log-probs, left truncation, errors.
Learning (real data, Amazon 2018 Scientific, real semantic codes from the titles): a short
run lowers the loss and beats popularity on Recall@10 (valid, leave-one-out); resume after a
crash repeats the uninterrupted run exactly.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sidlib.models.beam import beam_search
from sidlib.models.sid_gr import SidGR, SidGRConfig, SidGRError, _epoch_batches, evaluate, fit, training_samples
from sidlib.sids import SidError

torch.set_num_threads(1)


# --------------------------------------------------------------------------- helpers

def scientific_codes(item_json: Path, levels: int = 3, k: int = 16, dims: int = 64, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Real semantic codes from the item titles (the shared test helper in conftest.py)."""
    from conftest import title_codes

    return title_codes(item_json, levels, k, dims, seed)


def synthetic_codes(n: int, sizes=(8, 8, 8), seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Random first levels (many shared prefixes) + a dedup level."""
    rng = np.random.default_rng(seed)
    c = np.stack([rng.integers(0, k, n) for k in sizes], 1)
    _, inv = np.unique(c, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    dedup = np.zeros(n, dtype=np.int64)
    for g in np.unique(inv):
        idx = np.flatnonzero(inv == g)
        dedup[idx] = np.arange(len(idx))
    return np.c_[c, dedup], list(sizes) + [int(dedup.max()) + 1]


def tiny_model(codes, sizes, **kw) -> SidGR:
    torch.manual_seed(0)
    cfg = SidGRConfig(**{"hidden": 32, "layers": 2, "heads": 2, "max_items": 6, "dropout": 0.0, **kw})
    return SidGR(codes, sizes, cfg).double().eval()


def random_histories(n_users: int, n_items: int, max_len: int = 10, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, rng.integers(1, max_len + 1)).tolist() for _ in range(n_users)]


# --------------------------------------------------------------------------- beam mechanics

@pytest.mark.parametrize("shared_head,loss_items", [(True, 1), (False, 2), (True, 0)])
def test_kv_cache_equals_no_cache(shared_head, loss_items):
    codes, sizes = synthetic_codes(300)
    m = tiny_model(codes, sizes, shared_head=shared_head, loss_items=loss_items)
    hist = random_histories(9, len(codes), max_len=12)
    out = {mode: beam_search(m, hist, m.trie, beam=25, cache=mode, batch_users=4) for mode in ("none", "expand", "shared")}
    for mode in ("expand", "shared"):
        assert torch.equal(out[mode].items, out["none"].items), mode
        torch.testing.assert_close(out[mode].scores, out["none"].scores, rtol=0, atol=1e-10)


def test_beam_only_existing_items_sorted_and_exact_scores():
    codes, sizes = synthetic_codes(300)
    m = tiny_model(codes, sizes)
    hist = random_histories(6, len(codes))
    r = beam_search(m, hist, m.trie, beam=20)
    items, scores = r.items, r.scores
    assert items.shape == (6, 20)
    assert ((items >= 0) & (items < len(codes))).all()
    assert all(len(set(row.tolist())) == 20 for row in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    # a returned score is the item's sequence log-prob under teacher forcing
    prompt = m.build_prompt(hist)
    item_codes = torch.as_tensor(codes)[items[:, :5]]  # [U, 5, L+1]
    total = torch.zeros(6, 5, dtype=torch.float64)
    with torch.no_grad():
        for level in range(m.n_levels):
            h = m.forward_decoded(prompt, item_codes[:, :, :level])
            total += m.level_logprobs(h, level).gather(-1, item_codes[:, :, level : level + 1]).squeeze(-1)
    torch.testing.assert_close(total, scores[:, :5], rtol=0, atol=1e-10)


@pytest.mark.parametrize("cache", ["shared", "expand", "none"])
def test_wide_beam_returns_every_item_once(cache):
    codes, sizes = synthetic_codes(200, sizes=(4, 4, 4))
    m = tiny_model(codes, sizes)
    hist = random_histories(3, len(codes))
    r = beam_search(m, hist, m.trie, beam=256, cache=cache)  # B > #items: keep all
    assert r.items.shape == (3, 256)
    for row, sc in zip(r.items, r.scores):
        got = row[row >= 0]
        assert sorted(got.tolist()) == list(range(200))
        assert torch.isfinite(sc[:200]).all() and torch.isinf(sc[200:]).all()
        assert (sc[:199] >= sc[1:200]).all()
        # log-probs over all items of a complete trie level-normalised: exp-sum <= 1
        assert float(torch.exp(sc[:200]).sum()) <= 1.0 + 1e-9


def test_beam_256_smaller_than_catalogue():
    codes, sizes = synthetic_codes(1500, sizes=(16, 16, 16))
    m = tiny_model(codes, sizes)
    r = beam_search(m, random_histories(2, 1500), m.trie, beam=256, topk=300, cache="shared")
    assert r.items.shape == (2, 300)
    assert (r.items[:, :256] >= 0).all() and (r.items[:, 256:] == -1).all()
    assert all(len(set(row[:256].tolist())) == 256 for row in r.items)


@pytest.mark.parametrize("cache", ["shared", "expand", "none"])
def test_excluded_items_never_come_out_and_the_rest_keeps_its_order(cache):
    """An exhaustive search with bans = the unbanned ranking minus the banned items, same scores;
    a narrow one returns k allowed items (no beam wasted on a prefix whose items are all banned)."""
    codes, sizes = synthetic_codes(200, sizes=(4, 4, 4))
    m = tiny_model(codes, sizes)
    hist = random_histories(5, len(codes), max_len=30)
    # user 0 bans every item under level-1 code 0 (a whole subtree), user 4 nothing
    subtree = np.flatnonzero(codes[:, 0] == 0).tolist()
    bans = [subtree, hist[1], hist[2] + hist[2], [7], []]
    free = beam_search(m, hist, m.trie, beam=256, cache=cache)
    got = beam_search(m, hist, m.trie, beam=256, cache=cache, exclude=bans, batch_users=2)
    for u in range(5):
        keep = [(i, s) for i, s in zip(free.items[u].tolist(), free.scores[u].tolist()) if i >= 0 and i not in set(bans[u])]
        n = len(keep)
        assert n == 200 - len(set(bans[u]))
        assert got.items[u, :n].tolist() == [i for i, _ in keep]
        np.testing.assert_allclose(got.scores[u, :n].numpy(), [s for _, s in keep], rtol=0, atol=1e-10)
        assert (got.items[u, n:] == -1).all()
    narrow = beam_search(m, hist, m.trie, beam=10, cache=cache, exclude=bans)
    for u in range(5):
        row = narrow.items[u].tolist()
        assert len(set(row)) == 10 and min(row) >= 0 and not set(row) & set(bans[u])
        assert codes[row[0], 0] != 0 or u != 0
    assert (m.topk_fn(10, 10, cache, exclude_history=True)(hist) == beam_search(
        m, hist, m.trie, beam=10, cache=cache, exclude=hist).items.numpy()).all()
    with pytest.raises(SidError, match="excluded item id 200"):
        beam_search(m, hist[:1], m.trie, beam=10, exclude=[[200]])
    with pytest.raises(ValueError, match="exclude has 1 rows for 5"):
        beam_search(m, hist, m.trie, beam=10, exclude=[[1]])


def test_window_samples_when_every_item_carries_the_loss():
    """loss_items=0: windows of max_items + 1 items overlapping by one (each transition once);
    loss_items>=1: one sample per prefix."""
    seqs = [list(range(14)), [1, 2], [5]]
    win = SidGRConfig(max_items=6, loss_items=0)
    assert training_samples(seqs, win) == [(0, 13), (0, 7), (0, 1), (1, 1)]
    assert training_samples(seqs, dataclasses.replace(win, augment=False)) == [(0, 13), (1, 1)]
    codes, sizes = synthetic_codes(50)
    m = tiny_model(codes, sizes, loss_items=0)
    targets = []
    for i, e in training_samples(seqs, win):
        _, lab_lv, lab_code = m.build_batch([seqs[i][: e + 1]])
        targets += [int(lab_code[0][(lab_lv[0] == 0)][j]) for j in range(int((lab_lv[0] == 0).sum()))]
    # every transition a -> b of the sequences is a target once: 13 + 1 level-0 labels
    assert len(targets) == 14
    assert training_samples(seqs, SidGRConfig(max_items=6, loss_items=1)) == [(0, e) for e in range(1, 14)] + [(1, 1)]


def test_left_truncation_and_errors():
    codes, sizes = synthetic_codes(100)
    m = tiny_model(codes, sizes, max_items=4)
    long = [5, 6, 7, 8, 9, 10, 11]
    p_long, p_short = m.build_prompt([long]), m.build_prompt([long[-4:]])
    assert torch.equal(p_long.tokens, p_short.tokens) and p_long.tokens.shape[1] == 4 * m.n_levels + 1
    assert int(p_long.tokens[0, -1]) == m.bos
    a = beam_search(m, [long], m.trie, beam=10)
    b = beam_search(m, [long[-4:]], m.trie, beam=10)
    assert torch.equal(a.items, b.items)
    with pytest.raises(SidGRError, match="empty"):
        m.build_prompt([[1, 2], []])
    with pytest.raises(SidGRError, match="no codes"):
        m.build_prompt([[1, 100]])
    with pytest.raises(SidGRError, match="needs a history and a target"):
        m.build_batch([[3]])
    with pytest.raises(ValueError, match="cache"):
        beam_search(m, [[1]], m.trie, cache="paged")


def test_training_batch_layout():
    """[c(h1); <BOS> c(h2); <BOS> c(t)] for loss_items=2; labels only on the loss items' codes."""
    codes, sizes = synthetic_codes(50)
    m = tiny_model(codes, sizes, loss_items=2)
    seq = [3, 4, 5]
    inputs, lab_lv, lab_code = m.build_batch([seq])
    d = m.n_levels
    tok = inputs.tokens[0].tolist()
    expect = [c + o for c, o in zip(codes[3], m.offsets)] + [m.bos] + [c + o for c, o in zip(codes[4], m.offsets)] + [m.bos]
    expect += [c + o for c, o in zip(codes[5][:-1], m.offsets)]
    assert tok == expect
    labelled = lab_code[0][lab_lv[0] >= 0].tolist()
    assert labelled == codes[4].tolist() + codes[5].tolist()
    assert inputs.positions[0].tolist() == [2] * d + [1] * (d + 1) + [0] * d


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def scientific(shared_data):
    from sidlib.split import leave_one_out, samples, training_sequences

    folder = shared_data / "amazon2018-scientific"
    inter = json.loads((folder / "Scientific.inter.json").read_text())
    users = sorted(inter, key=int)
    seqs = pd.DataFrame({"user_id": np.arange(len(users)), "item_ids": [inter[u] for u in users]})
    split = leave_one_out(seqs)
    codes, sizes = scientific_codes(folder / "Scientific.item.json")
    return {
        "codes": codes,
        "sizes": sizes,
        "train": training_sequences(split, "valid")["item_ids"].tolist(),
        "valid": samples(split, "valid"),
    }


FAST = dict(hidden=64, layers=1, heads=2, max_items=10, dropout=0.0, epochs=1, batch_size=64, lr=3e-3,
            warmup_steps=20, loss_items=1, augment=True, patience=0)


def test_codes_are_real_semantic_ids(scientific):
    codes, sizes = scientific["codes"], scientific["sizes"]
    assert codes.shape == (4344, 4) and len(np.unique(codes, axis=0)) == 4344
    assert len(np.unique(codes[:, :3], axis=0)) > 500  # the 3 x 16 levels separate most items


def test_short_training_beats_popularity(scientific):
    from sidlib.metrics import from_topk, metrics_from_ranks

    train, valid = scientific["train"], scientific["valid"]
    torch.manual_seed(0)
    model = SidGR(scientific["codes"], scientific["sizes"], SidGRConfig(**FAST))
    rec = fit(model, train, None, log=None)
    steps = rec["step_losses"]
    n = len(steps) // 10
    assert np.mean(steps[-n:]) < np.mean(steps[:n]) - 0.3, (np.mean(steps[:n]), np.mean(steps[-n:]))

    keep = np.random.default_rng(0).choice(len(valid), 2000, replace=False)
    hist = [valid["history"].iloc[i] for i in keep]
    tgt = valid["target"].to_numpy()[keep]
    gr = evaluate(model, hist, tgt, ks=(10,), beam=20)
    counts = np.bincount(np.concatenate([np.asarray(s) for s in train]), minlength=len(scientific["codes"]))
    pop_top = np.argsort(-counts, kind="stable")[:10]
    pop = metrics_from_ranks(from_topk(np.tile(pop_top, (len(tgt), 1)), tgt), ks=(10,))
    assert gr["hit@10"] > pop["hit@10"] * 1.2, (gr, pop)
    assert gr["hit@10"] > 0.04, gr
    # the trained model's beams are existing items, sorted, and the cache does not change them
    a = model.recommend(hist[:50], k=20, cache="shared")
    b = model.recommend(hist[:50], k=20, cache="none")
    assert torch.equal(a.items, b.items)
    assert ((a.items >= 0) & (a.items < len(scientific["codes"]))).all()


def test_resume_repeats_uninterrupted_run(scientific, tmp_path):
    train = [s for s in scientific["train"][:600]]
    valid = scientific["valid"].iloc[:200]
    vt = (valid["history"].tolist(), valid["target"].to_numpy())
    cfg = SidGRConfig(**{**FAST, "epochs": 3, "hidden": 32, "batch_size": 128, "dropout": 0.1, "beam": 10, "patience": 5})

    torch.manual_seed(0)
    ref = SidGR(scientific["codes"], scientific["sizes"], cfg)
    rec_ref = fit(ref, train, vt, ckpt_dir=tmp_path / "ref", log=None)

    # crash in the middle of epoch 2, then resume from last.pt
    torch.manual_seed(0)
    m = SidGR(scientific["codes"], scientific["sizes"], cfg)
    calls = {"n": 0}
    real_loss = m.loss
    per_epoch = len(_epoch_batches(training_samples(train, cfg), cfg, 1))

    def crashing_loss(*a, **kw):
        calls["n"] += 1
        if calls["n"] == per_epoch + 3:
            raise KeyboardInterrupt
        return real_loss(*a, **kw)

    m.loss = crashing_loss
    with pytest.raises(KeyboardInterrupt):
        fit(m, train, vt, ckpt_dir=tmp_path / "run", log=None)
    assert (tmp_path / "run" / "last.pt").exists()

    torch.manual_seed(123)  # a different process state: resume must not depend on it
    m2 = SidGR(scientific["codes"], scientific["sizes"], cfg)
    rec = fit(m2, train, vt, ckpt_dir=tmp_path / "run", resume=True, log=None)
    assert rec["resumed_from"] == 1 and rec["epochs_run"] == 3
    assert rec["losses"] == pytest.approx(rec_ref["losses"], rel=1e-6)
    assert [e["score"] for e in rec["evals"]] == pytest.approx([e["score"] for e in rec_ref["evals"]], rel=1e-6)
    for (k, a), b in zip(ref.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)

    # save / load round trip gives the same retrieval
    ref.save(tmp_path / "model.pt")
    back = SidGR.load(tmp_path / "model.pt")
    h = vt[0][:20]
    assert torch.equal(back.recommend(h, k=10).items, ref.recommend(h, k=10).items)


def test_per_level_heads_train(scientific):
    cfg = SidGRConfig(**{**FAST, "shared_head": False, "hidden": 32, "loss_items": 0, "augment": False})
    torch.manual_seed(0)
    m = SidGR(scientific["codes"], scientific["sizes"], cfg)
    rec = fit(m, scientific["train"][:1500], None, log=None)
    steps = rec["step_losses"]
    assert steps[-1] < steps[0]
    r = m.recommend(scientific["valid"]["history"].tolist()[:10], k=10)
    assert ((r.items >= 0) & (r.items < 4344)).all()
