"""Beam-search bench: SID-GR constrained decoding with and without a KV cache.

    .venv/bin/python bench/beam.py [--profile ml100k] [--users 32] [--beams 10,50,256] [--threads 1]
                                   [--train-epochs 0] [--device cpu] [--max-items 20] [--exclude-history]

With --profile, the codes are that profile's real 05-sids table and the histories its 01-prep
split (run the chain first). Without it:

Real SID-like codes: the 4,344 Amazon 2018 Scientific items, TF-IDF of titles -> SVD ->
residual k-means 3 x 16 -> dedup level (4 levels, the model tests' helper in tests/conftest.py). Model:
the NVIDIA SID-GR example's size (hidden 128, 4 layers, 4 heads), random init by default
(`--train-epochs N` trains it briefly first; decoding cost does not depend on the weights).
Histories: the real valid histories (left-truncated to --max-items items).

For every beam width B and cache mode (none = recompute the full sequence each step,
expand = per-beam KV cache reindexed every step, shared = one history cache per user shared
by its beams + a per-beam cache of the decoded tokens) it times the constrained beam search
and prints ms/user; it asserts that every returned item exists (100%), is unique per user and
that the lists are sorted, and reports how often the cached paths return exactly the no-cache
list. --exclude-history bans each user's whole history inside the search (the exclude_history
protocol; `sidlib.models.beam.Exclusion`) and asserts that no history item comes out: run it with
and without to read the cost of the bans. Writes artifacts/bench/beam.json (beam_<profile>.json,
*_exclude.json).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sidlib import config, paths, stages  # noqa: E402
from sidlib.models.beam import beam_search  # noqa: E402
from sidlib.models.sid_gr import SidGR, SidGRConfig, evaluate, fit  # noqa: E402


def _codes_helper():
    spec = importlib.util.spec_from_file_location("_test_codes", REPO / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.title_codes


def load_profile(profile: str):
    """A profile's real chain outputs: the 05-sids table (the codes SID-GR decodes) and the 01-prep split."""
    from sidlib.data.prep import Prepared
    from sidlib.sids import SidTable
    from sidlib.split import samples, training_sequences

    profile = config.load(profile).profile  # a name or a profile file
    table = SidTable.load(stages.SIDS.dir(profile))
    if not np.array_equal(table.item_ids, np.arange(len(table))):
        raise SystemExit("the 05-sids table must cover the dense item ids 0..N-1")
    split = Prepared.load(stages.PREP.dir(profile)).split
    return (np.asarray(table.codes), list(table.scheme.codebook_sizes),
            training_sequences(split, "valid")["item_ids"].tolist(), samples(split, "valid"))


def load_data(max_users: int | None = None):
    import pandas as pd

    from sidlib.split import leave_one_out, samples, training_sequences

    folder = paths.shared_data() / "amazon2018-scientific"
    inter = json.loads((folder / "Scientific.inter.json").read_text())
    users = sorted(inter, key=int)
    split = leave_one_out(pd.DataFrame({"user_id": np.arange(len(users)), "item_ids": [inter[u] for u in users]}))
    codes, sizes = _codes_helper()(folder / "Scientific.item.json")
    return codes, sizes, training_sequences(split, "valid")["item_ids"].tolist(), samples(split, "valid")


def check(items: torch.Tensor, scores: torch.Tensor, codes: np.ndarray, trie) -> dict:
    it = items.cpu().numpy()
    valid = it >= 0
    exist = valid & (it < len(codes))
    # every returned id is an item whose code tuple walks the trie to itself
    ok = all(trie.item_of(codes[i].tolist()) == i for i in np.unique(it[exist]))
    unique = all(len(set(r[r >= 0].tolist())) == int((r >= 0).sum()) for r in it)
    s = scores.float().cpu().numpy()
    sorted_ = bool(np.all(np.where(np.isfinite(s[:, 1:]), s[:, :-1] >= s[:, 1:] - 1e-6, True)))
    return {"existing_rate": float(exist.sum() / max(1, valid.sum())), "trie_consistent": bool(ok),
            "unique_per_user": bool(unique), "sorted": sorted_, "filled_rate": float(valid.mean())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--beams", default="10,50,256")
    ap.add_argument("--modes", default="none,expand,shared")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-items", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-users", type=int, default=16)
    ap.add_argument("--train-epochs", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--history-len", type=int, default=0,
                    help="0 = the real histories; N = prepend random items up to N items (long-history scaling; sets --max-items N)")
    ap.add_argument("--profile", default="", help="decode the SIDs of this profile's 05-sids table over its 01-prep "
                                                  "split (run the chain first); default: Scientific title codes")
    ap.add_argument("--exclude-history", action="store_true", help="ban each user's history items inside the search")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    stem = (f"beam_{config.load(args.profile).profile}" if args.profile else "beam") + ("_exclude" if args.exclude_history else "")
    args.out = args.out or str(REPO / "artifacts" / "bench" / f"{stem}.json")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    codes, sizes, train, valid = load_profile(args.profile) if args.profile else load_data()
    if args.history_len:
        args.max_items = args.history_len
    cfg = SidGRConfig(hidden=args.hidden, layers=args.layers, heads=args.heads, max_items=args.max_items, dropout=0.0)
    torch.manual_seed(0)
    model = SidGR(codes, sizes, cfg)
    trained = None
    if args.train_epochs:
        model.cfg.epochs, model.cfg.batch_size, model.cfg.lr, model.cfg.warmup_steps = args.train_epochs, 128, 2e-3, 50
        t0 = time.time()
        fit(model, train, None, log=print)
        trained = {"epochs": args.train_epochs, "seconds": round(time.time() - t0, 1)}
    model = model.to(device).eval()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(valid), args.users, replace=False)
    hist = [list(valid["history"].iloc[i]) for i in pick]
    if args.history_len:
        hist = [rng.integers(0, len(codes), max(0, args.history_len - len(h))).tolist() + h for h in hist]
    if trained is not None:
        keep = rng.choice(len(valid), min(2000, len(valid)), replace=False)
        trained["valid_2000"] = evaluate(model, [valid["history"].iloc[i] for i in keep], valid["target"].to_numpy()[keep], ks=(10,))
    prompt = model.build_prompt(hist)
    hist_tokens = prompt.valid.sum(1).float()

    beams = [int(b) for b in args.beams.split(",")]
    modes = args.modes.split(",")
    rows = []
    for b in beams:
        ref = None
        for mode in modes:
            bans = hist if args.exclude_history else None
            run = lambda: beam_search(model, hist, model.trie, beam=b, cache=mode, batch_users=args.batch_users,  # noqa: E731
                                      exclude=bans)
            beam_search(model, hist[: min(2, len(hist))], model.trie, beam=b, cache=mode,
                        exclude=bans[:2] if bans else None)  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                res = run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            chk = check(res.items, res.scores, codes, model.trie)
            assert chk["existing_rate"] == 1.0 and chk["trie_consistent"], f"non-existing item in B={b} {mode}: {chk}"
            assert chk["unique_per_user"] and chk["sorted"], chk
            if bans is not None:
                leaked = sum(len(set(r.tolist()) & set(h)) for r, h in zip(res.items, hist))
                assert leaked == 0, f"{leaked} history items returned with --exclude-history (B={b} {mode})"
            if ref is None:
                ref = res
            same = float((res.items == ref.items).all(1).float().mean())
            row = {"beam": b, "cache": mode, "ms_per_user": 1000 * best / len(hist), "same_list_as_" + modes[0]: same,
                   "max_score_diff": float((res.scores - ref.scores).nan_to_num(0, 0, 0).abs().max()), **chk}
            rows.append(row)
            print(f"B={b:4d} {mode:7s} {row['ms_per_user']:9.2f} ms/user  same-as-{modes[0]}={same:.3f}  existing={chk['existing_rate']:.0%}", flush=True)

    table = {}
    for r in rows:
        table.setdefault(r["beam"], {})[r["cache"]] = r["ms_per_user"]
    print()
    head = f"| beam | " + " | ".join(f"{m} ms/user" for m in modes) + " | " + " | ".join(f"speedup {m}" for m in modes[1:]) + " |"
    print(head)
    print("|" + "---|" * (1 + len(modes) + len(modes) - 1))
    for b in beams:
        t = table[b]
        print(f"| {b} | " + " | ".join(f"{t[m]:.2f}" for m in modes) + " | " + " | ".join(f"{t[modes[0]] / t[m]:.1f}x" for m in modes[1:]) + " |")
    out = {
        "setup": {
            "codes": f"{args.profile} 05-sids table" if args.profile else "Scientific title codes (tests' helper)",
            "items": int(len(codes)), "levels": len(sizes), "codebook_sizes": sizes, "users": len(hist),
            "history_tokens_mean": float(hist_tokens.mean()), "history_tokens_max": int(hist_tokens.max()),
            "model": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "max_items": args.max_items,
                      "params": sum(p.numel() for p in model.parameters())},
            "history": f"random-padded to {args.history_len} items" if args.history_len else "real valid histories",
            "trained": trained, "exclude_history": args.exclude_history, "device": str(device), "threads": args.threads, "batch_users": args.batch_users,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
