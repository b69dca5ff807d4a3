"""06-sft-data: multi-task chat conversations that teach the LLM to read and write SIDs.

The tasks (one module per family) are in sidlib.llm.tasks; this module fits each drafted
conversation to llm.max_length, builds the train/valid frames and their report, reads and writes
the stage folder.

Several phrasings (templates) per task; the template index is kept in the `template` column.
Everything is drawn from numpy generators seeded by (seed, task, part): the same settings give
the same data, and adding a task does not change the others.

No leakage (sidlib.split is THE split, leave-one-out: test = last, valid = second to last):
- sequential, rec and co-purchase *training* samples use only each user's training part
  (`split.train`): targets and histories never contain a user's valid or test item (for the
  dataset's official split the training part may repeat an item bought again later: a real
  earlier purchase, kept);
- co-purchase edges: consecutive items of the training parts (prep's "sequence" pairs, which are
  built from the training parts only; the direction comes from the same training parts) plus the
  catalog's also_buy / bought_together pairs when `sft.metadata_pairs` (catalog facts, not user
  events);
- the valid split's user samples target each user's valid item with the training part as
  history; the test item is never used. Item-level valid samples reuse catalog items that also
  appear in training: they measure fit, not generalization. Valid stays small
  (`sft.valid_per_task` per task).

Sequential sample count: every (user, position) window of the training part is a candidate;
each user's last window (the seed's "last N of each training prefix") comes first, the rest in
random order, and `sft.max_per_task` caps the total. The same rule picks rec_steering positions.

Length: each sample is encoded with `chat.encode` (what 08 trains on). One longer than
`llm.max_length` loses history items from the oldest side (re-rendered, so a SID is never cut)
and is counted `truncated`; if it still does not fit, its free text (a description, a feature
list) is cut on a word boundary (`shortened`); a sample that cannot fit at all is skipped with a
counted, logged reason.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .. import plots, stages
from ..config import Config
from ..data.prep import Prepared
from ..data.schema import DataError
from ..plots import plt
from ..sids import SidTable
from . import chat, vocab
from .base import load_tokenizer
from .tasks import drafts_for
from .tasks.common import Catalog, Context, Draft, Inputs, Tally, check_inputs, make_catalog
from .tasks.names import HISTORY, TASKS, family, selected_tasks

log = logging.getLogger("sidlib.llm.sft_data")

OUTPUT_FILES = {"train": "train.parquet", "valid": "valid.parquet", "report": "sft_report.json",
                "plot": "token_lengths.png"}


def load_inputs(cfg: Config) -> Inputs:
    """Read 01-prep, 02-clean and 05-sids of the profile (errors name the file to rebuild)."""
    prep_dir = stages.PREP.dir(cfg.profile)
    clean_path = stages.CLEAN.dir(cfg.profile) / "items.parquet"
    sid_dir = stages.SIDS.dir(cfg.profile)
    prepared = Prepared.load(prep_dir)
    if not clean_path.exists():
        raise DataError(f"{clean_path}: not found; run 02-clean first")
    items = pd.read_parquet(clean_path)
    inputs = Inputs(items=items, split=prepared.split, pairs=prepared.pairs, table=SidTable.load(sid_dir),
                    source=cfg.data.source)
    check_inputs(inputs, where=f"{clean_path} / {prep_dir} / {sid_dir}")
    return inputs


# ------------------------------------------------------------------------------- length


@dataclass
class Fitted:
    messages: list[dict[str, str]]
    n_tokens: int
    history: list[int]
    truncated: bool
    shortened: bool
    turns: int = 1  # assistant turns kept (a seq_session may lose its last ones)


def _n_tokens(tokenizer: Any, messages: list[dict[str, str]], cfg: Config) -> int:
    return len(chat.encode(tokenizer, messages, cfg.llm)["input_ids"])


def fit(draft: Draft, tokenizer: Any, catalog: Catalog, cfg: Config, tokens_per_item: int) -> Fitted | str:
    """Encode with chat.encode; too long -> drop history items from the oldest side (whole SIDs:
    the prompt is re-rendered), then cut the free text on a word boundary; still too long ->
    the reason it is skipped."""
    limit, system = cfg.llm.max_length, cfg.sft.system_prompt
    hist, text, follow = list(draft.history), draft.text, list(draft.follow)
    msgs = draft.messages(system, catalog, hist, text)
    n = _n_tokens(tokenizer, msgs, cfg)
    truncated = shortened = False
    while n > limit and follow:  # a session loses its last turns first: the history is the question
        follow = follow[: max(0, len(follow) - max(1, math.ceil((n - limit) / (tokens_per_item + 10))))]
        msgs = draft.messages(system, catalog, hist, text, follow)
        n = _n_tokens(tokenizer, msgs, cfg)
        truncated = True
    while n > limit and len(hist) > draft.min_history:
        # drop as many items as the excess needs at once (each item is its SID plus ", "), then re-check
        drop = min(len(hist) - draft.min_history, max(1, math.ceil((n - limit) / tokens_per_item)))
        hist = hist[drop:]
        msgs = draft.messages(system, catalog, hist, text, follow)
        n = _n_tokens(tokenizer, msgs, cfg)
        truncated = True
    if n > limit and text:
        words = text.split(" ")
        lo, hi = 0, len(words)  # largest word count that fits: binary search over prefixes
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _n_tokens(tokenizer, draft.messages(system, catalog, hist, " ".join(words[:mid]), follow), cfg) <= limit:
                lo = mid
            else:
                hi = mid - 1
        if lo > 0:
            text = " ".join(words[:lo])
            msgs = draft.messages(system, catalog, hist, text, follow)
            n = _n_tokens(tokenizer, msgs, cfg)
            shortened = True
    if n > limit:
        return f"longer than llm.max_length={limit} even with the shortest history and text"
    return Fitted(msgs, n, hist, truncated, shortened, 1 + len(follow))


# ------------------------------------------------------------------------------- build


@dataclass
class SftData:
    train: pd.DataFrame
    valid: pd.DataFrame
    report: dict[str, Any]

    def counts(self) -> pd.DataFrame:
        """One row per task: samples, skips, truncations, phrasings, token stats."""
        rows = []
        for task, r in self.report["tasks"].items():
            rows.append({"task": task, "family": family(task), "train": r["train"], "valid": r["valid"],
                         "candidates": r["candidates"], "skipped": sum(r["skipped"].values()),
                         "truncated": r["truncated"], "shortened": r["shortened"], "phrasings": r["phrasings"],
                         "tokens_mean": r["tokens_mean"], "tokens_max": r["tokens_max"]})
        return pd.DataFrame(rows).set_index("task")

    def metrics(self) -> dict[str, Any]:
        tasks = self.report["tasks"]
        tok = self.report["tokens"]
        return {
            "samples": {t: r["train"] for t, r in tasks.items()},
            "valid_samples": {t: r["valid"] for t, r in tasks.items()},
            "tokens_mean": tok["mean"], "tokens_p95": tok["p95"], "tokens_max": tok["max"],
            "train": int(len(self.train)), "valid": int(len(self.valid)),
            "truncated": int(sum(r["truncated"] for r in tasks.values())),
            "shortened": int(sum(r["shortened"] for r in tasks.values())),
            "too_long": int(sum(r["too_long"] for r in tasks.values())),
            "max_length": self.report["max_length"],
        }

    def save(self, folder: Path | str) -> dict[str, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {k: folder / v for k, v in OUTPUT_FILES.items()}
        _write_frame(self.train, out["train"])
        _write_frame(self.valid, out["valid"])
        out["report"].write_text(json.dumps(self.report, indent=2) + "\n")
        plot_token_lengths(self.train, out["plot"], self.report["max_length"])
        return out


def tokenizer_for(cfg: Config, table: SidTable, check: int = 32) -> Any:
    """The base model's tokenizer with the SID tokens added (as 08 adds them), checked on `check`
    SIDs spread over the table: every SID must encode to exactly its own tokens."""
    tok = load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(tok, table.scheme)
    sids = table.df["sid"].astype(str).tolist()
    step = max(1, len(sids) // max(1, check))
    vocab.check_sid_tokenization(tok, table.scheme, sids[::step][:check])
    return tok


def build(inputs: Inputs, tokenizer: Any, cfg: Config, progress: bool = True) -> SftData:
    """Every selected task's train and valid samples, fitted to llm.max_length.

    `tokenizer` must already hold the SID tokens (tokenizer_for). Returns DataFrames with
    columns task, template, messages, target_item, answer_items, context_items, user_id,
    n_tokens, truncated, shortened; train rows shuffled with the seed (08 samples from them)."""
    check_inputs(inputs)
    sft = cfg.sft
    tasks = selected_tasks(sft)
    levels = inputs.table.scheme.levels
    if not 1 <= sft.similar_prefix < levels:
        raise ValueError(f"sft.similar_prefix={sft.similar_prefix}: expected 1..{levels - 1} (SIDs have {levels} codes)")
    if sft.copurchase_per_item < 1:
        raise ValueError(f"sft.copurchase_per_item={sft.copurchase_per_item}: expected >= 1")
    catalog = make_catalog(inputs, sft.item_noun)
    ctx = Context(catalog, inputs, sft, Tally())
    # a history item costs its SID's tokens plus the ", " between items
    tokens_per_item = levels + 2 + 2
    frames: dict[str, list[dict[str, Any]]] = {"train": [], "valid": []}
    for part in ("train", "valid"):
        drafts = [d for task in tasks for d in drafts_for(ctx, task, part, cfg.seed)]
        for d in tqdm(drafts, desc=f"06 encode {part}", disable=not progress, mininterval=5.0):
            f = fit(d, tokenizer, catalog, cfg, tokens_per_item)
            if isinstance(f, str):
                ctx.tally.skip(d.task, part, f)
                ctx.tally.add(d.task, part, "too_long")
                continue
            ctx.tally.add(d.task, part, "truncated", int(f.truncated))
            ctx.tally.add(d.task, part, "shortened", int(f.shortened))
            if d.task == HISTORY:  # the list is the answer: what fit kept of it
                answer, context = f.history, d.context
            else:
                answer, context = d.answer_items[: f.turns] if d.follow else d.answer_items, d.context + f.history
            frames[part].append({
                "task": d.task, "template": d.template, "messages": f.messages, "target_item": d.target_item,
                "answer_items": list(map(int, answer)), "context_items": list(map(int, context)),
                "user_id": d.user_id, "n_tokens": f.n_tokens, "truncated": f.truncated, "shortened": f.shortened,
            })
    for (task, part), reasons in ctx.tally.skipped.items():
        for reason, c in reasons.items():
            if reason.startswith("longer"):
                log.warning("06: %d %s sample(s) of %s skipped: %s", c, part, task, reason)
    train = _frame(frames["train"]).sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True)
    valid = _frame(frames["valid"])
    return SftData(train, valid, _report(tasks, train, valid, ctx.tally, cfg))


COLUMNS = ["task", "template", "messages", "target_item", "answer_items", "context_items", "user_id", "n_tokens",
           "truncated", "shortened"]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"template": np.int64, "target_item": np.int64, "user_id": np.int64, "n_tokens": np.int64,
                      "truncated": bool, "shortened": bool})


def _stats(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    return {"mean": round(float(x.mean()), 1), "p50": float(np.percentile(x, 50)),
            "p95": float(np.percentile(x, 95)), "max": int(x.max())}


def _report(tasks: list[str], train: pd.DataFrame, valid: pd.DataFrame, tally: Tally, cfg: Config) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for task in tasks:
        tr, va = train[train["task"] == task], valid[valid["task"] == task]
        n = tr["n_tokens"].to_numpy()
        per[task] = {
            "family": family(task), "train": int(len(tr)), "valid": int(len(va)),
            "candidates": tally.get(task, "train", "candidates"),
            "skipped": dict(tally.skipped.get((task, "train"), Counter())),
            "valid_skipped": dict(tally.skipped.get((task, "valid"), Counter())),
            "truncated": tally.get(task, "train", "truncated") + tally.get(task, "valid", "truncated"),
            "shortened": tally.get(task, "train", "shortened") + tally.get(task, "valid", "shortened"),
            "too_long": tally.get(task, "train", "too_long") + tally.get(task, "valid", "too_long"),
            "phrasings": int(tr["template"].nunique()) if len(tr) else 0,
            "tokens_mean": round(float(n.mean()), 1) if len(n) else 0.0,
            "tokens_max": int(n.max()) if len(n) else 0,
        }
        if not len(tr):
            log.warning("06: task %s has no training samples (%s)", task, per[task]["skipped"] or "no candidates")
    return {"tasks": per, "tokens": _stats(train["n_tokens"].to_numpy()),
            "valid_tokens": _stats(valid["n_tokens"].to_numpy()), "train": int(len(train)), "valid": int(len(valid)),
            "max_length": cfg.llm.max_length, "model": cfg.llm.model, "seed": cfg.seed,
            "settings": {k: v for k, v in vars(cfg.sft).items()}}


# ------------------------------------------------------------------------------- files

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema([
    ("task", pa.string()), ("template", pa.int64()), ("messages", MESSAGE_TYPE), ("target_item", pa.int64()),
    ("answer_items", pa.list_(pa.int64())), ("context_items", pa.list_(pa.int64())), ("user_id", pa.int64()),
    ("n_tokens", pa.int64()), ("truncated", pa.bool_()), ("shortened", pa.bool_()),
])


def _write_frame(df: pd.DataFrame, path: Path) -> None:
    arrays = [pa.array([list(v) if f.name in ("messages", "answer_items", "context_items") else v
                        for v in df[f.name].tolist()], type=f.type) for f in SCHEMA]
    pq.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA), path)


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: not found; run 06-sft-data first")
    table = pq.read_table(path)
    missing = [n for n in ("task", "messages") if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: not an SFT data file, no column(s) {missing} (columns: {table.column_names})")
    # to_pylist keeps messages as python lists of {"role", "content"} dicts
    return pd.DataFrame({name: table.column(name).to_pylist() for name in table.column_names})


def load(folder: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) of a 06 folder; `messages` are python lists of {"role", "content"}."""
    folder = Path(folder)
    return _read_frame(folder / OUTPUT_FILES["train"]), _read_frame(folder / OUTPUT_FILES["valid"])


# ------------------------------------------------------------------------------- looking at it


def examples(df: pd.DataFrame) -> dict[str, list[dict[str, str]]]:
    """The first conversation of each task (rows are shuffled: a random one), in task order."""
    first = df.drop_duplicates("task")
    order = {t: i for i, t in enumerate(TASKS)}
    rows = sorted(first.itertuples(), key=lambda r: (order.get(r.task, len(order)), r.task))
    return {r.task: list(r.messages) for r in rows}


def plot_token_lengths(df: pd.DataFrame, path: Path | str, max_length: int) -> Path:
    """Token-length histogram per task family, with the llm.max_length line."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    fam = df["task"].map(family)
    hi = max(int(df["n_tokens"].max()) if len(df) else 1, 1)
    edges = np.linspace(0, hi + 1, 51)
    for name in sorted(fam.unique()):
        v = df.loc[fam == name, "n_tokens"].to_numpy()
        ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (n={len(v):,}, median {np.median(v):.0f})")
    if max_length <= hi * 1.5:
        ax.axvline(max_length, color="k", linestyle="--", linewidth=1, label=f"llm.max_length = {max_length}")
    ax.set_xlabel("tokens per conversation (chat template included)")
    ax.set_ylabel("training samples")
    ax.legend(fontsize=7)
    return plots.save(fig, path)


def sids_in(text: str, scheme: Any) -> list[list[int] | None]:
    """Codes of every SID block in a message (None for a malformed or open one)."""
    return [codes for _span, codes in scheme.find_all(text)]


# --------------------------------------------------------------------------- stage 06


@dataclass
class SftOutputs:
    """What stage 06 read and wrote (artifacts/<profile>/06-sft-data/)."""

    out: Path
    inputs: Inputs
    tokenizer: Any  # the base tokenizer + the SID tokens
    data: SftData
    files: dict[str, Path]  # train, valid, report, plot
    metrics: dict[str, Any]


def run(cfg: Config, progress: bool = True) -> SftOutputs:
    """Stage 06 (notebook 06): 01, 02 and 05 -> every selected task's train and valid conversations."""
    inputs = load_inputs(cfg)
    tok = tokenizer_for(cfg, inputs.table)  # + the SID tokens, checked on a spread of SIDs
    data = build(inputs, tok, cfg, progress=progress)
    out = stages.SFT_DATA.dir(cfg.profile, create=True)
    return SftOutputs(out, inputs, tok, data, data.save(out), data.metrics())
