"""Stage 09: the fine-tuned LLM on every SFT task and as a recommender, and one table of every model.

    python -m sidlib.llm.eval --profile ml100k [--set eval.users=200 ...]

What is measured (notebooks/09-eval.ipynb shows it):

- **per task**, on 06's valid conversations (`eval.per_task` of each task): when the answer is a
  SID, the hierarchical accuracy of the greedy answer — level-1 code right, first 2 codes, ...,
  the exact item — and exact@k of a constrained beam search (k = `eval.beam`); when the answer
  is text (sid_to_title, sid_to_category, prefix_to_category, ...), normalised exact match and
  token F1 of the greedy reply;
- **the valid-SID rate**: the share of free greedy replies to SID questions whose SIDs all name
  existing items, without and with the SidConstraint;
- **as a recommender**, on the test samples of `sidlib.split` (the baselines' users; a seeded
  sample of `eval.users` of them): 06's sequential prompt (`seq_last_N` phrasing, the last N
  history items; or, with `seq_history` trained, its question with the last `sft.history_window`
  items listed as the answer: `eval.rec_prompt`), constrained beam search with `eval.rec_beam` beams, items ranked by beam score,
  scored by `sidlib.metrics.evaluate_topk` (both slices) — and the same for the base model with
  the SID tokens added but untrained (`eval.floor`), the floor every number should clear.

How it decodes (one prefill per batch, beams over the LM's logits, the constraint on the reply
only): sidlib.llm.generate. A SID answer is scored with `<|sid_start|>` already placed after the
prompt (every SID answer of 06 starts with it), then exactly L code tokens under the item trie:
the codes measure what the model knows about the item. Whether it *chooses* to answer with a SID
is what the free replies (valid-SID rate) measure.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import config as config_mod
from .. import metrics, plots, stages, summary
from .. import split as splitlib
from ..baselines import load_ranks
from ..config import Config
from ..data.prep import Prepared
from ..device import resolve_device
from ..sids import SidTable
from . import sft_data
from .finetuned import load_finetuned
from .generate import Decoder, rec_prompt_mode
from .train import prepare_model

log = logging.getLogger("sidlib.llm.eval")

FINETUNED = "LLM (fine-tuned)"
FLOOR = "LLM before fine-tuning"
BASELINE_NAMES = {"popularity": "Popularity", "sasrec": "SASRec", "sid_sasrec": "SID-SASRec", "sid_gr": "SID-GR",
                  "popularity_llm_users": "Popularity (the LLM's users)"}
SAME_USERS = " (the LLM's users)"  # 07's models re-scored on the users the LLM ranks
TABLE_COLUMNS = ["ndcg@10", "hit@10", "mrr", "ndcg@10_cold", "hit@10_cold", "n_users", "n_cold", "ranking"]
# end-of-turn markers of the chat templates we know, besides the tokenizer's eos


# --------------------------------------------------------------------------- accuracy


def accuracy_keys(levels: int) -> list[str]:
    """Names of the hierarchical accuracies of a SID of `levels` codes (L tokenizer levels + the
    dedup level): level1, prefix2 .. prefixL, exact (all L+1 codes, i.e. the item)."""
    return ["level1" if k == 1 else f"prefix{k}" for k in range(1, levels)] + ["exact"]


def _answers(truth: Any) -> list[list[int]]:
    """One answer's codes, or several acceptable answers (similar_items lists 3 items)."""
    if len(truth) and isinstance(truth[0], (list, tuple, np.ndarray)):
        return [[int(c) for c in t] for t in truth]
    return [[int(c) for c in truth]]


def match_depth(pred: Sequence[int] | None, truth: Any) -> int:
    """Leading codes `pred` shares with the closest acceptable answer (0: no SID, or level 1 wrong)."""
    if pred is None:
        return 0
    best = 0
    for ans in _answers(truth):
        depth = 0
        for a, b in zip(pred, ans):
            if int(a) != int(b):
                break
            depth += 1
        best = max(best, depth)
    return best


def hierarchical(pred_codes: Sequence[Sequence[int] | None], true_codes: Sequence[Any]) -> dict[str, float]:
    """Mean hierarchical accuracy of predictions against answers.

    pred_codes: one SID's codes per sample, None when the reply held no (valid) SID.
    true_codes: the answer's codes per sample, or a list of acceptable answers' codes.
    Returns {level1, prefix2, .., prefixL, exact}: the share of samples whose prediction matches
    the first k codes (exact: every code, i.e. the same item)."""
    if len(pred_codes) != len(true_codes):
        raise ValueError(f"{len(pred_codes)} predictions for {len(true_codes)} answers")
    if not len(true_codes):
        return {}
    levels = len(_answers(true_codes[0])[0])
    depths = np.array([match_depth(p, t) for p, t in zip(pred_codes, true_codes)])
    return {key: float((depths >= k).mean()) for k, key in enumerate(accuracy_keys(levels), start=1)}


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, one space between words: "Toy Story (1995)" ==
    "toy story 1995"."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def token_f1(pred: str, ref: str) -> float:
    """Word-overlap F1 of the normalised texts (SQuAD's answer F1)."""
    p, r = normalize_text(pred).split(), normalize_text(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum(min(p.count(w), r.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- per task


CATALOG_TASK = "title_to_sid"  # the task that says whether the model knows the catalogue


def select_valid(valid_df: pd.DataFrame, per_task: int, catalog_items: int = 0) -> pd.DataFrame:
    """The first `per_task` valid conversations of each task (06 drew them at random), 0 = all;
    title_to_sid the first `catalog_items` (0 = per_task)."""
    if "task" not in valid_df.columns or "messages" not in valid_df.columns:
        raise ValueError(f"06 valid data needs columns task, messages (has {list(valid_df.columns)})")
    if not per_task and not catalog_items:
        return valid_df.reset_index(drop=True)
    rank = valid_df.groupby("task", sort=False).cumcount()
    cap = np.where(valid_df["task"] == CATALOG_TASK, catalog_items or per_task, per_task)
    cap = np.where(cap == 0, len(valid_df), cap)
    df = valid_df[rank.to_numpy() < cap]
    n_cat = int((df["task"] == CATALOG_TASK).sum())
    if catalog_items and n_cat < catalog_items and (valid_df["task"] == CATALOG_TASK).any():
        log.warning("eval.catalog_items=%d but 06 holds %d %s valid conversations: raise sft.valid_per_task",
                    catalog_items, n_cat, CATALOG_TASK)
    return df.reset_index(drop=True)



def task_accuracy(model: Any, tok: Any, table: SidTable, valid_df: pd.DataFrame, cfg: Config,
                  per_task: int | None = None, beam: int | None = None, progress: bool = True,
                  decoder: Decoder | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every task of 06's valid data: (one row per task, one row per conversation with replies).

    The reference is the conversation's last (assistant) message; a reference with SIDs makes a
    SID task (its SIDs are the acceptable answers), one without a text task."""
    dec = decoder or Decoder(model, tok, table, cfg.llm)
    per_task = cfg.eval.per_task if per_task is None else per_task
    beam = cfg.eval.beam if beam is None else beam
    df = select_valid(valid_df, per_task, cfg.eval.catalog_items)
    rows: list[dict[str, Any]] = []
    for r in df.itertuples():
        msgs = list(r.messages)
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"06 valid conversation of task {r.task} does not end with the assistant's answer")
        ref = msgs[-1]["content"]
        truths = [c for c in dec.codes_in(ref) if c is not None]
        rows.append({"task": r.task, "kind": "sid" if truths else "text", "prompt": msgs[:-1], "reference": ref,
                     "truths": truths, "prompt_ids": dec.prompt(msgs[:-1]),
                     "ref_tokens": len(tok(ref, add_special_tokens=False)["input_ids"]) + 1})
    order = np.argsort([len(r["prompt_ids"]) for r in rows], kind="stable")
    bs = cfg.eval.batch_size
    batches = [order[a: a + bs] for a in range(0, len(order), bs)]
    cap = cfg.eval.max_new_tokens
    codes, trie = table.codes, table.trie()
    for idx in tqdm(batches, desc="09 tasks", disable=not progress, mininterval=5.0):
        st = dec.prefill([rows[i]["prompt_ids"] for i in idx])
        sid_pos = [j for j, i in enumerate(idx) if rows[i]["kind"] == "sid"]
        text_pos = [j for j, i in enumerate(idx) if rows[i]["kind"] == "text"]
        # one free-reply pass: SID questions without and with the constraint, text questions with it.
        # Up to eval.max_new_tokens (not the reference's length): a reply may say a few words
        # before its SID, and cutting it there would count a good answer as invalid
        free_rows = sid_pos + sid_pos + text_pos
        flags = [False] * len(sid_pos) + [True] * (len(sid_pos) + len(text_pos))
        replies = dec.greedy(st, free_rows, cap, flags)
        free, free_c, text_replies = (replies[: len(sid_pos)], replies[len(sid_pos): 2 * len(sid_pos)],
                                      replies[2 * len(sid_pos):])
        if sid_pos:
            top1 = dec.beam(st, sid_pos, 1).items[:, 0].cpu().numpy()
            topk = dec.beam(st, sid_pos, beam).items.cpu().numpy()
            for n, j in enumerate(sid_pos):
                row = rows[idx[j]]
                truth_items = {trie.item_of(t) for t in row["truths"]} - {None}
                pred = codes[top1[n]].tolist() if top1[n] >= 0 else None
                row.update(greedy_item=int(top1[n]), depth=match_depth(pred, row["truths"]),
                           hit_at_k=bool(truth_items & set(topk[n].tolist())), topk=topk[n].tolist(),
                           reply=free_c[n], reply_unconstrained=free[n],
                           wellformed_unconstrained=dec.wellformed(free[n]),
                           valid_unconstrained=dec.valid(free[n]), valid_constrained=dec.valid(free_c[n]),
                           depth_unconstrained=match_depth(dec.first_item_codes(free[n]), row["truths"]))
        for n, j in enumerate(text_pos):
            row = rows[idx[j]]
            reply = text_replies[n]
            row.update(reply=reply, text_exact=normalize_text(reply) == normalize_text(row["reference"]),
                       f1=token_f1(reply, row["reference"]))
    detail = pd.DataFrame(rows).drop(columns=["prompt_ids"])
    return task_table(detail, table.scheme.levels, beam), detail


def task_table(detail: pd.DataFrame, levels: int, beam: int) -> pd.DataFrame:
    """One row per task from the per-conversation results."""
    keys = accuracy_keys(levels)
    out = []
    for task, g in detail.groupby("task", sort=False):
        row: dict[str, Any] = {"task": task, "kind": g["kind"].iat[0], "n": len(g)}
        if row["kind"] == "sid":
            depth = g["depth"].to_numpy()
            row.update({key: float((depth >= k).mean()) for k, key in enumerate(keys, start=1)})
            row[f"exact_at_{beam}"] = float(g["hit_at_k"].mean())
            row["exact_unconstrained"] = float((g["depth_unconstrained"].to_numpy() >= levels).mean())
            row["wellformed_unconstrained"] = float(g["wellformed_unconstrained"].mean())
            row["valid_unconstrained"] = float(g["valid_unconstrained"].mean())
            row["valid_constrained"] = float(g["valid_constrained"].mean())
        else:
            row.update(exact=float(g["text_exact"].mean()), f1=float(g["f1"].mean()))
        out.append(row)
    return pd.DataFrame(out).set_index("task")


# --------------------------------------------------------------------------- recommender


def recommend_topk(model: Any, tok: Any, table: SidTable, histories: Sequence[Sequence[int]], cfg: Config,
                   k: int | None = None, exclude_history: bool = False) -> np.ndarray:
    """[B, k] existing item ids per history, ranked by constrained beam score (-1 padding);
    exclude_history: none of them is in its history."""
    return Decoder(model, tok, table, cfg.llm).recommend(histories, cfg, k or cfg.eval.rec_beam,
                                                         exclude_history=exclude_history)


def test_samples(split: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The baselines' test samples (history = train + valid item) with a history to prompt with;
    a seeded sample of `eval.users` of them when set."""
    s = splitlib.samples(split, "test")
    s = s[s["history"].map(len) > 0].reset_index(drop=True)
    keep = splitlib.sample_rows(len(s), cfg.eval.users, cfg.seed)
    return s if keep is None else s.iloc[keep].reset_index(drop=True)


def evaluate_recommender(dec: Decoder, samples: pd.DataFrame, cfg: Config, train_counts: np.ndarray,
                         progress: bool = True) -> dict[str, Any]:
    """`metrics.evaluate_topk` of the LLM on the samples, with the baselines' protocol
    (history masking, cold threshold); adds the beam width and the time per user."""
    k = cfg.eval.rec_beam
    t0 = time.perf_counter()
    ban = cfg.baselines.exclude_history  # the beams skip the history, as SID-GR's (sidlib.models.beam)
    res = metrics.evaluate_topk(lambda h: dec.recommend(h, cfg, k, progress=progress, exclude_history=ban), samples,
                                batch_size=max(len(samples), 1), exclude_history=ban,
                                train_counts=train_counts, cold_threshold=cfg.baselines.cold_threshold)
    seconds = time.perf_counter() - t0
    res.update(beam=k, prompt=rec_prompt_mode(cfg), seconds=round(seconds, 1),
               ms_per_user=round(1000 * seconds / max(len(samples), 1), 1))
    return res


def popularity_on(samples: pd.DataFrame, train_counts: np.ndarray, cfg: Config) -> dict[str, Any]:
    """The popularity baseline on these samples, with 07's protocol, in the summary layout."""
    res = metrics.evaluate_model(metrics.popularity_score_fn(train_counts), samples, len(train_counts),
                                 exclude_history=cfg.baselines.exclude_history, train_counts=train_counts,
                                 cold_threshold=cfg.baselines.cold_threshold)
    return {"ndcg@10": res["all"]["ndcg@10"], "hit@10": res["all"]["hit@10"], "mrr": res["all"]["mrr"],
            "ndcg@10_cold": res["cold"].get("ndcg@10"), "hit@10_cold": res["cold"].get("hit@10"),
            "n_users": res["n_users"], "n_cold": res["n_cold"]}


def baselines_on(cfg: Config, samples: pd.DataFrame, train_counts: np.ndarray,
                 entries: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """07's sequential models on exactly these users, from the per-user test ranks 07 saved
    (none before 07 ran with them): rows named "<model> (the LLM's users)". `entries`: 07's
    summary metrics, whose `beam` a row keeps (SID-GR's ranks are beams, not a full ranking)."""
    ranks = load_ranks(cfg.profile)
    if ranks is None:
        log.info("07-baselines saved no per-user ranks: its rows are over all its users only")
        return {}
    out = {}
    for name, g in ranks.groupby("model", sort=False):
        if name == "popularity":
            continue  # popularity_on scores it directly
        try:
            res = metrics.on_users(g, samples, train_counts, cfg.baselines.cold_threshold)
        except ValueError as e:
            log.warning("07's %s ranks do not cover the LLM's users (%s): row left out", name, e)
            continue
        out[BASELINE_NAMES.get(name, name) + SAME_USERS] = {
            "ndcg@10": res["all"]["ndcg@10"], "hit@10": res["all"]["hit@10"], "mrr": res["all"]["mrr"],
            "ndcg@10_cold": res["cold"].get("ndcg@10"), "hit@10_cold": res["cold"].get("hit@10"),
            "n_users": res["n_users"], "n_cold": res["n_cold"], "beam": (entries or {}).get(name, {}).get("beam")}
    return out


# --------------------------------------------------------------------------- the table


def _row(name: str, m: Mapping[str, Any], ranking: str) -> dict[str, Any]:
    return {"model": name, "ndcg@10": m.get("ndcg@10"), "hit@10": m.get("hit@10"), "mrr": m.get("mrr"),
            "ndcg@10_cold": m.get("ndcg@10_cold"), "hit@10_cold": m.get("hit@10_cold"),
            "n_users": m.get("n_users"), "n_cold": m.get("n_cold"), "ranking": ranking}


def rec_summary(res: Mapping[str, Any]) -> dict[str, Any]:
    """An `evaluate_topk` result in the baselines' summary.json layout."""
    return {"ndcg@10": res["all"].get("ndcg@10"), "hit@10": res["all"].get("hit@10"), "mrr": res["all"].get("mrr"),
            "ndcg@10_cold": res["cold"].get("ndcg@10"), "hit@10_cold": res["cold"].get("hit@10"),
            "n_users": res["n_users"], "n_cold": res["n_cold"], "beam": res.get("beam"),
            "ms_per_user": res.get("ms_per_user"), "prompt": res.get("prompt")}


def comparison_table(baselines: Mapping[str, Mapping[str, Any]], llms: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Every model on one table: the baselines' summary entries (07) and the LLMs' `rec_summary`
    rows. `ranking` says what a row's MRR means: full ranking over all items, or a list of k
    beams (MRR@k, a lower bound); `n_users` how many test users the row was measured on."""
    rows = []
    for key, m in baselines.items():
        ranking = f"top-{m['beam']} beams" if m.get("beam") else "full ranking"
        rows.append(_row(BASELINE_NAMES.get(key, key), m, ranking))
    for name, m in llms.items():
        how = ", continuing the history list" if m.get("prompt") == "history" else ""
        rows.append(_row(name, m, f"top-{m.get('beam')} beams{how}"))
    return pd.DataFrame(rows, columns=["model", *TABLE_COLUMNS]).set_index("model")


# --------------------------------------------------------------------------- models
def load_floor(cfg: Config, table: SidTable) -> tuple[Any, Any]:
    """The base model before fine-tuning: SID tokens added and initialised as 08 does
    (finetune.init), no training step — what the SID vocabulary alone gives."""
    device = resolve_device(cfg.llm.device)
    model, tok, _info = prepare_model(cfg, table, "cpu", "sdpa")
    return model.to(device).eval(), tok


# --------------------------------------------------------------------------- the stage


@dataclass
class EvalOutputs:
    """What `run` measured and wrote to artifacts/<profile>/09-eval/."""

    out: Path
    metrics: dict[str, Any]  # the summary.json "eval" entry
    tasks: pd.DataFrame  # one row per task
    detail: pd.DataFrame  # one row per evaluated conversation, replies included
    comparison: pd.DataFrame  # every model
    plots: dict[str, Path]


def _baseline_metrics(profile: str) -> dict[str, dict[str, Any]]:
    entry = summary.load(profile)["stages"].get("baselines") or {}
    found = entry.get("metrics") or {}
    if not found:
        log.warning("no 07-baselines metrics in summary.json of %s: the table holds the LLMs only", profile)
    return found


def plot_tasks(tasks: pd.DataFrame, levels: int, beam: int, path: Path) -> Path:
    cols = [*accuracy_keys(levels), f"exact_at_{beam}"]
    sid = tasks[tasks["kind"] == "sid"]
    frame = sid[cols] if len(sid) else pd.DataFrame({c: [0.0] for c in cols}, index=["(no SID task)"])
    return plots.bars(frame, path, title="SID answers: hierarchical accuracy (greedy) and exact@k (beams)")


def run(cfg: Config, model_dir: str = "", progress: bool = True) -> EvalOutputs:
    """Stage 09 of a profile (notebook 09 and the CLI): read 01, 05, 06, 07's summary and the 08
    model, measure, write tasks.csv, predictions.jsonl, comparison.csv, eval_report.json, plots."""
    t0 = time.perf_counter()
    out = stages.EVAL.dir(cfg.profile, create=True)
    split = Prepared.load(stages.PREP.dir(cfg.profile)).split
    _train, valid = sft_data.load(stages.SFT_DATA.dir(cfg.profile))
    sids05 = SidTable.load(stages.SIDS.dir(cfg.profile))
    model, tok, table, where = load_finetuned(cfg, model_dir)
    if not np.array_equal(table.codes, sids05.codes):
        raise ValueError(f"the SID table of {where} differs from 05-sids of {cfg.profile}: the model was "
                         "trained on other SIDs (rerun 08-finetune)")
    dec = Decoder(model, tok, table, cfg.llm)
    tasks, detail = task_accuracy(model, tok, table, valid, cfg, progress=progress, decoder=dec)
    samples = test_samples(split, cfg)
    counts = splitlib.item_train_counts(split, len(table))
    recs = {FINETUNED: evaluate_recommender(dec, samples, cfg, counts, progress)}
    del dec, model
    if cfg.eval.floor:
        fmodel, ftok = load_floor(cfg, table)
        recs[FLOOR] = evaluate_recommender(Decoder(fmodel, ftok, table, cfg.llm), samples, cfg, counts, progress)
        del fmodel
    llm_rows = {name: rec_summary(r) for name, r in recs.items()}
    # the LLM ranks a sample of the test users: popularity on exactly those users is the bar it
    # must clear (07's rows are over every user; their n_users column says so)
    pop = popularity_on(samples, counts, cfg)
    base = _baseline_metrics(cfg.profile)
    same = baselines_on(cfg, samples, counts, base)
    comparison = comparison_table({**base, "popularity_llm_users": pop, **same}, llm_rows)
    levels, beam = table.scheme.levels, cfg.eval.beam
    sid_rows = detail[detail["kind"] == "sid"]
    llm = {"tasks": {t: {k: v for k, v in row.items() if k != "kind" and pd.notna(v)}
                     for t, row in tasks.to_dict("index").items()},
           "wellformed_rate_unconstrained": float(sid_rows["wellformed_unconstrained"].mean()) if len(sid_rows) else None,
           "valid_rate_unconstrained": float(sid_rows["valid_unconstrained"].mean()) if len(sid_rows) else None,
           "valid_rate_constrained": float(sid_rows["valid_constrained"].mean()) if len(sid_rows) else None,
           **llm_rows[FINETUNED],
           "popularity_ndcg@10_same_users": pop["ndcg@10"],
           "same_users_ndcg@10": {**{k.removesuffix(SAME_USERS): v["ndcg@10"] for k, v in same.items()},
                                  "popularity": pop["ndcg@10"]}}
    plot_paths = {
        "comparison": plots.bars(comparison[["ndcg@10", "hit@10", "ndcg@10_cold", "hit@10_cold"]].fillna(0.0),
                                 out / "comparison.png", title=f"{cfg.profile}: test users (n per row in the table)"),
        "tasks": plot_tasks(tasks, levels, beam, out / "tasks.png"),
    }
    result = {"llm": llm, "floor": llm_rows.get(FLOOR), "table": comparison.reset_index().to_dict("records"),
              "model_dir": where, "per_task": cfg.eval.per_task, "users": int(len(samples)),
              "seconds": round(time.perf_counter() - t0, 1)}
    tasks.to_csv(out / "tasks.csv")
    comparison.to_csv(out / "comparison.csv")
    detail.to_json(out / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
    (out / "eval_report.json").write_text(json.dumps(summary.jsonable(
        {**result, "recommender": {n: {k: v for k, v in r.items() if k != "ranks"} for n, r in recs.items()}}),
        indent=1))
    return EvalOutputs(out, summary.jsonable(result), tasks, detail, comparison, plot_paths)


def main(argv: list[str] | None = None) -> int:
    ap = config_mod.cli_parser("python -m sidlib.llm.eval", __doc__.split("\n")[0])
    ap.add_argument("--model-dir", default="", help="an HF folder or hub id (default: the profile's 08 model)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_mod.from_cli(args)
    res = run(cfg, args.model_dir)
    summary.record(cfg, "eval", res.metrics, plots=list(res.plots.values()))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(res.tasks.round(3).to_string())
        print(res.comparison.round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
