"""Sequential recommenders that report through `sidlib.metrics`.

* `sasrec`     — SASRec on item IDs (bce / ce losses) + the shared fit / evaluate / report.
* `sid_sasrec` — SASRec over semantic IDs with per-level heads, exact scores for all items.
* `train`      — device, seeding, atomic checkpoints, early stopping, the generic fit loop.
"""
