"""SASRec, SID-SASRec and the shared training utilities, on the real Amazon Scientific data.

The learning tests run a few CPU epochs (lr 3e-3, SID-SASRec at hidden 64 / 2 blocks rather
than the seed's 128 / 4) and check that the loss falls and that valid NDCG@10 under the full
ranking protocol beats the popularity baseline measured with the same metrics module.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from sidlib import config
from sidlib import metrics as M
from sidlib import split as S
from sidlib.config import BaselineConfig, SasrecConfig, SidSasrecConfig
from sidlib.models import sasrec as SR
from sidlib.models import sid_sasrec as SID
from sidlib.models.train import Checkpointer, EarlyStopping, fit_loop, pick_device


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's cores are shared
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def scientific(shared_data):
    folder = shared_data / "amazon2018-scientific"
    inter = json.loads((folder / "Scientific.inter.json").read_text())
    seqs = pd.DataFrame({"user_id": [int(u) for u in inter], "item_ids": list(inter.values())})
    sp = S.leave_one_out(seqs)
    items = json.loads((folder / "Scientific.item.json").read_text())
    counts = S.item_train_counts(sp, len(items))
    pop = M.evaluate_model(M.popularity_score_fn(counts), S.samples(sp, "valid"), len(items), 1024, train_counts=counts)
    return {"split": sp, "items": items, "n_items": len(items), "counts": counts, "pop": pop, "folder": folder}


def small_split(sp: pd.DataFrame, n_users: int = 1500) -> pd.DataFrame:
    return sp.iloc[:n_users].reset_index(drop=True)


# --------------------------------------------------------------------------- sequences


def test_pad_left_truncates_from_the_left_and_rejects_empty_histories():
    assert SR.pad_left([[1, 2, 3, 4, 5], [7]], max_len=3).tolist() == [[4, 5, 6], [0, 0, 8]]
    assert SR.pad_left([[4], [2, 9]], max_len=50).tolist() == [[0, 5], [3, 10]]  # width = longest
    with pytest.raises(ValueError, match="history 1 is empty"):
        SR.pad_left([[1], []], max_len=3)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        SR.pad_left([[1, 5]], max_len=3, n_items=5)
    model = SR.SASRec(10, max_len=3, hidden=8, blocks=1, dropout=0.0).eval()
    long, tail = [1, 2, 3, 4, 5, 6], [4, 5, 6]
    assert torch.allclose(model.score([long]), model.score([tail]))
    with pytest.raises(ValueError, match="empty"):
        model.score([[1], []])


def test_training_arrays_and_length_batches():
    inp, tgt = SR.training_arrays([[1, 2, 3], [5], [0, 1, 2, 3, 4, 5]], max_len=3)
    # the 1-item sequence gives no pair; the long one is cut into windows of max_len + 1 from its end
    assert inp.tolist() == [[0, 2, 3], [3, 4, 5], [0, 1, 2]]
    assert tgt.tolist() == [[0, 3, 4], [4, 5, 6], [0, 2, 3]]
    lengths = np.array([1, 5, 2, 9, 3, 3, 7, 1, 2, 4, 6])
    batches = SR.length_batches(lengths, 3, np.random.default_rng(0), pool=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert max(len(b) for b in batches) == 3


def test_encoder_is_causal_and_padding_invariant():
    torch.manual_seed(0)
    model = SR.SASRec(30, max_len=6, hidden=16, blocks=2, heads=2, dropout=0.0).eval()
    with torch.no_grad():
        a = model(torch.tensor([[0, 3, 4, 5, 6, 7]]))
        b = model(torch.tensor([[0, 3, 4, 5, 9, 12]]))
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6)  # later items do not leak backwards
    assert not torch.allclose(a[0, 5], b[0, 5])
    # a short history scores the same alone and batched with a longer (wider) one
    alone = model.score([[2, 3]])
    batched = model.score([[2, 3], [1, 2, 3, 4, 5, 6, 7, 8]])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


# --------------------------------------------------------------------------- training utilities


def test_checkpointer_atomic_roundtrip(tmp_path):
    ck = Checkpointer(tmp_path / "ck")
    assert ck.load() is None and not ck.has()
    ck.save({"epoch": 3, "w": torch.ones(2)})
    ck.save({"epoch": 4, "w": torch.zeros(2)})
    got = ck.load()
    assert got["epoch"] == 4 and got["w"].tolist() == [0.0, 0.0]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.pt"]  # no temp files left
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type in ("cpu", "cuda", "mps")


def test_early_stopping_and_fit_loop_restore_the_best_weights():
    es = EarlyStopping(patience=2)
    assert [es.step(v, e) for e, v in enumerate([0.1, 0.3, 0.2, 0.3, 0.25], 1)] == [True, True, False, False, False]
    assert es.should_stop and es.best == 0.3 and es.best_epoch == 2
    es2 = EarlyStopping(patience=2)
    es2.load_state_dict(es.state_dict())
    assert es2.should_stop and es2.best_epoch == 2

    model = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = {1: 0.1, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.9}

    def train_epoch(epoch):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        return 1.0 / epoch

    res = fit_loop(model, opt, train_epoch, lambda e: {"ndcg@10": scores[e]}, epochs=5, patience=2)
    assert res.epochs_run == 4 and res.stopped_early and res.best_epoch == 2 and res.best_score == 0.5
    assert model.weight.item() == 2.0  # the best epoch's weights are back
    assert [e["epoch"] for e in res.evals] == [1, 2, 3, 4] and res.losses == [1.0, 0.5, 1 / 3, 0.25]


# --------------------------------------------------------------------------- SASRec


def test_sasrec_learns_scientific_better_than_popularity(scientific):
    cfg = BaselineConfig(epochs=3, lr=3e-3, eval_every=3, device="cpu")
    torch.manual_seed(0)
    model = SR.SASRec.from_config(scientific["n_items"], cfg)
    res = SR.fit(model, scientific["split"], cfg, seed=0)
    assert res.losses[-1] < res.losses[0] - 0.5
    got, pop = res.evals[-1], scientific["pop"]
    assert got["ndcg@10"] > 1.2 * pop["all"]["ndcg@10"], (got, pop["all"])
    assert got["hit@10"] > pop["all"]["hit@10"]
    # valid targets never seen in the training prefixes: reported, an ID model cannot rank them
    assert got["cold_unseen"] == pop["cold_unseen"] == int((scientific["counts"][scientific["split"]["valid"]] == 0).sum())
    assert got["cold_unseen"] > 0 and got["n_cold"] == pop["n_cold"]


def test_valid_users_sample_the_early_stopping_validations_only(scientific, monkeypatch):
    seen = []
    real = SR.evaluate_split

    def spy(model, split, which, *args, **kw):
        seen.append((which, len(split)))
        return real(model, split, which, *args, **kw)

    monkeypatch.setattr(SR, "evaluate_split", spy)
    sp = small_split(scientific["split"], 600)
    _, rep = SR.run(sp, BaselineConfig(epochs=2, valid_users=100, device="cpu"), n_items=scientific["n_items"], seed=0)
    assert seen[:2] == [("valid", 100), ("valid", 100)]  # the two epochs' validations
    assert ("valid", 600) in seen[2:] and ("test", 600) in seen[2:]  # the report: every user
    assert rep["valid"]["n_users"] == 600


def test_sasrec_bce_loss_trains(scientific):
    sp = small_split(scientific["split"])
    cfg = BaselineConfig(epochs=2, lr=3e-3, sasrec=SasrecConfig(hidden=16), loss="bce", negatives=2, eval_every=2, device="cpu")
    model = SR.SASRec.from_config(scientific["n_items"], cfg)
    res = SR.fit(model, sp, cfg, seed=0)
    assert np.isfinite(res.losses).all() and res.losses[1] < res.losses[0]
    with pytest.raises(ValueError, match="loss must be"):
        SR.fit(model, sp, replace(cfg, loss="hinge"))


def test_resume_continues_the_epoch_counter_and_repeats_the_same_run(scientific, tmp_path):
    sp = small_split(scientific["split"])
    cfg = BaselineConfig(epochs=4, sasrec=SasrecConfig(hidden=16), max_len=20, patience=0, device="cpu")
    n = scientific["n_items"]

    def fresh():
        torch.manual_seed(1)
        return SR.SASRec.from_config(n, cfg)

    straight = SR.fit(fresh(), sp, cfg, seed=5)
    first = SR.fit(fresh(), sp, cfg, ckpt_dir=tmp_path, seed=5, epochs=2)
    assert first.epochs_run == 2 and Checkpointer(tmp_path).load()["epoch"] == 2
    model = fresh()
    resumed = SR.fit(model, sp, cfg, ckpt_dir=tmp_path, resume=True, seed=5)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 4 and len(resumed.losses) == 4
    assert [e["epoch"] for e in resumed.evals] == [1, 2, 3, 4]
    assert Checkpointer(tmp_path).load()["epoch"] == 4 and Checkpointer(tmp_path).has("best")
    assert np.allclose(resumed.losses, straight.losses, rtol=1e-4)  # the same run, interrupted
    assert resumed.best_epoch == straight.best_epoch
    # a finished run is not repeated
    again = SR.fit(fresh(), sp, cfg, ckpt_dir=tmp_path, resume=True, seed=5)
    assert again.epochs_run == 4 and again.losses == resumed.losses
    rep = SR.report(model, sp, cfg, resumed)
    assert set(rep) >= {"valid", "test", "cold_unseen", "n_params", "fit"}
    assert rep["valid"]["all"]["ndcg@10"] == pytest.approx(resumed.best_score)
    assert rep["cold_unseen"]["test"] == int((S.item_train_counts(sp, n)[sp["test"]] == 0).sum())


# --------------------------------------------------------------------------- SID-SASRec


def test_sid_sasrec_scores_are_exact_log_probs(monkeypatch):
    # a full 3 x 2 x 2 grid: every code path is an item, so p(items) sums to one
    grid = np.array([[a, b, c] for a in range(3) for b in range(2) for c in range(2)])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(grid))
    torch.manual_seed(0)
    model = SID.SIDSASRec(grid[order], max_len=5, hidden=8, blocks=1, heads=1, dropout=0.0).eval()
    hist = [[0, 3], [5, 1, 2, 7]]
    scores = model.score(hist)
    assert scores.shape == (2, len(grid))
    assert torch.allclose(scores.logsumexp(1), torch.zeros(2), atol=1e-5)
    # brute force: walk each item's code path through the heads
    with torch.no_grad():
        h = model(SR.pad_left(hist, 5))[:, -1]
        codes = model.codes[1:]
        for item in range(len(grid)):
            lp = sum(
                torch.log_softmax(model.level_logits(h, codes[item, :lvl].expand(2, -1), lvl), -1)[:, codes[item, lvl]]
                for lvl in range(3)
            )
            assert torch.allclose(scores[:, item], lp, atol=1e-5)
    # scoring in many small chunks gives the same numbers
    monkeypatch.setattr(SID, "_CHUNK_ELEMENTS", 1)
    assert torch.allclose(model.score(hist), scores, atol=1e-6)
    # a catalogue that is a subset of the grid: the items' probabilities sum to less than one
    sub = SID.SIDSASRec(grid[:7], max_len=5, hidden=8, blocks=1, heads=1).eval()
    assert (sub.score([[0, 3], [5, 1, 2, 6]]).logsumexp(1) < 0).all()
    with pytest.raises(ValueError, match="dedup"):
        SID.SIDSASRec(np.array([[0, 1], [0, 1]]))


def test_sid_sasrec_learns_scientific_better_than_popularity(scientific):
    from conftest import title_codes

    codes, _ = title_codes(scientific["folder"] / "Scientific.item.json", levels=2, k=32)
    assert codes.shape == (scientific["n_items"], 3) and len(np.unique(codes, axis=0)) == len(codes)
    cfg = BaselineConfig(epochs=4, lr=3e-3, sid_sasrec=SidSasrecConfig(hidden=64, blocks=2), eval_every=4, device="cpu")
    torch.manual_seed(0)
    model = SID.SIDSASRec.from_config(codes, cfg)
    res = SR.fit(model, scientific["split"], cfg, seed=0)
    assert res.losses[-1] < res.losses[0] - 0.5
    got, pop = res.evals[-1], scientific["pop"]
    assert got["ndcg@10"] > 1.2 * pop["all"]["ndcg@10"], (got, pop["all"])


def test_baseline_config_section():
    cfg = config.load("scientific", ["baselines.loss=bce", "baselines.sampled_negatives=1000"])
    assert cfg.baselines.loss == "bce" and cfg.baselines.sampled_negatives == 1000
    b = config.Config().baselines
    assert (b.max_len, b.sasrec.hidden, b.sasrec.blocks, b.sasrec.heads, b.dropout) == (50, 64, 2, 1, 0.2)
    assert (b.sid_sasrec.hidden, b.sid_sasrec.blocks) == (128, 4)
    g = b.sid_gr
    assert (g.hidden, g.layers, g.heads, g.beam, g.loss_items, g.shared_head) == (128, 4, 4, 20, 1, True)


def test_old_flat_baseline_keys_still_work_and_name_the_new_ones(caplog, tmp_path):
    """Profiles and --set written before the per-model tables: gr_epochs, sid_hidden, hidden."""
    cfg = config.load("ml100k", ["baselines.gr_epochs=3", "baselines.sid_hidden=16", "baselines.hidden=24"])
    b = cfg.baselines
    assert (b.sid_gr.epochs, b.sid_sasrec.hidden, b.sasrec.hidden) == (3, 16, 24)
    assert "baselines.sid_gr.epochs" in caplog.text and "baselines.sasrec.hidden" in caplog.text
    old = tmp_path / "old.toml"
    old.write_text('base = "ml100k"\n[baselines]\ngr_layers = 3\nsid_blocks = 1\n')
    b = config.load(str(old)).baselines
    # the child's old keys land in the tables; the rest of ml100k's tables stays (a deep merge)
    assert (b.sid_gr.layers, b.sid_gr.epochs, b.sid_sasrec.blocks, b.sid_sasrec.hidden) == (3, 14, 1, 64)
    both = tmp_path / "both.toml"
    both.write_text('[baselines]\ngr_layers = 3\n[baselines.sid_gr]\nlayers = 2\n')
    with pytest.raises(config.ConfigError, match="baselines.sid_gr.layers"):
        config.load(str(both))
    with pytest.raises(config.ConfigError, match="unknown key 'gr_nonsense'"):
        config.load("ml100k", ["baselines.gr_nonsense=1"])


def test_evaluate_split_leaves_out_users_without_history():
    sp = pd.DataFrame({"user_id": [0, 1, 2], "train": [[0, 1], [], [2, 3]], "valid": [2, 1, 0], "test": [3, 2, 1]})
    cfg = BaselineConfig(sasrec=SasrecConfig(hidden=8, blocks=1), device="cpu")
    res = SR.evaluate_split(SR.SASRec(4, hidden=8, blocks=1), sp, "valid", cfg)
    assert res["n_users"] == 2 and res["skipped_empty_history"] == 1
    assert SR.evaluate_split(SR.SASRec(4, hidden=8, blocks=1), sp, "test", cfg)["skipped_empty_history"] == 0


def test_training_arrays_cover_every_transition_of_long_sequences():
    from collections import Counter

    from sidlib.models.sasrec import training_arrays

    seqs = [list(range(10, 130)), [3, 4], [7]]  # 120 items: longer than max_len + 1
    inp, tgt = training_arrays(seqs, max_len=50)
    pairs = Counter((int(a), int(b)) for a, b in zip(inp.ravel(), tgt.ravel()) if a and b)
    want = Counter((s[i] + 1, s[i + 1] + 1) for s in seqs for i in range(len(s) - 1))
    assert pairs == want  # each transition exactly once; a 1-item sequence gives none


@pytest.mark.parametrize("stride", [1, 7, 25, 50])
def test_window_stride_keeps_each_transition_once_with_a_long_history(stride):
    seqs = [list(range(10, 130)), [3, 4, 5], list(range(200, 251))]  # 120, 3 and 51 items
    inp, tgt = SR.training_arrays(seqs, max_len=50, stride=stride)
    # (history seen, target) for every kept target: the history is the window left of it
    seen = [(tuple(int(x) for x in inp[r, : c + 1] if x), int(tgt[r, c])) for r, c in zip(*np.nonzero(tgt))]
    want = [(tuple(x + 1 for x in s[max(0, i + 1 - 50): i + 1]), s[i + 1] + 1) for s in seqs for i in range(len(s) - 1)]
    targets = sorted(t for _, t in seen)
    assert targets == sorted(t for _, t in want)  # every transition a target exactly once
    long_ctx = {t: len(h) for h, t in seen}
    for s in seqs:
        for i in range(1, len(s)):  # target s[i]: the history it is trained with is the last items before it
            h = [k for k, t in seen if t == s[i] + 1][0]
            assert list(h) == [x + 1 for x in s[max(0, i - len(h)): i]]
            assert long_ctx[s[i] + 1] >= min(i, 50 - stride + 1)
    if stride == 50:  # the default (0) is stride max_len
        assert all((a == b).all() for a, b in zip(SR.training_arrays(seqs, 50), (inp, tgt)))
    with pytest.raises(ValueError, match="stride"):
        SR.training_arrays(seqs, max_len=50, stride=51)
