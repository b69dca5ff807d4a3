"""The SFT tasks of stage 06, one module per family; `drafts_for` builds any task's drafts.

06-sft-data: multi-task chat conversations that teach the LLM to read and write SIDs.

Every sample is a conversation [system, user, assistant] rendered later by the base model's own
chat template (sidlib.llm.chat; Qwen3 with thinking off). The task families follow the seed
(eugeneyan/semantic-ids-llm) and LC-Rec:

- text -> SID: `title_to_sid`, `description_to_sid`, `features_to_sid`, `title_prefix_to_sid`
  (the first words of a title, the shortest prefix of at least half the words that names one
  item), `title_contains_to_sid` (a 1-3 word phrase from inside the title that no other title has);
- SID -> text: `sid_to_title`, `sid_to_description`, `sid_to_category`;
- catalog structure: `category_to_sid` ("suggest a Comedy movie" -> an item of that category),
  `prefix_to_category` (a SID prefix -> the categories its items mostly have), `similar_items`
  (items sharing the first `sft.similar_prefix` codes, most popular in training first);
- sequential: `seq_last_N` for N in `sft.seq_lengths` ("the last N items -> the next one");
  `seq_session`: the `seq_last_N` question (N = the longest length), answered, then up to
  `sft.session_turns` follow-up turns ("Next?") each answered with the item after: one
  conversation teaches 1 + session_turns next-item predictions for ~25 tokens each, where a
  `seq_last_5` sample pays ~75 tokens for one; `seq_history` (`sft.history_window` > 0): a
  training part listed as SIDs, every item a label for ~5 tokens (the all-positions loss of
  SASRec and SID-GR, in chat form);
- co-purchase: `copurchase_forward` ("who bought X also bought Y") and `copurchase_backward`
  ("before buying Y users bought X"), from prep's co-occurrence pairs;
- `rec_steering`: a natural-language preference built from the categories (and the brand, when
  the catalog has brands) of the user's earlier items, optionally the recent history, then
  `<|rec|>`; the answer is the next item.
"""
from __future__ import annotations

from .common import Catalog, Context, Draft, Inputs, Tally, check_inputs, make_catalog
from .explain import explain_drafts
from .items import ITEM_BUILDERS, item_drafts, prefix_drafts
from .names import (COPURCHASE, EXPLAIN, FAMILIES, FOLLOW_UPS, HISTORY, SESSION, TASKS, all_tasks, family, is_user_task,
                    selected_tasks, seq_task)
from .templates import TEMPLATES, Words, templates_of, words_for
from .users import (copurchase_drafts, copurchase_edges, directed_pairs, history_drafts, rec_drafts, seq_drafts,
                    session_drafts)

__all__ = ["COPURCHASE", "EXPLAIN", "FAMILIES", "FOLLOW_UPS", "HISTORY", "SESSION", "TASKS", "TEMPLATES", "Catalog", "Context",
           "Draft", "Inputs", "Tally", "Words", "all_tasks", "check_inputs", "copurchase_edges", "directed_pairs",
           "drafts_for", "family", "is_user_task", "make_catalog", "selected_tasks", "seq_task", "session_drafts",
           "templates_of", "words_for"]


def drafts_for(ctx: Context, task: str, part: str, seed: int) -> list[Draft]:
    if task in ITEM_BUILDERS:
        return item_drafts(ctx, task, part, seed)
    if task == "prefix_to_category":
        return prefix_drafts(ctx, part, seed)
    if task.startswith("seq_last_"):
        return seq_drafts(ctx, int(task.removeprefix("seq_last_")), part, seed)
    if task == SESSION:
        return session_drafts(ctx, part, seed)
    if task == HISTORY:
        return history_drafts(ctx, part, seed)
    if task in COPURCHASE:
        return copurchase_drafts(ctx, task, part, seed)
    if task == "rec_steering":
        return rec_drafts(ctx, part, seed)
    if task in EXPLAIN:
        return explain_drafts(ctx, task, part, seed)
    raise ValueError(f"no builder for task {task!r}")
