"""Stages 03-07 through the runner on smoke: embeddings, tokenizer, SIDs, an imported index, baselines."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import torch

from sidlib import paths, runner, sids, summary


def test_smoke_embed_tokenize_sids(smoke_artifacts, smoke_stages, tmp_roots):
    """On the session's 01-05 (run once for every smoke test: the chain up to 05 again here cost
    ~2 of the suite's minutes), with its embedding cache, so a forced 03 must find it."""
    shutil.copytree(smoke_artifacts / "cache", tmp_roots / "artifacts" / "cache")
    lines: list[str] = []
    assert runner.run("smoke", "07", echo=lines.append) == 0, lines
    st = summary.load("smoke")["stages"]

    base = st["baselines"]["metrics"]
    assert set(base) == {"popularity", "sasrec", "sid_sasrec", "sid_gr"}
    for name, m in base.items():
        assert {"ndcg@10", "hit@10", "mrr", "train_seconds", "ms_per_user"} <= set(m), name
        assert m["n_users"] == st["prep"]["metrics"]["test_users"], name  # the same test users
    assert base["sid_gr"]["beam"] == 20

    emb = st["embed"]["metrics"]
    assert emb["dim"] == 384 and emb["items"] == st["prep"]["metrics"]["items"]
    assert emb["cached"] is False

    rq = st["rqvae"]["metrics"]
    for key in ["utilization", "perplexity", "recon_cosine_mean", "nn_overlap_at_5", "unique_rate",
                "max_collision", "prefix1_nn", "prefix1_random", "tokenizer"]:
        assert key in rq, key
    assert rq["tokenizer"] == "rqvae" and len(rq["utilization"]) == 3
    assert "rqkmeans" in rq["compare"]  # the side-by-side table
    # real semantic structure: neighbours share a first code far more often than random pairs
    assert rq["prefix1_nn"] > 2 * rq["prefix1_random"]

    s = st["sids"]["metrics"]
    assert s["unique_after_dedup"] == s["items"] == emb["items"]
    assert s["levels"] == 4
    out = paths.stage_dir("smoke", "05-sids", create=False)
    table = sids.SidTable.load(out)
    mapping = torch.load(out / "sid_mapping.pt", weights_only=True)
    assert tuple(mapping.shape) == (4, s["items"])
    assert mapping[:, 7].tolist() == list(table.df.loc[7, "codes"])
    scheme = sids.SidScheme(s["codebook_sizes"])
    assert scheme.parse(table.df.loc[7, "sid"]) == list(table.df.loc[7, "codes"])

    # forcing 03 again loads the cached matrix instead of re-embedding
    assert runner.run("smoke", "03", force=True, echo=lines.append) == 0
    assert summary.load("smoke")["stages"]["embed"]["metrics"]["cached"] is True

    # an external LC-Rec index.json replaces the tokenizer's codes
    items = pd.read_parquet(paths.stage_dir("smoke", "02-clean", create=False) / "items.parquet")
    letters = "abcd"
    index = {str(src): [f"<{letters[lv]}_{c}>" for lv, c in enumerate(codes)]
             for src, codes in zip(items["source_id"], table.df["codes"])}
    index_path = tmp_roots / "smoke.index.json"
    index_path.write_text(json.dumps(index))
    assert runner.run("smoke", "05", {"sids.import_path": str(index_path)}, echo=lines.append) == 0
    s2 = summary.load("smoke")["stages"]["sids"]["metrics"]
    assert s2["source"] == "import" and s2["unique_after_dedup"] == s["items"]
    assert np.array_equal(sids.SidTable.load(out).codes, table.codes)

    # an index that misses items is refused with a message naming what is missing
    del index[str(items.loc[0, "source_id"])]
    index_path.write_text(json.dumps(index))
    failed: list[str] = []
    assert runner.run("smoke", "05", {"sids.import_path": str(index_path)}, echo=failed.append) == 1
    assert any("05-sids.ipynb failed" in line for line in failed)
