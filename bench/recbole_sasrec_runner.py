"""RecBole 1.2.1 side of `bench/recbole_sasrec.py`: train and evaluate RecBole's SASRec on
atomic files written by that script, and write one result JSON.

    .venv-recbole/bin/python bench/recbole_sasrec_runner.py JOB.json

Runs in the separate `.venv-recbole` venv (RecBole 1.2.1 pins old numpy / ray), so it must
not import sidlib. JOB.json holds {"data_path", "dataset", "params" (RecBole config dict),
"threads", "mask_history", "out"}; the job is a file rather than `--key value` options because
RecBole's Config parses every `--key=value` on sys.argv as a config override.

Why a SASRec subclass: RecBole's full-sort evaluation masks the user's history only for
general models; for sequential models `FullSortEvalDataLoader` passes no history index, so
only the padding item is masked. sidlib's `exclude_history=true` protocol removes every item
of the user's history (train prefix, + the valid item at test time) from the candidates, the
target excepted. `HistoryMaskedSASRec.full_sort_predict` applies exactly that mask; with
mask_history off it is RecBole's stock SASRec. Training is untouched.

Autograd anomaly detection: RecBole 1.2.1's `recbole/model/sequential_recommender/sine.py`
calls `torch.autograd.set_detect_anomaly(True)` at module level, so importing any sequential
model (SASRec included) switches it on for the whole process. It is a debugging aid that
makes every backward op check for NaN and record stack traces: on this 2-core CPU a SASRec
epoch on ML-100K took ~750 s with it instead of tens of seconds. The runner switches it off
again after the imports (job key "anomaly_detection": true keeps RecBole's stock behaviour)
and reports what the import had set.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

JOB_KEYS = ("data_path", "dataset", "params", "threads", "mask_history", "out")
# optional: "anomaly_detection" (bool), "time_limit_s" (stop training after the first validation past it; 0 = none)


class TimeLimit(Exception):
    """Raised from the epoch callback to leave RecBole's fit loop when the time budget is spent."""


def load_job(path: str) -> dict[str, Any]:
    job = json.loads(Path(path).read_text())
    missing = [k for k in JOB_KEYS if k not in job]
    if missing:
        raise SystemExit(f"{path}: job file lacks {missing}")
    return job


def history_mask(dataset: Any) -> torch.Tensor:
    """bool [user_num, item_num]: every item of a user except the chronologically last (test) one.

    Call it before `data_preparation`: `dataset.build()` turns inter_feat into RecBole's
    augmented rows (one per prefix and next item, so a user's first item is no row's target
    any more); before that it is one row per interaction, ids already remapped to RecBole's
    internal ones. A valid sample's target is in the mask and is un-masked per row at scoring
    time; the test target never is in it.
    """
    feat = dataset.inter_feat
    if not hasattr(feat, "to_numpy") or dataset.iid_field + dataset.config["LIST_SUFFIX"] in feat:
        raise RuntimeError("history_mask needs the interactions before dataset.build() (call it before data_preparation)")
    uid = feat[dataset.uid_field].to_numpy()
    iid = feat[dataset.iid_field].to_numpy()
    ts = feat[dataset.time_field].to_numpy()
    order = np.lexsort((ts, uid))
    uid, iid = uid[order], iid[order]
    last = np.r_[uid[1:] != uid[:-1], True]  # the last row of each user = the test item
    mask = torch.zeros(dataset.user_num, dataset.item_num, dtype=torch.bool)
    mask[torch.from_numpy(uid[~last]), torch.from_numpy(iid[~last])] = True
    return mask


def make_model_class(base: type) -> type:
    class HistoryMaskedSASRec(base):  # type: ignore[misc, valid-type]
        """RecBole's SASRec; full-sort scores of history items (target excepted) set to -inf."""

        mask: torch.Tensor | None = None  # plain attribute: not a buffer, not in the state_dict

        def full_sort_predict(self, interaction: Any) -> torch.Tensor:
            scores = super().full_sort_predict(interaction)
            if self.mask is None:
                return scores
            rows = self.mask[interaction[self.USER_ID].cpu()].clone()
            rows[torch.arange(len(rows)), interaction[self.POS_ITEM_ID].cpu()] = False
            return scores.masked_fill(rows.to(scores.device), float("-inf"))

    return HistoryMaskedSASRec


def eval_samples(loader: Any) -> list[dict[str, Any]]:
    """The samples an eval loader scores, as original tokens: user, target, history (<= max_len)."""
    ds = loader._dataset
    feat = ds.inter_feat
    users = ds.id2token(ds.uid_field, feat[ds.uid_field].numpy())
    targets = ds.id2token(ds.iid_field, feat[ds.iid_field].numpy())
    lists = feat[ds.iid_field + ds.config["LIST_SUFFIX"]].numpy()
    lengths = feat[ds.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    return [
        {"user": str(u), "target": str(t), "history": [str(x) for x in ds.id2token(ds.iid_field, row[:n])]}
        for u, t, row, n in zip(users, targets, lists, lengths)
    ]


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    job = load_job(sys.argv[1])
    sys.argv = sys.argv[:1]  # keep RecBole's Config from reading our arguments
    torch.set_num_threads(int(job["threads"]))

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    anomaly_at_import = torch.is_anomaly_enabled()  # True: sine.py's module-level switch
    torch.autograd.set_detect_anomaly(bool(job.get("anomaly_detection", False)))

    params = dict(job["params"], data_path=job["data_path"])
    config = Config(model="SASRec", dataset=job["dataset"], config_dict=params)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    mask = history_mask(dataset) if job["mask_history"] else None  # before build() augments inter_feat
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = make_model_class(SASRec)(config, train_data.dataset).to(config["device"])
    model.mask = mask
    trainer = Trainer(config, model)

    # time the training epochs and the per-epoch validations separately (RecBole's own log
    # mixes them), and keep the best weights in memory as sidlib's fit does
    clock = {"train": 0.0, "valid": 0.0}
    epochs: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        loss = train_epoch(*a, **k)
        clock["train"] += time.perf_counter() - t0
        epochs.append({"epoch": len(epochs) + 1, "loss": float(loss)})
        return loss

    def timed_valid(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        score, result = valid_epoch(*a, **k)
        clock["valid"] += time.perf_counter() - t0
        epochs[-1].update(score=float(score), **{k2: float(v) for k2, v in result.items()})
        print(f"recbole epoch {len(epochs):3d}  loss {epochs[-1]['loss']:.4f}  valid ndcg@10 {score:.4f}", flush=True)
        return score, result

    limit = float(job.get("time_limit_s") or 0)

    def keep_best(epoch_idx: int, score: float) -> None:
        if trainer.cur_step == 0:  # RecBole's early_stopping just took this epoch as the best
            best.update(epoch=epoch_idx + 1, score=float(score), state=copy.deepcopy(model.state_dict()))
        if limit and time.perf_counter() - t0 > limit:
            raise TimeLimit

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    stopped_by_time_limit = False
    t0 = time.perf_counter()
    try:
        trainer.fit(train_data, valid_data, saved=False, show_progress=False, verbose=False, callback_fn=keep_best)
    except TimeLimit:
        stopped_by_time_limit = True
        print(f"recbole: time limit {limit:.0f} s reached after epoch {len(epochs)}", flush=True)
    fit_seconds = time.perf_counter() - t0
    if not best:
        raise SystemExit("RecBole ran no validation: no best model to evaluate")
    model.load_state_dict(best["state"])
    torch.save(best["state"], "recbole_best_state.pt")  # in the working folder: to re-evaluate without retraining

    results: dict[str, Any] = {}
    for protocol, m in (("masked", mask), ("unmasked", None)):
        if protocol == "masked" and m is None:
            continue
        model.mask = m
        for which, loader in (("valid", valid_data), ("test", test_data)):
            t1 = time.perf_counter()
            res = trainer.evaluate(loader, load_best_model=False, show_progress=False)
            results.setdefault(protocol, {})[which] = {
                **{k: float(v) for k, v in res.items()}, "seconds": time.perf_counter() - t1}

    out = {
        "recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "anomaly_detection_at_import": anomaly_at_import, "anomaly_detection": torch.is_anomaly_enabled(),
        "n_users": int(dataset.user_num - 1), "n_items": int(dataset.item_num - 1),
        "n_inter": int(len(dataset.inter_feat)),  # after RecBole's augmentation: one row per (prefix, next item)
        "mask_items": int(mask.sum()) if mask is not None else None,  # history items masked, all users
        "n_train_samples": int(len(train_data.dataset)), "n_train_batches": int(len(train_data)),
        "train_seconds": clock["train"], "eval_seconds": clock["valid"], "fit_seconds": fit_seconds,
        "stopped_by_time_limit": stopped_by_time_limit, "stopped_early": len(epochs) < config["epochs"] and not stopped_by_time_limit,
        "epochs_run": len(epochs), "best_epoch": best["epoch"], "best_score": best["score"],
        "epochs": epochs, "results": results,
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "samples": {"valid": eval_samples(valid_data), "test": eval_samples(test_data)},
    }
    Path(job["out"]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
