"""The SFT tasks by name: families, which a profile selects, which read users' histories."""
from __future__ import annotations

from ...config import SftDataConfig


# ------------------------------------------------------------------------------- tasks

TEXT_TO_SID = ("title_to_sid", "description_to_sid", "features_to_sid", "title_prefix_to_sid",
               "title_contains_to_sid")
SID_TO_TEXT = ("sid_to_title", "sid_to_description", "sid_to_category")
CATALOG = ("category_to_sid", "prefix_to_category", "similar_items")
COPURCHASE = ("copurchase_forward", "copurchase_backward")
# the default sequential tasks (sft.seq_lengths = [2, 3, 5]); other lengths give seq_last_N
SEQUENTIAL = ("seq_last_2", "seq_last_3", "seq_last_5")
# answers in sentences about items the prompt names: they keep the model answering in words when
# words are asked for (a model fine-tuned on SID answers alone answers everything with a SID)
EXPLAIN = ("pair_in_common", "bundle_name")
SESSION = "seq_session"  # the last N items -> the next, then "Next?" turns (sft.session_turns)
HISTORY = "seq_history"  # a training part listed, every item a label (sft.history_window)
TASKS = TEXT_TO_SID + SID_TO_TEXT + CATALOG + SEQUENTIAL + (SESSION, HISTORY) + COPURCHASE + ("rec_steering",) + EXPLAIN
# tasks whose samples come from users' sequences (the leakage rules apply to them)
USER_TASK_PREFIXES = ("seq_last_", SESSION, HISTORY, "copurchase_", "rec_steering")
# the follow-up questions of a seq_session conversation (one, drawn per turn)
FOLLOW_UPS = ("Next?", "And after that?", "What comes next?")

FAMILIES = {"text -> SID": TEXT_TO_SID, "SID -> text": SID_TO_TEXT, "catalog": CATALOG, "explain": EXPLAIN,
            "co-purchase": COPURCHASE, "rec steering": ("rec_steering",)}



def seq_task(n: int) -> str:
    return f"seq_last_{n}"


def all_tasks(cfg: SftDataConfig) -> list[str]:
    """Every task these settings can build, in report order."""
    seq = [seq_task(n) for n in cfg.seq_lengths] + ([SESSION] if cfg.session_turns > 0 else []) \
        + ([HISTORY] if cfg.history_window > 0 else [])
    return list(TEXT_TO_SID + SID_TO_TEXT + CATALOG) + seq + list(COPURCHASE) + ["rec_steering"] + list(EXPLAIN)


def selected_tasks(cfg: SftDataConfig) -> list[str]:
    """sft.tasks ([] = all), checked: an unknown name is an error that lists the known ones."""
    known = all_tasks(cfg)
    if cfg.history_window < 0 or cfg.history_window == 1:
        raise ValueError(f"sft.history_window must be 0 (off) or >= 2 items, got {cfg.history_window}")
    if any(int(n) < 1 for n in cfg.seq_lengths):
        raise ValueError(f"sft.seq_lengths must be >= 1, got {cfg.seq_lengths}")
    if not cfg.tasks:
        return known
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        raise ValueError(f"sft.tasks: unknown task(s) {unknown}; known: {', '.join(known)} "
                         "(seq_last_N needs N in sft.seq_lengths)")
    return [t for t in known if t in cfg.tasks]


def is_user_task(task: str) -> bool:
    return task.startswith(USER_TASK_PREFIXES)


def family(task: str) -> str:
    if task.startswith("seq_last_") or task in (SESSION, HISTORY):
        return "sequential"
    return next((f for f, tasks in FAMILIES.items() if task in tasks), "other")
