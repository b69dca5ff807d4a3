"""Tokenizer bench: RQ-VAE vs residual k-means on the real Amazon 2018 Scientific items.

    .venv/bin/python bench/rq_tokenizers.py [--epochs N] [--set key=value ...] [--only rqvae]

Embeds the 4,344 items with MiniLM (cached under artifacts/bench/), fits both tokenizers with
3 x 256 codes, prints the seed 003 quality table side by side with wall times, and writes
artifacts/bench/tokenizers.json (plus training / code-usage plots).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# This file is named like the HF `tokenizers` package that transformers imports: run as a
# script, its own folder must not stay first on sys.path or it would shadow that package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sidlib import paths  # noqa: E402
from sidlib.config import EmbedConfig, TokenizerConfig, parse_value  # noqa: E402

TARGETS = {  # RQ-VAE acceptance targets on Scientific (3 x 256)
    "utilization_min": 0.95,
    "unique_rate": 0.85,
    "recon_cosine_mean": 0.80,
    "prefix1_nn": 0.50,
    "prefix1_random_max": 0.02,
}


def item_text(it: dict) -> str:
    return (
        f"Product: {it.get('title', '') or ''}\n"
        f"Brand: {it.get('brand', '') or ''}\n"
        f"Category: {it.get('categories', '') or ''}\n"
        f"Description: {it.get('description', '') or ''}"
    )


def load_scientific(path: Path | None = None) -> tuple[list[str], list[str], list[str]]:
    """(item ids, texts, top category) for the LC-Rec Scientific items, in id order."""
    path = path or paths.shared_data() / "amazon2018-scientific" / "Scientific.item.json"
    items = json.loads(Path(path).read_text())
    ids = sorted(items, key=int)
    texts = [item_text(items[i]) for i in ids]
    cats = []
    for i in ids:
        parts = [c.strip() for c in (items[i].get("categories") or "").split(",") if c.strip()]
        cats.append(parts[1] if len(parts) > 1 else (parts[0] if parts else "other"))
    return ids, texts, cats


def embed_scientific(out_dir: Path) -> tuple[np.ndarray, list[str]]:
    from sidlib.embed import embed_texts

    _, texts, cats = load_scientific()
    emb = embed_texts(texts, EmbedConfig(model="minilm"), cache_dir=out_dir)
    return emb, cats


def _fmt(v) -> str:
    if isinstance(v, list):
        return "/".join(f"{x:.3f}" if isinstance(x, float) and x <= 1.0 else f"{x:.0f}" for x in v)
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="TokenizerConfig override key=value")
    ap.add_argument("--only", choices=["rqvae", "rqkmeans"], default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench"))
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (tuning runs)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / BLAS threads (1: on a shared 2-core box two OpenMP threads are slower)")
    args = ap.parse_args(argv)

    import torch

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, min(2, args.threads)))
    threadpool_limits(max(1, min(2, args.threads)))
    from sidlib.tokenizers import fit_tokenizer
    from sidlib.tokenizers.quality import distinct_rate, plot_code_usage, plot_collisions, plot_training, quality

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    emb, cats = embed_scientific(out)
    t_embed = time.perf_counter() - t0
    print(f"embeddings {emb.shape} in {t_embed:.1f}s (cached under {out})")
    if not args.no_plots:
        from sidlib.embed import pca_plot

        pca_plot(emb, cats, out / "pca_embeddings.png", title="Scientific items, MiniLM, by category")

    cfg = TokenizerConfig(levels=3, codebook_size=256)
    for kv in args.set:
        k, v = kv.split("=", 1)
        if not hasattr(cfg, k):
            raise SystemExit(f"unknown TokenizerConfig key {k!r}")
        setattr(cfg, k, parse_value(v))

    results = {}
    methods = [args.only] if args.only else ["rqvae", "rqkmeans"]
    for method in methods:
        t = time.perf_counter()
        res = fit_tokenizer(emb, cfg, method=method, seed=args.seed, progress=sys.stderr.isatty())
        wall = time.perf_counter() - t
        q = quality(emb, res.recon, res.codes, cfg.codebook_size, seed=args.seed, tokenizer=method)
        q["distinct_rate"] = distinct_rate(res.codes)  # distinct tuples / items: the seed card's "unique"
        q["wall_s"] = round(wall, 1)
        results[method] = q
        if not args.no_plots:
            plot_code_usage(res.codes, cfg.codebook_size, out / f"code_usage_{method}{args.tag}.png")
            plot_collisions(res.codes, out / f"collisions_{method}{args.tag}.png")
            if res.history:
                plot_training(res.history, out / f"training_{method}{args.tag}.png")
        print(f"{method}: {wall:.1f}s")

    keys = ["utilization", "perplexity", "recon_cosine_mean", "recon_cosine_p50", "nn_overlap_at_5",
            "unique_rate", "distinct_rate", "max_collision", "prefix1_nn", "prefix1_random", "wall_s"]
    width = 26
    print()
    print(f"{'metric':<20}" + "".join(f"{m:>{width}}" for m in results))
    for k in keys:
        print(f"{k:<20}" + "".join(f"{_fmt(results[m][k]):>{width}}" for m in results))

    if "rqvae" in results:
        q = results["rqvae"]
        checks = {
            "utilization_min": min(q["utilization"]) >= TARGETS["utilization_min"],
            "unique_rate": q["unique_rate"] >= TARGETS["unique_rate"],
            "recon_cosine_mean": q["recon_cosine_mean"] >= TARGETS["recon_cosine_mean"],
            "prefix1_nn": q["prefix1_nn"] >= TARGETS["prefix1_nn"],
            "prefix1_random": q["prefix1_random"] <= TARGETS["prefix1_random_max"],
        }
        print("\nRQ-VAE targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in checks.items()))
        results["rqvae_targets_met"] = checks

    payload = {
        "dataset": "amazon2018-scientific",
        "items": int(emb.shape[0]),
        "embed": {"model": "minilm", "dim": int(emb.shape[1]), "seconds": round(t_embed, 1)},
        "config": dataclasses.asdict(cfg),
        "seed": args.seed,
        "threads": args.threads,
        "targets": TARGETS,
        "results": results,
    }
    path = out / f"tokenizers{args.tag}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
